"""The proposal layer: RPN outputs -> a fixed number of RoIs per image, batched.

Order of operations (py-faster-rcnn `lib/rpn/proposal_layer.py`, simple-faster-rcnn-pytorch
`model/utils/creator_tool.py` `ProposalCreator`): decode the RPN offsets on the anchors, clip to
the image, drop boxes smaller than `min_size * scale`, sort by object probability, keep the
pre-NMS top N, greedy NMS, keep the post-NMS top N. simple-faster-rcnn's arithmetic is used
(no `+1`: clip to [0, H] x [0, W], keep `y2 - y1 >= 16 * scale`); the reference's IoU > 0.7
suppression rule is kept exactly (see `_strictly_above`).

Shapes: B images, A anchors (flattened (y, x, a), the order of the RPN outputs), P = post-NMS
top N. Boxes are yxyx in pixels of the resized, padded canvas.

Proposals carry no gradient (the references compute them in numpy / a Caffe layer without
backward): the inputs are wrapped in `tf.stop_gradient`.
"""

import numpy as np
import tensorflow as tf

from refinedet_tf import box_coding

# py-faster-rcnn cfg TRAIN/TEST.RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N (= simple-faster-rcnn's
# ProposalCreator n_train_pre_nms ... n_test_post_nms).
TRAIN_PRE_NMS_TOP_N = 12000
TRAIN_POST_NMS_TOP_N = 2000
TEST_PRE_NMS_TOP_N = 6000
TEST_POST_NMS_TOP_N = 300
NMS_IOU_THRESHOLD = 0.7
MIN_SIZE = 16.0  # cfg RPN_MIN_SIZE, in pixels of the original image (times the resize scale)
# RPN offsets are decoded with unit variances: the RPN regresses raw (ty, tx, th, tw).
RPN_VARIANCES = (1.0, 1.0, 1.0, 1.0)

# Boxes removed by the size filter get this score: below every real score and below the NMS
# score threshold (`_NMS_SCORE_THRESHOLD`), so neither the top-k nor the NMS can pick them ahead
# of a kept box, and NMS never selects them at all.
_DROPPED_SCORE = float("-inf")
_NMS_SCORE_THRESHOLD = float(np.finfo(np.float32).min)


def _strictly_above(threshold):
    """The float32 threshold t' such that `iou >= t'` <=> `iou > threshold` for float32 IoUs.

    torchvision's NMS (what simple-faster-rcnn calls) and `tf.image.non_max_suppression`
    suppress a box when IoU > threshold; `tf.image.non_max_suppression_padded` suppresses when
    IoU >= threshold. Comparing float32 IoUs against the smallest float32 above the threshold
    (the double the reference compares with) makes the padded op decide exactly like the
    references, also at IoU == threshold.
    """
    t = np.float32(threshold)
    if float(t) <= float(threshold):
        t = np.nextafter(t, np.float32(np.inf))
    return float(t)


def proposal_counts(training):
    """(pre_nms_top_n, post_nms_top_n) of the references: 12000/2000 training, 6000/300 test."""
    if training:
        return TRAIN_PRE_NMS_TOP_N, TRAIN_POST_NMS_TOP_N
    return TEST_PRE_NMS_TOP_N, TEST_POST_NMS_TOP_N


def _check_shapes(rpn_offsets, rpn_object_scores, anchors_yxyx_px, image_info):
    if rpn_offsets.shape.rank != 3 or rpn_offsets.shape[-1] != 4:
        raise ValueError(f"expected rpn_offsets [B, A, 4], got {rpn_offsets.shape}")
    if rpn_object_scores.shape.rank != 2:
        raise ValueError(f"expected rpn_object_scores [B, A], got {rpn_object_scores.shape}")
    if anchors_yxyx_px.shape.rank not in (2, 3) or anchors_yxyx_px.shape[-1] != 4:
        raise ValueError(f"expected anchors_yxyx_px [A, 4] or [B, A, 4], got {anchors_yxyx_px.shape}")
    if image_info.shape.rank != 2 or image_info.shape[-1] != 3:
        raise ValueError(f"expected image_info [B, 3] (height, width, scale), got {image_info.shape}")
    num_anchors = {rpn_offsets.shape[1], rpn_object_scores.shape[1], anchors_yxyx_px.shape[-2]} - {None}
    if len(num_anchors) > 1:
        raise ValueError(
            f"rpn_offsets {rpn_offsets.shape}, rpn_object_scores {rpn_object_scores.shape} and "
            f"anchors_yxyx_px {anchors_yxyx_px.shape} disagree on the number of anchors A")


def clipped_boxes_and_scores(rpn_offsets, rpn_object_scores, anchors_yxyx_px, image_info, *, min_size=MIN_SIZE):
    """The proposal layer's steps before the sort: decode, clip to the image, size filter.

    Args: as `generate_proposals`.
    Returns:
      boxes: [B, A, 4] float32 decoded boxes clipped to [0, height] x [0, width], yxyx pixels.
      scores: [B, A] float32, the object probability of the boxes the size filter keeps and
        -inf for the others (below every score and below the NMS score threshold).
    """
    if not min_size > 0:
        # tf.image.non_max_suppression_padded treats a box whose coordinates are all <= 0 as
        # "not selected": a positive minimum size keeps every surviving box's ymax above 0.
        raise ValueError(f"min_size must be > 0, got {min_size}")
    rpn_offsets = tf.stop_gradient(tf.convert_to_tensor(rpn_offsets, tf.float32))
    rpn_object_scores = tf.stop_gradient(tf.convert_to_tensor(rpn_object_scores, tf.float32))
    anchors_yxyx_px = tf.convert_to_tensor(anchors_yxyx_px, tf.float32)
    image_info = tf.convert_to_tensor(image_info, tf.float32)
    _check_shapes(rpn_offsets, rpn_object_scores, anchors_yxyx_px, image_info)
    if anchors_yxyx_px.shape.rank == 2:
        anchors_yxyx_px = anchors_yxyx_px[None]
    # The shared decode clamps th, tw at +-log(1000/16) before exp; the references do not (a box
    # would grow more than 62.5x its anchor, and overflow to inf past th ~ 88).
    boxes = box_coding.decode_boxes(rpn_offsets, anchors_yxyx_px, RPN_VARIANCES)  # [B, A, 4]

    # Clip to the image's valid area, not the padded canvas (simple-faster-rcnn clips y to
    # [0, H], x to [0, W]; py-faster-rcnn's [0, H - 1] belongs to its +1 convention).
    height = image_info[:, 0, None]
    width = image_info[:, 1, None]
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    ymin = tf.clip_by_value(ymin, 0.0, height)
    ymax = tf.clip_by_value(ymax, 0.0, height)
    xmin = tf.clip_by_value(xmin, 0.0, width)
    xmax = tf.clip_by_value(xmax, 0.0, width)
    boxes = tf.stack([ymin, xmin, ymax, xmax], axis=-1)

    # Size filter before the top-k, as both references do. A box over the padding collapses to
    # zero size at the clip and is removed here.
    min_size_px = min_size * image_info[:, 2, None]
    kept = (ymax - ymin >= min_size_px) & (xmax - xmin >= min_size_px)
    scores = tf.where(kept, rpn_object_scores, _DROPPED_SCORE)
    return boxes, scores


def generate_proposals(rpn_offsets, rpn_object_scores, anchors_yxyx_px, image_info, *, training,
                       pre_nms_top_n=None, post_nms_top_n=None, nms_iou_threshold=NMS_IOU_THRESHOLD,
                       min_size=MIN_SIZE):
    """RoIs of a batch from the RPN's outputs: decode, clip, size filter, top-k, NMS, top-k.

    Args:
      rpn_offsets: [B, A, 4] float32 RPN regression (ty, tx, th, tw), unit variances.
      rpn_object_scores: [B, A] float32 object probability (softmax's object column) of each
        anchor; higher first.
      anchors_yxyx_px: [A, 4] (shared) or [B, A, 4] float32 anchors, yxyx pixels.
      image_info: [B, 3] float32 (height, width, scale) per image: the valid (resized, unpadded)
        size in pixels and the resize scale (py-faster-rcnn's `im_info`). Boxes are clipped to
        [0, height] x [0, width]; the size filter keeps boxes with height and width
        >= min_size * scale.
      training: Python bool; chooses the reference's counts (12000/2000 when True, 6000/300
        when False) unless `pre_nms_top_n` / `post_nms_top_n` are given.
      pre_nms_top_n: int, boxes kept by score before NMS (capped at A).
      post_nms_top_n: int P, the number of output rows.
      nms_iou_threshold: a box is suppressed when its IoU with a kept, higher-scored box is
        > this (strictly; IoU == threshold survives, as in torchvision and TF).
      min_size: float, the size filter in original-image pixels (multiplied by the scale).
    Returns:
      dict of
        rois_yxyx_px: [B, P, 4] float32, descending score; rows past num_valid are 0.
        scores: [B, P] float32 object probability of each RoI; 0 past num_valid.
        anchor_indices: [B, P] int32 the anchor each RoI was decoded from; 0 past num_valid.
        valid: [B, P] bool, the first num_valid rows of each image.
        num_valid: [B] int32, at most P (NMS and the size filter can leave fewer).
    """
    default_pre, default_post = proposal_counts(training)
    pre_nms_top_n = default_pre if pre_nms_top_n is None else int(pre_nms_top_n)
    post_nms_top_n = default_post if post_nms_top_n is None else int(post_nms_top_n)
    if pre_nms_top_n < 1 or post_nms_top_n < 1:
        raise ValueError(f"pre_nms_top_n and post_nms_top_n must be >= 1, got {pre_nms_top_n}, {post_nms_top_n}")
    boxes, scores = clipped_boxes_and_scores(rpn_offsets, rpn_object_scores, anchors_yxyx_px, image_info,
                                             min_size=min_size)

    # top_k is a stable descending sort (equal scores: lower anchor index first), the order
    # torchvision's NMS uses for ties.
    if scores.shape[1] is None:
        raise ValueError("generate_proposals needs a static number of anchors A")
    k = min(pre_nms_top_n, int(scores.shape[1]))
    top_scores, top_index = tf.math.top_k(scores, k=k, sorted=True)  # [B, k]
    top_boxes = tf.gather(boxes, top_index, batch_dims=1)  # [B, k, 4]

    # One NMS for the whole batch (compiles with XLA; no loop over images). Dropped boxes score
    # below the threshold: the op zeroes them and never selects them. Caveat of the op (TF 2.21
    # `_self_suppression`): it iterates within a tile of 512 boxes while the float32 sum of the
    # tile's IoUs drops by more than the threshold, so a step that removes a single IoU within
    # float rounding (~1e-4 for a sum in the hundreds) of the threshold can end the iteration
    # early and differ from greedy NMS; no such case occurs in the fixtures.
    selected, num_valid = tf.image.non_max_suppression_padded(
        top_boxes, top_scores, max_output_size=post_nms_top_n,
        iou_threshold=_strictly_above(nms_iou_threshold), score_threshold=_NMS_SCORE_THRESHOLD,
        pad_to_max_output_size=True, sorted_input=True, canonicalized_coordinates=True)
    valid = tf.range(post_nms_top_n)[None, :] < num_valid[:, None]  # [B, P]
    rois = tf.where(valid[..., None], tf.gather(top_boxes, selected, batch_dims=1), 0.0)
    roi_scores = tf.where(valid, tf.gather(top_scores, selected, batch_dims=1), 0.0)
    anchor_indices = tf.where(valid, tf.gather(top_index, selected, batch_dims=1), 0)
    return {
        "rois_yxyx_px": rois,
        "scores": roi_scores,
        "anchor_indices": anchor_indices,
        "valid": valid,
        "num_valid": num_valid,
    }
