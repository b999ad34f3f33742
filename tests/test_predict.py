"""predict.py: images -> drawn copies + JSON (or COCO results), from a checkpoint, a SavedModel
or a .tflite, with the same detections from each."""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.checkpoints import load_model
from test_export_saved_model import LABEL_IDS, LABEL_NAMES, keras_detections, make_checkpoint, run_python

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import predict  # noqa: E402  (the repository root, where predict.py is, goes on sys.path first)

THRESHOLD = 0.2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    checkpoint = make_checkpoint(root / "model")
    images = root / "images"
    images.mkdir()
    rng = np.random.RandomState(11)
    for name, shape in [("a.jpg", (120, 160, 3)), ("b.png", (128, 96, 3)), ("000000000042.png", (64, 64, 3))]:
        cv2.imwrite(str(images / name), rng.randint(0, 256, shape).astype(np.uint8))
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (images / "notes.txt").write_text("not an image")
    return {"root": root, "checkpoint": checkpoint, "images": images}


def _expected(setup, name, max_detections=100):
    model, config = load_model(setup["checkpoint"])
    # Decoded as predict.py does (TensorFlow's decoder: OpenCV's JPEG decoder may differ).
    rgb = tf.io.decode_image((setup["images"] / name).read_bytes(), channels=3).numpy()
    out = keras_detections(model, config, rgb[None], max_detections=max_detections)
    keep = out["detection_scores"][0, : int(out["num_detections"][0])] >= THRESHOLD
    return out["detection_boxes"][0][: len(keep)][keep], out["detection_classes"][0][: len(keep)][keep]


def test_list_images_takes_files_folders_and_globs(setup):
    folder = str(setup["images"])
    names = [os.path.basename(p) for p in predict.list_images([folder])]
    assert names == ["000000000042.png", "a.jpg", "b.png", "broken.jpg"]
    assert len(predict.list_images([os.path.join(folder, "*.png"), os.path.join(folder, "a.jpg"), folder])) == 4
    with pytest.raises(FileNotFoundError, match="no such file, folder or matching glob"):
        predict.list_images([os.path.join(folder, "missing_*.jpg")])


def test_command_line_with_a_checkpoint_draws_and_writes_json(setup):
    output = setup["root"] / "out_checkpoint"
    result = run_python(["predict.py", f"--checkpoint={setup['checkpoint']}", f"--images={setup['images']}",
                         f"--output_dir={output}", f"--score_threshold={THRESHOLD}"])
    assert "3 image(s)" in result.stdout and "1 skipped" in result.stdout
    assert "broken.jpg" in result.stderr
    assert sorted(os.listdir(output)) == sorted(
        f"{stem}.{ext}" for stem in ("000000000042", "a", "b") for ext in ("jpg", "json"))
    with open(output / "a.json") as f:
        record = json.load(f)
    assert (record["height"], record["width"]) == (120, 160)
    boxes, classes = _expected(setup, "a.jpg")
    assert len(record["detections"]) == len(boxes) > 0
    for det, box, cls in zip(record["detections"], boxes, classes):
        assert det["score"] >= THRESHOLD
        np.testing.assert_allclose(det["box_yxyx"], box, atol=1e-4)
        assert det["class_id"] == cls and det["class_name"] == LABEL_NAMES[LABEL_IDS.index(cls)]
        np.testing.assert_allclose(det["box_xyxy_pixels"], [box[1] * 160, box[0] * 120, box[3] * 160, box[2] * 120],
                                   atol=1e-2)
    drawn = cv2.imread(str(output / "a.jpg"))
    original = cv2.imread(str(setup["images"] / "a.jpg"))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).max() > 100


def test_saved_model_and_tflite_give_the_checkpoint_detections(setup):
    from refinedet_tf.data.label_map import load_label_map
    from refinedet_tf.export import export_saved_model, export_tflite

    model, config = load_model(setup["checkpoint"])
    label_map = load_label_map(os.path.join(setup["checkpoint"], "labelmap.pbtxt"))
    exported = setup["root"] / "exported"
    export_saved_model(model, config, str(exported), label_map=label_map)
    (tflite_path,) = export_tflite(model, config, str(exported / "tflite"), "fp32", label_map=label_map)
    paths = predict.list_images([str(setup["images"])])
    results = {}
    for kind, kwargs in [("checkpoint", {"checkpoint": setup["checkpoint"]}),
                         ("saved_model", {"saved_model": str(exported)}),
                         ("tflite", {"tflite": tflite_path})]:
        predictor = predict.make_predictor(**kwargs)
        coco = setup["root"] / f"{kind}.json"
        done, failed = predict.predict(paths, predictor, coco_results=str(coco), score_threshold=THRESHOLD)
        assert done == 3 and [os.path.basename(p) for p, _ in failed] == ["broken.jpg"]
        assert predictor.class_name(LABEL_IDS[2]) == LABEL_NAMES[2]
        with open(coco) as f:
            results[kind] = json.load(f)
    assert results["checkpoint"], "the test model should detect something"
    assert {r["image_id"] for r in results["checkpoint"]} <= {"a", "b", 42}
    assert {r["category_id"] for r in results["checkpoint"]} <= set(LABEL_IDS[1:])
    for kind in ("saved_model", "tflite"):
        assert len(results[kind]) == len(results["checkpoint"]), kind
        for ours, reference in zip(results[kind], results["checkpoint"]):
            assert ours["image_id"] == reference["image_id"] and ours["category_id"] == reference["category_id"]
            np.testing.assert_allclose(ours["bbox"], reference["bbox"], atol=0.05)
            assert abs(ours["score"] - reference["score"]) < 1e-3


def test_exactly_one_model_is_required():
    from absl import app

    with pytest.raises(app.UsageError, match="exactly one of"):
        predict.make_predictor()
    with pytest.raises(app.UsageError, match="exactly one of"):
        predict.make_predictor(checkpoint="a", tflite="b")
