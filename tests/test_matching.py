import numpy as np
import tensorflow as tf

import refinedet_tf
from golden import ground_truth, load, reference_config, swap_xy
from refinedet_tf import box_coding
from refinedet_tf.matching import FORCED_MATCH_IOU, assign_targets, match_anchors


def test_arm_and_odm_targets_equal_reference():
    g = load("matching")
    config = reference_config()
    anchors = refinedet_tf.generate_anchors(config)
    boxes, classes, mask = ground_truth(g)

    # ARM stage: binary labels against the plain anchors.
    loc_t, conf_t, pos = assign_targets(anchors, boxes, np.ones_like(classes), mask, config.variances)
    np.testing.assert_array_equal(conf_t, g["arm_conf_t"])
    p = g["arm_conf_t"] > 0  # the reference fills loc_t of background anchors with junk
    np.testing.assert_allclose(loc_t.numpy()[p], swap_xy(g["arm_loc_t"])[p], atol=1e-5)
    np.testing.assert_array_equal(pos.numpy().sum(1), [15, 12])

    # ODM stage: class labels against the ARM-refined anchors.
    refined = box_coding.decode_boxes(swap_xy(g["arm_loc"]), anchors[None], config.variances)
    loc_t, conf_t, pos = assign_targets(refined, boxes, classes, mask, config.variances)
    np.testing.assert_array_equal(conf_t, g["odm_conf_t"])
    p = g["odm_conf_t"] > 0
    np.testing.assert_allclose(loc_t.numpy()[p], swap_xy(g["odm_loc_t"])[p], rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(pos.numpy().sum(1), [17, 6])

    # Image 1's two near-identical boxes both want refined anchor 6162: the later box (E) wins.
    matched, _, iou = match_anchors(refined, boxes, mask)
    assert g["odm_best_prior_idx"][1, 0] == g["odm_best_prior_idx"][1, 1] == 6162
    assert matched.numpy()[1, 6162] == 1 and iou.numpy()[1, 6162] == FORCED_MATCH_IOU


def test_forced_matches_reach_reference_best_priors():
    g = load("matching")
    config = reference_config()
    anchors = refinedet_tf.generate_anchors(config)
    boxes, _, mask = ground_truth(g)
    _, _, iou = match_anchors(anchors, boxes, mask)
    for b in range(2):
        for m in range(int(g["num_gt"][b])):
            # Tiny box C (image 0) has best IoU 0.09 but is forced onto its best prior.
            assert iou.numpy()[b, g["arm_best_prior_idx"][b, m]] == FORCED_MATCH_IOU


ANCHORS = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.5, 0.5, 1.0],
                    [0.5, 0.0, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0]], np.float32)


def test_zero_boxes_gives_all_background():
    boxes = tf.zeros([2, 0, 4])
    matched, pos, iou = match_anchors(ANCHORS, boxes, tf.zeros([2, 0], tf.bool))
    assert pos.shape == (2, 4) and not pos.numpy().any()
    padded = tf.zeros([2, 3, 4])
    loc_t, conf_t, pos = assign_targets(ANCHORS, padded, tf.ones([2, 3], tf.int32),
                                        tf.zeros([2, 3], tf.bool), (0.1, 0.1, 0.2, 0.2))
    assert not pos.numpy().any() and not conf_t.numpy().any()
    assert np.all(np.isfinite(loc_t.numpy()))


def test_one_tiny_box_is_forced_onto_its_best_anchor():
    box = np.array([[[0.6, 0.6, 0.62, 0.61]]], np.float32)  # IoU with anchor 3 ~ 0.0008
    _, conf_t, pos = assign_targets(ANCHORS, box, np.array([[5]], np.int32), np.array([[True]]),
                                    (0.1, 0.1, 0.2, 0.2))
    np.testing.assert_array_equal(conf_t, [[0, 0, 0, 5]])


def test_two_boxes_wanting_the_same_anchor_the_later_wins():
    boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.45],
                       [0.5, 0.5, 1.0, 0.75]]], np.float32)
    classes = np.array([[1, 2, 3]], np.int32)
    mask = np.array([[True, True, False]])
    _, conf_t, _ = assign_targets(ANCHORS, boxes, classes, mask, (0.1, 0.1, 0.2, 0.2))
    # Box 1 (later) takes anchor 0 from box 0. Box 2 is padding: its IoU with anchor 3 is 0.5,
    # enough to be positive, yet anchor 3 stays background because padding is never matched.
    np.testing.assert_array_equal(conf_t, [[2, 0, 0, 0]])


def test_iou_exactly_at_the_threshold_is_positive_on_a_non_forced_anchor():
    # Coordinates are multiples of 1/4 (one is 0.25 less one float32 step), so the IoUs below are
    # exact in float32 (asserted). The box's best anchor (0, IoU 1) is its forced match; anchors
    # 1 and 2 are nobody's best anchor, so only the threshold decides them.
    box = np.array([[[0.0, 0.0, 0.5, 0.5]]], np.float32)  # area 1/4
    below_quarter = np.nextafter(np.float32(0.25), np.float32(0.0))  # 0.25 - 2^-26
    anchors = np.array([[0.0, 0.0, 0.5, 0.5],  # IoU 1: forced
                        [0.0, 0.0, 0.5, 0.25],  # inside the box, area 1/8: IoU (1/8)/(1/4) = 0.5
                        [0.0, 0.0, 0.5, below_quarter],  # IoU 2 * below_quarter = 0.5 - 2^-25
                        [0.5, 0.5, 1.0, 1.0]], np.float32)  # IoU 0
    iou = box_coding.pairwise_iou(box[0], anchors).numpy()[0]
    assert iou[1] == 0.5 and iou[2] == np.float32(0.5 - 2.0 ** -25)
    matched, pos, match_iou = match_anchors(anchors, box, np.array([[True]]), iou_threshold=0.5)
    np.testing.assert_array_equal(pos, [[True, True, False, False]])
    # Anchor 1 is positive by the threshold, not by the bipartite step: its match IoU is the real
    # one, not FORCED_MATCH_IOU.
    np.testing.assert_array_equal(match_iou, [[FORCED_MATCH_IOU, 0.5, iou[2], 0.0]])
    assert matched.numpy()[0, 1] == 0
    _, conf_t, _ = assign_targets(anchors, box, np.array([[7]], np.int32), np.array([[True]]),
                                  (0.1, 0.1, 0.2, 0.2), iou_threshold=0.5)
    np.testing.assert_array_equal(conf_t, [[7, 7, 0, 0]])
