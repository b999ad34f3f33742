"""evaluate.py end to end: outputs, detections.json round trip, bad input (the SavedModel and the
other exported forms: tests/test_export_verify.py)."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from refinedet_tf.evaluation.command import EvalOptions, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = io.StringIO()  # what the commands print, kept out of the test output


@pytest.fixture(scope="module")
def checkpoint_result(tiny_trained_model_dir, synthetic_val_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_ckpt")
    metrics = run(EvalOptions(data=synthetic_val_dir, checkpoint=tiny_trained_model_dir, split="val",
                              metrics=("voc07", "voc12", "coco"), output_dir=str(out)), stream=QUIET)
    return metrics, out


def test_outputs_and_detections_file_round_trip(checkpoint_result, synthetic_val_dir):
    from pycocotools.coco import COCO

    metrics, out = checkpoint_result
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) >= {"voc07", "voc12", "coco", "speed"}
    assert set(written["voc07"]["per_class"]) == {"circle", "square", "triangle", "star", "circle_outline",
                                                  "square_outline"}
    assert written["speed"]["model_images_per_second"] > 0
    entries = json.loads((out / "detections.json").read_text())
    assert entries and set(entries[0]) == {"image_id", "category_id", "bbox", "score"}
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in sorted({e["image_id"] for e in entries})], "annotations": [],
                  "categories": [{"id": i} for i in range(1, 7)]}
    gt.createIndex()
    assert len(gt.loadRes(str(out / "detections.json")).getAnnIds()) == len(entries)
    # Scoring the written detections again gives the same numbers.
    again = run(EvalOptions(data=synthetic_val_dir, detections=str(out / "detections.json"), split="val",
                            metrics=("voc07", "voc12")), stream=QUIET)
    np.testing.assert_allclose(again["voc07"]["mAP"], metrics["voc07"]["mAP"], atol=1e-3)
    np.testing.assert_allclose(again["voc12"]["mAP"], metrics["voc12"]["mAP"], atol=1e-3)


def test_bad_input_is_a_clear_message(tiny_trained_model_dir, synthetic_val_dir, tmp_path):
    with pytest.raises(ValueError, match="does not match --preset vgg16_320: image_size: checkpoint 192 vs preset 320"):
        run(EvalOptions(data=synthetic_val_dir, checkpoint=tiny_trained_model_dir, preset="vgg16_320"), stream=QUIET)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="no detections"):
        run(EvalOptions(data=synthetic_val_dir, detections=str(empty), split="val"), stream=QUIET)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"image_id": "nope", "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    with pytest.raises(ValueError, match="nope"):
        run(EvalOptions(data=synthetic_val_dir, detections=str(unknown), split="val"), stream=QUIET)
    with pytest.raises(ValueError, match="exactly one of"):
        run(EvalOptions(data=synthetic_val_dir), stream=QUIET)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--data", synthetic_val_dir,
                             "--checkpoint", str(tmp_path / "missing")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "checkpoint not found" in result.stderr
