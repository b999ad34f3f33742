"""ARM and ODM multibox losses (smooth L1 + softmax cross-entropy) with sample selection.

Selection (`config.mining`):
  "hard_negative": positives plus the highest-loss negatives, neg_pos_ratio per positive per
                   image (SSD/RefineDet default);
  "ohem":          online hard example mining (Shrivastava et al., CVPR 2016): per image the top
                   `ohem_examples_per_image` anchors by their own total loss (cls + loc), with
                   optional NMS over those anchors' boxes for diversity;
  "focal":         softmax focal loss over every eligible anchor (no sampling).
Negative-anchor filtering (ODM only; theta = config.objectness_threshold): anchors whose ARM
object probability is <= theta are removed from the ODM's positives and, with
`negative_filtering="caffe"` (the paper), from its negatives too; "pytorch" keeps them as
negative candidates with their matched label, as RefineDet.PyTorch does.

Every loss is a sum over the batch divided by the number of positives of its stage (at least 1,
so a batch without objects gives a finite loss; the reference divides by 0 there).
"""

import tensorflow as tf

from refinedet_tf import box_coding, matching


def _smooth_l1(x):
    """Huber with delta 1 per element: 0.5 x^2 for |x| < 1, |x| - 0.5 otherwise."""
    ax = tf.abs(x)
    return tf.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def _cross_entropy(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def _hard_negatives(mining_loss, candidates, num_pos, neg_pos_ratio):
    """Per image, the min(ratio * num_pos, #candidates) candidates with the highest loss.

    Ranking by a double argsort, so the whole batch is selected at once.
    """
    score = tf.where(candidates, mining_loss, -1.0)  # losses are >= 0
    order = tf.argsort(score, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1, stable=True)
    num_candidates = tf.reduce_sum(tf.cast(candidates, tf.int32), axis=1, keepdims=True)
    num_neg = tf.minimum(neg_pos_ratio * num_pos[:, None], num_candidates)
    return tf.logical_and(rank < num_neg, candidates)


def _ohem(example_loss, eligible, anchors_yxyx, config):
    """Top-N eligible anchors per image by their total loss; optional NMS for diversity."""
    n = min(config.ohem_examples_per_image, example_loss.shape[1] or config.ohem_examples_per_image)
    score = tf.where(eligible, example_loss, -1.0)
    if config.ohem_nms_iou > 0.0:
        boxes = tf.broadcast_to(anchors_yxyx, tf.concat([tf.shape(score), [4]], 0))
        keep, _ = tf.image.non_max_suppression_padded(
            boxes, score, max_output_size=n, iou_threshold=config.ohem_nms_iou,
            score_threshold=0.0, pad_to_max_output_size=True)
        valid = keep >= 0
        keep = tf.where(valid, keep, 0)
    else:
        _, keep = tf.math.top_k(score, k=n)
        valid = tf.gather(score, keep, batch_dims=1) >= 0.0
    selected = tf.reduce_any(
        tf.logical_and(tf.equal(keep[:, :, None], tf.range(tf.shape(score)[1])[None, None, :]),
                       valid[:, :, None]), axis=1)
    return tf.logical_and(selected, eligible)


def _focal(logits, labels, positive, alpha, gamma):
    log_p = tf.nn.log_softmax(logits, axis=-1)
    log_pt = tf.gather(log_p, labels, batch_dims=2)
    pt = tf.exp(log_pt)
    alpha_t = tf.where(positive, alpha, 1.0 - alpha)
    return -alpha_t * tf.pow(1.0 - pt, gamma) * log_pt


def multibox_loss_terms(loc_pred, conf_logits, loc_targets, class_targets, positive, negative_candidates,
                        anchors_yxyx, config):
    """Unnormalized losses of one stage.

    Args:
      loc_pred, loc_targets: [B, A, 4] (ty, tx, th, tw).
      conf_logits: [B, A, C]; class_targets: [B, A] int32 (label used for every selected anchor).
      positive: [B, A] bool; negative_candidates: [B, A] bool (anchors allowed as negatives).
      anchors_yxyx: [A, 4] or [B, A, 4] the stage's anchors (OHEM's NMS boxes).
    Returns:
      dict loc (sum), conf (sum), num_pos (int32 scalar: the normalizer), and the masks
      `positive`, `negative` [B, A] actually trained.
    """
    # Only positives' regression counts; zeroing the rest BEFORE the loss keeps a non-finite
    # target of an unused anchor (a collapsed refined anchor) from turning the gradient NaN
    # (tf.where's backward multiplies the unselected branch's gradient by 0, and 0 * NaN = NaN).
    diff = tf.where(positive[..., None], loc_pred - loc_targets, 0.0)
    loc_per_anchor = tf.reduce_sum(_smooth_l1(diff), axis=-1)
    ce = _cross_entropy(conf_logits, class_targets)
    if config.mining == "hard_negative":
        num_pos_per_image = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)
        mining_loss = tf.stop_gradient(tf.where(positive, 0.0, ce))
        negative = _hard_negatives(mining_loss, negative_candidates, num_pos_per_image, config.neg_pos_ratio)
        conf_per_anchor = ce
    elif config.mining == "ohem":
        eligible = tf.logical_or(positive, negative_candidates)
        example_loss = tf.stop_gradient(ce + tf.where(positive, loc_per_anchor, 0.0))
        selected = _ohem(example_loss, eligible, anchors_yxyx, config)
        positive = tf.logical_and(positive, selected)
        negative = tf.logical_and(selected, tf.logical_not(positive))
        conf_per_anchor = ce
    else:  # focal
        negative = tf.logical_and(negative_candidates, tf.logical_not(positive))
        conf_per_anchor = _focal(conf_logits, class_targets, positive, config.focal_alpha, config.focal_gamma)
    trained = tf.logical_or(positive, negative)
    return {
        "loc": tf.reduce_sum(tf.where(positive, loc_per_anchor, 0.0)),
        "conf": tf.reduce_sum(tf.where(trained, conf_per_anchor, 0.0)),
        "num_pos": tf.reduce_sum(tf.cast(positive, tf.int32)),
        "positive": positive,
        "negative": negative,
    }


def _check_ground_truth(gt_boxes_yxyx, gt_classes, gt_mask, num_classes):
    """Static checks always; value checks as graph asserts.

    XLA drops Assert ops, so under `jit_compile=True` only the static checks run; the input
    pipeline validates every box before batching.
    """
    gt_boxes_yxyx = tf.convert_to_tensor(gt_boxes_yxyx)
    gt_classes = tf.convert_to_tensor(gt_classes)
    gt_mask = tf.convert_to_tensor(gt_mask)
    if gt_boxes_yxyx.shape.rank != 3 or gt_boxes_yxyx.shape[-1] != 4:
        raise ValueError(f"expected gt_boxes_yxyx [B, G, 4], got shape {gt_boxes_yxyx.shape}")
    if not gt_boxes_yxyx.dtype.is_floating:
        raise TypeError(f"expected gt_boxes_yxyx float32, got {gt_boxes_yxyx.dtype.name}")
    if gt_classes.shape.rank != 2:
        raise ValueError(f"expected gt_classes [B, G], got shape {gt_classes.shape}")
    if not gt_classes.dtype.is_integer:
        raise TypeError(f"expected gt_classes int32, got {gt_classes.dtype.name}")
    if gt_mask.shape.rank != 2 or gt_mask.dtype != tf.bool:
        raise ValueError(f"expected gt_mask [B, G] bool, got {gt_mask.dtype.name} {gt_mask.shape}")
    if not (gt_boxes_yxyx.shape[:2].is_compatible_with(gt_classes.shape)
            and gt_classes.shape.is_compatible_with(gt_mask.shape)):
        raise ValueError(
            f"gt_boxes_yxyx {gt_boxes_yxyx.shape}, gt_classes {gt_classes.shape} and gt_mask "
            f"{gt_mask.shape} must agree on [B, G]")
    boxes = tf.cast(gt_boxes_yxyx, tf.float32)
    classes = tf.cast(gt_classes, tf.int32)
    padding = tf.logical_not(gt_mask)

    def all_valid(ok):
        return tf.reduce_all(tf.logical_or(ok, padding))

    checks = [
        tf.debugging.Assert(
            all_valid(tf.reduce_all(tf.math.is_finite(boxes), axis=-1)),
            ["gt_boxes_yxyx has NaN or Inf in a valid box"]),
        tf.debugging.Assert(
            all_valid(tf.reduce_all(boxes[..., 2:] >= boxes[..., :2], axis=-1)),
            ["gt_boxes_yxyx has a valid box with ymax < ymin or xmax < xmin"]),
        tf.debugging.Assert(
            all_valid(tf.logical_and(classes >= 1, classes < num_classes)),
            [f"gt_classes of a valid box must be in 1..{num_classes - 1} (0 is background)"]),
    ]
    with tf.control_dependencies(checks):
        boxes = tf.identity(boxes)
    # Degenerate (zero-area) boxes can match no anchor except by the forced bipartite rule,
    # which would pick an arbitrary anchor: they are ignored, like padding. The data pipeline
    # rejects or counts them before they get here.
    mask = tf.logical_and(gt_mask, box_coding.area(boxes) > 0.0)
    return boxes, classes, mask


def compute_targets(outputs, gt_boxes_yxyx, gt_classes, gt_mask, anchors_yxyx, config):
    """Matching targets of both stages (batched, no gradient).

    ARM: binary labels against the anchors. ODM: class labels against the refined anchors
    decode(arm_loc, anchors), which depend on the ARM's prediction of this very step.
    Returns:
      dict arm_loc_t [B, A, 4], arm_conf_t [B, A], arm_pos [B, A], odm_loc_t, odm_conf_t,
      odm_matched [B, A] (matched before theta), arm_objectness [B, A], refined_anchors [B, A, 4].
    """
    boxes, classes, mask = _check_ground_truth(gt_boxes_yxyx, gt_classes, gt_mask, config.num_classes)
    anchors = tf.convert_to_tensor(anchors_yxyx, tf.float32)
    arm_loc_t, arm_conf_t, arm_pos = matching.assign_targets(
        anchors, boxes, tf.ones_like(classes), mask, config.variances, config.match_iou)
    arm_loc = tf.stop_gradient(tf.cast(outputs["arm_loc"], tf.float32))
    refined = box_coding.decode_boxes(arm_loc, anchors[None], config.variances)
    odm_loc_t, odm_conf_t, odm_matched = matching.assign_targets(
        refined, boxes, classes, mask, config.variances, config.match_iou)
    objectness = tf.nn.softmax(tf.stop_gradient(tf.cast(outputs["arm_conf"], tf.float32)))[..., 1]
    return {
        "arm_loc_t": arm_loc_t, "arm_conf_t": arm_conf_t, "arm_pos": arm_pos,
        "odm_loc_t": odm_loc_t, "odm_conf_t": odm_conf_t, "odm_matched": odm_matched,
        "arm_objectness": objectness, "refined_anchors": refined,
    }


def refinedet_loss_terms(outputs, gt_boxes_yxyx, gt_classes, gt_mask, anchors_yxyx, config):
    """Unnormalized ARM and ODM loss sums and their positive counts (for a global normalizer).

    Returns dict arm (terms), odm (terms), targets: see `multibox_loss_terms`/`compute_targets`.
    """
    t = compute_targets(outputs, gt_boxes_yxyx, gt_classes, gt_mask, anchors_yxyx, config)

    def f32(name):
        return tf.cast(outputs[name], tf.float32)

    arm = multibox_loss_terms(
        f32("arm_loc"), f32("arm_conf"), t["arm_loc_t"], t["arm_conf_t"], t["arm_pos"],
        tf.logical_not(t["arm_pos"]), anchors_yxyx, config)
    keep = t["arm_objectness"] > config.objectness_threshold
    odm_pos = tf.logical_and(t["odm_matched"], keep)
    if config.negative_filtering == "caffe":
        odm_candidates = tf.logical_and(tf.logical_not(t["odm_matched"]), keep)
    else:
        odm_candidates = tf.logical_not(odm_pos)
    odm = multibox_loss_terms(
        f32("odm_loc"), f32("odm_conf"), t["odm_loc_t"], t["odm_conf_t"], odm_pos, odm_candidates,
        t["refined_anchors"], config)
    return {"arm": arm, "odm": odm, "targets": t}


def normalize_loss_terms(terms, config, arm_normalizer=None, odm_normalizer=None):
    """Divides the sums by the positives (default: this batch's; pass global counts to share a
    normalizer across replicas). Returns dict arm_loc, arm_conf, odm_loc, odm_conf, total."""
    arm_n = terms["arm"]["num_pos"] if arm_normalizer is None else arm_normalizer
    odm_n = terms["odm"]["num_pos"] if odm_normalizer is None else odm_normalizer
    arm_n = tf.maximum(tf.cast(arm_n, tf.float32), 1.0)
    odm_n = tf.maximum(tf.cast(odm_n, tf.float32), 1.0)
    losses = {
        "arm_loc": config.loc_weight * terms["arm"]["loc"] / arm_n,
        "arm_conf": terms["arm"]["conf"] / arm_n,
        "odm_loc": config.loc_weight * terms["odm"]["loc"] / odm_n,
        "odm_conf": terms["odm"]["conf"] / odm_n,
    }
    losses["total"] = tf.add_n(list(losses.values()))
    return losses


def refinedet_loss(outputs, gt_boxes_yxyx, gt_classes, gt_mask, anchors_yxyx, config):
    """The four RefineDet losses and their sum, each normalized by its stage's positives.

    Args:
      outputs: dict of the model's outputs (arm_loc, arm_conf, odm_loc, odm_conf).
      gt_boxes_yxyx: [B, G, 4] float32; gt_classes: [B, G] int32 in 1..C-1; gt_mask: [B, G] bool.
      anchors_yxyx: [A, 4].
    Returns:
      dict arm_loc, arm_conf, odm_loc, odm_conf, total (float32 scalars).
    """
    terms = refinedet_loss_terms(outputs, gt_boxes_yxyx, gt_classes, gt_mask, anchors_yxyx, config)
    return normalize_loss_terms(terms, config)
