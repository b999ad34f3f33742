"""RoI sampling and the RoI head's targets, batched.

What py-faster-rcnn's `lib/rpn/proposal_target_layer.py` (`_sample_rois`) and
simple-faster-rcnn-pytorch's `model/utils/creator_tool.py` (`ProposalTargetCreator`) do, per
image, on padded tensors:

1. Candidates = the image's valid proposals + its valid ground-truth boxes appended (both
   references append the gts, so every gt is a foreground sample when it is drawn).
2. Each candidate takes its best-IoU valid ground truth (first on ties). Foreground: IoU >=
   0.5, labelled with that box's class; background: IoU in [bg_low, 0.5), label 0; a candidate
   in neither range is never sampled.
3. At most round(0.25 * 128) = 32 foreground samples, then background up to 128 in all
   (`faster_rcnn.sampling.subsample`: seeded, or the first candidates by index without a seed).
4. Regression targets of the foreground samples: `encode_boxes(gt, roi)` divided by the stds
   (0.1, 0.1, 0.2, 0.2) (py-faster-rcnn's BBOX_NORMALIZE_STDS with BBOX_NORMALIZE_TARGETS_PRECOMPUTED,
   simple-faster-rcnn's loc_normalize_std; the means are 0), i.e. box_coding with those
   variances.

Shapes: B images, R proposals, G ground-truth rows (padded), S = num_samples output rows.
Boxes are yxyx pixels. Output rows: the sampled foreground (by candidate index), then the
sampled background (by candidate index), then padding. The references return fewer than S
rows when an image has too few candidates and normalize the loss by that count: here those
rows are padding with `valid` False, and the loss divides by the valid count.
"""

import numpy as np
import tensorflow as tf

from refinedet_tf import box_coding
from refinedet_tf.faster_rcnn.sampling import subsample
from refinedet_tf.matching import argmax_first

NUM_SAMPLES = 128  # cfg TRAIN.BATCH_SIZE per image (IMS_PER_BATCH 1); ProposalTargetCreator n_sample
FOREGROUND_FRACTION = 0.25  # cfg TRAIN.FG_FRACTION; pos_ratio
FOREGROUND_IOU = 0.5  # cfg TRAIN.FG_THRESH; pos_iou_thresh
BACKGROUND_IOU_HIGH = 0.5  # cfg TRAIN.BG_THRESH_HI; neg_iou_thresh_hi
# cfg TRAIN.BG_THRESH_LO is 0.1, but py-faster-rcnn's end2end and alt_opt configs set 0.0, as
# simple-faster-rcnn's neg_iou_thresh_lo does.
BACKGROUND_IOU_LOW = 0.0
BOX_STDS = (0.1, 0.1, 0.2, 0.2)  # (y, x, h, w): the box_coding variances of the head


def _check_shapes(rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid):
    if rois_yxyx_px.shape.rank != 3 or rois_yxyx_px.shape[-1] != 4:
        raise ValueError(f"expected rois_yxyx_px [B, R, 4], got {rois_yxyx_px.shape}")
    if rois_valid.shape.rank != 2:
        raise ValueError(f"expected rois_valid [B, R], got {rois_valid.shape}")
    if gt_boxes_yxyx_px.shape.rank != 3 or gt_boxes_yxyx_px.shape[-1] != 4:
        raise ValueError(f"expected gt_boxes_yxyx_px [B, G, 4], got {gt_boxes_yxyx_px.shape}")
    if gt_classes.shape.rank != 2:
        raise ValueError(f"expected gt_classes [B, G], got {gt_classes.shape}")
    if gt_valid.shape.rank != 2:
        raise ValueError(f"expected gt_valid [B, G], got {gt_valid.shape}")
    if not rois_yxyx_px.shape[:2].is_compatible_with(rois_valid.shape):
        raise ValueError(f"rois_valid {rois_valid.shape} does not match rois_yxyx_px {rois_yxyx_px.shape}")
    for name, tensor in (("gt_classes", gt_classes), ("gt_valid", gt_valid)):
        if not gt_boxes_yxyx_px.shape[:2].is_compatible_with(tensor.shape):
            raise ValueError(f"{name} {tensor.shape} does not match gt_boxes_yxyx_px {gt_boxes_yxyx_px.shape}")


def max_foreground(num_samples=NUM_SAMPLES, foreground_fraction=FOREGROUND_FRACTION):
    """The foreground cap per image: round(fraction * num_samples) (numpy's round, as both references)."""
    return int(np.round(foreground_fraction * num_samples))


def _checked_inputs(rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid):
    """The five inputs as tensors of the expected dtypes, their shapes checked."""
    rois_yxyx_px = tf.stop_gradient(tf.convert_to_tensor(rois_yxyx_px, tf.float32))
    rois_valid = tf.convert_to_tensor(rois_valid, tf.bool)
    gt_boxes_yxyx_px = tf.convert_to_tensor(gt_boxes_yxyx_px, tf.float32)
    gt_classes = tf.convert_to_tensor(gt_classes, tf.int32)
    gt_valid = tf.convert_to_tensor(gt_valid, tf.bool)
    _check_shapes(rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid)
    return rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid


def _candidates(rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_valid):
    """Step 1: [B, R + G, 4] boxes and [B, R + G] validity, the proposals then the gts appended
    (both references do this, so each gt can be a foreground sample of IoU 1 even when no
    proposal covers it)."""
    candidates = tf.concat([rois_yxyx_px, gt_boxes_yxyx_px], axis=1)
    if candidates.shape[1] is None:
        raise ValueError("rois_yxyx_px and gt_boxes_yxyx_px need static numbers of rows R and G")
    return candidates, tf.concat([rois_valid, gt_valid], axis=1)


def _at_least_one_gt_row(gt_boxes_yxyx_px, gt_classes, gt_valid):
    """No gt rows at all (G = 0): one padded row keeps the IoU's argmax and the gathers valid."""
    if gt_boxes_yxyx_px.shape[1] != 0:
        return gt_boxes_yxyx_px, gt_classes, gt_valid
    return (tf.pad(gt_boxes_yxyx_px, [[0, 0], [0, 1], [0, 0]]), tf.pad(gt_classes, [[0, 0], [0, 1]]),
            tf.pad(gt_valid, [[0, 0], [0, 1]]))


def _label_candidates(candidates_yxyx_px, candidate_valid, gt_boxes_yxyx_px, gt_valid, *, foreground_iou,
                      background_iou_high, background_iou_low):
    """Step 2: each candidate's best valid gt and its range.

    Args:
      candidates_yxyx_px: [B, N, 4]; candidate_valid: [B, N] bool.
      gt_boxes_yxyx_px: [B, G, 4] with G >= 1; gt_valid: [B, G] bool.
    Returns:
      matched [B, N] int32 index into G of the best-IoU valid gt (first on ties; meaningful on
      foreground), best_iou [B, N] float32 (0 in an image without a valid gt), foreground and
      background [B, N] bool candidates (disjoint; a candidate in neither range is in neither).
    """
    # Padded gts get IoU -1, below every real IoU.
    iou = box_coding.pairwise_iou(candidates_yxyx_px, gt_boxes_yxyx_px)  # [B, N, G]
    iou = tf.where(gt_valid[:, None, :], iou, -1.0)
    matched = argmax_first(iou, axis=2)  # [B, N]
    best_iou = tf.reduce_max(iou, axis=2)
    # An image without a valid gt: every candidate has IoU 0 with "nothing", i.e. background.
    has_gt = tf.reduce_any(gt_valid, axis=1)[:, None]
    best_iou = tf.where(has_gt, best_iou, 0.0)

    foreground = candidate_valid & (best_iou >= foreground_iou)
    background = (candidate_valid & (best_iou < background_iou_high)
                  & (best_iou >= background_iou_low) & ~foreground)
    return matched, best_iou, foreground, background


def _foreground_targets(rois_yxyx_px, foreground, matched, gt_boxes_yxyx_px, gt_classes, box_stds):
    """Step 4: labels [B, S] int32 (the matched gt's class on foreground, else 0) and box targets
    [B, S, 4] (foreground only, else 0) of rows [B, S, 4] with their `matched` [B, S] gt index."""
    labels = tf.where(foreground, tf.gather(gt_classes, matched, batch_dims=1), 0)
    # py-faster-rcnn's _get_bbox_regression_labels also leaves background rows 0;
    # simple-faster-rcnn encodes them against their best gt, and its loss weights them 0. Other
    # rows encode a unit box on itself, so that no NaN (a zero-size padded gt) is computed even in
    # the branch tf.where discards.
    unit_box = tf.constant([0.0, 0.0, 1.0, 1.0])
    matched_boxes = tf.where(foreground[..., None], tf.gather(gt_boxes_yxyx_px, matched, batch_dims=1), unit_box)
    safe_rois = tf.where(foreground[..., None], rois_yxyx_px, unit_box)
    # No epsilon inside the log: both references' encodings (bbox_transform, bbox2loc) have none,
    # and RefineDet's 1e-5 would move th, tw by up to 1e-4 after the division by 0.2.
    targets = box_coding.encode_boxes(matched_boxes, safe_rois, box_stds, size_epsilon=0.0)
    return labels, tf.where(foreground[..., None], targets, 0.0)


def sample_roi_targets(rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid, *,
                       num_samples=NUM_SAMPLES, foreground_fraction=FOREGROUND_FRACTION,
                       foreground_iou=FOREGROUND_IOU, background_iou_high=BACKGROUND_IOU_HIGH,
                       background_iou_low=BACKGROUND_IOU_LOW, box_stds=BOX_STDS, seed=None):
    """Samples each image's RoIs for the head and computes their class and box targets.

    Args:
      rois_yxyx_px: [B, R, 4] float32 proposals, yxyx pixels (`generate_proposals`' rois).
      rois_valid: [B, R] bool, True for real proposals (padding is never a candidate).
      gt_boxes_yxyx_px: [B, G, 4] float32 ground truth, yxyx pixels (same canvas as the rois).
      gt_classes: [B, G] int32 object classes 1..C-1 (0 is background).
      gt_valid: [B, G] bool, True for real boxes; padded rows are never candidates, never
        matched and never give a label. An image without valid boxes gets background only
        (its candidates count as IoU 0).
      num_samples: S, RoIs per image.
      foreground_fraction: at most round(foreground_fraction * S) foreground RoIs per image.
      foreground_iou: foreground has best IoU >= this.
      background_iou_high, background_iou_low: background has best IoU in [low, high).
      box_stds: 4 floats (y, x, h, w); the targets are the offsets divided by them.
      seed: int32 [2] for a reproducible random draw (`sampling.subsample`), or None for the
        first candidates by index (the golden fixtures' deterministic mode).
    Returns:
      dict of
        rois_yxyx_px: [B, S, 4] float32 sampled RoIs; 0 on padding rows.
        labels: [B, S] int32 class of the matched gt for foreground, 0 for background and padding.
        box_targets: [B, S, 4] float32 (ty, tx, th, tw) / box_stds of foreground RoIs to their gt;
          0 for background and padding.
        foreground: [B, S] bool.
        valid: [B, S] bool, the sampled rows (foreground and background).
        num_valid: [B] int32 (the loss normalizer: the reference's sample count).
        matched_gt: [B, S] int32 index into G of the best-IoU gt; -1 for background and padding.
        max_iou: [B, S] float32 best IoU with a valid gt (0 on padding).
        candidate_indices: [B, S] int32 index into the R proposals then G gts (R + g for gt g);
          -1 on padding.
    """
    rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid = _checked_inputs(
        rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid)
    num_samples = int(num_samples)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0.0 <= foreground_fraction <= 1.0:
        raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")

    candidates, candidate_valid = _candidates(rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_valid)  # [B, N]
    gt_boxes_yxyx_px, gt_classes, gt_valid = _at_least_one_gt_row(gt_boxes_yxyx_px, gt_classes, gt_valid)
    num_candidates = candidates.shape[1]
    if num_candidates < num_samples:  # fewer candidates than outputs: pad with invalid rows
        extra = num_samples - num_candidates
        candidates = tf.pad(candidates, [[0, 0], [0, extra], [0, 0]])
        candidate_valid = tf.pad(candidate_valid, [[0, 0], [0, extra]])
        num_candidates = num_samples

    matched, best_iou, foreground_candidates, background_candidates = _label_candidates(
        candidates, candidate_valid, gt_boxes_yxyx_px, gt_valid, foreground_iou=foreground_iou,
        background_iou_high=background_iou_high, background_iou_low=background_iou_low)

    # 3. Sampling. Foreground and background are disjoint, so one seed serves both draws: the
    # keys of disjoint entries are independent.
    foreground = subsample(foreground_candidates, max_foreground(num_samples, foreground_fraction), seed)
    num_foreground = tf.reduce_sum(tf.cast(foreground, tf.int32), axis=1)
    background = subsample(background_candidates, num_samples - num_foreground, seed)

    # Output order: foreground by candidate index, then background, then the rest (padding).
    index = tf.range(num_candidates)[None, :]
    order_key = tf.where(foreground, index, tf.where(background, num_candidates + index, 2 * num_candidates + index))
    _, rows = tf.math.top_k(-order_key, k=num_samples, sorted=True)  # [B, S] ascending keys

    def take(values):
        return tf.gather(values, rows, batch_dims=1)

    sample_foreground = take(foreground)
    return _targets_of_rows(take(candidates), sample_foreground, sample_foreground | take(background), take(matched),
                            take(best_iou), rows, gt_boxes_yxyx_px, gt_classes, box_stds)


def _targets_of_rows(rois_yxyx_px, foreground, valid, matched, best_iou, candidate_indices, gt_boxes_yxyx_px,
                     gt_classes, box_stds):
    """The output dict of `sample_roi_targets` / `all_roi_targets` from their chosen rows [B, S]:
    the RoIs, foreground and valid masks, matched gt, best IoU and candidate index of each row.
    Rows that are not valid become padding (zeros, label 0, matched_gt and index -1)."""
    rois = tf.where(valid[..., None], rois_yxyx_px, 0.0)
    labels, box_targets = _foreground_targets(rois, foreground, matched, gt_boxes_yxyx_px, gt_classes, box_stds)
    return {
        "rois_yxyx_px": rois,
        "labels": labels,
        "box_targets": box_targets,
        "foreground": foreground,
        "valid": valid,
        "num_valid": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
        "matched_gt": tf.where(foreground, matched, -1),
        "max_iou": tf.where(valid, best_iou, 0.0),
        "candidate_indices": tf.where(valid, candidate_indices, -1),
    }


def all_roi_targets(rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid, *,
                    foreground_iou=FOREGROUND_IOU, box_stds=BOX_STDS):
    """Every candidate of each image with its class and box targets, in candidate order (OHEM).

    OHEM's `_all_rois` (abhi2610/ohem `lib/roi_data_layer/minibatch.py`): no sampling; a
    candidate is foreground (best IoU >= foreground_iou, the matched gt's class) or background
    (label 0): the background range is [0, foreground_iou), OHEM asserts BG_THRESH_LO == 0.0.
    The same labelling and targets as `sample_roi_targets` (the shared steps 1, 2 and 4); what
    differs is the order: `sample_roi_targets(..., num_samples=R + G, foreground_fraction=1.0,
    background_iou_low=0.0, seed=None)` keeps the same rows but puts the foreground first.

    Args: as `sample_roi_targets`.
    Returns:
      the dict of `sample_roi_targets` with N = R + G rows, row n = candidate n (the proposals,
      then the gts): candidate_indices is n on valid rows, -1 on invalid ones (padded proposals
      and gts, and a candidate whose IoU is NaN, which is in no range); invalid rows hold 0,
      labels 0, matched_gt -1, as padding there.
    """
    rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid = _checked_inputs(
        rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid)
    candidates, candidate_valid = _candidates(rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_valid)  # [B, N]
    gt_boxes_yxyx_px, gt_classes, gt_valid = _at_least_one_gt_row(gt_boxes_yxyx_px, gt_classes, gt_valid)
    matched, best_iou, foreground, background = _label_candidates(
        candidates, candidate_valid, gt_boxes_yxyx_px, gt_valid, foreground_iou=foreground_iou,
        background_iou_high=foreground_iou, background_iou_low=0.0)
    index = tf.broadcast_to(tf.range(tf.shape(candidates)[1])[None, :], tf.shape(foreground))
    return _targets_of_rows(candidates, foreground, foreground | background, matched, best_iou, index,
                            gt_boxes_yxyx_px, gt_classes, box_stds)
