"""faster_rcnn/anchors.py: the 9 base anchors in both references' geometries, and the grid.

simple-faster-rcnn-pytorch's geometry against tests/data/golden_frcnn/anchors.npz (its README,
section "anchors.npz"); py-faster-rcnn's integer geometry by hand (`generate_anchors.py` has no
fixture here).
"""

import os

import numpy as np
import pytest

from refinedet_tf.faster_rcnn.anchors import base_anchors, grid_anchors

GOLDEN_FRCNN = os.path.join(os.path.dirname(__file__), "data", "golden_frcnn")
SIMPLE_FASTER_RCNN = {"anchor_center": 8.0, "round_base_anchors": False}
# The reference computes in float64 and stores float32: 1e-4 px covers one float32 rounding of a
# coordinate up to ~1000 px (ulp 6.1e-5); we cast at the same two points, so in fact it is exact.
ATOL_PX = 1e-4


def load(name):
    with np.load(os.path.join(GOLDEN_FRCNN, f"{name}.npz")) as data:
        return {k: data[k] for k in data.files}


def test_base_anchors_equal_simple_faster_rcnn():
    g = load("anchors")
    assert int(g["base_size"]) == 16
    base = base_anchors(int(g["base_size"]), g["ratios"], g["anchor_scales"], **SIMPLE_FASTER_RCNN)
    assert base.dtype == np.float32 and base.shape == (9, 4)
    np.testing.assert_allclose(base, g["anchor_base"], rtol=0, atol=ATOL_PX)
    # Ratio 0.5 (row 0) is a wide box 90.5 x 181.0: r is height / width.
    np.testing.assert_allclose(base[0, 2] - base[0, 0], 90.50967, rtol=1e-6)
    np.testing.assert_allclose(base[0, 3] - base[0, 1], 181.01933, rtol=1e-6)


def test_grid_equals_simple_faster_rcnn_in_y_x_a_order():
    g = load("anchors")
    height, width = (int(v) for v in g["feat_hw"])
    anchors = grid_anchors(height, width, int(g["feat_stride"]), **SIMPLE_FASTER_RCNN)
    assert anchors.shape == (17100, 4) and anchors.dtype == np.float32
    np.testing.assert_allclose(anchors, g["anchors"], rtol=0, atol=ATOL_PX)
    # Row (y * 50 + x) * 9 + a is the base anchor a shifted by 16 (y, x).
    y, x, a = 37, 11, 5
    np.testing.assert_array_equal(anchors[(y * width + x) * 9 + a], g["anchor_base"][a] + [16 * y, 16 * x] * 2)


def test_py_faster_rcnn_integer_geometry_by_hand():
    # generate_anchors.py's well-known output, x1 y1 x2 y2 (pixel indices, inclusive):
    # window (0, 0, 15, 15), centre 7.5; ratio 0.5: ws = round(sqrt(512)) = 23, hs = round(11.5) = 12.
    xyxy = np.array([[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                     [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                     [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]], np.float32)
    base = base_anchors()  # the defaults are py-faster-rcnn's
    np.testing.assert_array_equal(base, xyxy[:, [1, 0, 3, 2]])
    widths_plus_one = base[:, 3] - base[:, 1] + 1
    heights_plus_one = base[:, 2] - base[:, 0] + 1
    np.testing.assert_array_equal(widths_plus_one, [184, 368, 736, 128, 256, 512, 88, 176, 352])
    np.testing.assert_array_equal(heights_plus_one, [96, 192, 384, 128, 256, 512, 176, 352, 704])
    np.testing.assert_array_equal((base[:, :2] + base[:, 2:]) / 2, np.full((9, 2), 7.5))


@pytest.mark.parametrize("center", [7.5, 8.0])
@pytest.mark.parametrize("rounded", [True, False])
def test_switches_are_independent_and_anchors_are_centred(center, rounded):
    base = base_anchors(anchor_center=center, round_base_anchors=rounded)
    np.testing.assert_allclose((base[:, :2] + base[:, 2:]) / 2, center, atol=1e-5)
    h, w = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    if rounded:  # the +1 sides of generate_anchors.py, whatever the centre
        np.testing.assert_array_equal(w + 1, [184, 368, 736, 128, 256, 512, 88, 176, 352])
        np.testing.assert_array_equal(h + 1, [96, 192, 384, 128, 256, 512, 176, 352, 704])
    else:  # area (16 s)^2 for every ratio, h / w = r
        np.testing.assert_allclose(h * w, np.tile(np.array([128.0, 256.0, 512.0]) ** 2, 3), rtol=1e-6)
        np.testing.assert_allclose(h / w, np.repeat([0.5, 1.0, 2.0], 3), rtol=1e-6)


def test_small_grid_by_hand():
    # One ratio, one scale: a 32 px square per cell of a 2 x 3 map, stride 16, centre 8.
    anchors = grid_anchors(2, 3, ratios=(1.0,), scales=(2.0,), **SIMPLE_FASTER_RCNN)
    expected = [[-8, -8, 24, 24], [-8, 8, 24, 40], [-8, 24, 24, 56],
                [8, -8, 40, 24], [8, 8, 40, 40], [8, 24, 40, 56]]
    np.testing.assert_array_equal(anchors, np.array(expected, np.float32))
    # base_size follows the stride unless given (stride 8: 16 px boxes); the centre of cell (0, 0)
    # is given in pixels, so it stays at 8.
    small = grid_anchors(1, 2, feature_stride=8, ratios=(1.0,), scales=(2.0,), **SIMPLE_FASTER_RCNN)
    np.testing.assert_array_equal(small, [[0, 0, 16, 16], [0, 8, 16, 24]])
