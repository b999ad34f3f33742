"""Faster R-CNN anchors: 9 per feature cell, in input-image pixels.

Order (both references): `a = 3 * ratio_index + scale_index` with ratios (0.5, 1, 2) and scales
(8, 16, 32); the grid is flattened (feature row y, feature column x, anchor a), the order in
which the RPN's NHWC outputs flatten, so anchor i pairs with prediction i. A ratio r is
height / width (r = 0.5 is a wide box) in both references, whatever their docstrings say.

Two geometries, chosen by two switches:
- py-faster-rcnn (`lib/rpn/generate_anchors.py`, the default): the base window (0, 0, 15, 15)
  has centre 7.5; per ratio the sides are rounded, `ws = round(sqrt(256 / r))`,
  `hs = round(ws * r)`, then multiplied by the scale, and the corners are the inclusive pixel
  indices `c -+ (side - 1) / 2`: integers, with widths `x2 - x1 + 1` of 184, 368, 736, 128, 256,
  512, 88, 176, 352 and heights 96, 192, 384, 128, 256, 512, 176, 352, 704.
- simple-faster-rcnn-pytorch (`model/utils/bbox_tools.py`): centre 8, `h = 16 s sqrt(r)`,
  `w = 16 s / sqrt(r)`, unrounded, corners `c -+ side / 2`: `anchor_center=8.0,
  round_base_anchors=False`.
Anchors are not clipped to the image (the RPN targets use only those inside it).
"""

import numpy as np

RATIOS = (0.5, 1.0, 2.0)  # height / width
SCALES = (8.0, 16.0, 32.0)  # side = base_size * scale (for ratio 1)


def base_anchors(base_size=16, ratios=RATIOS, scales=SCALES, anchor_center=7.5, round_base_anchors=True):
    """The anchors of the feature cell (0, 0).

    Args:
      base_size: the feature stride in pixels (16 for VGG16's conv5_3).
      ratios: heights / widths.
      scales: multiples of base_size.
      anchor_center: the centre of cell (0, 0) in pixels, on both axes: 7.5 (py-faster-rcnn,
        the centre of pixel indices 0..15) or 8.0 (simple-faster-rcnn-pytorch).
      round_base_anchors: True for py-faster-rcnn's integer geometry (rounded sides, inclusive
        corners `c -+ (side - 1) / 2`), False for the exact sides with corners `c -+ side / 2`.
    Returns:
      np.ndarray [len(ratios) * len(scales), 4] float32, yxyx pixels, row `3 * i + j` for
      ratio i and scale j. Computed in float64 and cast once.
    """
    ratios = np.asarray(ratios, np.float64)
    scales = np.asarray(scales, np.float64)
    if round_base_anchors:
        # _ratio_enum: the area of the base window kept, sides rounded (np.round: half to even,
        # as the reference); _scale_enum then multiplies the rounded sides.
        ws = np.round(np.sqrt(base_size * base_size / ratios))
        hs = np.round(ws * ratios)
        half_h = 0.5 * (hs[:, None] * scales[None, :] - 1.0)
        half_w = 0.5 * (ws[:, None] * scales[None, :] - 1.0)
    else:
        half_h = 0.5 * base_size * scales[None, :] * np.sqrt(ratios)[:, None]
        half_w = 0.5 * base_size * scales[None, :] / np.sqrt(ratios)[:, None]
    half_h, half_w = half_h.reshape(-1), half_w.reshape(-1)
    c = float(anchor_center)
    return np.stack([c - half_h, c - half_w, c + half_h, c + half_w], axis=-1).astype(np.float32)


def grid_anchors(feature_height, feature_width, feature_stride=16, **base_anchor_options):
    """All anchors of a feature map, in pixels of the (padded) input it was computed from.

    The anchor of cell (y, x) is the base anchor shifted by (16 y, 16 x, 16 y, 16 x) for stride
    16, as `_enumerate_shifted_anchor` (simple-faster-rcnn-pytorch) and the proposal layer of
    py-faster-rcnn: the float32 base anchors plus integer shifts, cast to float32 once.

    Args:
      feature_height, feature_width: the feature map's size (for a canvas whose sides are
        multiples of 16: canvas side / 16).
      feature_stride: pixels per feature cell.
      **base_anchor_options: `base_anchors`' arguments (base_size defaults to feature_stride).
    Returns:
      np.ndarray [A, 4] float32, yxyx pixels, A = feature_height * feature_width * 9, row
      `(y * feature_width + x) * 9 + a`.
    """
    base_anchor_options.setdefault("base_size", feature_stride)
    base = base_anchors(**base_anchor_options).astype(np.float64)
    shift_y = np.arange(feature_height, dtype=np.float64) * feature_stride
    shift_x = np.arange(feature_width, dtype=np.float64) * feature_stride
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sy, sx, sy, sx], axis=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4).astype(np.float32)
