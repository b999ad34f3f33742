"""COCO results JSON: write -> pycocotools loadRes round trip, read validation, conversions,
and the PR-curve plots."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from refinedet_tf.evaluation import (
    coco_results_to_detections,
    plot_pr_curves,
    read_coco_results,
    write_coco_results,
)

CATEGORY_IDS = [None, 18, 44]  # indexed by contiguous class id; 0 = background

DETECTIONS = {
    42: (np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.5, 7.25]]), np.array([0.9, 0.25]), np.array([1, 2])),
    7: (np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), np.int64)),
    43: (np.array([[1.0, 2.0, 3.0, 4.0]]), np.array([0.5]), np.array([2])),
}


def test_write_matches_hand_values_and_round_trips(tmp_path):
    path = tmp_path / "results.json"
    assert write_coco_results(path, DETECTIONS, CATEGORY_IDS) == 3
    entries = json.loads(path.read_text())
    # [ymin, xmin, ymax, xmax] = [10, 20, 50, 80] -> [x, y, w, h] = [20, 10, 60, 40]; class 1 -> 18.
    assert entries[0] == {"image_id": 42, "category_id": 18, "bbox": [20.0, 10.0, 60.0, 40.0], "score": 0.9}
    assert entries[1]["bbox"] == [0.0, 0.0, 7.25, 5.5] and entries[1]["category_id"] == 44

    back = coco_results_to_detections(read_coco_results(path, [7, 42, 43], [18, 44]), CATEGORY_IDS)
    assert list(back) == [42, 43]  # image 7 had no detections
    for image_id, (boxes, scores, classes) in back.items():
        np.testing.assert_allclose(boxes, DETECTIONS[image_id][0])
        np.testing.assert_allclose(scores, DETECTIONS[image_id][1])
        np.testing.assert_array_equal(classes, DETECTIONS[image_id][2])


def test_pycocotools_load_res_reads_the_file(tmp_path):
    path = tmp_path / "results.json"
    write_coco_results(path, DETECTIONS, CATEGORY_IDS)
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in (7, 42, 43)],
        "annotations": [{"id": 1, "image_id": 42, "category_id": 18, "bbox": [20, 10, 60, 40], "area": 2400,
                         "iscrowd": 0}],
        "categories": [{"id": 18, "name": "cat"}, {"id": 44, "name": "dog"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        res = gt.loadRes(str(path))
    anns = res.loadAnns(res.getAnnIds(imgIds=[42]))
    assert [a["bbox"] for a in anns] == [[20.0, 10.0, 60.0, 40.0], [0.0, 0.0, 7.25, 5.5]]
    assert anns[0]["area"] == 2400.0


def test_string_image_ids_for_voc(tmp_path):
    path = tmp_path / "voc.json"
    write_coco_results(path, {"000005": DETECTIONS[43]}, None)
    entries = read_coco_results(path, ["000005"], [2])
    assert entries == [{"image_id": "000005", "category_id": 2, "bbox": [2.0, 1.0, 2.0, 2.0], "score": 0.5}]


GOOD = {"image_id": 42, "category_id": 18, "bbox": [1, 2, 3, 4], "score": 0.5}


@pytest.mark.parametrize(
    "entry, message",
    [
        ({**GOOD, "image_id": 99}, r"entry 1 \(image_id 99\): unknown image id 99"),
        ({**GOOD, "category_id": 3}, r"entry 1 \(image_id 42\): unknown category id 3"),
        ({**GOOD, "score": float("nan")}, r"entry 1 \(image_id 42\): score must be a finite number, got nan"),
        ({**GOOD, "score": float("inf")}, r"score must be a finite number, got inf"),
        ({**GOOD, "bbox": [10, 2, -1, 4]}, r"entry 1 \(image_id 42\): bbox has a negative width or height"),
        ({**GOOD, "bbox": [10, 2, 3]}, r"entry 1 \(image_id 42\): bbox must be 4 numbers"),
        ({**GOOD, "bbox": [10, 2, 3, "4"]}, r"bbox must be 4 numbers"),
        ({k: v for k, v in GOOD.items() if k != "score"}, r"entry 1 \(image_id 42\) is missing key\(s\) \['score'\]"),
        ({**GOOD, "category_id": 18.5}, r"category_id must be an int"),
        ("not a dict", r"entry 1 must be an object"),
    ],
)
def test_read_rejects_bad_entries(tmp_path, entry, message):
    path = tmp_path / "bad.json"
    # json writes NaN / Infinity literals, which json.load (and pycocotools) accept.
    path.write_text(json.dumps([GOOD, entry]))
    with pytest.raises(ValueError, match=message):
        read_coco_results(path, [42], [18, 44])


def test_read_empty(tmp_path):
    empty_file = tmp_path / "empty.json"
    empty_file.write_text("")
    with pytest.raises(ValueError, match="no detections in .*empty.json"):
        read_coco_results(empty_file, [1], [1])
    empty_list = tmp_path / "list.json"
    empty_list.write_text("[]")
    with pytest.raises(ValueError, match="no detections in .*list.json"):
        read_coco_results(empty_list, [1], [1])
    assert read_coco_results(empty_list, [1], [1], allow_empty=True) == []
    not_list = tmp_path / "dict.json"
    not_list.write_text("{}")
    with pytest.raises(ValueError, match="must hold a JSON list"):
        read_coco_results(not_list, [1], [1])


def test_write_rejects_bad_detections(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(ValueError, match="image 42 have class id 3; expected 1..2"):
        write_coco_results(path, {42: (np.array([[1.0, 2.0, 3.0, 4.0]]), [0.5], [3])}, CATEGORY_IDS)
    with pytest.raises(ValueError, match="non-finite score at row 0"):
        write_coco_results(path, {42: (np.array([[1.0, 2.0, 3.0, 4.0]]), [np.nan], [1])}, CATEGORY_IDS)


def test_plot_pr_curves(tmp_path):
    pytest.importorskip("matplotlib")
    pr_data = {
        "cat": {"recall": np.array([0.5, 1.0]), "precision": np.array([1.0, 0.5]), "ap": {"voc12": 0.75}},
        "traffic light": {"recall": np.array([0.0, 1.0]), "precision": np.array([0.0, 0.5]), "ap": {}},
        "bird": None,
    }
    paths = plot_pr_curves(pr_data, tmp_path / "pr")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["pr_cat.png", "pr_traffic_light.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot_pr_curves({"cat": {"recall": [1.0], "precision": [1.0]}}, tmp_path) == []
    assert capsys.readouterr().out == "matplotlib not installed: PR curves skipped\n"
