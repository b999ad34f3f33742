"""Box formats, IoU and the CENTER_SIZE box coding of SSD/RefineDet.

Formats (all normalized to [0, 1] by the image size unless a name says otherwise):
  yxyx  = [ymin, xmin, ymax, xmax]   (the library's format, TensorFlow's own order)
  cyxhw = [cy, cx, h, w]
Offsets are in the same y-first order: (ty, tx, th, tw).

Every function broadcasts over leading dimensions: `[..., 4]`.
"""

import tensorflow as tf

# RefineDet.PyTorch adds this inside the log of the size target (log(g/a + 1e-5)); it keeps a
# zero-size box finite and we keep it for parity with the reference targets. It makes
# decode(encode(b)) differ from b by at most ~1e-5 relative in size.
SIZE_EPSILON = 1e-5
# exp() of a large predicted th/tw overflows to inf, and a very negative one collapses the box
# to zero size (whose encoding is then inf/NaN): clamp both ways at log(1000/16), the bound
# torchvision uses. A box can grow or shrink at most 62.5x relative to its anchor per step.
MAX_LOG_SCALE = 4.135166556742356


def yxyx_to_cyxhw(boxes_yxyx):
    """[..., 4] yxyx -> [..., 4] cyxhw."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes_yxyx, axis=-1)
    return tf.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=-1)


def cyxhw_to_yxyx(boxes_cyxhw):
    """[..., 4] cyxhw -> [..., 4] yxyx."""
    cy, cx, h, w = tf.unstack(boxes_cyxhw, axis=-1)
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def area(boxes_yxyx):
    """[..., 4] yxyx -> [...] areas (negative extents count as 0)."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes_yxyx, axis=-1)
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def pairwise_iou(boxes1_yxyx, boxes2_yxyx):
    """IoU of every pair: [..., N1, 4] x [..., N2, 4] -> [..., N1, N2].

    Leading dimensions must match (e.g. a batch). Empty boxes give IoU 0, never NaN.
    """
    b1 = boxes1_yxyx[..., :, None, :]
    b2 = boxes2_yxyx[..., None, :, :]
    inter_h = tf.maximum(tf.minimum(b1[..., 2], b2[..., 2]) - tf.maximum(b1[..., 0], b2[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(b1[..., 3], b2[..., 3]) - tf.maximum(b1[..., 1], b2[..., 1]), 0.0)
    inter = inter_h * inter_w
    union = area(boxes1_yxyx)[..., :, None] + area(boxes2_yxyx)[..., None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def encode_boxes(boxes_yxyx, anchors_yxyx, variances, size_epsilon=SIZE_EPSILON):
    """CENTER_SIZE encoding of boxes relative to anchors.

    t_c = (g_c - a_c) / (v_c * a_size),  t_s = log(g_size / a_size + size_epsilon) / v_s.

    Args:
      boxes_yxyx: [..., 4] ground-truth boxes.
      anchors_yxyx: [..., 4] anchors, broadcastable against boxes.
      variances: 4 floats (cy, cx, h, w), e.g. (0.1, 0.1, 0.2, 0.2).
      size_epsilon: added inside the log: RefineDet.PyTorch's 1e-5 (the default); 0 for
        Faster R-CNN (simple-faster-rcnn-pytorch's `bbox2loc` has none, so a zero-size box
        gives -inf).
    Returns:
      [..., 4] offsets (ty, tx, th, tw).
    """
    g = yxyx_to_cyxhw(boxes_yxyx)
    a = yxyx_to_cyxhw(anchors_yxyx)
    v = tf.constant(variances, g.dtype)
    centre = (g[..., :2] - a[..., :2]) / (v[:2] * a[..., 2:])
    size = tf.math.log(g[..., 2:] / a[..., 2:] + size_epsilon) / v[2:]
    return tf.concat([centre, size], axis=-1)


def decode_boxes(offsets, anchors_yxyx, variances):
    """Inverse of `encode_boxes` (up to its 1e-5 size epsilon): offsets -> boxes.

    Args:
      offsets: [..., 4] (ty, tx, th, tw).
      anchors_yxyx: [..., 4] broadcastable against offsets.
      variances: 4 floats (cy, cx, h, w).
    Returns:
      [..., 4] yxyx boxes, not clipped (the reference never clips).
    """
    a = yxyx_to_cyxhw(anchors_yxyx)
    v = tf.constant(variances, offsets.dtype)
    centre = a[..., :2] + offsets[..., :2] * v[:2] * a[..., 2:]
    size = a[..., 2:] * tf.exp(tf.clip_by_value(offsets[..., 2:] * v[2:], -MAX_LOG_SCALE, MAX_LOG_SCALE))
    return cyxhw_to_yxyx(tf.concat([centre, size], axis=-1))
