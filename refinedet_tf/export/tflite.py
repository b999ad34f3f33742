"""TFLite export (built-in ops only, runs in the stock LiteRT interpreter) and its runner.

Every `.tflite` here uses TFLite built-in ops only (no SELECT_TF_OPS / Flex), so it runs in
`ai_edge_litert.interpreter.Interpreter` as shipped.

Input (signature `serving_default`, input `images`): float32 [1, S, S, 3], S = the preset's
image_size, ALREADY resized and preprocessed: RGB pixels warp-resized to S x S (bilinear)
then normalized by `preprocess_images` (caffe_bgr: BGR minus the mean; tf: [-1, 1]).
`TFLiteDetector` does that for you (`resize_and_preprocess`, the SavedModel's own steps).
A float input keeps one interface for the three quantizations and keeps the normalization
(channel swap, mean) out of the quantized graph.

Outputs (the SavedModel's convention, batch 1): detection_boxes [1, M, 4] float32 normalized
yxyx, detection_scores [1, M], detection_classes [1, M] float32 label-map ids (0 in padding
rows), num_detections [1] float32.

Quantizations (`QUANTIZATIONS`):
  fp32  `refinedet_fp32.tflite`: network + decoding + class-aware NMS (`nms.detect_builtin`).
  fp16  `refinedet_fp16.tflite`: the same with float16 weights (computed in float32).
  int8  `refinedet_int8.tflite`: the NETWORK ONLY, full-integer int8 (TFLITE_BUILTINS_INT8,
        per-channel weights, activations calibrated on a representative set of preprocessed
        images; float32 in and out through QUANTIZE / DEQUANTIZE), followed by
        `refinedet_postprocess.tflite`: decoding + NMS in float32 on the dequantized head
        outputs. Post-processing stays in float because int8 softmax scores (steps of 1/256)
        tie and reorder detections, and int8 box arithmetic moves boxes; quantizing only the
        network keeps the VOC mAP (see tests/test_export_tflite.py). `TFLiteDetector` chains
        the two files.
The export folder also holds `config.json` (with the export's thresholds), `labelmap.txt` and
`labelmap.pbtxt` (`saved_model.write_model_files`).
"""

from __future__ import annotations

import glob
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from refinedet_tf import data as data_lib
from refinedet_tf.anchors import generate_anchors
from refinedet_tf.data.image_io import IMAGE_EXTENSIONS
from refinedet_tf.export.saved_model import (
    DEFAULT_MAX_DETECTIONS,
    export_config,
    label_ids_table,
    read_model_files,
    resize_and_preprocess,
    write_model_files,
)
from refinedet_tf.postprocess import detect_builtin

QUANTIZATIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "images"
HEAD_OUTPUTS = ("arm_loc", "arm_conf", "odm_loc", "odm_conf")
POSTPROCESS_FILE = "refinedet_postprocess.tflite"
DEFAULT_NUM_CALIBRATION = 100


def tflite_filename(quantization):
    return f"refinedet_{quantization}.tflite"


def export_tflite(model, config, output_dir, quantization="fp32", representative_images=None,
                  max_detections=DEFAULT_MAX_DETECTIONS, score_threshold=None, nms_iou=None,
                  label_map=None):
    """Converts the model to `output_dir/refinedet_<quantization>.tflite` (see module doc).

    Args:
      model, config: the Keras model and its RefineDetConfig.
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
    anchors = generate_anchors(config)
    label_ids = label_ids_table(config, label_map).astype(np.float32)
    size = config.image_size
    input_spec = tf.TensorSpec([1, size, size, 3], tf.float32, name=INPUT_NAME)

    def postprocess(outputs):
        result = detect_builtin(outputs, anchors, config)
        valid = tf.range(config.max_detections)[None, :] < result["num_detections"][:, None]
        classes = tf.gather(tf.constant(label_ids), result["detection_classes"])
        return {
            "detection_boxes": result["detection_boxes"],
            "detection_scores": result["detection_scores"],
            "detection_classes": tf.where(valid, classes, 0.0),
            "num_detections": tf.cast(result["num_detections"], tf.float32),
        }

    paths = []
    if quantization == "int8":
        if representative_images is None:
            raise ValueError("int8 quantization needs representative_images (calibration data)")

        def network(images):
            return dict(model(images, training=False))

        paths.append(_convert(model, network, input_spec, output_dir, quantization,
                              representative_images))
        num_anchors = len(anchors)
        head_specs = {
            name: tf.TensorSpec([1, num_anchors, channels], tf.float32, name=name)
            for name, channels in zip(HEAD_OUTPUTS, (4, 2, 4, config.num_classes))}
        paths.append(_convert_postprocess(postprocess, head_specs, output_dir))
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


def _convert_postprocess(postprocess, head_specs, output_dir):
    """The float decode + NMS model that follows the int8 network (no variables)."""
    module = tf.Module()
    module.fn = tf.function(lambda arm_loc, arm_conf, odm_loc, odm_conf: postprocess(
        {"arm_loc": arm_loc, "arm_conf": arm_conf, "odm_loc": odm_loc, "odm_conf": odm_conf}),
        input_signature=[head_specs[name] for name in HEAD_OUTPUTS])
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


# ---------------------------------------------------------------------------------------------
# Calibration data.


def calibration_images(path, config, num_images=DEFAULT_NUM_CALIBRATION, split=None,
                       label_map=None, on_bad_example="error", report_stream=None):
    """The first `num_images` images of a data set, preprocessed for the network.

    Args:
      path: a VOC folder, a COCO .json or TFRecord files (read with `refinedet_tf.data`), or a
        folder / glob of image files (.jpg, .jpeg, .png, .bmp, .gif; sorted by name).
      config: the RefineDetConfig (image size and normalization).
      split: VOC split (None: every annotated image).
      label_map: for readers that need one (VOC folders without labelmap.txt).
      on_bad_example: the data policy's choice for a data set (data/policy.py); the data set is
        read with the evaluation policy (only its images are used).
      report_stream: where the data set reader's report goes (None: not printed).
    Returns:
      a list of float32 [1, S, S, 3] arrays (warp-resized and normalized as the exported
      models expect). Raises ValueError when no image is found.
    """
    images = []
    for rgb in _iter_rgb_images(path, split, label_map, on_bad_example, report_stream):
        images.append(resize_and_preprocess(rgb[None], config).numpy())
        if len(images) >= num_images:
            break
    if not images:
        raise ValueError(f"no calibration image found in {path}")
    return images


def _iter_rgb_images(path, split, label_map, on_bad_example, report_stream):
    if any(c in path for c in "*?[") and not glob.glob(path):
        raise ValueError(f"no calibration image found in {path}: the pattern matches no file")
    files = _image_files(path)
    if files:
        for name in files:
            yield _decode_file(name)
        return
    reader = data_lib.open_reader(path, split=split, label_map=label_map, on_bad_example=on_bad_example,
                                  purpose="evaluate")
    if report_stream is not None:
        print(f"calibration data {path}:\n  " + reader.report.format(max_issues=10).replace("\n", "\n  "),
              file=report_stream)
    for example in reader.as_dataset():
        yield example["image"].numpy()


def _image_files(path):
    """Image files of a plain folder or a glob ([] for a data set path)."""
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "Annotations")):
            return []
        names = [os.path.join(path, n) for n in os.listdir(path)]
    elif any(c in path for c in "*?["):
        names = glob.glob(path)
    else:
        return []
    return sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(n))


def _decode_file(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise ValueError(f"{path}: cannot decode image: {e.message.split('[Op:')[0].strip()}") from None


# ---------------------------------------------------------------------------------------------
# Running.


def make_interpreter(model_path, num_threads=2):
    """LiteRT's interpreter (`ai-edge-litert`) when installed, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415  optional (export extra)
    except ImportError:
        Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
    interpreter = Interpreter(model_path=model_path, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


class TFLiteDetector:
    """Runs an exported `.tflite` (and, for int8, the post-processing model beside it).

    Args:
      path: the .tflite file; `config.json` and `labelmap.txt` are read from its folder.
      num_threads: interpreter threads.
    Attributes: config; class_names and label_ids, indexed by contiguous class id (0 =
    background): detection_classes holds label ids.
    """

    def __init__(self, path, num_threads=2):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
        folder = os.path.dirname(os.path.abspath(path))
        self.config, self.class_names, self.label_ids = read_model_files(folder)
        self.path = path
        self.interpreter = make_interpreter(path, num_threads)
        self._runner = self.interpreter.get_signature_runner()
        outputs = self.interpreter.get_signature_list()["serving_default"]["outputs"]
        self._post = None
        if set(outputs) == set(HEAD_OUTPUTS):
            post_path = os.path.join(folder, POSTPROCESS_FILE)
            if not os.path.isfile(post_path):
                raise FileNotFoundError(
                    f"{path} outputs the raw heads; its post-processing model {post_path} is missing")
            post = make_interpreter(post_path, num_threads)
            self._post = post.get_signature_runner()
            self._post_interpreter = post

    def run(self, images):
        """float32 [1, S, S, 3] preprocessed -> {output name: np.ndarray} (batch 1)."""
        images = np.asarray(images, np.float32)
        size = self.config.image_size
        if images.shape != (1, size, size, 3):
            raise ValueError(f"expected preprocessed images [1, {size}, {size}, 3], got {list(images.shape)}")
        outputs = self._runner(**{INPUT_NAME: images})
        if self._post is not None:
            outputs = self._post(**{name: outputs[name] for name in HEAD_OUTPUTS})
        return {k: np.asarray(v) for k, v in outputs.items()}

    def __call__(self, image_rgb):
        """uint8 [H, W, 3] (or [1, H, W, 3]) RGB -> outputs for that one image (batch 1)."""
        image = np.asarray(image_rgb)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[-1] != 3:
            raise ValueError(f"expected one RGB image [H, W, 3], got shape {list(np.shape(image_rgb))}")
        return self.run(resize_and_preprocess(image, self.config).numpy())
