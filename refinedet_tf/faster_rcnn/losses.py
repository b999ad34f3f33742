"""The four Faster R-CNN losses (RPN and RoI head, classification and box regression), batched.

Semantics of simple-faster-rcnn-pytorch's `trainer.py` (`_smooth_l1_loss`, `_fast_rcnn_loc_loss`,
`F.cross_entropy`; pinned by tests/data/golden_frcnn/losses.npz), which for one image are
those of py-faster-rcnn's loss layers (`SoftmaxWithLoss`, `SmoothL1Loss` in
`models/pascal_voc/VGG16/faster_rcnn_end2end/train.prototxt`):

  rpn_cls   cross entropy over the sampled anchors (label 0 or 1; -1 is ignored), mean over them;
  rpn_loc   smooth L1 with sigma 3 over the positives' 4 offsets (label 1), divided by the number
            of sampled anchors (label >= 0), not by the positives;
  roi_cls   cross entropy over the valid sampled RoIs (label 0 = background .. C-1), mean;
  roi_loc   smooth L1 with sigma 1 over the 4 outputs of each foreground RoI's own class (the
            head predicts 4 per class, background included), divided by the valid RoI count.

smooth L1 (both references): d = x - t; 0.5 sigma^2 d^2 where |d| < 1 / sigma^2, else |d| - 0.5 /
sigma^2.

Batching and normalization. Every function takes [B, ...] inputs with their masks and returns a
`LossTerm`: the per-image sum and the per-image count it is normalized by ([B] each), unreduced,
so that the caller chooses the normalizer:

  `per_image_mean`: each image's sum / its count, averaged over the images (the references train
    one image per step, so each image is normalized by its own counts). An image
    with count 0 (no sampled anchor or no valid RoI: padding, or the reference's all-ignored case)
    contributes nothing and is left out of the average; if no image has one the loss is 0. The
    reference divides by 0 there and returns NaN (the fixture's `all_ignored_loc_loss`).
  `global_mean`: the sum over all images / the count over all images, one normalizer for the
    whole (global) batch, RefineDet's scheme.

Both take `global_sum` and return the replica's share, as `Architecture.losses(outputs, targets,
global_sum)` (refinedet_tf/architectures/base.py) must: on one device global_sum is the identity
and the share is the loss; with N replicas each replica divides its own sums by the normalizer
summed over all replicas (images with a count for `per_image_mean`, counts for `global_mean`), so
the sum of the shares, which the trainer takes, is the loss of the global batch, and the summed
gradients are the gradient one device would compute. A Faster R-CNN architecture's `losses` then
reads:

    terms = {"rpn_cls": rpn_cls_loss(...), "rpn_loc": rpn_loc_loss(...),
             "roi_cls": roi_cls_loss(...), "roi_loc": roi_loc_loss(...)}
    losses = normalize(terms, global_sum)   # the four shares and `total`; one all-reduce
    losses["num_pos"] = global_sum(number of foreground RoIs)   # the count the trainer logs

Only the selected entries enter a sum: unused targets are zeroed before the smooth L1 and unused
labels replaced before the cross entropy, so a non-finite target of an ignored anchor (a
zero-size box gives log(0)) or an out-of-range label in padding cannot make the loss or the
gradient NaN.
"""

import collections

import tensorflow as tf

#: Per-image unnormalized loss: `sum` and `count`, float32 [B] each.
LossTerm = collections.namedtuple("LossTerm", ["sum", "count"])

RPN_SIGMA = 3.0
ROI_SIGMA = 1.0


def smooth_l1(diff, sigma):
    """Elementwise smooth L1 of the references: 0.5 sigma^2 d^2 where |d| < 1 / sigma^2, else
    |d| - 0.5 / sigma^2 (sigma 1 is the Huber loss with delta 1)."""
    sigma2 = float(sigma) ** 2
    ad = tf.abs(diff)
    return tf.where(ad < 1.0 / sigma2, (0.5 * sigma2) * diff * diff, ad - 0.5 / sigma2)


def _masked_cross_entropy(logits, labels, mask):
    logits = tf.cast(logits, tf.float32)
    labels = tf.where(mask, tf.cast(labels, tf.int32), 0)  # -1 and padding: any valid class
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.where(mask, ce, 0.0)


def _box_loss(pred, target, positive, sigma):
    """Per box: smooth L1 summed over the 4 offsets where `positive`, 0 elsewhere."""
    diff = tf.cast(pred, tf.float32) - tf.cast(target, tf.float32)
    diff = tf.where(positive[..., None], diff, 0.0)  # before the loss: see the module docstring
    return tf.reduce_sum(smooth_l1(diff, sigma), axis=-1)


def _term(per_entry, counted):
    return LossTerm(tf.reduce_sum(per_entry, axis=-1), tf.reduce_sum(tf.cast(counted, tf.float32), axis=-1))


def rpn_cls_loss(logits, labels):
    """RPN objectness: cross entropy over the sampled anchors.

    Args:
      logits: [B, A, 2] (background, object).
      labels: [B, A] int: 1 object, 0 background, -1 not sampled (ignored; anchors outside the
        image and padding too).
    Returns:
      LossTerm: sum of the sampled anchors' cross entropy, count of sampled anchors (label >= 0).
    """
    labels = tf.convert_to_tensor(labels)
    sampled = labels >= 0
    return _term(_masked_cross_entropy(logits, labels, sampled), sampled)


def rpn_loc_loss(pred_loc, target_loc, labels, sigma=RPN_SIGMA):
    """RPN box regression: smooth L1 (sigma 3) over the positive anchors' (dy, dx, dh, dw).

    Args:
      pred_loc, target_loc: [B, A, 4] offsets (targets unnormalized, as both references).
      labels: [B, A] int, as `rpn_cls_loss`.
    Returns:
      LossTerm: sum over the positives (label 1; labels > 0 as the reference's weight), count of
      sampled anchors (label >= 0): the reference's `_fast_rcnn_loc_loss` divides by that.
    """
    labels = tf.convert_to_tensor(labels)
    return _term(_box_loss(pred_loc, target_loc, labels > 0, sigma), labels >= 0)


def per_roi_cls_loss(logits, labels, valid):
    """Each valid RoI's cross entropy (`roi_cls_loss` before the sum; OHEM ranks RoIs by it).

    Args: as `roi_cls_loss`.
    Returns:
      [B, R] float32 -log softmax(logits)[label] where valid (computed from the logits, never
      capped), 0 elsewhere.
    """
    return _masked_cross_entropy(logits, labels, tf.cast(valid, tf.bool))


def per_roi_loc_loss(pred_loc, target_loc, labels, valid, sigma=ROI_SIGMA):
    """Each RoI's box loss (`roi_loc_loss` before the sum; OHEM ranks RoIs by it).

    Args: as `roi_loc_loss`.
    Returns:
      [B, R] float32 smooth L1 summed over the 4 outputs of the RoI's own class where valid and
      label > 0, 0 elsewhere (background has no box term).
    """
    valid = tf.cast(valid, tf.bool)
    labels = tf.where(valid, tf.cast(labels, tf.int32), 0)
    pred_loc = tf.convert_to_tensor(pred_loc)
    if pred_loc.shape.rank == 3:
        pred_loc = tf.reshape(pred_loc, tf.concat([tf.shape(pred_loc)[:2], [-1, 4]], axis=0))
    own = tf.gather(pred_loc, labels, batch_dims=2)  # [B, R, 4]: background picks class 0, unused
    return _box_loss(own, target_loc, valid & (labels > 0), sigma)


def roi_cls_loss(logits, labels, valid):
    """Head classification: cross entropy over the valid sampled RoIs.

    Args:
      logits: [B, R, C] (column 0 background).
      labels: [B, R] int in 0..C-1 (0 = background) where valid.
      valid: [B, R] bool: sampled RoIs (False: padding, when fewer RoIs than R were sampled).
    Returns:
      LossTerm: sum of the valid RoIs' cross entropy, count of valid RoIs.
    """
    return _term(per_roi_cls_loss(logits, labels, valid), tf.cast(valid, tf.bool))


def roi_loc_loss(pred_loc, target_loc, labels, valid, sigma=ROI_SIGMA):
    """Head box regression: smooth L1 (sigma 1) over each foreground RoI's own class's 4 outputs.

    Args:
      pred_loc: [B, R, C * 4] (column class * 4 + coord, the references' layout) or [B, R, C, 4]:
        class-specific offsets, in the normalized (divided by std) space of the targets.
      target_loc: [B, R, 4] normalized targets.
      labels: [B, R] int in 0..C-1 where valid; valid: [B, R] bool.
    Returns:
      LossTerm: sum over the foreground RoIs (valid, label > 0), count of valid RoIs (background
      included): the reference divides by all its samples.
    """
    return _term(per_roi_loc_loss(pred_loc, target_loc, labels, valid, sigma), tf.cast(valid, tf.bool))


def _shares(term, per_image):
    """(numerator, local normalizer): the loss share is numerator / global normalizer."""
    if per_image:
        counted = term.count > 0
        per_image_loss = tf.where(counted, term.sum / tf.maximum(term.count, 1.0), 0.0)
        return tf.reduce_sum(per_image_loss), tf.reduce_sum(tf.cast(counted, tf.float32))
    return tf.reduce_sum(term.sum), tf.reduce_sum(term.count)


def normalize(terms, global_sum=None, per_image=True):
    """{name: LossTerm} -> {name: the replica's share of the loss} plus `total`, their sum.

    per_image True: `per_image_mean` of each term; False: `global_mean`. The normalizers of all
    terms go through one `global_sum` call (one all-reduce with replicas).
    """
    names = list(terms)
    numerators, normalizers = zip(*(_shares(terms[name], per_image) for name in names))
    normalizers = tf.stack(normalizers)
    if global_sum is not None:
        normalizers = global_sum(normalizers)
    normalizers = tf.maximum(normalizers, 1.0)
    losses = {name: numerators[k] / normalizers[k] for k, name in enumerate(names)}
    losses["total"] = tf.add_n([losses[name] for name in names])
    return losses


def per_image_mean(term, global_sum=None):
    """The replica's share of the mean over images of (image sum / image count), the
    references' per-image normalization. Images with count 0 are left out; none at all: 0."""
    return normalize({"loss": term}, global_sum, per_image=True)["loss"]


def global_mean(term, global_sum=None):
    """The replica's share of (sum over the global batch / count over the global batch); 0 when
    the count is 0."""
    return normalize({"loss": term}, global_sum, per_image=False)["loss"]
