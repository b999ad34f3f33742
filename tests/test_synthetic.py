import os

import numpy as np
import pytest

from refinedet_tf.data import example as ex, synthetic
from refinedet_tf.data.voc import VocReader


def _files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = synthetic.generate_voc_dataset(str(tmp_path / "a"), num_train=5, num_val=2, image_size=96)
    b = synthetic.generate_voc_dataset(str(tmp_path / "b"), num_train=5, num_val=2, image_size=96)
    c = synthetic.generate_voc_dataset(str(tmp_path / "c"), num_train=5, num_val=2, image_size=96, seed=1)
    files_a = _files(a)
    assert len(files_a) == 7 * 2 + 4  # images + xmls + train.txt, val.txt, labelmap, synthetic.json
    assert files_a == _files(b)
    assert files_a["JPEGImages/train_00000.jpg"] != _files(c)["JPEGImages/train_00000.jpg"]
    # Images do not depend on how many others are generated.
    d = synthetic.generate_voc_dataset(str(tmp_path / "d"), num_train=2, num_val=0, image_size=96)
    assert _files(d)["JPEGImages/train_00001.jpg"] == files_a["JPEGImages/train_00001.jpg"]


def test_dataset_reads_as_voc_with_sensible_objects(tmp_path):
    root = synthetic.generate_voc_dataset(str(tmp_path / "s"), num_train=60, num_val=10, image_size=160)
    reader = VocReader(root, "train")
    assert reader.label_map.names[1:] == synthetic.CLASSES
    assert len(reader) == 60 and reader.report.issues == []  # nothing clipped, dropped, converted
    sides = []
    for meta in reader.metadata:
        assert 1 <= len(meta["classes"]) <= 9
        extent = (meta["boxes"][:, 2:] - meta["boxes"][:, :2]) * 160
        sides += extent.max(axis=1).tolist()
    assert set(reader.report.per_class) == set(synthetic.CLASSES)
    assert min(sides) < 20 and max(sides) > 80  # small to large objects
    assert min(sides) >= 10
    e = next(iter(reader))
    ex.check_example(e, num_classes=7)
    assert e["image"].shape == (160, 160, 3)
    assert len(VocReader(root, "val")) == 10


def test_objects_stand_out_from_the_background():
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, objects = synthetic.render_image(rng, 128)
        for name, (x0, y0, x1, y1) in objects:
            if name in ("circle", "square") and x1 - x0 >= 16:
                centre = image[(y0 + y1) // 2 - 1:(y0 + y1) // 2 + 2, (x0 + x1) // 2 - 1:(x0 + x1) // 2 + 2]
                colour = centre.reshape(-1, 3).mean(0)
                assert np.abs(image.reshape(-1, 3).mean(0) - colour).max() > 20


def test_ensure_generates_once_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINEDET_TF_CACHE", str(tmp_path / "cache"))
    assert synthetic.default_dataset_dir() == str(tmp_path / "cache" / "synthetic-v2")
    params = dict(num_train=3, num_val=1, image_size=64)
    path = synthetic.ensure_synthetic_dataset(**params)
    assert path == str(tmp_path / "cache" / "synthetic-v2-3-1-64px-seed0")
    stamp = os.path.join(path, "synthetic.json")
    mtime = os.path.getmtime(stamp)
    assert synthetic.ensure_synthetic_dataset(**params) == path
    assert os.path.getmtime(stamp) == mtime  # not generated again
    assert os.listdir(tmp_path / "cache") == ["synthetic-v2-3-1-64px-seed0"]  # no temp folder left
    with pytest.raises(ValueError, match="holds a synthetic set made with"):
        synthetic.ensure_synthetic_dataset(path, num_train=4, num_val=1, image_size=64)
    with pytest.raises(ValueError, match="unknown synthetic dataset parameter"):
        synthetic.ensure_synthetic_dataset(size=3)
