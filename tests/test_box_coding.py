import numpy as np
import tensorflow as tf

from golden import load, swap_xy
from refinedet_tf import box_coding

VAR = (0.1, 0.1, 0.2, 0.2)


def _priors_yxyx(g):
    return swap_xy(g["priors_xyxy"])


def test_encode_decode_iou_equal_reference():
    g = load("box_coding")
    anchors = _priors_yxyx(g)
    gt = swap_xy(g["gt_xyxy"])
    np.testing.assert_allclose(box_coding.encode_boxes(gt, anchors, VAR), swap_xy(g["encoded"]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(box_coding.decode_boxes(swap_xy(g["loc_offsets"]), anchors, VAR),
                               swap_xy(g["decoded_xyxy"]), atol=1e-6)
    np.testing.assert_allclose(
        box_coding.decode_boxes(box_coding.encode_boxes(gt, anchors, VAR), anchors, VAR),
        swap_xy(g["roundtrip_xyxy"]), atol=1e-6)
    np.testing.assert_allclose(box_coding.pairwise_iou(gt, anchors), g["iou_gt_vs_priors"], atol=1e-6)
    cx, cy, w, h = g["gt_cxcywh"].T
    np.testing.assert_allclose(box_coding.yxyx_to_cyxhw(gt), np.stack([cy, cx, h, w], -1), atol=1e-7)


def test_one_box_by_hand():
    anchor = np.array([[0.4, 0.2, 0.6, 0.6]], np.float32)  # centre (0.5, 0.4), h 0.2, w 0.4
    box = np.array([[0.45, 0.3, 0.75, 0.7]], np.float32)  # centre (0.6, 0.5), h 0.3, w 0.4
    t = box_coding.encode_boxes(box, anchor, VAR).numpy()[0]
    expected = [(0.6 - 0.5) / (0.1 * 0.2), (0.5 - 0.4) / (0.1 * 0.4),
                np.log(0.3 / 0.2 + 1e-5) / 0.2, np.log(1.0 + 1e-5) / 0.2]
    np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t[:2], [5.0, 2.5], rtol=1e-5)


def test_decode_inverts_encode_on_random_boxes():
    rng = np.random.default_rng(7)
    def boxes(n):
        lo = rng.uniform(0, 0.9, (n, 2))
        return np.concatenate([lo, lo + rng.uniform(0.01, 0.6, (n, 2))], 1).astype(np.float32)
    b, a = boxes(2000), boxes(2000)
    back = box_coding.decode_boxes(box_coding.encode_boxes(b, a, VAR), a, VAR).numpy()
    # Only the reference's 1e-5 epsilon inside the log separates them (size ratios up to 60 here,
    # inside the exp clamp): at most ~1e-5 * anchor size.
    np.testing.assert_allclose(back, b, rtol=1e-4, atol=1e-5)


def test_large_predictions_stay_finite():
    anchor = np.array([[0.4, 0.4, 0.6, 0.6]], np.float32)
    out = box_coding.decode_boxes(np.array([[0, 0, 1e4, 1e4]], np.float32), anchor, VAR).numpy()
    assert np.all(np.isfinite(out))


def test_iou_of_empty_boxes_is_zero_not_nan():
    empty = np.zeros((1, 4), np.float32)
    assert box_coding.pairwise_iou(empty, empty).numpy()[0, 0] == 0.0
    batched = box_coding.pairwise_iou(tf.zeros([2, 3, 4]), tf.ones([2, 5, 4]))
    assert batched.shape == (2, 3, 5)
