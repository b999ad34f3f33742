"""The data policy (refinedet_tf/data/policy.py) through the commands that read data: evaluate
counts every box voc_eval counts (1-pixel VOC boxes too) from each format, training drops and
counts them, export's calibration data follows --on_bad_example."""

import io
import json
import os

import numpy as np
import pytest

from conftest import coco_json_from_voc_items, make_voc, textured
from refinedet_tf.data import prepare
from refinedet_tf.data.report import BadExampleError
from refinedet_tf.evaluation.command import EvalOptions, run
from test_evaluation_voc import _voc_eval_reference

SIZES = {"p": (40, 60), "q": (50, 50), "r": (30, 80)}  # (height, width)
# VOC 1-based inclusive corners (name, xmin, ymin, xmax, ymax[, difficult]); "p" and "r" hold
# boxes one pixel wide or high, as labelling tools write for a click without a drag.
ITEMS = [
    {"id": "p", "objects": [("cat", 7, 5, 7, 9), ("dog", 10, 10, 40, 30), ("cat", 30, 2, 50, 2)]},
    {"id": "q", "objects": [("cat", 5, 5, 25, 25), ("dog", 20, 20, 45, 48)]},
    {"id": "r", "objects": [("dog", 60, 3, 60, 3), ("cat", 2, 2, 30, 28)]},
]
# Detections in VOC pixels (image, class name, score, xmin, ymin, xmax, ymax): some hit the
# 1-pixel boxes, some miss. (No difficult flag: COCO has none, and the three forms must agree.)
DETECTIONS = [
    ("p", "cat", 0.9, 7, 5, 7, 9), ("p", "cat", 0.3, 30, 2, 50, 3), ("p", "dog", 0.8, 11, 10, 40, 31),
    ("q", "cat", 0.7, 5, 6, 25, 25), ("q", "dog", 0.6, 20, 20, 45, 47), ("q", "cat", 0.2, 30, 30, 40, 40),
    ("r", "dog", 0.5, 59, 3, 60, 3), ("r", "cat", 0.4, 2, 2, 29, 28), ("r", "dog", 0.35, 1, 1, 10, 10),
]
NAMES = ("cat", "dog")


@pytest.fixture(scope="module")
def one_pixel_set(tmp_path_factory):
    """The same set as a VOC folder, a COCO JSON and TFRecords (prepare), plus the detections
    as a COCO results file."""
    root = tmp_path_factory.mktemp("one_pixel")
    items = [dict(item, image=textured(*SIZES[item["id"]], seed=k)) for k, item in enumerate(ITEMS)]
    voc = make_voc(root / "voc", items, labelmap=NAMES)
    coco_items = [dict(item, objects=[o[:5] for o in item["objects"]]) for item in ITEMS]
    coco = coco_json_from_voc_items(root / "voc" / "JPEGImages" / "instances.json", coco_items, SIZES,
                                    categories=((1, "cat"), (2, "dog")))
    tfrecord = str(root / "tfrecord" / "set.tfrecord")
    assert prepare.run(["prepare", "--input", voc, "--output", tfrecord, "--noprogress"],
                       stderr=io.StringIO()) == 0
    entries = [{"image_id": image, "category_id": NAMES.index(name) + 1, "score": score,
                "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]}
               for image, name, score, x0, y0, x1, y1 in DETECTIONS]
    return {"voc": voc, "coco": coco, "tfrecord": tfrecord, "entries": entries, "root": root}


def _voc_eval_map(use_07):
    """py-faster-rcnn's voc_eval on the raw VOC corners, class by class."""
    images = []
    for item in ITEMS:
        objects = item["objects"]
        gt = np.array([[o[2], o[1], o[4], o[3]] for o in objects], float)
        gt_cls = np.array([NAMES.index(o[0]) + 1 for o in objects])
        diff = np.array([len(o) > 5 and o[5] for o in objects], bool)
        dets = [d for d in DETECTIONS if d[0] == item["id"]]
        det = np.array([[d[4], d[3], d[6], d[5]] for d in dets], float)
        images.append((item["id"], gt, gt_cls, diff, det, np.array([d[2] for d in dets]),
                       np.array([NAMES.index(d[1]) + 1 for d in dets])))
    return np.mean([_voc_eval_reference(images, c, use_07) for c in (1, 2)])


def _evaluate(data, entries, tmp_path, **kwargs):
    path = tmp_path / "detections.json"
    if "coco" in os.path.basename(str(data)) or str(data).endswith(".json"):
        ids = {"p": 10, "q": 11, "r": 12}  # coco_json_from_voc_items numbers images from 10
        entries = [dict(e, image_id=ids[e["image_id"]]) for e in entries]
    path.write_text(json.dumps(entries))
    stream = io.StringIO()
    metrics = run(EvalOptions(data=data, detections=str(path), split=None, metrics=("voc07", "voc12"),
                              **kwargs), stream=stream)
    return metrics, stream.getvalue()


@pytest.mark.parametrize("form", ["voc", "coco", "tfrecord"])
def test_evaluation_counts_one_pixel_boxes_like_voc_eval_in_every_format(one_pixel_set, form, tmp_path):
    data = one_pixel_set[form]
    metrics, printed = _evaluate(data, one_pixel_set["entries"], tmp_path)
    assert metrics["voc07"]["mAP"] == pytest.approx(_voc_eval_map(True), abs=1e-12)
    assert metrics["voc12"]["mAP"] == pytest.approx(_voc_eval_map(False), abs=1e-12)
    # Listed as warnings, not errors: each 1-pixel box with its file and object.
    assert "tiny_box: 3" in printed
    assert "images: 3" in printed and "boxes: 7" in printed


def test_voc_eval_reference_sees_the_one_pixel_boxes():
    """The expected values above depend on the 1-pixel boxes (else the test could not fail)."""
    assert 0.3 < _voc_eval_map(True) < 0.95


def test_training_drops_and_counts_the_one_pixel_boxes_in_every_format(one_pixel_set, tmp_path, capsys):
    from refinedet_tf.training import options as options_lib, run as run_lib

    for form in ("voc", "coco", "tfrecord"):
        options = options_lib.TrainOptions(data=one_pixel_set[form], val_data=one_pixel_set[form], split=None,
                                       val_split=None, model_dir=str(tmp_path / form))
        train, val, names, _ = run_lib.data_sources(options)
        assert names == ["background", "cat", "dog"]
        assert train.report.boxes == 4 and train.report.count("small_box") == 3, form
        assert sum(len(m["classes"]) for m in train.metadata) == 4
        assert sum(len(e["classes"]) for e in train.as_dataset().as_numpy_iterator()) == 4
        assert val.report.boxes == 7 and val.report.count("tiny_box") == 3, form
        printed = capsys.readouterr().out
        assert "small_box: 3" in printed and "tiny_box: 3" in printed
        assert options_lib.config_for_data(options, names).num_classes == 3  # from the label map
    with pytest.raises(ValueError, match="has 2 classes .* but --num_classes is 5"):
        options_lib.config_for_data(options_lib.TrainOptions(config_overrides={"num_classes": 5}), names)


def test_evaluate_names_a_bad_example_or_skips_it(one_pixel_set, tmp_path):
    broken = make_voc(tmp_path / "broken", [
        dict(item, image=textured(*SIZES[item["id"]], seed=k)) for k, item in enumerate(ITEMS)]
        + [{"id": "s", "image": textured(20, 20), "objects": [("horse", 1, 1, 10, 10)]}], labelmap=NAMES)
    with pytest.raises(BadExampleError, match=r"s\.xml: object 0 has class 'horse', which is not in the label map"):
        _evaluate(broken, one_pixel_set["entries"], tmp_path)
    metrics, printed = _evaluate(broken, one_pixel_set["entries"], tmp_path, on_bad_example="skip")
    assert "skipped: 1" in printed and "s.xml" in printed
    assert metrics["voc07"]["mAP"] == pytest.approx(_voc_eval_map(True), abs=1e-12)


def test_calibration_data_follows_on_bad_example(one_pixel_set, tmp_path):
    from refinedet_tf import get_preset
    from refinedet_tf.export import calibration_images

    voc = make_voc(tmp_path / "calib", [dict(item, image=textured(*SIZES[item["id"]], seed=k))
                                        for k, item in enumerate(ITEMS)], labelmap=NAMES)
    os.remove(os.path.join(voc, "JPEGImages", "q.jpg"))
    config = get_preset("mobilenetv2_lite_192", image_size=64, num_classes=3)
    with pytest.raises(BadExampleError, match=r"q\.jpg: image file not found"):
        calibration_images(voc, config)
    stream = io.StringIO()
    images = calibration_images(voc, config, on_bad_example="skip", report_stream=stream)
    assert len(images) == 2 and "skipped: 1" in stream.getvalue()
    # TFRecords and COCO JSON are read the same way (images only).
    assert len(calibration_images(one_pixel_set["tfrecord"], config)) == 3
    assert len(calibration_images(one_pixel_set["coco"], config)) == 3


def test_every_command_sees_the_same_images_and_boxes_in_every_format(one_pixel_set, tmp_path):
    """inspect and prepare (evaluation and training above) agree on the three forms of one set."""
    from refinedet_tf.data import inspect

    counts = {}
    for form in ("voc", "coco", "tfrecord"):
        out = tmp_path / form
        assert inspect.run(["inspect", "--data", one_pixel_set[form], "--config", "image_size=64",
                            "--output_dir", str(out)], stdout=io.StringIO(), stderr=io.StringIO()) == 0
        result = json.loads((out / "inspect.json").read_text())
        counts[form] = (result["num_images"], result["num_boxes"], result["per_class"],
                        result["issue_counts"].get("tiny_box"), result["anchor_recall"]["recall"])
    assert counts["voc"] == counts["coco"] == counts["tfrecord"] == (3, 7, {"cat": 4, "dog": 3}, 3,
                                                                     counts["voc"][4])
    for form in ("voc", "coco"):
        err = io.StringIO()
        output = str(tmp_path / f"prepared-{form}.tfrecord")
        assert prepare.run(["prepare", "--input", one_pixel_set[form], "--output", output, "--noprogress"],
                           stderr=err) == 0
        report = json.loads(open(str(tmp_path / f"prepared-{form}.report.json")).read())
        assert (report["images"], report["boxes"], report["per_class"]) == (3, 7, {"cat": 4, "dog": 3})
