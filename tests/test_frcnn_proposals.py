"""faster_rcnn/proposals.py against simple-faster-rcnn-pytorch's ProposalCreator (proposals.npz).

Tolerances. The selection (which anchors become RoIs, their order, the counts) is compared
exactly. The RoI coordinates agree to 2.5e-4 px (4 float32 ulps at 800 px; observed 1.2e-4):
TensorFlow's float32 `exp` (Eigen's, and XLA's own) differs from numpy's in the last bit on
about 40% of these inputs, and the shared decode takes the centre as (ymin + ymax) / 2 where
the reference takes ymin + 0.5 h. Decoding the selected anchors with the reference's numpy
arithmetic gives the fixture's RoIs bit for bit. The decisions are far from those ulps: the
size-filter margin is 0.041 px and the NMS IoU margin 2.2e-5 (fixture diagnostics).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.faster_rcnn.proposals import clipped_boxes_and_scores, generate_proposals, proposal_counts

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_frcnn", "proposals.npz")
ROI_ATOL_PX = 2.5e-4


@pytest.fixture(scope="module")
def fixture():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def reference_decode_clip(anchors, loc, height, width):
    """simple-faster-rcnn's loc2bbox + clip, in its own numpy float32 arithmetic."""
    h = anchors[:, 2] - anchors[:, 0]
    w = anchors[:, 3] - anchors[:, 1]
    cy = anchors[:, 0] + 0.5 * h
    cx = anchors[:, 1] + 0.5 * w
    ccy = loc[:, 0] * h + cy
    ccx = loc[:, 1] * w + cx
    hh = np.exp(loc[:, 2]) * h
    ww = np.exp(loc[:, 3]) * w
    boxes = np.stack([ccy - 0.5 * hh, ccx - 0.5 * ww, ccy + 0.5 * hh, ccx + 0.5 * ww], axis=1)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, height)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, width)
    return boxes


def reference_anchor_indices(anchors, loc, score, height, width, scale, pre, post, thr=0.7):
    """ProposalCreator's selection in numpy (stable sort; torchvision NMS: suppress IoU > thr)."""
    boxes = reference_decode_clip(anchors, loc, height, width)
    hs, ws = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = np.where((hs >= 16 * scale) & (ws >= 16 * scale))[0]
    keep = keep[np.argsort(-score[keep], kind="stable")][:pre]
    b = boxes[keep]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(b), bool)
    chosen = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        chosen.append(i)
        if len(chosen) == post:
            break
        inter = (np.maximum(np.minimum(b[i, 2], b[i + 1:, 2]) - np.maximum(b[i, 0], b[i + 1:, 0]), 0)
                 * np.maximum(np.minimum(b[i, 3], b[i + 1:, 3]) - np.maximum(b[i, 1], b[i + 1:, 1]), 0))
        suppressed[i + 1:] |= inter / (area[i] + area[i + 1:] - inter) > thr
    return keep[chosen]


def fixture_inputs(fixture):
    return (fixture["rpn_loc"][None], fixture["rpn_fg_score"][None], fixture["anchors"],
            np.array([[600.0, 800.0, 1.0]], np.float32))


def second_image():
    """Another image on the same canvas: smaller valid size (480 x 640), scale 0.8, own outputs."""
    rng = np.random.default_rng(5)
    loc = np.concatenate([rng.normal(0, 0.2, (17100, 2)), rng.normal(0, 0.5, (17100, 2))], 1).astype(np.float32)
    score = ((rng.permutation(17100) + 0.5) / 17100).astype(np.float32)
    return loc, score, (480.0, 640.0, 0.8)


def check_rois(out, fixture, expected):
    """out's first len(expected) rows are the fixture's RoIs (selection exact, coordinates to ROI_ATOL_PX)."""
    n = len(expected)
    np.testing.assert_allclose(out["rois_yxyx_px"][:n], expected, rtol=0, atol=ROI_ATOL_PX)
    # The selection exactly: the chosen anchors, decoded as the reference decodes, are its RoIs.
    index = out["anchor_indices"][:n]
    decoded = reference_decode_clip(fixture["anchors"][index], fixture["rpn_loc"][index], 600, 800)
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(out["scores"][:n], fixture["rpn_fg_score"][index])


def test_fixture_train_mode(fixture):
    """rois_train and the NMS survivor count: the post-NMS cut widened to the pre-NMS count."""
    out = generate_proposals(*fixture_inputs(fixture), training=True, post_nms_top_n=12000)
    out = {k: v.numpy()[0] for k, v in out.items()}
    assert out["num_valid"] == fixture["train/n_after_nms"]  # 3985 survivors of 12000
    assert out["valid"].sum() == 3985 and not out["valid"][3985:].any()
    check_rois(out, fixture, fixture["rois_train"])  # the default 2000 are the first 2000
    assert np.all(np.diff(out["scores"][:3985]) < 0)
    np.testing.assert_array_equal(out["rois_yxyx_px"][3985:], 0)


def test_fixture_size_filter_count(fixture):
    _, scores = clipped_boxes_and_scores(*fixture_inputs(fixture))
    assert np.isfinite(scores.numpy()).sum() == fixture["train/n_after_min_size"] == 16948


@pytest.fixture(scope="module")
def batch_inputs(fixture):
    """Image 0 = the fixture (600 x 800, scale 1), image 1 = `second_image`, test mode, all NMS survivors."""
    loc2, score2, info2 = second_image()
    return (np.stack([fixture["rpn_loc"], loc2]), np.stack([fixture["rpn_fg_score"], score2]), fixture["anchors"],
            np.array([[600.0, 800.0, 1.0], info2], np.float32))


def batch_proposals(*args):
    return generate_proposals(*args, training=False, post_nms_top_n=6000)


@pytest.fixture(scope="module")
def batch_eager(batch_inputs):
    return {k: v.numpy() for k, v in batch_proposals(*batch_inputs).items()}


def test_fixture_test_mode_in_a_batch(fixture, batch_inputs, batch_eager):
    out = {k: v[0] for k, v in batch_eager.items()}
    assert out["num_valid"] == fixture["test/n_after_nms"]  # 2507 survivors of 6000
    check_rois(out, fixture, fixture["rois_test"])  # the default 300 are the first 300
    # Image 1 (its own size and scale) against the numpy reference selection.
    loc2, score2, (h, w, scale) = second_image()
    expected = reference_anchor_indices(fixture["anchors"], loc2, score2, h, w, scale, 6000, 6000)
    assert batch_eager["num_valid"][1] == len(expected)
    np.testing.assert_array_equal(batch_eager["anchor_indices"][1, :len(expected)], expected)
    rois = batch_eager["rois_yxyx_px"][1, :len(expected)]
    assert rois[:, 0::2].max() <= h and rois[:, 1::2].max() <= w
    assert np.all(rois[:, 2:] - rois[:, :2] >= 16 * np.float32(scale))


def test_compiles_with_xla_and_agrees(batch_inputs, batch_eager):
    compiled = tf.function(batch_proposals, jit_compile=True)(*batch_inputs)
    for key in ("anchor_indices", "scores", "valid", "num_valid"):
        np.testing.assert_array_equal(compiled[key].numpy(), batch_eager[key], err_msg=key)
    # XLA's exp differs from Eigen's in the last bit as numpy's does: same tolerance.
    np.testing.assert_allclose(compiled["rois_yxyx_px"].numpy(), batch_eager["rois_yxyx_px"], rtol=0, atol=ROI_ATOL_PX)


# Hand-made cases, one image each, run as one batch (one trace, one XLA compile). Anchors are the
# boxes themselves with zero offsets (decoded exactly); NMS threshold 0.5; min size 16 * scale.
HAND_BOXES = np.float32([
    # 0: IoU([0,0,10,20], [0,0,10,10]) = 0.5 exactly survives; IoU([0,0,10,20], [0,0,10,19]) = 0.95 does not.
    [[0, 0, 10, 20], [0, 0, 10, 10], [0, 0, 10, 19], [90, 90, 95, 95], [90, 90, 95, 95]],
    # 1: valid image 40 x 60 at scale 0.5 on a larger canvas: min size 8 px.
    [[0, 0, 8, 8],           # exactly 8 x 8: kept
     [20, 0, 27.99, 30],     # height 7.99: dropped, although it has the best score
     [30, 50, 70, 90],       # crosses the valid border: clipped to [30, 50, 40, 60]
     [50, 70, 90, 110],      # entirely in the padding: clipped to zero size, dropped
     [-10, 20, 10, 40]],     # crosses the top: clipped to [0, 20, 10, 40]
    # 2: equal scores: lower anchor index first; the identical later box is suppressed.
    [[0, 0, 20, 20], [30, 30, 50, 50], [30, 30, 50, 50], [60, 60, 80, 80], [0, 0, 1, 1]],
])
HAND_SCORES = np.float32([[0.9, 0.8, 0.7, 0.1, 0.1], [0.5, 0.9, 0.6, 0.8, 0.4], [0.5, 0.5, 0.5, 0.7, 0.9]])
# Image 0's scale 1/16 makes the min size 1 px (its last two boxes are 5 px: kept, overlapping each other).
HAND_INFO = np.float32([[100, 100, 1 / 16], [40, 60, 0.5], [100, 100, 1.0]])


def hand_proposals(offsets, scores, anchors, info):
    return generate_proposals(offsets, scores, anchors, info, training=False, post_nms_top_n=5, nms_iou_threshold=0.5)


HAND_EXPECTED = {
    "num_valid": [3, 3, 3],
    "anchor_indices": [[0, 1, 3, 0, 0], [2, 0, 4, 0, 0], [3, 0, 1, 0, 0]],
    "rois_yxyx_px": [[[0, 0, 10, 20], [0, 0, 10, 10], [90, 90, 95, 95], [0] * 4, [0] * 4],
                     [[30, 50, 40, 60], [0, 0, 8, 8], [0, 20, 10, 40], [0] * 4, [0] * 4],
                     [[60, 60, 80, 80], [0, 0, 20, 20], [30, 30, 50, 50], [0] * 4, [0] * 4]],
    "scores": [[0.9, 0.8, 0.1, 0, 0], [0.6, 0.5, 0.4, 0, 0], [0.7, 0.5, 0.5, 0, 0]],
    "valid": [[True] * 3 + [False] * 2] * 3,
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_hand_made_cases(jit):
    fn = tf.function(hand_proposals, jit_compile=True) if jit else hand_proposals
    out = fn(np.zeros_like(HAND_BOXES), HAND_SCORES, HAND_BOXES, HAND_INFO)
    for key, expected in HAND_EXPECTED.items():
        np.testing.assert_array_equal(out[key].numpy(), np.asarray(expected, out[key].dtype.as_numpy_dtype),
                                      err_msg=key)


def test_counts_by_mode():
    assert proposal_counts(True) == (12000, 2000) and proposal_counts(False) == (6000, 300)
    boxes = np.float32([[0, 0, 20, 20], [40, 40, 60, 60]])
    out = generate_proposals(np.zeros((1, 2, 4), np.float32), np.float32([[0.2, 0.3]]), boxes,
                             np.float32([[100, 100, 1.0]]), training=True)  # fewer anchors than 12000
    assert out["rois_yxyx_px"].shape == (1, 2000, 4)
    assert out["num_valid"].numpy()[0] == 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"rpn_offsets \[B, A, 4\]"):
        generate_proposals(np.zeros((5, 4), np.float32), np.zeros((1, 5), np.float32), np.zeros((5, 4), np.float32),
                           np.zeros((1, 3), np.float32), training=False)
    with pytest.raises(ValueError, match="image_info"):
        generate_proposals(np.zeros((1, 5, 4), np.float32), np.zeros((1, 5), np.float32),
                           np.zeros((5, 4), np.float32), np.zeros((1, 2), np.float32), training=False)
    with pytest.raises(ValueError, match="number of anchors"):
        generate_proposals(np.zeros((1, 5, 4), np.float32), np.zeros((1, 5), np.float32),
                           np.zeros((6, 4), np.float32), np.zeros((1, 3), np.float32), training=False)
    with pytest.raises(ValueError, match="min_size"):
        generate_proposals(np.zeros((1, 5, 4), np.float32), np.zeros((1, 5), np.float32),
                           np.zeros((5, 4), np.float32), np.zeros((1, 3), np.float32), training=False, min_size=0)
