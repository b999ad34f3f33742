"""TFLite export: built-in ops only, runs in the stock LiteRT interpreter, matches the Keras
detections (fp32 exactly, fp16 closely); and the built-in class-aware NMS. The int8 file's
structure and accuracy are checked on the exported demo model (test_export_verify.py)."""

import contextlib
import io
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.checkpoints import load_model
from refinedet_tf.export import TFLiteDetector, calibration_images, export_tflite
from refinedet_tf.nms import class_aware_nms
from test_export_saved_model import MAX_DETECTIONS, assert_same_detections, keras_detections, make_checkpoint


@pytest.fixture(scope="module")
def litert():
    """Tests that run a .tflite use this: they run it in ai-edge-litert (an optional package),
    not in tf.lite's interpreter that make_interpreter falls back to. Export, the pure-TF NMS and
    calibration images need only TensorFlow and run without it."""
    pytest.importorskip("ai_edge_litert", reason="the TFLite tests run models in ai-edge-litert")


def analyze(path):
    """tf.lite's public report of a model (its ops with their tensors, each tensor's type) as text;
    the interpreter's op details are private."""
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        tf.lite.experimental.Analyzer.analyze(model_path=path)
    return report.getvalue()


def op_names(path):
    return set(re.findall(r"Op#\d+ (\w+)\(", analyze(path)))


def conv_weight_types(path):
    """The type of every CONV_2D's weight tensor (its second input), e.g. ["INT8", ...]."""
    text = analyze(path)
    types = dict(re.findall(r"^\s*(T#\d+)\(.*type:(\w+)", text, flags=re.MULTILINE))
    return [types[weights] for weights in re.findall(r"CONV_2D\(T#\d+, (T#\d+)", text)]


def assert_builtin_only(path):
    ops = op_names(path)
    assert not {op for op in ops if "FLEX" in op.upper() or "CUSTOM" in op.upper()}, ops
    # Keras variables must be frozen into constants, not kept as resource variables.
    assert not ops & {"VAR_HANDLE", "READ_VARIABLE"}, ops


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite")
    checkpoint = make_checkpoint(root / "model")
    model, config = load_model(checkpoint)
    from refinedet_tf.data.label_map import load_label_map

    label_map = load_label_map(os.path.join(checkpoint, "labelmap.pbtxt"))
    return {"root": root, "model": model, "config": config, "label_map": label_map}


@pytest.fixture(scope="module")
def test_images():
    rng = np.random.RandomState(5)
    return [rng.randint(0, 256, shape).astype(np.uint8) for shape in [(128, 128, 3), (90, 150, 3)]]


@pytest.fixture(scope="module")
def fp32_paths(small):
    """The fp32 export, made once for every test that reads it (in any order)."""
    return export_tflite(small["model"], small["config"], str(small["root"] / "fp32"), "fp32",
                         max_detections=MAX_DETECTIONS, label_map=small["label_map"])


@pytest.mark.usefixtures("litert")
def test_fp32_matches_the_keras_model(small, fp32_paths, test_images):
    paths = fp32_paths
    assert [os.path.basename(p) for p in paths] == ["refinedet_fp32.tflite"]
    assert_builtin_only(paths[0])
    assert "NON_MAX_SUPPRESSION_V5" in op_names(paths[0])
    detector = TFLiteDetector(paths[0])
    assert detector.class_names == ["background", "circle", "square", "star"]
    details = detector.interpreter.get_input_details()[0]
    assert list(details["shape"]) == [1, 128, 128, 3] and details["dtype"] == np.float32
    for image in test_images:
        ours = detector(image)
        reference = keras_detections(small["model"], small["config"], image[None])
        assert ours["num_detections"].dtype == np.float32
        assert_same_detections(ours, reference, box_atol=1e-3, score_atol=1e-4)
        assert reference["num_detections"][0] > 0


@pytest.mark.usefixtures("litert")
def test_fp16_is_close_to_the_keras_model(small, test_images):
    paths = export_tflite(small["model"], small["config"], str(small["root"] / "fp16"), "fp16",
                          max_detections=MAX_DETECTIONS, label_map=small["label_map"])
    assert_builtin_only(paths[0])
    fp32_size = 4 * small["model"].count_params()
    assert os.path.getsize(paths[0]) < 0.6 * fp32_size  # float16 weights
    detector = TFLiteDetector(paths[0])
    for image in test_images:
        ours = detector(image)
        reference = keras_detections(small["model"], small["config"], image[None])
        # float16 weights move scores by ~1e-3: compare the best detections, which are
        # separated by more than that.
        assert_same_detections(ours, reference, box_atol=1e-2, score_atol=5e-3, rows=3)


@pytest.mark.usefixtures("litert")
def test_detector_checks_its_input(fp32_paths):
    detector = TFLiteDetector(fp32_paths[0])
    with pytest.raises(ValueError, match=r"expected preprocessed images \[1, 128, 128, 3\]"):
        detector.run(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="expected one RGB image"):
        detector(np.zeros((2, 64, 64, 3), np.uint8))


# ------------------------------------------------------------------------------ NMS and data
def test_class_aware_nms_equals_combined_nms():
    """Boxes reaching outside [0, 1] (decoded boxes are not clipped), several classes, a
    per-class top-k smaller than the anchors, more survivors than max_detections."""
    rng = np.random.RandomState(0)
    num_anchors, num_classes = 600, 5
    centres = rng.uniform(-0.3, 1.3, (num_anchors, 2))
    sizes = rng.uniform(0.02, 0.6, (num_anchors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, (num_anchors, num_classes)).astype(np.float32) ** 3
    for top_k, max_det, iou in [(100, 50, 0.45), (600, 300, 0.3), (40, 100, 0.6)]:
        ours = class_aware_nms(tf.constant(boxes), tf.constant(scores), max_det, iou, 0.05, top_k)
        top_scores, top_index = tf.math.top_k(tf.transpose(scores), k=top_k)
        per_class_boxes = tf.transpose(tf.gather(boxes, top_index), [1, 0, 2])[None, :, :, :]
        expected = tf.image.combined_non_max_suppression(
            per_class_boxes, tf.transpose(top_scores)[None], top_k, max_det, iou, 0.05,
            pad_per_class=False, clip_boxes=False)
        n = int(expected.valid_detections[0])
        assert int(ours["num_detections"]) == n
        np.testing.assert_allclose(ours["detection_scores"][:n], expected.nmsed_scores[0, :n], atol=1e-6)
        np.testing.assert_allclose(ours["detection_boxes"][:n], expected.nmsed_boxes[0, :n], atol=1e-6)
        np.testing.assert_array_equal(ours["detection_classes"][:n], expected.nmsed_classes[0, :n] + 1)
        assert not np.any(ours["detection_boxes"][n:]) and not np.any(ours["detection_classes"][n:])


def test_calibration_images_from_a_voc_folder_and_an_image_folder(small, tmp_path):
    from refinedet_tf.data.synthetic import generate_voc_dataset

    voc = generate_voc_dataset(str(tmp_path / "voc"), num_train=3, num_val=2, image_size=64)
    config = small["config"]
    images = calibration_images(voc, config, num_images=4)
    assert len(images) == 4 and images[0].shape == (1, 128, 128, 3) and images[0].dtype == np.float32
    assert -1.0 <= images[0].min() and images[0].max() <= 1.0  # mobilenet's "tf" normalization
    assert len(calibration_images(voc, config, num_images=10, split="val")) == 2
    assert len(calibration_images(os.path.join(voc, "JPEGImages"), config, num_images=100)) == 5
    assert len(calibration_images(os.path.join(voc, "JPEGImages", "train_*.jpg"), config)) == 3
    with pytest.raises(ValueError, match="no calibration image"):
        calibration_images(str(tmp_path / "voc" / "JPEGImages" / "nothing_*.jpg"), config)


# ------------------------------------------------------------------------------- int8 quality
