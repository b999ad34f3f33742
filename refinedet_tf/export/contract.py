"""The served contract: what every exported form (SavedModel, TFLite, ONNX) takes and gives.

Input: RGB pixels, warp-resized to the preset's S x S and normalized by `resize_and_preprocess`
(inside the SavedModel and ONNX graphs; before the TFLite model, in `TFLiteDetector`).

Outputs (`served_outputs`), the TF Object Detection API's:
  detection_boxes   [N, D, 4] float32 normalized [ymin, xmin, ymax, xmax]
  detection_scores  [N, D] float32
  detection_classes [N, D] float32 label-map ids (background is never a detection; padding
                    rows are 0)
  num_detections    [N] float32
  D = max_detections; rows past num_detections are zero.

The detections come from the architecture (`architectures.architecture_for(config)`), so the
exporters never name one.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from refinedet_tf.preprocessing import preprocess_images

INPUT_NAME = "input_tensor"
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
RAW_SCORES = "raw_detection_scores"
DEFAULT_MAX_DETECTIONS = 100


def resize_and_preprocess(images, config):
    """Warp resize to the preset size and normalize: what every exported signature does.

    Args:
      images: [N, H, W, 3] RGB in [0, 255], uint8 or float.
    Returns:
      float32 [N, S, S, 3] model input, S = config.image_size (bilinear without antialiasing
      then clipped to [0, 255], as the evaluation pipeline's `augment.resize_image`).
    """
    size = config.image_size
    resized = tf.image.resize(tf.cast(images, tf.float32), [size, size], method="bilinear",
                              antialias=False)
    return preprocess_images(tf.clip_by_value(resized, 0.0, 255.0), config)


def export_config(config, max_detections=None, score_threshold=None, nms_iou=None):
    """The config with the export's post-processing thresholds (None keeps the config's).

    Every export form and predict.py start here; a config whose input is not the warp resize of
    `resize_and_preprocess` (Faster R-CNN's keep-aspect canvas with image_info) is refused here.
    """
    if config.resize_mode != "stretch":
        raise NotImplementedError(
            f"{config.name} cannot be exported or served yet: its input is a keep-aspect canvas with image_info, "
            "which the serving signatures do not build yet (evaluate.py --checkpoint evaluates it)")
    changes = {}
    if max_detections is not None:
        changes["max_detections"] = int(max_detections)
    if score_threshold is not None:
        changes["score_threshold"] = float(score_threshold)
    if nms_iou is not None:
        changes["nms_iou"] = float(nms_iou)
    return dataclasses.replace(config, **changes)


def label_ids_table(config, label_map=None):
    """[C] int32: label-map id of each contiguous class id (entry 0, background, is 0)."""
    if label_map is None:
        return np.arange(config.num_classes, dtype=np.int32)
    if label_map.num_classes != config.num_classes:
        raise ValueError(
            f"the label map has {label_map.num_classes - 1} classes but the model "
            f"{config.name!r} has num_classes={config.num_classes} (= {config.num_classes - 1} "
            "classes + background)")
    return np.asarray(label_map.dataset_ids, np.int32)


def served_outputs(detections, label_ids):
    """An architecture's detections -> the served outputs (OUTPUT_NAMES, see the module doc).

    Args:
      detections: `Architecture.detect` / `detect_builtin` output: detection_boxes [N, D, 4]
        normalized yxyx, detection_scores [N, D], detection_classes [N, D] int32 contiguous
        class ids, num_detections [N] int32; D static.
      label_ids: [C] NumPy label-map id of each contiguous class id (`label_ids_table`).
    Returns:
      dict of OUTPUT_NAMES, all float32; detection_classes hold label-map ids, 0 past
      num_detections.
    """
    # The table becomes a constant of the traced graph, not a captured tensor: tf2onnx would
    # make a captured tensor a second input of the ONNX model.
    table = tf.constant(np.asarray(label_ids, np.float32))
    classes = detections["detection_classes"]
    valid = tf.range(classes.shape[1])[None, :] < detections["num_detections"][:, None]
    return {
        "detection_boxes": detections["detection_boxes"],
        "detection_scores": detections["detection_scores"],
        "detection_classes": tf.where(valid, tf.gather(table, classes), 0.0),
        "num_detections": tf.cast(detections["num_detections"], tf.float32),
    }
