"""faster_rcnn/ohem.py: OHEM's all-RoI targets, per-RoI losses, diversity NMS, hard-example
selection and the gather for the trainable pass, on tiny hand-made tensors (seed 001,
abhi2610/ohem's `_all_rois`, `OHEMDataLayer.forward`, `get_ohem_minibatch`, `select_hard_examples`).

Tolerances: labels, masks, indices and IoUs are compared exactly; losses against the seed's
formula computed line by line in float64 numpy: rtol 1e-6 (float32 log-sum-exp).
"""

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.faster_rcnn.losses import normalize, roi_cls_loss, roi_loc_loss
from refinedet_tf.faster_rcnn.ohem import (
    SEED_PROBABILITY_FLOOR,
    all_roi_targets,
    diversity_nms,
    gather_selected,
    per_roi_losses,
    select_hard_examples,
)
from refinedet_tf.faster_rcnn.roi_targets import sample_roi_targets


def numpy_dict(out):
    return {k: v.numpy() for k, v in out.items()}


# ---- all_roi_targets


def hand_made_images():
    """Image 0: gt 0 [0,0,10,20] class 3, gt 1 [50,50,70,70] class 7, gt 2 padding; 5 proposals +
    1 padded. Image 1: the same proposals, no valid gt."""
    gts = np.float32([[0, 0, 10, 20], [50, 50, 70, 70], [0, 0, 10, 10]])
    rois = np.float32([[0, 0, 10, 10],        # IoU 100/200 = 0.5 with gt 0: foreground (>= 0.5)
                       [50, 50, 70, 74],      # IoU 400/480 with gt 1: foreground
                       [0, 0, 10, 9.9],       # IoU 99/200 = 0.495 with gt 0: background
                       [0, 15, 10, 35],       # IoU 50/350 with gt 0: background
                       [200, 200, 210, 210],  # IoU 0: background (OHEM's low threshold is 0.0)
                       [0, 0, 10, 20]])       # a padded proposal (IoU 1 with gt 0): never a candidate
    rois_valid = np.array([[True] * 5 + [False]] * 2)
    gt_valid = np.array([[True, True, False], [False, False, False]])
    return (np.stack([rois, rois]), rois_valid, np.stack([gts, gts]), np.int32([[3, 7, 9], [3, 7, 9]]), gt_valid)


def test_all_roi_targets_hand_checked():
    out = numpy_dict(all_roi_targets(*hand_made_images()))
    assert out["labels"].shape == (2, 9)  # N = R + G = 6 + 3, in candidate order
    # Image 0: candidates 0..5 proposals, 6, 7 the gts appended, 8 the padded gt.
    np.testing.assert_array_equal(out["labels"][0], [3, 7, 0, 0, 0, 0, 3, 7, 0])
    np.testing.assert_array_equal(out["foreground"][0], [1, 1, 0, 0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(out["valid"][0], [1, 1, 1, 1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(out["matched_gt"][0], [0, 1, -1, -1, -1, -1, 0, 1, -1])
    np.testing.assert_array_equal(out["candidate_indices"][0], [0, 1, 2, 3, 4, -1, 6, 7, -1])
    np.testing.assert_allclose(out["max_iou"][0], [0.5, 400 / 480, 0.495, 50 / 350, 0, 0, 1, 1, 0], rtol=1e-6)
    # roi 0 -> gt 0: x centre 5 -> 10 over width 10 and std 0.1, width x2 over std 0.2;
    # roi 1 -> gt 1: x centre 62 -> 60 over width 24, width 24 -> 20; the gts: exactly 0.
    expected = np.zeros((9, 4), np.float32)
    expected[0] = [0, 5 / 0.1 / 10, 0, np.log(2) / 0.2]
    expected[1] = [0, -2 / 24 / 0.1, 0, np.log(20 / 24) / 0.2]
    np.testing.assert_allclose(out["box_targets"][0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["box_targets"][0, 6:8], 0.0)
    # Padding rows (the padded proposal and gt) are invalid and zero.
    np.testing.assert_array_equal(out["rois_yxyx_px"][0, [5, 8]], 0.0)
    # Image 1 has no valid gt: every valid proposal is background, its gts are padding.
    np.testing.assert_array_equal(out["valid"][1], [1, 1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["labels"][1], 0)
    np.testing.assert_array_equal(out["max_iou"][1], 0)
    np.testing.assert_array_equal(out["num_valid"], [7, 5])


def random_images(seed, num_rois=40, max_boxes=4):
    """Two images: proposals jittered around the gts or random; some proposals and gts padded."""
    rng = np.random.default_rng(seed)
    yx = rng.uniform(0, 200, (2, max_boxes, 2))
    gts = np.concatenate([yx, yx + rng.uniform(20, 80, (2, max_boxes, 2))], -1).astype(np.float32)
    gt_valid = np.array([[True] * max_boxes, [True, True] + [False] * (max_boxes - 2)])
    classes = rng.integers(1, 5, (2, max_boxes)).astype(np.int32)
    jittered = gts[:, rng.integers(0, max_boxes, num_rois)] + rng.normal(0, 6, (2, num_rois, 4))
    yx = rng.uniform(0, 250, (2, num_rois, 2))
    random = np.concatenate([yx, yx + rng.uniform(10, 60, (2, num_rois, 2))], -1)
    rois = np.where(rng.uniform(size=(2, num_rois, 1)) < 0.5, jittered, random)
    rois = np.concatenate([np.minimum(rois[..., :2], rois[..., 2:] - 1), rois[..., 2:]], -1).astype(np.float32)
    rois_valid = np.ones((2, num_rois), bool)
    rois_valid[1, num_rois - 7:] = False
    return rois, rois_valid, gts, classes, gt_valid


def test_all_roi_targets_are_sample_roi_targets_keeping_everything_in_candidate_order():
    """What was checked of sample_roi_targets: with S = R + G, foreground fraction 1 (cap
    round(1 * S) = S), background low 0 and no seed it keeps every valid candidate with the same
    labels and targets, but puts the foreground first: the only difference is the row order."""
    images = random_images(0)
    ours = numpy_dict(all_roi_targets(*images))
    sampled = numpy_dict(sample_roi_targets(*images, num_samples=44, foreground_fraction=1.0,
                                            background_iou_low=0.0, seed=None))
    np.testing.assert_array_equal(ours["num_valid"], [44, 44 - 7 - 2])
    np.testing.assert_array_equal(sampled["num_valid"], ours["num_valid"])
    assert 0 < ours["foreground"].sum() < ours["valid"].sum()  # both kinds present
    for b in range(2):
        valid = ours["valid"][b]
        rows = sampled["candidate_indices"][b][: valid.sum()]
        np.testing.assert_array_equal(rows, np.flatnonzero(valid)[np.argsort(~ours["foreground"][b][valid],
                                                                             kind="stable")])
        for key in ours:
            if key != "num_valid":
                np.testing.assert_array_equal(sampled[key][b][: valid.sum()], ours[key][b][rows], err_msg=key)
    assert not np.array_equal(sampled["candidate_indices"], ours["candidate_indices"])  # the order differs


# ---- per_roi_losses


def seed_per_roi_loss(logits, loc, labels, targets):
    """OHEMDataLayer.forward, line by line, for one image's rows: float64 softmax and eps."""
    flt_min = np.finfo(float).eps
    out = []
    for i, label in enumerate(labels):
        z = logits[i].astype(np.float64)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        loss = -1 * np.log(max(p[label], flt_min))
        if label > 0:
            for x in loc[i, label].astype(np.float64) - targets[i]:
                loss += 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5
        out.append(loss)
    return np.array(out)


def random_head_outputs(seed, batch=2, rows=9, classes=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (batch, rows, classes)).astype(np.float32)
    loc = rng.normal(0, 1, (batch, rows, classes, 4)).astype(np.float32)
    labels = rng.integers(0, classes, (batch, rows)).astype(np.int32)
    targets = rng.normal(0, 1, (batch, rows, 4)).astype(np.float32)
    valid = rng.uniform(size=(batch, rows)) < 0.8
    return logits, loc, labels, targets, valid


def test_per_roi_losses_equal_the_seed_formula():
    logits, loc, labels, targets, valid = random_head_outputs(1)
    expected = np.stack([seed_per_roi_loss(logits[b], loc[b], labels[b], targets[b]) for b in range(2)])
    for floor in (None, SEED_PROBABILITY_FLOOR):  # the cap does not bind on these values
        got = per_roi_losses(logits, loc, labels, targets, valid, probability_floor=floor).numpy()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-6)
        assert np.all(got[~valid] == -np.inf)
    # [B, N, C * 4] (the references' column layout) reads the same offsets.
    flat = per_roi_losses(logits, loc.reshape(2, 9, 16), labels, targets, valid).numpy()
    np.testing.assert_array_equal(flat, per_roi_losses(logits, loc, labels, targets, valid).numpy())


def test_background_rows_have_no_box_term():
    logits, loc, labels, targets, valid = random_head_outputs(2)
    labels[:, :3] = 0
    far = loc.copy()
    far[:, :3] += 1000.0  # background rows' offsets, every class: no effect
    far[:, 3:] += 1000.0 * (labels[:, 3:, None, None] == 0)
    a = per_roi_losses(logits, loc, labels, targets, valid).numpy()
    b = per_roi_losses(logits, far, labels, targets, valid).numpy()
    np.testing.assert_array_equal(a, b)
    ce = -tf.nn.log_softmax(logits).numpy()[..., 0]
    np.testing.assert_allclose(a[:, :3][valid[:, :3]], ce[:, :3][valid[:, :3]], rtol=1e-6)


def test_probability_floor_caps_the_cross_entropy_like_the_seed():
    """A label with probability e^-50 < 2.2e-16: the seed's -log(max(p, eps)) = -log(eps) =
    36.04; the default cross entropy is the exact 50 (+ log(1 + e^-50 ...))."""
    logits = np.float32([[[50.0, 0.0, 0.0]]])
    args = (logits, np.zeros((1, 1, 3, 4), np.float32), np.int32([[1]]), np.zeros((1, 1, 4), np.float32),
            np.ones((1, 1), bool))
    np.testing.assert_allclose(per_roi_losses(*args).numpy(), [[50.0]], rtol=1e-6)
    capped = per_roi_losses(*args, probability_floor=SEED_PROBABILITY_FLOOR).numpy()
    np.testing.assert_allclose(capped, [[-np.log(np.finfo(float).eps)]], rtol=1e-6)
    np.testing.assert_allclose(capped[0], seed_per_roi_loss(logits[0], args[1][0], [1], args[3][0]), rtol=1e-6)


def test_per_roi_losses_carry_no_gradient():
    logits, loc, labels, targets, valid = (tf.constant(x) for x in random_head_outputs(3))
    with tf.GradientTape() as tape:
        tape.watch([logits, loc])
        loss = tf.reduce_sum(tf.where(valid, per_roi_losses(logits, loc, labels, targets, valid), 0.0))
    assert tape.gradient(loss, [logits, loc]) == [None, None]


# ---- select_hard_examples


def select(loss, valid=None, labels=None, rois=None, **kwargs):
    loss = np.float32(loss)
    valid = np.ones(loss.shape, bool) if valid is None else np.asarray(valid)
    labels = np.ones(loss.shape, np.int32) if labels is None else np.int32(labels)
    rois = np.zeros(loss.shape + (4,), np.float32) if rois is None else np.float32(rois)
    return select_hard_examples(loss, rois, labels, valid, **kwargs).numpy()


def test_whole_minibatch_selection_can_take_one_image_only():
    loss = [[5, 4, 6, 7], [1, 2, 0.5, 3]]
    np.testing.assert_array_equal(select(loss, num_selected=3), [[1, 0, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(select(loss, num_selected=5), [[1, 1, 1, 1], [0, 0, 0, 1]])
    # per_image: the top 2 of each image.
    np.testing.assert_array_equal(select(loss, num_selected=2, per_image=True), [[0, 0, 1, 1], [0, 1, 0, 1]])


def test_ties_go_to_the_lower_flat_index():
    loss = np.ones((2, 3))
    np.testing.assert_array_equal(select(loss, num_selected=4), [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(select(loss, num_selected=2, per_image=True), [[1, 1, 0], [1, 1, 0]])
    loss = [[2, 1, 2], [2, 2, 3]]
    np.testing.assert_array_equal(select(loss, num_selected=3), [[1, 0, 1], [0, 0, 1]])  # 3, then 2s by index
    # The same under XLA, NMS included (equal losses: the lower index ranks first and suppresses).
    compiled = tf.function(lambda loss, rois: select_hard_examples(
        loss, rois, tf.ones([2, 3], tf.int32), tf.ones([2, 3], tf.bool), num_selected=3, nms_iou=0.7), jit_compile=True)
    rois = np.float32([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    np.testing.assert_array_equal(compiled(np.ones((2, 3), np.float32), np.stack([rois, rois])).numpy(),
                                  [[1, 0, 1], [1, 0, 0]])


def test_fewer_valid_rois_than_selected_and_invalid_rows_never_win():
    valid = [[True, False, True, False], [False, False, False, True]]
    loss = [[1, 100, 2, 100], [100, 100, 100, 0]]
    np.testing.assert_array_equal(select(loss, valid, num_selected=8), valid)
    np.testing.assert_array_equal(select(loss, valid, num_selected=3, per_image=True), valid)
    np.testing.assert_array_equal(select(loss, valid, num_selected=1), [[0, 0, 1, 0], [0, 0, 0, 0]])
    # Valid rows with -inf or NaN losses: still selectable (NaN first: a diverged head shows).
    loss = [[-np.inf, 1, np.nan, 0], [2, 2, 2, 2]]
    np.testing.assert_array_equal(select(loss, num_selected=2, per_image=True), [[0, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(select(loss, [[1, 0, 0, 0], [0] * 4], num_selected=3), [[1, 0, 0, 0], [0] * 4])


def test_per_roi_losses_then_selection_skip_invalid_rows():
    logits, loc, labels, targets, valid = random_head_outputs(4)
    logits[~valid] = 0.0
    logits[~valid, 0] = -1000.0  # invalid rows would be the hardest of all (if labelled 0)
    labels[~valid] = 0
    loss = per_roi_losses(logits, loc, labels, targets, valid)
    hard = select_hard_examples(loss, np.zeros((2, 9, 4), np.float32), labels, valid, num_selected=18).numpy()
    np.testing.assert_array_equal(hard, valid)


def test_nms_suppresses_an_overlapping_easier_roi_of_the_same_label_only():
    rois = [[[0, 0, 10, 10],        # label 1, loss 5: kept
             [0, 0, 10, 11],        # label 1, loss 4: IoU 100/110 > 0.7 with the first: suppressed
             [0, 0, 10, 11],        # label 2, loss 3: the same box, another label: kept
             [100, 100, 110, 110],  # label 1, loss 1: far away: kept
             [0, 0, 10, 10]]]       # label 1, loss 9, invalid: suppresses nothing
    labels = [[1, 1, 2, 1, 1]]
    loss = [[5, 4, 3, 1, 9]]
    valid = [[True] * 4 + [False]]
    np.testing.assert_array_equal(select(loss, valid, labels, rois, num_selected=3), [[1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(select(loss, valid, labels, rois, num_selected=3, nms_iou=0.7), [[1, 0, 1, 1, 0]])
    # Suppressed RoIs are not eligible: fewer than num_selected remain.
    np.testing.assert_array_equal(select(loss, valid, labels, rois, num_selected=5, nms_iou=0.7), [[1, 0, 1, 1, 0]])
    # Per image: the other image's RoIs (same boxes, same label) do not suppress these.
    two = select(np.concatenate([loss, loss]), np.concatenate([valid, valid]), np.concatenate([labels, labels]),
                 np.concatenate([rois, rois]), num_selected=6, nms_iou=0.7)
    np.testing.assert_array_equal(two, [[1, 0, 1, 1, 0]] * 2)


def test_nms_is_greedy_and_strict():
    """A chain: B overlaps A (IoU 80/120) and C (80/120), A and C overlap 60/140 < 0.5. Greedy
    keeps A, removes B, and so keeps C (B, suppressed, suppresses nothing). IoU == threshold
    (the last pair, 100/200) is kept."""
    rois = [[[0, 0, 10, 10], [0, 2, 10, 12], [0, 4, 10, 14], [50, 0, 60, 10], [50, 0, 60, 20]]]
    kept = diversity_nms(np.float32([[3, 2, 1, 5, 4]]), np.float32(rois), np.int32([[1] * 5]), np.ones((1, 5), bool),
                         iou_threshold=0.5).numpy()
    np.testing.assert_array_equal(kept, [[1, 0, 1, 1, 1]])
    # Equal losses: the lower index ranks first and suppresses the other.
    kept = diversity_nms(np.float32([[1, 1]]), np.float32([rois[0][:2]]), np.int32([[1, 1]]), np.ones((1, 2), bool),
                         iou_threshold=0.5).numpy()
    np.testing.assert_array_equal(kept, [[1, 0]])


def numpy_greedy_nms(loss, boxes, labels, valid, threshold):
    def iou(a, b):
        h = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
        w = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - h * w
        return h * w / union

    kept = np.zeros(len(loss), bool)
    for j in sorted(range(len(loss)), key=lambda i: (-loss[i], i)):
        if valid[j] and not any(kept[i] and labels[i] == labels[j] and iou(boxes[i], boxes[j]) > threshold
                                for i in range(len(loss))):
            kept[j] = True
    return kept


def test_nms_and_selection_equal_a_numpy_reference_on_random_rois():
    """Integer boxes (IoUs are ratios of small integers, no float32 decision flips), losses with
    ties, 3 labels, invalid rows."""
    rng = np.random.default_rng(5)
    yx = rng.integers(0, 30, (2, 60, 2))
    boxes = np.concatenate([yx, yx + rng.integers(4, 20, (2, 60, 2))], -1).astype(np.float32)
    loss = np.round(rng.uniform(0, 3, (2, 60)), 1).astype(np.float32)
    labels = rng.integers(0, 3, (2, 60)).astype(np.int32)
    valid = rng.uniform(size=(2, 60)) < 0.9
    kept = diversity_nms(loss, boxes, labels, valid, iou_threshold=0.5).numpy()
    expected = np.stack([numpy_greedy_nms(loss[b], boxes[b], labels[b], valid[b], 0.5) for b in range(2)])
    np.testing.assert_array_equal(kept, expected)
    assert 0 < kept.sum() < valid.sum()
    # Selection = the seed's sort over the kept rows of the flattened minibatch (ties: lower index).
    hard = select_hard_examples(loss, boxes, labels, valid, num_selected=25, nms_iou=0.5).numpy().ravel()
    flat = np.flatnonzero(expected.ravel())
    order = flat[np.lexsort((flat, -loss.ravel()[flat]))][:25]
    np.testing.assert_array_equal(np.flatnonzero(hard), np.sort(order))


# ---- gather_selected and the trainable pass's losses


def test_gather_selected_then_the_losses_are_the_mean_over_the_selected_rows():
    logits, loc, labels, targets, _ = random_head_outputs(6, rows=6, classes=3)
    labels[0, [1, 3, 4]] = [2, 0, 1]
    labels[1, 2] = 1
    mask = np.zeros((2, 6), bool)
    mask[0, [1, 3, 4]] = True
    mask[1, 2] = True
    g_logits, g_loc, g_labels, g_targets, valid = gather_selected(mask, logits, loc, labels, targets, num_selected=4)
    np.testing.assert_array_equal(valid.numpy(), [[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(g_labels.numpy(), [[2, 0, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(g_logits.numpy()[0, :3], logits[0, [1, 3, 4]])
    np.testing.assert_array_equal(g_loc.numpy()[1, 0], loc[1, 2])
    np.testing.assert_array_equal(g_targets.numpy()[1, 1:], 0.0)  # padding rows are zero
    assert g_loc.shape == (2, 4, 3, 4)

    terms = {"roi_cls": roi_cls_loss(g_logits, g_labels, valid),
             "roi_loc": roi_loc_loss(g_loc, g_targets, g_labels, valid)}
    # By hand: each selected row's cross entropy and own-class smooth L1 (sigma 1), foreground only.
    rows = [(0, 1), (0, 3), (0, 4), (1, 2)]
    ce = {r: -np.log(np.exp(logits[r]) / np.exp(logits[r]).sum())[labels[r]] for r in rows}
    d = {r: np.abs(loc[r][labels[r]] - targets[r]) for r in rows}
    box = {r: np.where(d[r] < 1, 0.5 * d[r] ** 2, d[r] - 0.5).sum() * (labels[r] > 0) for r in rows}
    # The seed: SoftmaxWithLoss mean and SmoothL1Loss / count over the selected RoIs of the minibatch.
    seed = normalize(terms, per_image=False)
    np.testing.assert_allclose(seed["roi_cls"].numpy(), np.mean([ce[r] for r in rows]), rtol=1e-6)
    np.testing.assert_allclose(seed["roi_loc"].numpy(), np.sum([box[r] for r in rows]) / 4, rtol=1e-6)
    # Per image (the OHEM repo: one image per iteration, iter_size 2): each image's mean, averaged.
    own = normalize(terms, per_image=True)
    np.testing.assert_allclose(own["roi_cls"].numpy(), (np.mean([ce[r] for r in rows[:3]]) + ce[rows[3]]) / 2,
                               rtol=1e-6)


def test_gather_selected_pads_when_there_are_fewer_rows_than_selected():
    mask = np.array([[False, True], [True, True]])
    rois, valid = gather_selected(mask, np.float32([[[1, 1, 2, 2], [3, 3, 4, 4]]] * 2), num_selected=3)
    np.testing.assert_array_equal(valid.numpy(), [[1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(rois.numpy()[0], [[3, 3, 4, 4], [0, 0, 0, 0], [0, 0, 0, 0]])


# ---- graph mode


@pytest.mark.parametrize("per_image, nms_iou", [(False, None), (True, 0.7)])
def test_compiles_with_xla_and_agrees_with_eager(per_image, nms_iou):
    rois, rois_valid, gts, classes, gt_valid = random_images(7)
    rng = np.random.default_rng(8)
    logits = rng.normal(0, 1, (2, 44, 5)).astype(np.float32)
    logits[:, ::3] = logits[:, 1::3][:, :15]  # equal losses somewhere: ties decided by index
    loc = rng.normal(0, 1, (2, 44, 5, 4)).astype(np.float32)

    def mine(rois, rois_valid, gts, classes, gt_valid, logits, loc):
        targets = all_roi_targets(rois, rois_valid, gts, classes, gt_valid)
        loss = per_roi_losses(logits, loc, targets["labels"], targets["box_targets"], targets["valid"])
        hard = select_hard_examples(loss, targets["rois_yxyx_px"], targets["labels"], targets["valid"],
                                    num_selected=16, per_image=per_image, nms_iou=nms_iou)
        return (targets, loss, hard) + gather_selected(hard, targets["rois_yxyx_px"], targets["labels"],
                                                        num_selected=16)

    args = (rois, rois_valid, gts, classes, gt_valid, logits, loc)
    eager = mine(*args)
    compiled = tf.function(mine, jit_compile=True)(*args)
    for key in eager[0]:
        atol = 1e-5 if key == "box_targets" else 0  # XLA's log and division may round in the last bit
        np.testing.assert_allclose(compiled[0][key].numpy(), eager[0][key].numpy(), rtol=0, atol=atol, err_msg=key)
    np.testing.assert_allclose(compiled[1].numpy(), eager[1].numpy(), rtol=1e-6)
    for got, want in zip(compiled[2:], eager[2:]):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert eager[2].numpy().sum() == (32 if per_image else 16)
