"""faster_rcnn/losses.py: the four losses of simple-faster-rcnn-pytorch's trainer, batched with
masks, finite where the reference divides by zero, normalized per image or globally, shared out
over replicas.

Fixture: tests/data/golden_frcnn/losses.npz (a byte-for-byte copy of the reference fixture; README
section "losses.npz"): one image, 300 RPN anchors (labels -1 / 0 / 1), 64 RoIs (16 foreground).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.faster_rcnn.losses import (
    LossTerm,
    global_mean,
    normalize,
    per_image_mean,
    roi_cls_loss,
    roi_loc_loss,
    rpn_cls_loss,
    rpn_loc_loss,
    smooth_l1,
)

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_frcnn")


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(GOLDEN, "losses.npz")) as data:
        return {k: data[k] for k in data.files}


def batch(*images):
    return np.stack(images)


def four_terms(g):
    """The four LossTerms of the fixture's image as a batch of 1."""
    valid = np.ones((1, 64), bool)
    return {
        "rpn_cls": rpn_cls_loss(g["rpn_score"][None], g["rpn_label"][None]),
        "rpn_loc": rpn_loc_loss(g["rpn_pred_loc"][None], g["rpn_gt_loc"][None], g["rpn_label"][None],
                                sigma=float(g["rpn_sigma"])),
        "roi_cls": roi_cls_loss(g["roi_score"][None], g["roi_label"][None], valid),
        "roi_loc": roi_loc_loss(g["roi_cls_loc"][None], g["roi_gt_loc"][None], g["roi_label"][None], valid,
                                sigma=float(g["roi_sigma"])),
    }


def test_the_four_losses_equal_the_reference(golden):
    g = golden
    terms = four_terms(g)
    losses = {k: v.numpy() for k, v in normalize(terms).items()}
    np.testing.assert_allclose(losses["rpn_loc"], g["rpn_loc_loss"], rtol=1e-5)
    np.testing.assert_allclose(losses["rpn_cls"], g["rpn_cls_loss"], rtol=1e-5)
    np.testing.assert_allclose(losses["roi_loc"], g["roi_loc_loss"], rtol=1e-5)
    np.testing.assert_allclose(losses["roi_cls"], g["roi_cls_loss"], rtol=1e-5)
    np.testing.assert_allclose(
        losses["total"], g["rpn_loc_loss"] + g["rpn_cls_loss"] + g["roi_loc_loss"] + g["roi_cls_loss"], rtol=1e-5)
    # The unnormalized parts: sums and the counts they are divided by.
    np.testing.assert_allclose(terms["rpn_loc"].sum.numpy(), [g["rpn_smooth_l1_sum"]], rtol=1e-5)
    np.testing.assert_array_equal(terms["rpn_loc"].count.numpy(), [g["rpn_n_nonignored"]])  # 154, not the positives
    np.testing.assert_array_equal(terms["rpn_cls"].count.numpy(), [g["rpn_n_nonignored"]])
    np.testing.assert_allclose(terms["roi_loc"].sum.numpy(), [g["roi_smooth_l1_sum"]], rtol=1e-5)
    np.testing.assert_array_equal(terms["roi_loc"].count.numpy(), [64])  # all samples, not the 16 fg
    # Global normalization equals per-image normalization for one image.
    for name, term in terms.items():
        np.testing.assert_allclose(global_mean(term).numpy(), losses[name], rtol=1e-6)


def test_roi_loc_reads_each_rois_own_class_outputs(golden):
    """[B, R, C * 4] and [B, R, C, 4] give the same loss; the rows used are the trainer's
    `roi_cls_loc.view(R, -1, 4)[arange(R), label]` (the fixture's `roi_loc`)."""
    g = golden
    valid = np.ones((1, 64), bool)
    flat = roi_loc_loss(g["roi_cls_loc"][None], g["roi_gt_loc"][None], g["roi_label"][None], valid)
    split = roi_loc_loss(g["roi_cls_loc"].reshape(1, 64, 21, 4), g["roi_gt_loc"][None], g["roi_label"][None], valid)
    np.testing.assert_array_equal(flat.sum.numpy(), split.sum.numpy())
    # The same loss from the reference's gathered rows, through the RPN function (class-agnostic,
    # sigma 1, labels > 0 positive, >= 0 counted): the gather picks exactly those rows.
    gathered = rpn_loc_loss(g["roi_loc"][None], g["roi_gt_loc"][None], g["roi_label"][None], sigma=1.0)
    np.testing.assert_allclose(flat.sum.numpy(), gathered.sum.numpy(), rtol=1e-6)
    np.testing.assert_allclose(gathered.sum.numpy(), [g["roi_smooth_l1_sum"]], rtol=1e-5)


def test_smooth_l1_branches():
    """sigma 3: 4.5 d^2 below |d| = 1/9 (strict), |d| - 1/18 from there on; continuous."""
    d = tf.constant([0.0, 0.05, -0.1, 1.0 / 9.0, 0.2, -2.0])
    np.testing.assert_allclose(
        smooth_l1(d, 3.0).numpy(),
        [0.0, 4.5 * 0.0025, 4.5 * 0.01, 1.0 / 9.0 - 1.0 / 18.0, 0.2 - 1.0 / 18.0, 2.0 - 1.0 / 18.0], rtol=1e-6)
    np.testing.assert_allclose(smooth_l1(d, 1.0).numpy(), [0.0, 0.00125, 0.005, 0.5 / 81.0, 0.02, 1.5], rtol=1e-6)


def test_all_ignored_is_finite_where_the_reference_is_nan(golden):
    """The reference's `_fast_rcnn_loc_loss` on 8 anchors all labelled -1 divides 0 by 0: NaN
    (the fixture). Ours: count 0, loss 0, gradient 0 (and the same for the other three losses,
    and for an image without valid RoIs)."""
    assert np.isnan(golden["all_ignored_loc_loss"])
    rng = np.random.default_rng(0)
    pred = tf.constant(rng.normal(size=(1, 8, 4)).astype(np.float32))
    logits = tf.constant(rng.normal(size=(1, 8, 2)).astype(np.float32))
    target = np.full((1, 8, 4), np.inf, np.float32)  # ignored targets may be anything
    labels = -np.ones((1, 8), np.int64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([pred, logits])
        loc = rpn_loc_loss(pred, target, labels)
        cls = rpn_cls_loss(logits, labels)
        loc_loss, cls_loss = per_image_mean(loc), per_image_mean(cls)
    np.testing.assert_array_equal(loc.count.numpy(), [0.0])
    assert loc_loss.numpy() == 0.0 and cls_loss.numpy() == 0.0
    for loss, var in [(loc_loss, pred), (cls_loss, logits)]:
        grad = tape.gradient(loss, var).numpy()
        assert np.isfinite(grad).all() and not grad.any()
    no_rois = np.zeros((1, 6), bool)
    head = normalize({
        "roi_cls": roi_cls_loss(rng.normal(size=(1, 6, 21)).astype(np.float32), np.full((1, 6), 99), no_rois),
        "roi_loc": roi_loc_loss(rng.normal(size=(1, 6, 84)).astype(np.float32), target[:, :6], np.full((1, 6), 99),
                                no_rois),
    })
    assert all(v.numpy() == 0.0 for v in head.values())


def test_unused_non_finite_targets_do_not_poison_the_loss_or_gradient(golden):
    """Ignored and negative anchors' targets (label <= 0) and background RoIs' may be non-finite
    (a zero-size box encodes to log(0)): the loss and its gradient do not see them."""
    g = golden
    target = g["rpn_gt_loc"].copy()
    target[g["rpn_label"] <= 0] = -np.inf
    pred = tf.constant(g["rpn_pred_loc"][None])
    with tf.GradientTape() as tape:
        tape.watch(pred)
        loss = per_image_mean(rpn_loc_loss(pred, target[None], g["rpn_label"][None]))
    np.testing.assert_allclose(loss.numpy(), g["rpn_loc_loss"], rtol=1e-5)
    assert np.isfinite(tape.gradient(loss, pred).numpy()).all()
    roi_target = g["roi_gt_loc"].copy()
    roi_target[g["roi_label"] == 0] = np.nan
    roi = roi_loc_loss(g["roi_cls_loc"][None], roi_target[None], g["roi_label"][None], np.ones((1, 64), bool))
    np.testing.assert_allclose(per_image_mean(roi).numpy(), g["roi_loc_loss"], rtol=1e-5)


def test_per_image_normalization_then_the_batch_mean(golden):
    """Image 0: the fixture. Image 1: a fixture image with 3/4 of its sampled anchors ignored
    (another count). Image 2: nothing sampled, no valid RoI (padding): left out of the mean.
    per_image_mean = mean of the two images' own losses; global_mean = sums / counts."""
    g = golden
    rng = np.random.default_rng(1)
    label1 = np.where(rng.uniform(size=300) < 0.75, -1, g["rpn_label"])
    pred1 = g["rpn_pred_loc"][rng.permutation(300)]
    labels = batch(g["rpn_label"], label1, -np.ones(300, np.int64))
    preds = batch(g["rpn_pred_loc"], pred1, pred1)
    targets = batch(g["rpn_gt_loc"], g["rpn_gt_loc"], g["rpn_gt_loc"])
    term = rpn_loc_loss(preds, targets, labels)
    alone = [rpn_loc_loss(preds[b:b + 1], targets[b:b + 1], labels[b:b + 1]) for b in range(2)]
    per_image = [a.sum.numpy()[0] / a.count.numpy()[0] for a in alone]
    np.testing.assert_allclose(per_image[0], g["rpn_loc_loss"], rtol=1e-5)
    np.testing.assert_allclose(per_image_mean(term).numpy(), np.mean(per_image), rtol=1e-6)
    np.testing.assert_allclose(global_mean(term).numpy(),
                               (alone[0].sum + alone[1].sum).numpy()[0] / (alone[0].count + alone[1].count).numpy()[0],
                               rtol=1e-6)
    np.testing.assert_array_equal(term.count.numpy(), [154, (label1 >= 0).sum(), 0])

    # The head, with padding RoIs in image 1 (labels out of range there: never read).
    valid = batch(np.ones(64, bool), np.arange(64) < 40)
    head_labels = batch(g["roi_label"], np.where(np.arange(64) < 40, g["roi_label"][::-1], 1000))
    cls = roi_cls_loss(batch(g["roi_score"], g["roi_score"]), head_labels, valid)
    loc = roi_loc_loss(batch(g["roi_cls_loc"], g["roi_cls_loc"]), batch(g["roi_gt_loc"], g["roi_gt_loc"]),
                       head_labels, valid)
    np.testing.assert_array_equal(cls.count.numpy(), [64, 40])
    second_cls = roi_cls_loss(g["roi_score"][None, :40], g["roi_label"][::-1][None, :40], np.ones((1, 40), bool))
    np.testing.assert_allclose(per_image_mean(cls).numpy(),
                               (g["roi_cls_loss"] + per_image_mean(second_cls).numpy()) / 2, rtol=1e-5)
    second_loc = roi_loc_loss(g["roi_cls_loc"][None, :40], g["roi_gt_loc"][None, :40], g["roi_label"][::-1][None, :40],
                              np.ones((1, 40), bool))
    np.testing.assert_allclose(per_image_mean(loc).numpy(),
                               (g["roi_loc_loss"] + per_image_mean(second_loc).numpy()) / 2, rtol=1e-5)


@pytest.mark.parametrize("per_image", [True, False])
def test_replica_shares_add_up_to_the_single_device_loss(golden, per_image):
    """Two replicas, one image each: with global_sum adding the other replica's normalizers, the
    two shares sum to what one device computes on both images (the trainer sums the shares)."""
    g = golden
    rng = np.random.default_rng(2)
    labels = batch(g["rpn_label"], np.where(rng.uniform(size=300) < 0.5, -1, g["rpn_label"][::-1]))
    logits = batch(g["rpn_score"], g["rpn_score"][rng.permutation(300)])
    preds = batch(g["rpn_pred_loc"], g["rpn_pred_loc"][::-1])
    targets = batch(g["rpn_gt_loc"], g["rpn_gt_loc"])

    def terms(sl):
        return {"rpn_cls": rpn_cls_loss(logits[sl], labels[sl]),
                "rpn_loc": rpn_loc_loss(preds[sl], targets[sl], labels[sl])}

    single = normalize(terms(slice(0, 2)), per_image=per_image)
    replicas = [terms(slice(0, 1)), terms(slice(1, 2))]
    local = []  # what each replica hands to global_sum: its own normalizers
    for t in replicas:
        normalize(t, global_sum=lambda x: local.append(x) or x, per_image=per_image)
    shares = [normalize(t, global_sum=lambda x: local[0] + local[1], per_image=per_image) for t in replicas]
    for name in ("rpn_cls", "rpn_loc", "total"):
        np.testing.assert_allclose((shares[0][name] + shares[1][name]).numpy(), single[name].numpy(), rtol=1e-6)
    if per_image:  # the mean of the two images' own losses
        own = [normalize(t)["rpn_loc"].numpy() for t in replicas]
        np.testing.assert_allclose(single["rpn_loc"].numpy(), np.mean(own), rtol=1e-6)


def test_compiles_with_xla(golden):
    """Same values under XLA (reductions may be ordered differently: float32 rounding)."""
    g = golden
    valid = np.ones((1, 64), bool)

    def fn(rpn_score, rpn_pred, rpn_gt, rpn_label, roi_score, roi_cls_loc, roi_gt, roi_label, roi_valid):
        return normalize({
            "rpn_cls": rpn_cls_loss(rpn_score, rpn_label),
            "rpn_loc": rpn_loc_loss(rpn_pred, rpn_gt, rpn_label),
            "roi_cls": roi_cls_loss(roi_score, roi_label, roi_valid),
            "roi_loc": roi_loc_loss(roi_cls_loc, roi_gt, roi_label, roi_valid),
        })

    args = (g["rpn_score"][None], g["rpn_pred_loc"][None], g["rpn_gt_loc"][None], g["rpn_label"][None].astype(np.int32),
            g["roi_score"][None], g["roi_cls_loc"][None], g["roi_gt_loc"][None], g["roi_label"][None].astype(np.int32),
            valid)
    eager = fn(*args)
    compiled = tf.function(fn, jit_compile=True)(*args)
    for name in eager:
        np.testing.assert_allclose(compiled[name].numpy(), eager[name].numpy(), rtol=1e-6)
    np.testing.assert_allclose(compiled["rpn_loc"].numpy(), g["rpn_loc_loss"], rtol=1e-5)
    np.testing.assert_allclose(compiled["roi_cls"].numpy(), g["roi_cls_loss"], rtol=1e-5)


def test_loss_term_is_unreduced_per_image(golden):
    g = golden
    term = rpn_cls_loss(batch(g["rpn_score"], g["rpn_score"]), batch(g["rpn_label"], g["rpn_label"]))
    assert isinstance(term, LossTerm)
    assert term.sum.shape == (2,) and term.count.shape == (2,)
    assert term.sum.dtype == tf.float32 and term.count.dtype == tf.float32
