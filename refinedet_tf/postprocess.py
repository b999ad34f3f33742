"""Two-step decoding and non-maximum suppression (the reference's DetectionOutput).

`decode` is pure tensor arithmetic (no data-dependent shapes) and compiles with XLA; `detect` adds
`tf.image.combined_non_max_suppression`, which XLA does not compile (call it outside
`jit_compile`, or let `tf.function` place it). `detect_builtin` gives the same detections from
TFLite built-in ops (`nms.class_aware_nms`), for the TFLite and ONNX exports.
"""

import tensorflow as tf

from refinedet_tf import box_coding
from refinedet_tf.nms import class_aware_nms


def decode(outputs, anchors_yxyx, config):
    """Refined anchors, final boxes and ARM-filtered class scores.

    refined = decode(arm_loc, anchors); boxes = decode(odm_loc, refined) (never clipped);
    scores = softmax(odm_conf), set to 0 for every class where the ARM object probability is
    <= config.objectness_threshold (negative-anchor filtering at test time).

    Args:
      outputs: dict arm_loc [B, A, 4], arm_conf [B, A, 2], odm_loc [B, A, 4], odm_conf [B, A, C].
      anchors_yxyx: [A, 4].
    Returns:
      dict refined_anchors [B, A, 4] yxyx, boxes [B, A, 4] yxyx, scores [B, A, C] (column 0 =
      background).
    """

    def f32(name):
        return tf.cast(outputs[name], tf.float32)

    anchors = tf.convert_to_tensor(anchors_yxyx, tf.float32)[None]
    refined = box_coding.decode_boxes(f32("arm_loc"), anchors, config.variances)
    boxes = box_coding.decode_boxes(f32("odm_loc"), refined, config.variances)
    objectness = tf.nn.softmax(f32("arm_conf"), axis=-1)[..., 1:2]
    scores = tf.nn.softmax(f32("odm_conf"), axis=-1)
    scores = tf.where(objectness <= config.objectness_threshold, 0.0, scores)
    return {"refined_anchors": refined, "boxes": boxes, "scores": scores}


def select_top_k_per_class(boxes_yxyx, scores, top_k):
    """Per class, the `top_k` highest-scoring anchors (the reference's pre-NMS top_k).

    Args:
      boxes_yxyx: [B, A, 4]; scores: [B, A, C-1] (object classes only).
    Returns:
      boxes [B, k, C-1, 4] and scores [B, k, C-1], k = min(top_k, A): candidate j of class c is
      boxes[:, j, c], as `combined_non_max_suppression` expects for per-class boxes.
    """
    k = min(top_k, boxes_yxyx.shape[1])
    top_scores, top_index = tf.math.top_k(tf.transpose(scores, [0, 2, 1]), k=k)  # [B, C-1, k]
    top_boxes = tf.gather(boxes_yxyx, top_index, batch_dims=1)  # [B, C-1, k, 4]
    return tf.transpose(top_boxes, [0, 2, 1, 3]), tf.transpose(top_scores, [0, 2, 1])


def detect(outputs, anchors_yxyx, config, max_detections=None, score_threshold=None, nms_iou=None):
    """Final detections: decode, per-class top-k, class-wise NMS, best `max_detections` per image.

    Per class: scores > score_threshold, the `config.pre_nms_top_k` best, greedy NMS that
    suppresses IoU > nms_iou; then the `max_detections` (keep_top_k) best over all classes.

    Returns:
      dict detection_boxes [B, D, 4] yxyx, detection_scores [B, D], detection_classes [B, D]
      int32 (1..C-1), num_detections [B] int32; D = max_detections, rows past num_detections
      are zero.
    """
    max_detections = config.max_detections if max_detections is None else max_detections
    score_threshold = config.score_threshold if score_threshold is None else score_threshold
    nms_iou = config.nms_iou if nms_iou is None else nms_iou
    decoded = decode(outputs, anchors_yxyx, config)
    object_scores = decoded["scores"][..., 1:]
    # The reference keeps scores strictly above the threshold; zeroing the rest makes that exact
    # whatever comparison the NMS kernel uses.
    object_scores = tf.where(object_scores > score_threshold, object_scores, 0.0)
    boxes, scores = select_top_k_per_class(decoded["boxes"], object_scores, config.pre_nms_top_k)
    nmsed = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=boxes.shape[1], max_total_size=max_detections,
        iou_threshold=nms_iou, score_threshold=score_threshold, pad_per_class=False,
        clip_boxes=False)
    num = nmsed.valid_detections
    valid = tf.range(max_detections)[None, :] < num[:, None]
    return {
        "detection_boxes": nmsed.nmsed_boxes,
        "detection_scores": nmsed.nmsed_scores,
        "detection_classes": tf.where(valid, tf.cast(nmsed.nmsed_classes, tf.int32) + 1, 0),
        "num_detections": num,
    }


def detect_builtin(outputs, anchors_yxyx, config, max_detections=None, score_threshold=None,
                   nms_iou=None):
    """`postprocess.detect` from TFLite built-in ops (and ops tf2onnx converts).

    A batch whose static size is 1 (the TFLite export) runs `class_aware_nms` once; any other
    batch maps it over the images (`tf.map_fn`, an ONNX Loop).

    Args:
      outputs: dict arm_loc [B, A, 4], arm_conf [B, A, 2], odm_loc [B, A, 4], odm_conf [B, A, C].
      anchors_yxyx: [A, 4]. Thresholds default to the config's, as in `detect`.
    Returns:
      dict detection_boxes [B, D, 4] yxyx, detection_scores [B, D], detection_classes [B, D]
      int32 (1..C-1, 0 in padding rows), num_detections [B] int32.
    """
    max_detections = config.max_detections if max_detections is None else max_detections
    score_threshold = config.score_threshold if score_threshold is None else score_threshold
    nms_iou = config.nms_iou if nms_iou is None else nms_iou
    decoded = decode(outputs, anchors_yxyx, config)

    def one_image(boxes, scores):
        return class_aware_nms(boxes, scores[:, 1:], max_detections, nms_iou, score_threshold,
                               config.pre_nms_top_k)

    if decoded["boxes"].shape[0] == 1:
        result = one_image(decoded["boxes"][0], decoded["scores"][0])
        return {name: value[None] for name, value in result.items()}
    names = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
    mapped = tf.map_fn(
        lambda args: tuple(one_image(*args)[name] for name in names),
        (decoded["boxes"], decoded["scores"]),
        fn_output_signature=(tf.float32, tf.float32, tf.int32, tf.int32))
    return dict(zip(names, mapped))
