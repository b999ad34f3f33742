import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import RACCOON_DIR, TINY_ITEMS, TINY_SIZES, coco_json_from_voc_items
from refinedet_tf.data import load_label_map, prepare, tfrecord
from refinedet_tf.data.voc import VocReader


def _run(*args):
    return prepare.run(["prepare", "--noprogress", *args])


def _bytes(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def test_prepare_is_deterministic_whatever_the_workers(tiny_voc, tmp_path):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    assert _run("--input", tiny_voc, "--output", f"{out1}/t-%05d-of-%05d.tfrecord", "--num_shards", "2",
                "--num_workers", "1") == 0
    assert _run("--format", "voc", "--input", tiny_voc, "--output", f"{out2}/t-%05d-of-%05d.tfrecord",
                "--num_shards", "2", "--num_workers", "3") == 0
    one, two = _bytes(out1), _bytes(out2)
    assert sorted(one) == ["t-00000-of-00002.tfrecord", "t-00001-of-00002.tfrecord",
                           "t.labelmap.pbtxt", "t.report.json"]
    assert one == two


def test_report_json_and_label_map_next_to_shards(tiny_voc, tmp_path, capsys):
    assert _run("--input", tiny_voc, "--split", "train", "--output", f"{tmp_path}/train.tfrecord") == 0
    err = capsys.readouterr().err
    assert "images: 2" in err and "boxes: 3" in err
    report = json.load(open(tmp_path / "train.report.json"))
    assert report["images"] == 2 and report["boxes"] == 3
    assert report["per_class"] == {"cat": 1, "dog": 2}
    assert report["shards"] == ["train.tfrecord"] and report["issues"] == []
    assert load_label_map(str(tmp_path / "train.labelmap.pbtxt")).names == ("background", "cat", "dog")


def test_examples_go_round_robin_to_shards(tiny_voc, tmp_path):
    result = prepare.prepare(VocReader(tiny_voc), str(tmp_path / "s-%05d.tfrecord"), 2, progress=False)
    ids = [[m["image_id"] for m in tfrecord.TFRecordReader(s).metadata] for s in result.shards]
    assert ids == [["a", "c"], ["b"]]


@pytest.mark.parametrize("output, shards, expected", [
    ("o/t-%05d-of-%05d.tfrecord", 2, ["o/t-00000-of-00002.tfrecord", "o/t-00001-of-00002.tfrecord"]),
    ("o/t-%05d-of-00002.tfrecord", 2, ["o/t-00000-of-00002.tfrecord", "o/t-00001-of-00002.tfrecord"]),
    ("o/t.tfrecord", 1, ["o/t.tfrecord"]),
    ("o/t.tfrecord", 2, ["o/t-00000-of-00002.tfrecord", "o/t-00001-of-00002.tfrecord"]),
])
def test_shard_paths(output, shards, expected):
    assert prepare.shard_paths(output, shards) == expected


def test_bad_shard_patterns():
    with pytest.raises(ValueError, match="has 3 % fields; expected 1"):
        prepare.shard_paths("o/%d-%d-%d.tfrecord", 2)
    with pytest.raises(ValueError, match="num_shards must be >= 1"):
        prepare.shard_paths("o/t.tfrecord", 0)


def test_coco_prepare_stores_category_ids_and_reads_back(tiny_voc, tmp_path):
    shutil.copytree(os.path.join(tiny_voc, "JPEGImages"), tmp_path / "images")
    path = coco_json_from_voc_items(tmp_path / "c.json", TINY_ITEMS, TINY_SIZES)
    assert _run("--format", "coco", "--input", path, "--output", f"{tmp_path}/out/c.tfrecord") == 0
    shard = str(tmp_path / "out" / "c.tfrecord")
    stored = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(shard))).numpy())
    labels = stored.features.feature["image/object/class/label"].int64_list.value
    assert list(labels) == [3, 7]  # COCO category ids, as the OD API stores them
    reader = tfrecord.TFRecordReader(shard)  # finds c.labelmap.pbtxt next to the shard
    assert reader.label_map_path == str(tmp_path / "out" / "c.labelmap.pbtxt")
    assert reader.metadata[0]["classes"].tolist() == [1, 2]
    assert [m["image_id"] for m in reader.metadata] == ["10", "11", "12"]
    os.remove(reader.label_map_path)
    raw = tfrecord.TFRecordReader(shard)
    assert raw.label_map is None and raw.metadata[0]["classes"].tolist() == [3, 7]  # as stored


def test_module_entry_point(tiny_voc, tmp_path):
    out = tmp_path / "m.tfrecord"
    proc = subprocess.run([sys.executable, "-m", "refinedet_tf.data.prepare", "--input", tiny_voc,
                           "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "images: 3" in proc.stderr and "prepare [" in proc.stderr  # report and progress
    assert out.exists()


@pytest.mark.skipif(not os.path.isdir(RACCOON_DIR), reason=f"{RACCOON_DIR} not present (a lab-only dataset)")
def test_raccoon_dataset(tmp_path):
    reader = VocReader(RACCOON_DIR)
    result = prepare.prepare(reader, str(tmp_path / "raccoon-%05d-of-%05d.tfrecord"), num_shards=2,
                             num_workers=2, progress=False)
    report = result.report
    assert (report.images, report.boxes) == (200, 217)
    assert dict(report.per_class) == {"raccoon": 217}
    assert report.counts() == {"grayscale": 3}
    assert sorted(os.path.basename(i.path) for i in report.issues) == [
        "raccoon-150.jpg", "raccoon-152.jpg", "raccoon-161.jpg"]
    # Read back without decoding: same ids and boxes as the VOC reader.
    back = {m["image_id"]: m for m in tfrecord.TFRecordReader(result.shards).metadata}
    assert len(back) == 200
    for meta in reader.metadata:
        np.testing.assert_array_equal(back[meta["image_id"]]["boxes"], meta["boxes"])
    # The documented splits: 160 images / 175 boxes and 40 / 42.
    train, val = VocReader(RACCOON_DIR, "train"), VocReader(RACCOON_DIR, "val")
    assert (train.report.images, train.report.boxes, val.report.images, val.report.boxes) == (160, 175, 40, 42)
