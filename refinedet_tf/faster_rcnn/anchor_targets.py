"""RPN training targets: which anchors are object / background / ignored, and their offsets.

The rule of py-faster-rcnn's `lib/rpn/anchor_target_layer.py` and simple-faster-rcnn-pytorch's
`AnchorTargetCreator` (`model/utils/creator_tool.py`), batched over padded ground truth with no
loop over images, anchors or boxes:

1. Only anchors inside the image's valid area are labelled (`y1 >= 0, x1 >= 0, y2 <= H,
   x2 <= W` for the resized image's H, W from image_info, not the padded canvas: the
   simple-faster-rcnn test, used for both anchor geometries; py-faster-rcnn tests `x2 < W` on
   its inclusive pixel-index corners, so it also drops an anchor ending exactly at W).
   The others are ignored (-1) and get zero offsets, even when one is a box's best match.
2. Each inside anchor takes its best-IoU valid box (first on ties). Max IoU < 0.3 (strict):
   background (0).
3. Every inside anchor that reaches some valid box's best IoU, ties included, is object (1),
   overwriting background (RPN_CLOBBER_POSITIVES False).
4. Max IoU >= 0.7 (inclusive): object (1).
5. Per image, at most `positive_fraction * samples_per_image` objects are kept, then at most
   `samples_per_image - kept objects` backgrounds; the rest become -1.

Offsets (ty, tx, th, tw) are those of the reference's `bbox2loc` (no +1, no normalization),
computed for every inside anchor against its best box; the loss uses them where label is 1.

Padded ground-truth rows are never matched and never force positives. A valid box whose best
IoU over the inside anchors is 0 (one lying in the padding or on a border strip no anchor
reaches) forces nothing by default; in the references `np.where(iou == best_iou)` then makes
every inside anchor with IoU 0 to it positive, and `zero_best_iou_forces_positives=True`
reproduces that.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from refinedet_tf import box_coding
from refinedet_tf.faster_rcnn.sampling import subsample

# RPN targets are not normalized (neither reference scales them), and bbox2loc clamps the anchor's
# sides to the float32 eps before dividing.
RPN_VARIANCES = (1.0, 1.0, 1.0, 1.0)
BBOX2LOC_EPS = float(np.finfo(np.float32).eps)


class AnchorTargets(NamedTuple):
    """Per anchor, for a batch: A anchors, B images.

    labels: [B, A] int32, 1 object, 0 background, -1 ignored (outside, between the thresholds,
      or not sampled).
    loc_targets: [B, A, 4] float32 (ty, tx, th, tw) against `matched_gt`, in units of the
      anchor's size (not normalized); 0 for anchors outside the image or images without boxes.
    positive_mask: [B, A] bool, labels == 1 (where the regression loss counts).
    sampled_mask: [B, A] bool, labels >= 0 (where the classification loss counts, and what
      the references divide the regression loss by).
    inside_mask: [B, A] bool, anchors inside the image's valid area.
    matched_gt: [B, A] int32, the best-IoU valid box of each anchor (first on ties), -1 in an
      image without valid boxes.
    max_iou: [B, A] float32, that box's IoU (0 without valid boxes).
    forced_positive_mask: [B, A] bool, inside anchors reaching some box's best IoU (rule 3),
      before sampling.
    """

    labels: tf.Tensor
    loc_targets: tf.Tensor
    positive_mask: tf.Tensor
    sampled_mask: tf.Tensor
    inside_mask: tf.Tensor
    matched_gt: tf.Tensor
    max_iou: tf.Tensor
    forced_positive_mask: tf.Tensor


def anchor_targets(anchors_yxyx_px, gt_boxes_yxyx_px, gt_mask, image_info, *, positive_iou=0.7,
                   negative_iou=0.3, samples_per_image=256, positive_fraction=0.5, seed=None,
                   zero_best_iou_forces_positives=False):
    """RPN labels and regression targets for a batch.

    Args:
      anchors_yxyx_px: [A, 4] float32, yxyx pixels of the padded canvas (`grid_anchors`), the
        same for every image.
      gt_boxes_yxyx_px: [B, G, 4] float32, yxyx pixels, padded to G.
      gt_mask: [B, G] bool, True for real boxes.
      image_info: [B, 2] or [B, 3] float32, (height, width[, scale]) of each resized image
        inside the canvas (py-faster-rcnn's im_info); anchors must fit in (height, width).
      positive_iou: max IoU >= this is object (RPN_POSITIVE_OVERLAP 0.7).
      negative_iou: max IoU < this is background (RPN_NEGATIVE_OVERLAP 0.3).
      samples_per_image: labelled anchors kept per image (RPN_BATCHSIZE 256).
      positive_fraction: at most `int(positive_fraction * samples_per_image)` of them objects
        (RPN_FG_FRACTION 0.5).
      seed: int32 [2] for a reproducible random draw (`faster_rcnn.sampling.subsample`), or
        None to keep the first candidates by anchor index (deterministic; with
        samples_per_image >= 2 A nothing is dropped, the reference fixtures' setting).
      zero_best_iou_forces_positives: reproduce the references' quirk (module docstring).
    Returns:
      AnchorTargets.
    """
    anchors = tf.convert_to_tensor(anchors_yxyx_px, tf.float32)
    gt_boxes = tf.convert_to_tensor(gt_boxes_yxyx_px, tf.float32)
    gt_mask = tf.convert_to_tensor(gt_mask, tf.bool)
    image_info = tf.convert_to_tensor(image_info, tf.float32)
    if anchors.shape.rank != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"expected anchors_yxyx_px [A, 4], got {anchors.shape}")
    if gt_boxes.shape.rank != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"expected gt_boxes_yxyx_px [B, G, 4], got {gt_boxes.shape}")
    if gt_mask.shape.rank != 2:
        raise ValueError(f"expected gt_mask [B, G], got {gt_mask.shape}")
    if image_info.shape.rank != 2 or image_info.shape[-1] not in (2, 3):
        raise ValueError(f"expected image_info [B, 2] or [B, 3] (height, width[, scale]), got {image_info.shape}")
    if gt_boxes.shape[1] == 0:  # keeps the reductions over G defined: one padded row matches nothing
        gt_boxes = tf.zeros([tf.shape(gt_boxes)[0], 1, 4])
        gt_mask = tf.zeros([tf.shape(gt_boxes)[0], 1], tf.bool)
    batch = tf.shape(gt_boxes)[0]
    num_gt = tf.shape(gt_boxes)[1]

    height, width = image_info[:, 0:1], image_info[:, 1:2]  # [B, 1]
    y1, x1, y2, x2 = tf.unstack(anchors[None], axis=-1)  # [1, A]
    inside = (y1 >= 0.0) & (x1 >= 0.0) & (y2 <= height) & (x2 <= width)  # [B, A]

    # IoU in the references' order of operations (bit-identical to bbox_iou): [B, A, G].
    iou = box_coding.pairwise_iou(tf.broadcast_to(anchors[None], [batch, tf.shape(anchors)[0], 4]), gt_boxes)
    valid = gt_mask[:, None, :]
    iou_valid = tf.where(valid, iou, -1.0)  # pads below every real IoU: never anyone's best

    max_iou = tf.reduce_max(iou_valid, axis=2)  # [B, A]; -1 without valid boxes
    gt_index = tf.range(num_gt)[None, None, :]
    first_best = tf.reduce_min(tf.where(tf.equal(iou_valid, max_iou[..., None]), gt_index, num_gt), axis=2)
    has_gt = tf.reduce_any(gt_mask, axis=1, keepdims=True)  # [B, 1]
    matched_gt = tf.where(has_gt, first_best, -1)
    max_iou = tf.maximum(max_iou, 0.0)

    # Each valid box's best IoU over the inside anchors only (`_calc_ious` sees inside anchors).
    gt_best_iou = tf.reduce_max(tf.where(inside[..., None], iou_valid, -1.0), axis=1, keepdims=True)  # [B, 1, G]
    forcing = valid if zero_best_iou_forces_positives else valid & (gt_best_iou > 0.0)
    reaches_best = tf.equal(iou, gt_best_iou) & forcing
    forced = tf.reduce_any(reaches_best, axis=2) & inside  # [B, A]

    labels = tf.fill(tf.shape(inside), -1)
    labels = tf.where(inside & (max_iou < negative_iou), 0, labels)
    labels = tf.where(forced, 1, labels)
    labels = tf.where(inside & (max_iou >= positive_iou), 1, labels)

    max_positives = int(positive_fraction * samples_per_image)  # int() truncates, as the references
    positives = subsample(tf.equal(labels, 1), max_positives, seed=seed)
    num_positives = tf.reduce_sum(tf.cast(positives, tf.int32), axis=1)
    # Positives and negatives are disjoint candidate sets, so one seed draws them independently.
    negatives = subsample(tf.equal(labels, 0), samples_per_image - num_positives, seed=seed)
    labels = tf.where(positives, 1, tf.where(negatives, 0, -1))

    matched_boxes = tf.gather(gt_boxes, tf.maximum(matched_gt, 0), batch_dims=1)  # [B, A, 4]
    loc = box_coding.encode_boxes(matched_boxes, anchors[None], RPN_VARIANCES, size_epsilon=0.0,
                                  min_anchor_size=BBOX2LOC_EPS)
    # A zero-size box gives log(0) = -inf in the reference; a zero weight times inf is NaN in a
    # loss, so such entries become 0 here (they never occur for boxes with an area).
    keep = (inside & has_gt)[..., None] & tf.math.is_finite(loc)
    loc = tf.where(keep, loc, 0.0)

    return AnchorTargets(
        labels=labels, loc_targets=loc, positive_mask=positives, sampled_mask=positives | negatives,
        inside_mask=inside, matched_gt=matched_gt, max_iou=max_iou, forced_positive_mask=forced)
