"""Anchors (Caffe PriorBox) in the reference order.

Order: level (stride 8 first), row (y), column (x), then per location ratio 1, r, 1/r for each
r in `aspect_ratios` (for the default (2,): 1, 2, 1/2). That is the order in which the heads'
outputs are flattened, so anchor i pairs with prediction i.
"""

import numpy as np


def feature_map_sizes(config):
    """Side of each level's square feature map: image_size / stride."""
    return [config.image_size // stride for stride in config.anchor_strides]


def generate_anchors(config):
    """All anchors of a preset.

    Centre of cell (i, j) on a level with stride s: ((i + 0.5) s / S, (j + 0.5) s / S) for image
    side S (the half-step offset of Caffe and RefineDet.PyTorch). Size z = anchor_size / S; an
    anchor of ratio r has w = z * sqrt(r), h = z / sqrt(r). With `clip_anchors` the centre-form
    values (cy, cx, h, w) are clamped to [0, 1], as RefineDet.PyTorch does (not the corners).

    Returns:
      np.ndarray [A, 4] float32, normalized yxyx; A = sum over levels of side^2 * anchors/loc.
    """
    size = float(config.image_size)
    ratios = [1.0]
    for r in config.aspect_ratios:
        ratios += [float(r), 1.0 / float(r)]
    ratios = np.asarray(ratios)
    levels = []
    for stride, anchor_size, side in zip(
            config.anchor_strides, config.anchor_sizes, feature_map_sizes(config)):
        # Computed in float64 and cast once, as the reference builds its priors in Python floats.
        centres = (np.arange(side, dtype=np.float64) + 0.5) * stride / size
        cy, cx, ratio = np.meshgrid(centres, centres, ratios, indexing="ij")
        z = anchor_size / size
        h = z / np.sqrt(ratio)
        w = z * np.sqrt(ratio)
        levels.append(np.stack([cy, cx, h, w], axis=-1).reshape(-1, 4))
    cyxhw = np.concatenate(levels, axis=0)
    if config.clip_anchors:
        cyxhw = np.clip(cyxhw, 0.0, 1.0)
    # Corners from float32 centre-form values, in the reference's order of operations, so that
    # IoU near-ties between neighbouring anchors break the way they do in the reference.
    cy, cx, h, w = cyxhw.astype(np.float32).T
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
