"""Class-aware NMS made only of TFLite built-in ops (for the `.tflite` export).

`tf.image.combined_non_max_suppression` (what `postprocess.detect` uses) has no TFLite
built-in kernel. This module gives the same detections from ops that do: per class, the
`pre_nms_top_k` best anchors (TOPK_V2, GATHER); each class's boxes shifted by
`class_index * span` so that boxes of different classes can never overlap; then ONE greedy NMS
over all candidates (NON_MAX_SUPPRESSION_V5). Greedy NMS over the shifted boxes makes, for each
class, exactly the decisions of a per-class NMS (only boxes of the same class overlap), and it
emits survivors in descending score order, so its first `max_detections` survivors are the
`max_detections` best over the per-class results: `combined_non_max_suppression`'s answer
(up to the order of equal scores).

`span` is computed from the boxes (max coordinate - min coordinate + 1): decoded boxes are not
clipped and may reach outside [0, 1], so a fixed offset of 2 per class (enough for boxes inside
the image) is not always enough.
"""

import tensorflow as tf


def class_aware_nms(boxes_yxyx, scores, max_detections, iou_threshold, score_threshold,
                    pre_nms_top_k):
    """Class-aware greedy NMS of ONE image from built-in ops.

    Args:
      boxes_yxyx: [A, 4] float32 decoded boxes, normalized yxyx (any values, not clipped).
      scores: [A, C-1] float32 object-class scores (background column removed), column j is
        class j + 1. Scores <= score_threshold are never kept.
      max_detections: D, the number of output rows (keep_top_k).
      iou_threshold: a box is suppressed when its IoU with a kept box of its class is larger.
      score_threshold: boxes need a score > score_threshold.
      pre_nms_top_k: candidates per class before NMS (the reference's top_k).
    Returns:
      dict detection_boxes [D, 4] yxyx, detection_scores [D], detection_classes [D] int32
      (1..C-1), num_detections int32 scalar; rows past num_detections are zero.
    """
    num_anchors, num_object_classes = scores.shape[-2], scores.shape[-1]
    k = min(int(pre_nms_top_k), int(num_anchors))
    scores = tf.where(scores > score_threshold, scores, 0.0)
    top_scores, top_index = tf.math.top_k(tf.transpose(scores), k=k)  # [C-1, k]
    candidates = tf.gather(boxes_yxyx, tf.reshape(top_index, [-1]))  # [(C-1)*k, 4]
    candidate_scores = tf.reshape(top_scores, [-1])
    class_index = tf.repeat(tf.range(num_object_classes, dtype=tf.int32), k)  # [(C-1)*k]
    span = tf.reduce_max(candidates) - tf.reduce_min(candidates) + 1.0
    shifted = candidates + (tf.cast(class_index, tf.float32) * span)[:, None]
    selected, selected_scores, num_valid = tf.raw_ops.NonMaxSuppressionV5(
        boxes=shifted, scores=candidate_scores, max_output_size=int(max_detections),
        iou_threshold=float(iou_threshold), score_threshold=float(score_threshold),
        soft_nms_sigma=0.0, pad_to_max_output_size=True)
    valid = tf.range(int(max_detections)) < num_valid
    valid_f = tf.cast(valid, tf.float32)
    return {
        "detection_boxes": tf.gather(candidates, selected) * valid_f[:, None],
        "detection_scores": selected_scores * valid_f,
        "detection_classes": (tf.gather(class_index, selected) + 1) * tf.cast(valid, tf.int32),
        "num_detections": num_valid,
    }
