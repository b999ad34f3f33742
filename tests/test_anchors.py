import numpy as np
import pytest

import refinedet_tf
from golden import load
from refinedet_tf.anchors import feature_map_sizes


def _cxcywh_to_yxyx(p):
    cx, cy, w, h = p.T.astype(np.float64)
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)


@pytest.mark.parametrize("size", [320, 512])
def test_anchors_equal_reference_priors(size):
    golden = load(f"priors_{size}")
    config = refinedet_tf.get_preset(f"vgg16_{size}", clip_anchors=True)  # the reference clips
    anchors = refinedet_tf.generate_anchors(config)
    assert anchors.shape == (golden["priors_cxcywh"].shape[0], 4) and anchors.dtype == np.float32
    assert feature_map_sizes(config) == list(golden["feature_maps"])
    np.testing.assert_allclose(anchors, _cxcywh_to_yxyx(golden["priors_cxcywh"]), atol=1e-6)


def test_anchor_counts():
    assert refinedet_tf.generate_anchors(refinedet_tf.get_preset("vgg16_320")).shape == (6375, 4)
    assert refinedet_tf.generate_anchors(refinedet_tf.get_preset("vgg16_512")).shape == (16320, 4)


def test_unclipped_default_differs_only_on_the_stride64_wide_anchors_at_320():
    golden = _cxcywh_to_yxyx(load("priors_320")["priors_cxcywh"])
    anchors = refinedet_tf.generate_anchors(refinedet_tf.get_preset("vgg16_320"))
    differs = np.any(np.abs(anchors - golden) > 1e-6, axis=1)
    # Level 4 (stride 64, 5x5, size 256/320 = 0.8): its 2:1 and 1:2 anchors are 1.131 long.
    assert np.flatnonzero(differs).min() >= 6300
    assert differs.sum() == 2 * 25
    long_side = np.max(anchors[6300:, 2:] - anchors[6300:, :2], axis=1)
    np.testing.assert_allclose(long_side.max(), 0.8 * np.sqrt(2), rtol=1e-6)


def test_tiny_two_by_two_map_by_hand():
    # One level of a 128 px image with stride 64 -> 2x2 map; anchor size 64 -> 0.5.
    config = refinedet_tf.get_preset(
        "vgg16_320", image_size=128, anchor_strides=(16, 32, 64, 64), anchor_sizes=(1, 1, 1, 64))
    anchors = refinedet_tf.generate_anchors(config)[-12:]
    r = np.sqrt(2.0)
    expected = []
    for cy in (0.25, 0.75):  # row first
        for cx in (0.25, 0.75):  # half-step offset: (j + 0.5) * 64 / 128
            for h, w in ((0.5, 0.5), (0.5 / r, 0.5 * r), (0.5 * r, 0.5 / r)):  # ratio 1, 2, 1/2
                expected.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    np.testing.assert_allclose(anchors, np.array(expected), atol=1e-7)


@pytest.mark.parametrize("preset,clip", [("vgg16_320", False), ("vgg16_320", True), ("vgg16_512", False)])
def test_every_level_is_mirror_symmetric(preset, clip):
    # 320 has an odd level (5x5, whose middle column is centred on 0.5) and, unclipped, anchors
    # reaching outside the image; clipping acts on centre-form values, which keeps the symmetry.
    config = refinedet_tf.get_preset(preset, clip_anchors=clip)
    anchors = refinedet_tf.generate_anchors(config).astype(np.float64)
    start = 0
    for side in feature_map_sizes(config):
        # Reference order: row (y), column (x), then ratio 1, 2, 1/2.
        level = anchors[start:start + side * side * 3].reshape(side, side, 3, 4)
        start += side * side * 3
        ymin, xmin, ymax, xmax = np.moveaxis(level, -1, 0)
        # Mirror x -> 1 - x: the anchor of column side-1-j, same row and ratio, is the mirror
        # image of the anchor of column j (its xmin is 1 - xmax, so its width is the same).
        mirrored_x = np.stack([ymin, 1 - xmax, ymax, 1 - xmin], -1)[:, ::-1]
        np.testing.assert_allclose(level, mirrored_x, atol=1e-6, err_msg=f"level {side}x{side}, x")
        mirrored_y = np.stack([1 - ymax, xmin, 1 - ymin, xmax], -1)[::-1]
        np.testing.assert_allclose(level, mirrored_y, atol=1e-6, err_msg=f"level {side}x{side}, y")
        # Transposing the grid swaps y and x, so ratio 2 (wide) becomes ratio 1/2 (tall).
        transposed = np.stack([xmin, ymin, xmax, ymax], -1).transpose(1, 0, 2, 3)[:, :, [0, 2, 1]]
        np.testing.assert_allclose(level, transposed, atol=1e-6, err_msg=f"level {side}x{side}, diagonal")
    assert start == len(anchors)


def test_anchor_centres_are_the_cell_centres():
    config = refinedet_tf.get_preset("vgg16_512")
    anchors = refinedet_tf.generate_anchors(config).astype(np.float64)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    start = 0
    for stride, side in zip(config.anchor_strides, feature_map_sizes(config)):
        # Half-step offset: cell (i, j) has centre ((i + 0.5) s / S, (j + 0.5) s / S).
        cells = (np.arange(side) + 0.5) * stride / config.image_size
        expected = np.stack(np.meshgrid(cells, cells, [0, 1, 2], indexing="ij")[:2], -1).reshape(-1, 2)
        np.testing.assert_allclose(centres[start:start + side * side * 3], expected, atol=1e-6)
        start += side * side * 3
