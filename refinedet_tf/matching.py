"""Anchor-to-ground-truth matching (SSD's PER_PREDICTION matcher), batched.

Ground truth arrives padded: boxes [B, G, 4] with a validity mask [B, G], so a whole batch is
matched with one [B, G, A] IoU tensor and no loop over images or boxes.
"""

import tensorflow as tf

from refinedet_tf import box_coding

FORCED_MATCH_IOU = 2.0  # what the reference writes for bipartite matches (above any real IoU)


def argmax_first(x, axis):
    """argmax that returns the first index among ties (tf.argmax leaves ties unspecified)."""
    n = tf.shape(x)[axis]
    best = tf.reduce_max(x, axis=axis, keepdims=True)
    shape = [1] * x.shape.rank
    shape[axis] = -1
    iota = tf.reshape(tf.range(n), shape)
    return tf.reduce_min(tf.where(tf.equal(x, best), iota, n), axis=axis)


def match_anchors(anchors_yxyx, gt_boxes_yxyx, gt_mask, iou_threshold=0.5):
    """Assigns each anchor to a ground-truth box.

    1. Bipartite: every valid box takes its best-IoU anchor (first on ties), even below the
       threshold; when two boxes want the same anchor the later box wins, as in the reference.
    2. Every other anchor takes its best-IoU box and is positive if that IoU >= iou_threshold.

    Args:
      anchors_yxyx: [A, 4] or [B, A, 4] (per-image anchors, e.g. ARM-refined).
      gt_boxes_yxyx: [B, G, 4].
      gt_mask: [B, G] bool, True for real boxes (padding is never matched).
      iou_threshold: positives have IoU >= this (IoU == threshold is positive).
    Returns:
      matched_gt: [B, A] int32 index into G (meaningful only where `positive`),
      positive: [B, A] bool,
      match_iou: [B, A] float32, best IoU, FORCED_MATCH_IOU for bipartite matches,
        -1 where the image has no valid box.
    """
    anchors_yxyx = tf.convert_to_tensor(anchors_yxyx, tf.float32)
    gt_boxes_yxyx = tf.convert_to_tensor(gt_boxes_yxyx, tf.float32)
    gt_mask = tf.convert_to_tensor(gt_mask, tf.bool)
    batch = tf.shape(gt_boxes_yxyx)[0]
    if anchors_yxyx.shape.rank == 2:
        anchors_yxyx = tf.broadcast_to(anchors_yxyx[None], [batch, tf.shape(anchors_yxyx)[0], 4])
    iou = box_coding.pairwise_iou(gt_boxes_yxyx, anchors_yxyx)  # [B, G, A]
    # A diverged ARM can refine anchors into NaN; such an anchor matches nothing (the loss then
    # turns NaN and training stops with a clear message) instead of producing an invalid index.
    iou = tf.where(tf.math.is_nan(iou), 0.0, iou)
    iou = tf.where(gt_mask[:, :, None], iou, -1.0)
    num_gt = tf.shape(iou)[1]
    num_anchors = tf.shape(iou)[2]

    best_anchor = argmax_first(iou, axis=2)  # [B, G]
    best_gt = argmax_first(iou, axis=1)  # [B, A]
    best_gt_iou = tf.reduce_max(iou, axis=1) if iou.shape[1] != 0 else tf.fill([batch, num_anchors], -1.0)

    gt_index = tf.range(num_gt)[None, :, None]
    claims = tf.logical_and(
        tf.equal(best_anchor[:, :, None], tf.range(num_anchors)[None, None, :]), gt_mask[:, :, None])
    forced_gt = tf.reduce_max(tf.where(claims, gt_index, -1), axis=1)  # later box wins
    forced = forced_gt >= 0
    matched_gt = tf.where(forced, forced_gt, best_gt)
    match_iou = tf.where(forced, FORCED_MATCH_IOU, best_gt_iou)
    positive = match_iou >= iou_threshold
    return matched_gt, positive, match_iou


def assign_targets(anchors_yxyx, gt_boxes_yxyx, gt_classes, gt_mask, variances, iou_threshold=0.5):
    """Regression and classification targets of one stage.

    Args:
      anchors_yxyx: [A, 4] or [B, A, 4] anchors the targets are encoded against.
      gt_boxes_yxyx: [B, G, 4]; gt_classes: [B, G] int32 (1..C-1); gt_mask: [B, G] bool.
      variances: 4 floats (cy, cx, h, w).
    Returns:
      loc_targets [B, A, 4] (ty, tx, th, tw); class_targets [B, A] int32 (0 = background);
      positive [B, A] bool.
    """
    anchors_yxyx = tf.convert_to_tensor(anchors_yxyx, tf.float32)
    gt_boxes_yxyx = tf.convert_to_tensor(gt_boxes_yxyx, tf.float32)
    gt_classes = tf.convert_to_tensor(gt_classes, tf.int32)
    matched_gt, positive, _ = match_anchors(anchors_yxyx, gt_boxes_yxyx, gt_mask, iou_threshold)
    matched_boxes = tf.gather(gt_boxes_yxyx, matched_gt, batch_dims=1)
    matched_classes = tf.gather(gt_classes, matched_gt, batch_dims=1)
    if anchors_yxyx.shape.rank == 2:
        anchors_yxyx = anchors_yxyx[None]
    loc_targets = box_coding.encode_boxes(matched_boxes, anchors_yxyx, variances)
    class_targets = tf.where(positive, matched_classes, 0)
    return loc_targets, class_targets, positive
