"""`evaluate.py --export_dir`: every exported form of the demo model on the same images, one table."""

import os
import subprocess
import sys

import pytest

from refinedet_tf.export.verify import FormResult, check_drops, find_forms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMS = ["saved_model", "tflite fp16", "tflite fp32", "tflite int8", "onnx"]


def test_every_form_is_found(exported_demo_model):
    assert [form for form, _ in find_forms(exported_demo_model)] == FORMS


def test_every_form_is_evaluated_on_the_same_images(exported_demo_model, tiny_trained_model_dir, synthetic_val_dir,
                                                      tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "evaluate.py"), "--export_dir", exported_demo_model, "--checkpoint",
         tiny_trained_model_dir, "--data", synthetic_val_dir, "--split", "val", "--max_images", "12",
         "--max_drop", "0.2", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("form "):].splitlines()
    assert [line.split("  ")[0].strip() for line in table[1:]] == ["checkpoint (keras)"] + FORMS
    import json

    rows = {r["form"]: r for r in json.loads((tmp_path / "exports.json").read_text())}
    reference = rows["checkpoint (keras)"]["map"]
    assert reference > 0.3  # a trained model, so the comparison means something
    # Float32 forms give the checkpoint's mAP; fp16 and int8 within the 0.2 allowed above.
    for form in ("saved_model", "tflite fp32", "onnx"):
        assert abs(rows[form]["map"] - reference) < 5e-3, form
    assert all(row["size_mb"] > 0 and row["ms_per_image"] > 0 for row in rows.values())
    assert rows["tflite int8"]["size_mb"] < 0.5 * rows["tflite fp32"]["size_mb"]


def test_a_larger_drop_is_an_error():
    results = [FormResult("checkpoint (keras)", "w.h5", 1.0, 0.80, 5.0), FormResult("tflite int8", "m", 0.3, 0.70, 2.0,
                                                                                     drop=0.10),
               FormResult("saved_model", "1", 1.0, 0.80, 4.0, drop=0.0)]
    check_drops(results, 0.2)
    with pytest.raises(ValueError, match=r"tflite int8 loses 0.1000 \(> 0.01\)"):
        check_drops(results, 0.01)
