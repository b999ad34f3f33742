"""Every exported form of the demo model (conftest.exported_demo_model): found and evaluated by
`evaluate.py --export_dir` on the same images in one table, the SavedModel through `evaluate.py
--saved_model`, and the int8 .tflite's accuracy.

The session's `exported_demo_model` is built by the first test that asks for it; every test that
uses it lives in this file, so that with the suite split over processes by file (`--dist
loadfile`) it is built once."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf import detect, generate_anchors, preprocess_images
from refinedet_tf.checkpoints import load_model
from refinedet_tf.evaluation.command import EvalOptions, run
from refinedet_tf.export import TFLiteDetector, export_tflite
from refinedet_tf.export.tflite import POSTPROCESS_FILE
from refinedet_tf.export.verify import FormResult, check_drops, find_forms
from test_export_tflite import assert_builtin_only, conv_weight_types, op_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMS = ["saved_model", "tflite fp32", "tflite int8", "onnx"]
TABLE_IMAGES = 12


def test_every_form_is_found(exported_demo_model):
    assert [form for form, _ in find_forms(exported_demo_model)] == FORMS


@pytest.fixture(scope="module")
def table(exported_demo_model, tiny_trained_model_dir, synthetic_val_dir, tmp_path_factory):
    """`evaluate.py --export_dir` on the first 12 val images -> (stdout, rows of exports.json by form)."""
    out = tmp_path_factory.mktemp("export_table")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "evaluate.py"), "--export_dir", exported_demo_model, "--checkpoint",
         tiny_trained_model_dir, "--data", synthetic_val_dir, "--split", "val", "--max_images", str(TABLE_IMAGES),
         "--max_drop", "0.2", "--output_dir", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, {r["form"]: r for r in json.loads((out / "exports.json").read_text())}


def test_every_form_is_evaluated_on_the_same_images(table):
    stdout, rows = table
    lines = stdout[stdout.index("form "):].splitlines()
    assert [line.split("  ")[0].strip() for line in lines[1:]] == ["checkpoint (keras)"] + FORMS
    reference = rows["checkpoint (keras)"]["map"]
    assert reference > 0.3  # a trained model, so the comparison means something
    # Float32 forms give the checkpoint's mAP; int8 within the 0.2 allowed above.
    for form in ("saved_model", "tflite fp32", "onnx"):
        assert abs(rows[form]["map"] - reference) < 5e-3, form
    assert all(row["size_mb"] > 0 and row["ms_per_image"] > 0 for row in rows.values())
    assert rows["tflite int8"]["size_mb"] < 0.5 * rows["tflite fp32"]["size_mb"]


def test_evaluate_with_saved_model_gives_the_checkpoints_map(table, exported_demo_model, synthetic_val_dir):
    """`evaluate.py --saved_model` (the served signature, in this process) on the table's images."""
    _, rows = table
    served = run(EvalOptions(data=synthetic_val_dir, saved_model=os.path.join(exported_demo_model, "1"), split="val",
                             metrics=("voc07",), max_images=TABLE_IMAGES), stream=io.StringIO())
    assert served["speed"]["images"] == TABLE_IMAGES
    assert abs(served["voc07"]["mAP"] - rows["checkpoint (keras)"]["map"]) < 1e-3


def test_a_larger_drop_is_an_error():
    results = [FormResult("checkpoint (keras)", "w.h5", 1.0, 0.80, 5.0), FormResult("tflite int8", "m", 0.3, 0.70, 2.0,
                                                                                     drop=0.10),
               FormResult("saved_model", "1", 1.0, 0.80, 4.0, drop=0.0)]
    check_drops(results, 0.2)
    with pytest.raises(ValueError, match=r"tflite int8 loses 0.1000 \(> 0.01\)"):
        check_drops(results, 0.01)


def _detection_pixels(boxes_yxyx, height, width):
    """Normalized detections -> VOC pixel boxes, clipped to the image; a box under one pixel
    keeps min <= max (the VOC +1 convention would otherwise invert it)."""
    from refinedet_tf.data.box_conventions import normalized_to_voc_pixels

    pixels = normalized_to_voc_pixels(np.clip(boxes_yxyx, 0.0, 1.0), height, width)
    pixels[:, 2:] = np.maximum(pixels[:, 2:], pixels[:, :2])
    return pixels


def test_int8_keeps_95_percent_of_fp32_map(tiny_trained_model_dir, synthetic_val_dir, exported_demo_model):
    """VOC07 mAP of the int8 .tflite >= 95% of the float model's (the Keras model with
    `postprocess.detect`, which the fp32 .tflite equals: test_export_tflite.py's
    test_fp32_matches_the_keras_model). The int8 file is the session's export of the demo model
    (conftest.exported_demo_model: calibrated on the fixture's 16 training images, 500
    detections per image), run in ai-edge-litert."""
    pytest.importorskip("ai_edge_litert", reason="the TFLite tests run models in ai-edge-litert")
    from refinedet_tf.data import open_reader
    from refinedet_tf.data.box_conventions import normalized_to_voc_pixels
    from refinedet_tf.evaluation import VOCEvaluator

    model, config = load_model(tiny_trained_model_dir)
    # Evaluated on the fixture's 48 validation images.
    path = os.path.join(exported_demo_model, "tflite", "refinedet_int8.tflite")
    anchors = generate_anchors(config)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    def float_detect(images):
        x = tf.image.resize(tf.cast(images, tf.float32), [config.image_size] * 2, method="bilinear")
        return detect(model(preprocess_images(x, config), training=False), anchors, config,
                      max_detections=500)

    detectors = {
        "fp32": lambda image: {k: v.numpy() for k, v in float_detect(image[None]).items()},
        "int8": TFLiteDetector(path),
    }
    reader = open_reader(synthetic_val_dir, split="val", keep_empty=True)
    evaluators = {q: VOCEvaluator(reader.label_map.names, metrics=("voc07",)) for q in detectors}
    for example in reader:
        h, w = int(example["height"]), int(example["width"])
        for quantization, detector in detectors.items():
            evaluator = evaluators[quantization]
            evaluator.add_ground_truth(example["image_id"], normalized_to_voc_pixels(example["boxes"], h, w),
                                       example["classes"], example["difficult"])
            out = detector(example["image"])
            n = int(out["num_detections"][0])
            evaluator.add_detections(example["image_id"], _detection_pixels(out["detection_boxes"][0, :n], h, w),
                                     out["detection_scores"][0, :n], out["detection_classes"][0, :n].astype(int))
    fp32 = evaluators["fp32"].evaluate()["voc07"]["mAP"]
    int8 = evaluators["int8"].evaluate()["voc07"]["mAP"]
    print(f"VOC07 mAP: float {fp32:.4f}, int8 {int8:.4f} ({int8 / fp32:.1%})")
    assert fp32 > 0.1, f"the trained fixture model should detect something (float mAP {fp32:.3f})"
    assert int8 >= 0.95 * fp32, f"int8 mAP {int8:.4f} < 95% of float {fp32:.4f}"


def test_int8_network_is_integer_and_post_processing_float(exported_demo_model, tiny_trained_model_dir):
    """The int8 export is two files: the network with int8 weights (built-in ops only) and the
    float post-processing with its NMS; an int8 export without calibration images is refused."""
    pytest.importorskip("ai_edge_litert", reason="the TFLite tests run models in ai-edge-litert")
    folder = os.path.join(exported_demo_model, "tflite")
    network, postprocess = os.path.join(folder, "refinedet_int8.tflite"), os.path.join(folder, POSTPROCESS_FILE)
    for path in (network, postprocess):
        assert_builtin_only(path)
    conv_weights = conv_weight_types(network)
    assert conv_weights and set(conv_weights) == {"INT8"}
    assert "NON_MAX_SUPPRESSION_V5" in op_names(postprocess)
    assert os.path.getsize(network) < 0.35 * os.path.getsize(os.path.join(folder, "refinedet_fp32.tflite"))
    out = TFLiteDetector(network)(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8))
    assert out["detection_boxes"].shape == (1, 500, 4)
    n = int(out["num_detections"][0])
    assert set(out["detection_classes"][0, :n]) <= set(range(1, 7))
    model, config = load_model(tiny_trained_model_dir)
    with pytest.raises(ValueError, match="needs representative_images"):
        export_tflite(model, config, os.path.join(exported_demo_model, "unused"), "int8")
