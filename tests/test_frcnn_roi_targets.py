"""faster_rcnn/roi_targets.py against simple-faster-rcnn-pytorch's ProposalTargetCreator
(proposal_target.npz), plus hand-checked cases and the sampling properties the fixture cannot pin.

Tolerances. Labels, sampled boxes, IoUs and assignments are compared exactly (the fixture's
closest IoU to the 0.5 threshold is 3.5e-4 away). Regression targets: atol 1e-4 where the label
is > 0 (FASTER_RCNN.md §4: dividing by the 0.1 std amplifies float32 noise; observed 1e-6);
background rows are not compared (the reference encodes them against their best gt, the loss
weights them 0, we write 0).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.faster_rcnn.roi_targets import max_foreground, sample_roi_targets

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_frcnn", "proposal_target.npz")
LOC_ATOL = 1e-4


@pytest.fixture(scope="module")
def fixture():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def fixture_inputs(fixture):
    """The reference's inputs as a batch of one: 0-based gt labels become classes 1..20."""
    return (fixture["roi"][None], np.ones((1, 2000), bool), fixture["gt_bbox"][None],
            (fixture["gt_label"] + 1)[None].astype(np.int32), np.ones((1, 5), bool))


def test_fixture_every_candidate_kept(fixture):
    """The fixture's settings (n_sample = 2005 candidates, pos_ratio 1) keep every candidate."""
    out = sample_roi_targets(*fixture_inputs(fixture), num_samples=2005, foreground_fraction=1.0)
    out = {k: v.numpy()[0] for k, v in out.items()}
    assert out["valid"].all() and out["num_valid"] == 2005
    assert out["foreground"].sum() == fixture["n_pos"] == 51
    assert (~out["foreground"]).sum() == fixture["n_neg"] == 1954
    # Compared as sets: rows keyed by candidate index (0..1999 rois, 2000..2004 gts).
    ours = np.argsort(out["candidate_indices"])
    theirs = np.argsort(fixture["keep_index"])
    np.testing.assert_array_equal(out["candidate_indices"][ours], fixture["keep_index"][theirs])
    np.testing.assert_array_equal(out["labels"][ours], fixture["gt_roi_label"][theirs])
    np.testing.assert_array_equal(out["rois_yxyx_px"][ours], fixture["sample_roi"][theirs])
    np.testing.assert_array_equal(out["max_iou"][ours], fixture["sample_max_iou"][theirs])
    foreground = fixture["gt_roi_label"][theirs] > 0
    np.testing.assert_array_equal(out["matched_gt"][ours][foreground],
                                  fixture["sample_gt_assignment"][theirs][foreground])
    np.testing.assert_allclose(out["box_targets"][ours][foreground], fixture["gt_roi_loc"][theirs][foreground],
                               rtol=0, atol=LOC_ATOL)
    # The five gts are foreground samples of themselves: IoU 1, targets exactly 0.
    gts = out["candidate_indices"] >= 2000
    np.testing.assert_array_equal(out["max_iou"][gts], 1.0)
    np.testing.assert_array_equal(out["box_targets"][gts], 0.0)
    # Background: label 0, targets 0, matched_gt -1. Foreground rows come first.
    np.testing.assert_array_equal(out["box_targets"][~out["foreground"]], 0.0)
    np.testing.assert_array_equal(out["matched_gt"][~out["foreground"]], -1)
    assert out["foreground"][:51].all()


def test_fixture_with_the_default_settings_without_a_seed(fixture):
    """128 samples, at most 32 foreground: without a seed, the first candidates by index."""
    out = {k: v.numpy()[0] for k, v in sample_roi_targets(*fixture_inputs(fixture)).items()}
    assert max_foreground() == 32
    positives = np.sort(fixture["keep_index"][:51])  # the fixture lists positives first
    negatives = np.sort(fixture["keep_index"][51:])
    np.testing.assert_array_equal(out["candidate_indices"], np.concatenate([positives[:32], negatives[:96]]))
    assert out["foreground"].sum() == 32 and out["num_valid"] == 128
    row_of = {c: i for i, c in enumerate(fixture["keep_index"])}
    rows = [row_of[c] for c in out["candidate_indices"]]
    np.testing.assert_array_equal(out["labels"], fixture["gt_roi_label"][rows])
    np.testing.assert_allclose(out["box_targets"][:32], fixture["gt_roi_loc"][rows][:32], rtol=0, atol=LOC_ATOL)


def test_hand_checked_case():
    # gt 0 [0,0,10,20] class 3; gt 1 [50,50,70,70] class 7; gt 2 is padding.
    gts = np.float32([[[0, 0, 10, 20], [50, 50, 70, 70], [0, 0, 10, 10]]])
    rois = np.float32([[[0, 0, 10, 10],      # IoU 0.5 with gt 0: foreground (>= 0.5)
                        [50, 50, 70, 74],    # IoU 400/480 = 0.83 with gt 1: foreground
                        [0, 0, 10, 9.9],     # IoU 0.495 with gt 0: background
                        [0, 15, 10, 35],     # IoU 50/350 = 0.143 with gt 0: background
                        [200, 200, 210, 210],  # IoU 0: background only when bg_low = 0
                        [0, 0, 10, 10]]])    # a padded proposal: never sampled
    rois_valid = np.array([[True] * 5 + [False]])
    out = sample_roi_targets(rois, rois_valid, gts, np.int32([[3, 7, 9]]), np.array([[True, True, False]]),
                             num_samples=8, foreground_fraction=0.5, background_iou_low=0.1)
    out = {k: v.numpy()[0] for k, v in out.items()}
    # Candidates: rois 0..5, then gts as 6, 7 (8 = the padded gt, never a candidate); at most 4 foreground.
    np.testing.assert_array_equal(out["candidate_indices"], [0, 1, 6, 7, 2, 3, -1, -1])
    np.testing.assert_array_equal(out["labels"], [3, 7, 3, 7, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["matched_gt"], [0, 1, 0, 1, -1, -1, -1, -1])
    np.testing.assert_array_equal(out["valid"], [True] * 6 + [False] * 2)
    np.testing.assert_allclose(out["max_iou"], [0.5, 400 / 480, 1, 1, 0.495, 50 / 350, 0, 0], rtol=1e-6)
    # roi 0 -> gt 0: same centre row, x centre 5 -> 10 over width 10 and std 0.1, width x2 over std 0.2.
    # roi 1 -> gt 1: x centre 62 -> 60 over width 24, width 24 -> 20.
    expected = np.zeros((8, 4), np.float32)
    expected[0] = [0, 5 / 0.1 / 10, 0, np.log(2) / 0.2]
    expected[1] = [0, -2 / 24 / 0.1, 0, np.log(20 / 24) / 0.2]
    np.testing.assert_allclose(out["box_targets"], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["rois_yxyx_px"][6:], 0)


def random_batch(seed, num_rois=300, max_boxes=6):
    """Three images: 6 gts, 2 gts + 4 padded (garbage) rows, no gt; some proposals padded."""
    rng = np.random.default_rng(seed)
    gts = np.zeros((3, max_boxes, 4), np.float32)
    gt_valid = np.zeros((3, max_boxes), bool)
    gt_valid[0] = True
    gt_valid[1, :2] = True
    for b in range(3):
        yx = rng.uniform(0, 400, (max_boxes, 2))
        hw = rng.uniform(30, 200, (max_boxes, 2))
        gts[b] = np.concatenate([yx, yx + hw], 1)
    classes = rng.integers(1, 21, (3, max_boxes)).astype(np.int32)
    # Proposals: jittered copies of the gts (padded rows included, so padding would match well)
    # and random boxes.
    jittered = gts[:, rng.integers(0, max_boxes, num_rois)] + rng.normal(0, 8, (3, num_rois, 4))
    yx = rng.uniform(0, 500, (3, num_rois, 2))
    hw = rng.uniform(16, 150, (3, num_rois, 2))
    rois = np.where(rng.uniform(size=(3, num_rois, 1)) < 0.5, jittered, np.concatenate([yx, yx + hw], -1))
    rois = np.concatenate([np.minimum(rois[..., :2], rois[..., 2:] - 1), rois[..., 2:]], -1).astype(np.float32)
    rois_valid = np.ones((3, num_rois), bool)
    rois_valid[1, 250:] = False
    return rois, rois_valid, gts, classes, gt_valid


def test_sampling_properties():
    rois, rois_valid, gts, classes, gt_valid = random_batch(0)
    seed = tf.constant([7, 11])
    out = {k: v.numpy() for k, v in sample_roi_targets(rois, rois_valid, gts, classes, gt_valid, seed=seed).items()}
    assert out["labels"].shape == (3, 128)
    assert np.all(out["foreground"].sum(1) <= 32)
    assert out["foreground"][0].sum() == 32  # plenty of jittered copies: the cap binds
    np.testing.assert_array_equal(out["num_valid"], [128, 128, 128])
    np.testing.assert_array_equal(out["labels"] > 0, out["foreground"])
    # Padded gts are never matched; an image without gts gets background only.
    assert np.all(out["matched_gt"][1][out["foreground"][1]] < 2)
    assert not out["foreground"][2].any() and np.all(out["labels"][2] == 0)
    np.testing.assert_array_equal(out["max_iou"][2], 0)
    # Padded proposals (image 1, 250..299) and padded gts (candidates 300 + 2..5) never sampled.
    sampled = out["candidate_indices"][1]
    assert not np.any((sampled >= 250) & (sampled < 300)) and not np.any(sampled >= 302)
    # Foreground rows first, each row's label is its gt's class.
    for b in range(3):
        n = out["foreground"][b].sum()
        assert out["foreground"][b, :n].all() and not out["foreground"][b, n:].any()
        np.testing.assert_array_equal(out["labels"][b, :n], classes[b, out["matched_gt"][b, :n]])
    # Reproducible with a seed, a different draw with another, and not the first-by-index draw.
    again = sample_roi_targets(rois, rois_valid, gts, classes, gt_valid, seed=seed)["candidate_indices"].numpy()
    np.testing.assert_array_equal(again, out["candidate_indices"])
    other = sample_roi_targets(rois, rois_valid, gts, classes, gt_valid, seed=tf.constant([7, 12]))
    assert not np.array_equal(other["candidate_indices"].numpy(), out["candidate_indices"])
    first = sample_roi_targets(rois, rois_valid, gts, classes, gt_valid)["candidate_indices"].numpy()
    assert not np.array_equal(first, out["candidate_indices"])


def test_padded_gts_are_never_used():
    """Changing what padded gt rows hold (boxes equal to proposals, other classes) changes nothing."""
    rois, rois_valid, gts, classes, gt_valid = random_batch(1)
    garbage_gts, garbage_classes = gts.copy(), classes.copy()
    garbage_gts[1, 2:] = rois[1, :4]  # IoU 1 with proposals 0..3
    garbage_classes[1, 2:] = 99
    garbage_gts[2] = rois[2, 10:16]
    a = sample_roi_targets(rois, rois_valid, gts, classes, gt_valid, seed=tf.constant([1, 2]))
    b = sample_roi_targets(rois, rois_valid, garbage_gts, garbage_classes, gt_valid, seed=tf.constant([1, 2]))
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)


def test_fewer_candidates_than_samples_are_padded():
    rois = np.float32([[[0, 0, 10, 10], [100, 100, 120, 130]]])
    out = sample_roi_targets(rois, np.ones((1, 2), bool), np.float32([[[0, 0, 10, 12]]]), np.int32([[5]]),
                             np.ones((1, 1), bool))
    out = {k: v.numpy()[0] for k, v in out.items()}
    assert out["labels"].shape == (128,) and out["num_valid"] == 3
    np.testing.assert_array_equal(out["candidate_indices"][:3], [0, 2, 1])
    np.testing.assert_array_equal(out["labels"][:3], [5, 5, 0])
    assert not out["valid"][3:].any() and np.all(out["rois_yxyx_px"][3:] == 0)
    assert np.isfinite(out["box_targets"]).all()


def test_no_ground_truth_rows_at_all():
    rois = np.float32([[[0, 0, 10, 10], [100, 100, 120, 130]]])
    out = sample_roi_targets(rois, np.ones((1, 2), bool), np.zeros((1, 0, 4), np.float32), np.zeros((1, 0), np.int32),
                             np.zeros((1, 0), bool), num_samples=4)
    np.testing.assert_array_equal(out["candidate_indices"].numpy(), [[0, 1, -1, -1]])
    np.testing.assert_array_equal(out["labels"].numpy(), 0)
    np.testing.assert_array_equal(out["box_targets"].numpy(), 0)


def test_compiles_with_xla_and_agrees():
    rois, rois_valid, gts, classes, gt_valid = random_batch(2)

    def run(*args):
        return sample_roi_targets(*args, seed=tf.constant([3, 4]))

    eager = run(rois, rois_valid, gts, classes, gt_valid)
    compiled = tf.function(run, jit_compile=True)(rois, rois_valid, gts, classes, gt_valid)
    for key in eager:
        if key == "box_targets":  # XLA's log and division may round differently in the last bit
            np.testing.assert_allclose(compiled[key].numpy(), eager[key].numpy(), rtol=0, atol=1e-5)
        else:
            np.testing.assert_array_equal(compiled[key].numpy(), eager[key].numpy(), err_msg=key)


def test_bad_arguments_are_named():
    rois = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"gt_boxes_yxyx_px \[B, G, 4\]"):
        sample_roi_targets(rois, np.ones((1, 4), bool), np.zeros((1, 4), np.float32), np.zeros((1, 1), np.int32),
                           np.ones((1, 1), bool))
    with pytest.raises(ValueError, match="gt_classes"):
        sample_roi_targets(rois, np.ones((1, 4), bool), np.zeros((1, 2, 4), np.float32), np.zeros((1, 3), np.int32),
                           np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="rois_valid"):
        sample_roi_targets(rois, np.ones((1, 5), bool), np.zeros((1, 2, 4), np.float32), np.zeros((1, 2), np.int32),
                           np.ones((1, 2), bool))
