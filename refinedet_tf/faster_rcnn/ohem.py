"""Online hard example mining (OHEM) for the Faster R-CNN RoI head, batched.

OHEM (Shrivastava et al., CVPR 2016; abhi2610/ohem, seed 001) replaces the head's random RoI
sampling: the head first runs on ALL RoIs of each image without gradient (the read-only pass),
every RoI gets its loss, and only the RoIs with the largest losses are trained (the trainable
pass, the same weights, gradient on). The steps here, on padded tensors:

1. `all_roi_targets` (`roi_targets.py`): the candidates are all RoIs of each image, the proposals
   then the gts appended, each foreground (best IoU >= 0.5, the matched gt's class) or
   background (IoU in [0, 0.5), label 0), in candidate order: OHEM's `_all_rois`, which asserts
   BG_THRESH_LO == 0.0.
2. `per_roi_losses`: each RoI's classification loss plus, for foreground, the smooth L1 (sigma 1)
   of its own class's 4 offsets; invalid rows get -inf.
3. `diversity_nms` (optional, `nms_iou` of `select_hard_examples`): per image and per label, greedy
   NMS over the RoI boxes scored by their loss; a suppressed RoI is never selected.
4. `select_hard_examples`: the `num_selected` largest losses of the whole minibatch (all images
   together), or of each image (`per_image=True`).
5. `gather_selected`: the selected rows as [B, K, ...] with a validity mask, for the trainable
   pass and `losses.roi_cls_loss` / `roi_loc_loss` + `normalize`.

The seed's choices and ours:
- Loss of a RoI: the seed's -log(max(p_label, eps)) with numpy's float64 eps (2.2e-16) on the
  float32 softmax, i.e. the cross entropy capped at -log(eps) = 36.04. Ours by default: the
  cross entropy from the logits (`losses.per_roi_cls_loss`: log-sum-exp minus the logit), the
  exact value the trainable pass minimizes, never capped: the RoIs whose true class has a
  probability below 2.2e-16 are ranked by how wrong they are instead of tying at 36.04 (nothing
  else changes). `probability_floor=SEED_PROBABILITY_FLOOR` gives the seed's capped value.
  Box term: the seed's `w_out * smoothL1(w_in * (pred - target))` with inside weights (1, 1, 1, 1)
  on foreground, i.e. `losses.per_roi_loc_loss`; background rows have none.
- Diversity NMS: the seed's `nms` (py-faster-rcnn, +1 pixel areas) per image and per label, off in
  S1's alternating training (OHEM_USE_NMS False) and on at 0.7 in the OHEM repo. Ours is exact
  greedy NMS with the library's IoU (`box_coding.pairwise_iou`, no +1, as the proposal layer),
  suppressing IoU > threshold, equal losses ranked by lower index (see `diversity_nms` for why
  not `tf.image.non_max_suppression_padded`).
- Selection: the seed sorts the minibatch's losses with `np.argsort(loss)[::-1]` and keeps
  min(#RoIs, BATCH_SIZE); ours breaks ties by lower flat index (image-major: b * N + n) and keeps
  at most the valid, not suppressed count. The seed's configurations: S1 (alternating training,
  IMS_PER_BATCH 2, BATCH_SIZE 128) selects 128 over both images: `per_image=False`; the OHEM repo
  (IMS_PER_BATCH 1, BATCH_SIZE 64, solver iter_size 2) selects 64 in each image and averages the
  two images' normalized losses: `per_image=True`, num_selected 64.
- Normalization: SoftmaxWithLoss averages over the selected RoIs and SmoothL1Loss divides by
  their count: `losses.normalize(terms, per_image=False)` on the gathered rows for the
  whole-minibatch selection (one count over the minibatch), `per_image=True` for the per-image
  one.

Shapes: B images, N = R + G candidate rows per image, C classes (column 0 background), K =
num_selected rows per image after the gather (whole-minibatch selection can give one image all
of them). Boxes are yxyx pixels.

One training step (the head is `model.get_layer("roi_head")`, `head.py`):

    targets = all_roi_targets(rois_yxyx_px, rois_valid, gt_boxes_yxyx_px, gt_classes, gt_valid)
    readonly = head([features, targets["rois_yxyx_px"], targets["valid"]], training=True)
    loss = per_roi_losses(readonly["roi_logits"], readonly["roi_loc"], targets["labels"],
                          targets["box_targets"], targets["valid"])
    hard = select_hard_examples(loss, targets["rois_yxyx_px"], targets["labels"], targets["valid"],
                                num_selected=128)
    rois, labels, box_targets, valid = gather_selected(
        hard, targets["rois_yxyx_px"], targets["labels"], targets["box_targets"], num_selected=128)
    out = head([features, rois, valid], training=True)
    losses.normalize({"roi_cls": losses.roi_cls_loss(out["roi_logits"], labels, valid),
                      "roi_loc": losses.roi_loc_loss(out["roi_loc"], box_targets, labels, valid)},
                     per_image=False)

(S1's read-only branch keeps dropout, hence training=True in the read-only pass too.)
"""

import numpy as np
import tensorflow as tf

from refinedet_tf import box_coding
from refinedet_tf.faster_rcnn import losses
from refinedet_tf.faster_rcnn.roi_targets import all_roi_targets

__all__ = ["all_roi_targets", "per_roi_losses", "diversity_nms", "select_hard_examples", "gather_selected"]

NMS_IOU = 0.7  # the OHEM repo's cfg TRAIN.OHEM_NMS_THRESH (OHEM_USE_NMS True there, False in S1)
# The seed's eps: np.finfo(float).eps, float64's 2.2e-16, applied to float32 probabilities.
SEED_PROBABILITY_FLOOR = float(np.finfo(np.float64).eps)
# What `per_roi_losses` writes on invalid rows: below every loss, so a row could never win a
# ranking even without its mask (the functions here use the masks as well).
INVALID_LOSS = float("-inf")
# Eligible rows rank at or above this, ineligible ones at -inf: strictly below.
_LOWEST = float(np.finfo(np.float32).min)


def per_roi_losses(roi_logits, roi_loc, labels, box_targets, valid, sigma=losses.ROI_SIGMA,
                   probability_floor=None):
    """Each RoI's loss in the read-only pass (no gradient flows through it).

    Args:
      roi_logits: [B, N, C] class logits (column 0 background).
      roi_loc: [B, N, C, 4] (or [B, N, C * 4]) class-specific offsets, in the normalized space of
        the targets.
      labels: [B, N] int in 0..C-1 where valid (0 = background).
      box_targets: [B, N, 4] normalized targets (used on foreground only).
      valid: [B, N] bool.
      sigma: smooth L1 sigma (1, the seed's and the head loss's).
      probability_floor: None: the cross entropy from the logits, uncapped (the default, the value
        the trainable pass minimizes); a float eps: -log(max(p_label, eps)), the seed's with
        SEED_PROBABILITY_FLOOR, i.e. the cross entropy capped at -log(eps).
    Returns:
      [B, N] float32: cross entropy + (foreground only) the smooth L1 summed over the label's own
      4 offsets; INVALID_LOSS (-inf) where not valid.
    """
    roi_logits = tf.stop_gradient(tf.convert_to_tensor(roi_logits))
    roi_loc = tf.stop_gradient(tf.convert_to_tensor(roi_loc))
    valid = tf.convert_to_tensor(valid, tf.bool)
    cross_entropy = losses.per_roi_cls_loss(roi_logits, labels, valid)
    if probability_floor is not None:
        # -log(max(p, eps)) = min(-log p, -log eps): -log is decreasing.
        cross_entropy = tf.minimum(cross_entropy, float(-np.log(probability_floor)))
    box = losses.per_roi_loc_loss(roi_loc, tf.stop_gradient(box_targets), labels, valid, sigma)
    return tf.where(valid, cross_entropy + box, INVALID_LOSS)


def _ranking_key(per_roi_loss):
    """[B, N] float32 loss -> ranking key: NaN (a diverged head) ranks above everything, so it
    reaches the trained loss and shows, instead of being silently skipped."""
    per_roi_loss = tf.convert_to_tensor(per_roi_loss, tf.float32)
    return tf.where(tf.math.is_nan(per_roi_loss), float("inf"), per_roi_loss)


def diversity_nms(per_roi_loss, rois_yxyx_px, labels, valid, iou_threshold=NMS_IOU):
    """Greedy NMS per image and per label over the RoI boxes scored by their loss.

    A RoI is suppressed when a kept RoI of the same image and label ranks before it (larger loss;
    equal losses: lower index) and their IoU is > iou_threshold (strictly: the seed's
    `ovr <= thresh` keeps equality). Invalid rows neither suppress nor are kept.

    Exact greedy NMS as a fixed point: with S[i, j] = "i ranks before j, same label, IoU >
    threshold", greedy keeps j iff no kept i has S[i, j]. Iterating kept <- valid & ~any_i(kept[i]
    & S[i, j]) from kept = valid fixes one more RoI of the ranking per step at least (the first
    RoI depends on nothing, the (k+1)-th only on the first k), so it reaches greedy's unique
    answer within N steps and stops at the first step that changes nothing (a fixed point, hence
    greedy's); suppression chains are short, a few steps in practice. Not
    `tf.image.non_max_suppression_padded`: it suppresses IoU >= threshold, treats a box with all
    coordinates <= 0 as not selected, stops its in-tile iteration on a float32 sum that can end
    it early (see `proposals.generate_proposals`), and per-label NMS would need one NMS per
    label (C times the work) or class-offset boxes (rounds the coordinates, hence the IoUs).
    Cost: B * N * N IoUs and booleans (N = 2100: 4.4M per image) per step.

    Args:
      per_roi_loss: [B, N] float32 (any real; NaN ranks first, as in `select_hard_examples`).
      rois_yxyx_px: [B, N, 4] float32.
      labels: [B, N] int.
      valid: [B, N] bool.
      iou_threshold: float.
    Returns:
      [B, N] bool: the valid RoIs NMS keeps.
    """
    key = _ranking_key(per_roi_loss)
    rois_yxyx_px = tf.convert_to_tensor(rois_yxyx_px, tf.float32)
    labels = tf.convert_to_tensor(labels)
    valid = tf.convert_to_tensor(valid, tf.bool)
    num_rois = rois_yxyx_px.shape[1]
    if num_rois is None:
        raise ValueError("diversity_nms needs a static number of rows N")
    index = tf.range(num_rois)
    ranks_before = ((key[:, :, None] > key[:, None, :])
                    | ((key[:, :, None] == key[:, None, :]) & (index[:, None] < index[None, :])))  # [B, i, j]
    suppresses = (ranks_before & (labels[:, :, None] == labels[:, None, :])
                  & valid[:, :, None] & valid[:, None, :]
                  & (box_coding.pairwise_iou(rois_yxyx_px, rois_yxyx_px) > iou_threshold))

    def step(kept, _):
        new = valid & ~tf.reduce_any(kept[:, :, None] & suppresses, axis=1)
        return new, tf.reduce_any(new != kept)

    kept, _ = tf.while_loop(lambda _, changed: changed, step, (valid, tf.constant(True)),
                            maximum_iterations=num_rois + 1)
    return kept


def _top_k_mask(key, eligible, k):
    """bool [M, L]: the k largest keys among the eligible entries of each row (equal keys: lower
    index first); at most the eligible count."""
    key = tf.where(eligible, tf.maximum(key, _LOWEST), float("-inf"))  # eligible strictly above the rest
    order = tf.argsort(key, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # position of each entry in that order
    return eligible & (rank < k)


def select_hard_examples(per_roi_loss, rois_yxyx_px, labels, valid, *, num_selected, per_image=False,
                         nms_iou=None):
    """The hard RoIs: the largest losses of the minibatch (or of each image).

    Args:
      per_roi_loss: [B, N] float32 (`per_roi_losses`; any real, NaN ranks first).
      rois_yxyx_px: [B, N, 4] float32 (used by the NMS only).
      labels: [B, N] int (used by the NMS only).
      valid: [B, N] bool; invalid rows are never selected.
      num_selected: K, the number of RoIs to select: over all B images together (the seed's
        BATCH_SIZE over its minibatch), or in each image when per_image.
      per_image: False: the top K of the B * N rows; True: the top K of each image.
      nms_iou: None (no NMS, S1's setting) or the IoU threshold of `diversity_nms` (the OHEM
        repo's NMS_IOU 0.7); suppressed RoIs are not eligible.
    Returns:
      [B, N] bool: the selected RoIs; min(K, eligible count) of the minibatch (or of each image).
      Equal losses: lower flat index b * N + n first.
    """
    key = _ranking_key(per_roi_loss)
    valid = tf.convert_to_tensor(valid, tf.bool)
    num_selected = int(num_selected)
    if num_selected < 1:
        raise ValueError(f"num_selected must be >= 1, got {num_selected}")
    eligible = valid if nms_iou is None else diversity_nms(key, rois_yxyx_px, labels, valid, nms_iou)
    if per_image:
        return _top_k_mask(key, eligible, num_selected)
    shape = tf.shape(key)
    flat = _top_k_mask(tf.reshape(key, [1, -1]), tf.reshape(eligible, [1, -1]), num_selected)
    return tf.reshape(flat, shape)


def gather_selected(mask, *tensors, num_selected):
    """The selected rows of each image, padded to a fixed size, for the trainable pass.

    Args:
      mask: [B, N] bool, e.g. `select_hard_examples`' (at most num_selected True per image; more:
        the first num_selected by index).
      *tensors: [B, N, ...] tensors (rois, labels, box targets, ...).
      num_selected: K, rows per image: the `num_selected` of `select_hard_examples` (whole
        minibatch: one image may get all K; per image: K each).
    Returns:
      tuple (*gathered, valid): each tensor's selected rows [B, K, ...] in row order, then
      zeros (False for bool); valid [B, K] bool, True on the selected rows.
    """
    mask = tf.convert_to_tensor(mask, tf.bool)
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    num_rows = mask.shape[1]
    num_selected = int(num_selected)
    if num_rows is None:
        raise ValueError("gather_selected needs a static number of rows N")
    if num_rows < num_selected:  # fewer rows than outputs: pad with unselected rows
        extra = num_selected - num_rows
        mask = tf.pad(mask, [[0, 0], [0, extra]])
        tensors = [tf.pad(t, [[0, 0], [0, extra]] + [[0, 0]] * (t.shape.rank - 2)) for t in tensors]
        num_rows = num_selected
    index = tf.range(num_rows)[None, :]
    order_key = tf.where(mask, index, num_rows + index)  # selected rows first, each by index
    _, rows = tf.math.top_k(-order_key, k=num_selected, sorted=True)  # [B, K]
    valid = tf.gather(mask, rows, batch_dims=1)
    gathered = []
    for tensor in tensors:  # a handful of tensors, not images or RoIs
        values = tf.gather(tensor, rows, batch_dims=1)
        keep = valid[(...,) + (None,) * (values.shape.rank - 2)]
        gathered.append(tf.where(keep, values, tf.zeros_like(values)))
    return (*gathered, valid)
