"""TFLite export: built-in ops only, so that the stock LiteRT interpreter runs it.

Every `.tflite` here uses TFLite built-in ops only (no SELECT_TF_OPS / Flex), so it runs in
`ai_edge_litert.interpreter.Interpreter` as shipped; `tflite_detector.TFLiteDetector` runs it.

Input (signature `serving_default`, input `images`): float32 [1, S, S, 3], S = the preset's
image_size, ALREADY resized and preprocessed: RGB pixels warp-resized to S x S (bilinear)
then normalized by `preprocess_images` (caffe_bgr: BGR minus the mean; tf: [-1, 1]).
`TFLiteDetector` does that for you (`resize_and_preprocess`, the SavedModel's own steps).
A float input keeps one interface for the three quantizations and keeps the normalization
(channel swap, mean) out of the quantized graph.

Outputs: the served outputs of `contract.py` (batch 1): detection_boxes [1, D, 4] float32
normalized yxyx, detection_scores [1, D], detection_classes [1, D] float32 label-map ids (0 in
padding rows), num_detections [1] float32.

Quantizations (`QUANTIZATIONS`):
  fp32  `refinedet_fp32.tflite`: network + the architecture's `detect_builtin` (decoding and
        class-aware NMS from built-in ops).
  fp16  `refinedet_fp16.tflite`: the same with float16 weights (computed in float32).
  int8  `refinedet_int8.tflite`: the NETWORK ONLY, full-integer int8 (TFLITE_BUILTINS_INT8,
        per-channel weights, activations calibrated on a representative set of preprocessed
        images, e.g. `calibration.calibration_images`; float32 in and out through QUANTIZE /
        DEQUANTIZE), whose outputs are the model's raw outputs (its dict, names and shapes as
        the Keras model gives them), followed by `refinedet_postprocess.tflite`: decoding + NMS
        in float32 on those dequantized outputs. Post-processing stays in float because int8
        softmax scores (steps of 1/256) tie and reorder detections, and int8 box arithmetic
        moves boxes; quantizing only the network keeps the VOC mAP (see
        tests/test_export_tflite.py). `TFLiteDetector` chains the two files.
The export folder also holds `config.json` (with the export's thresholds), `labelmap.txt` and
`labelmap.pbtxt` (`model_files.write_model_files`).
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from refinedet_tf.architectures import architecture_for
from refinedet_tf.export.contract import DEFAULT_MAX_DETECTIONS, export_config, label_ids_table, served_outputs
from refinedet_tf.export.model_files import write_model_files

QUANTIZATIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "images"
POSTPROCESS_FILE = "refinedet_postprocess.tflite"


def tflite_filename(quantization):
    return f"refinedet_{quantization}.tflite"


def export_tflite(model, config, output_dir, quantization="fp32", representative_images=None,
                  max_detections=DEFAULT_MAX_DETECTIONS, score_threshold=None, nms_iou=None,
                  label_map=None):
    """Converts the model to `output_dir/refinedet_<quantization>.tflite` (see module doc).

    Args:
      model, config: the Keras model and its config (`architectures.architecture_for`).
      quantization: "fp32", "fp16" or "int8".
      representative_images: int8 only: an iterable (re-iterable, or a callable returning an
        iterator) of float32 [1, S, S, 3] preprocessed images, e.g. `calibration_images(...)`.
      max_detections, score_threshold, nms_iou: post-processing (None: the config's).
      label_map: optional LabelMap: detection_classes carry its ids; names go to labelmap.txt.
    Returns:
      list of the written .tflite paths (int8: the network and the post-processing model).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    config = export_config(config, max_detections, score_threshold, nms_iou)
    os.makedirs(output_dir, exist_ok=True)
    architecture = architecture_for(config)
    label_ids = label_ids_table(config, label_map)
    size = config.image_size
    input_spec = tf.TensorSpec([1, size, size, 3], tf.float32, name=INPUT_NAME)

    def postprocess(outputs):
        return served_outputs(architecture.detect_builtin(outputs), label_ids)

    paths = []
    if quantization == "int8":
        if representative_images is None:
            raise ValueError("int8 quantization needs representative_images (calibration data)")

        def network(images):
            return dict(model(images, training=False))

        paths.append(_convert(model, network, input_spec, output_dir, quantization,
                              representative_images))
        paths.append(_convert_postprocess(postprocess, _raw_output_specs(model, size), output_dir))
    else:

        def detect_fn(images):
            return postprocess(model(images, training=False))

        paths.append(_convert(model, detect_fn, input_spec, output_dir, quantization))
    write_model_files(output_dir, config, label_map)
    return paths


def _convert(model, fn, input_spec, output_dir, quantization, representative_images=None):
    """Keras model + tf function -> .tflite. Goes through a Keras `ExportArchive` SavedModel:
    converting a plain tf.function or tf.Module leaves Keras 3 variables as TFLite resource
    variables (unfrozen, READ_VARIABLE ops); the archive's SavedModel gets them frozen."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", fn, [input_spec])
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = _representative_dataset(representative_images)
        flatbuffer = converter.convert()
    path = os.path.join(output_dir, tflite_filename(quantization))
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path


def _raw_output_specs(model, size):
    """{name: float32 TensorSpec named `name`} of the model's raw outputs for one image.

    Names and shapes come from one call on a zero image, so the int8 network's outputs (what
    the post-processing model takes) are whatever dict the architecture's network returns.
    """
    outputs = model(tf.zeros([1, size, size, 3], tf.float32), training=False)
    if not isinstance(outputs, dict):
        raise TypeError(f"the int8 export needs a model that returns a dict of raw outputs, got "
                        f"{type(outputs).__name__}")
    return {name: tf.TensorSpec(value.shape, tf.float32, name=name) for name, value in outputs.items()}


def _convert_postprocess(postprocess, raw_specs, output_dir):
    """The float decode + NMS model that follows the int8 network (no variables); its inputs
    are named as the network's outputs (`raw_specs`, {name: TensorSpec})."""
    names = list(raw_specs)
    module = tf.Module()
    module.fn = tf.function(lambda *raw: postprocess(dict(zip(names, raw))),
                            input_signature=list(raw_specs.values()))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.fn.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    path = os.path.join(output_dir, POSTPROCESS_FILE)
    with open(path, "wb") as f:
        f.write(converter.convert())
    return path


def _representative_dataset(images):
    def generate():
        source = images() if callable(images) else images
        count = 0
        for image in source:
            image = np.asarray(image, np.float32)
            if image.ndim == 3:
                image = image[None]
            count += 1
            yield [image]
        if count == 0:
            raise ValueError("the calibration data holds no image")
    return generate
