import collections
import re

import numpy as np
import pytest
import tensorflow as tf

import refinedet_tf
from golden import ground_truth, head_outputs, load, reference_config
from refinedet_tf.losses import normalize_loss_terms, refinedet_loss_terms

REFERENCE = {"arm_loc": "arm_loss_l", "arm_conf": "arm_loss_c", "odm_loc": "odm_loss_l", "odm_conf": "odm_loss_c"}


@pytest.fixture(scope="module")
def fixture():
    g = load("loss")
    config = reference_config(negative_filtering="pytorch")
    return g, config, refinedet_tf.generate_anchors(config), head_outputs(g), ground_truth(g)


def test_losses_equal_reference_pytorch_filtering(fixture):
    g, config, anchors, outputs, (boxes, classes, mask) = fixture
    terms = refinedet_loss_terms(outputs, boxes, classes, mask, anchors, config)
    losses = normalize_loss_terms(terms, config)
    for ours, ref in REFERENCE.items():
        np.testing.assert_allclose(losses[ours], g[ref], rtol=1e-4, err_msg=ours)
    np.testing.assert_allclose(losses["total"], sum(float(g[r]) for r in REFERENCE.values()), rtol=1e-4)
    for stage in ("arm", "odm"):
        t = terms[stage]
        np.testing.assert_array_equal(t["positive"].numpy().sum(1), g[f"{stage}_num_pos"])
        np.testing.assert_array_equal(t["negative"].numpy().sum(1), g[f"{stage}_num_neg"])
        np.testing.assert_array_equal(t["positive"], g[f"{stage}_pos_mask"])
        assert int(t["num_pos"]) == g[f"{stage}_normalizer_N"]
        # The mined sets are unique here: the reference's margin between the last selected and
        # the first rejected negative is > 0 in every image (8.5e-4 at the smallest).
        assert np.all(g[f"{stage}_neg_tie_margin"] > 0)
        np.testing.assert_array_equal(t["negative"], g[f"{stage}_neg_mask"])
    np.testing.assert_allclose(terms["targets"]["arm_objectness"], g["arm_objectness"], atol=1e-6)


def test_caffe_filtering_drops_low_objectness_anchors_from_negatives_too(fixture):
    g, _, anchors, outputs, (boxes, classes, mask) = fixture
    caffe = reference_config(negative_filtering="caffe")
    terms = refinedet_loss_terms(outputs, boxes, classes, mask, anchors, caffe)
    low = g["arm_objectness"] <= 0.01
    assert not np.any(terms["odm"]["negative"].numpy() & low)
    assert not np.any(terms["odm"]["positive"].numpy() & low)
    np.testing.assert_array_equal(terms["odm"]["positive"], g["odm_pos_mask"])  # same positives
    # Matched anchors dropped by theta are neither positive nor negative in Caffe's variant.
    matched = terms["targets"]["odm_matched"].numpy()
    assert (matched & low).sum() == g["odm_num_dropped_by_theta"].sum() == 3
    # The ARM has no theta filter: identical to the PyTorch variant.
    pt = refinedet_loss_terms(outputs, boxes, classes, mask, anchors, reference_config(negative_filtering="pytorch"))
    np.testing.assert_array_equal(terms["arm"]["negative"], pt["arm"]["negative"])


def _random_outputs(batch, num_anchors, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "arm_loc": tf.Variable(rng.standard_normal((batch, num_anchors, 4)).astype(np.float32)),
        "arm_conf": tf.Variable(rng.standard_normal((batch, num_anchors, 2)).astype(np.float32)),
        "odm_loc": tf.Variable(rng.standard_normal((batch, num_anchors, 4)).astype(np.float32)),
        "odm_conf": tf.Variable(rng.standard_normal((batch, num_anchors, num_classes)).astype(np.float32)),
    }


@pytest.mark.parametrize("mining", ["hard_negative", "ohem", "focal"])
def test_no_positives_gives_finite_losses_and_gradients(mining):
    config = refinedet_tf.get_preset("vgg16_320", mining=mining)
    anchors = refinedet_tf.generate_anchors(config)
    outputs = _random_outputs(2, anchors.shape[0], 21)
    with tf.GradientTape() as tape:
        losses = refinedet_tf.refinedet_loss(
            outputs, tf.zeros([2, 4, 4]), tf.zeros([2, 4], tf.int32), tf.zeros([2, 4], tf.bool), anchors, config)
    grads = tape.gradient(losses["total"], list(outputs.values()))
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert all(g is None or np.all(np.isfinite(g.numpy())) for g in grads)
    # No positives: no location loss, and (hard negative mining) no mined negatives either.
    assert float(losses["arm_loc"]) == 0.0 and float(losses["odm_loc"]) == 0.0
    if mining == "hard_negative":
        assert float(losses["total"]) == 0.0


def test_focal_with_gamma_zero_is_weighted_cross_entropy(fixture):
    _, _, anchors, outputs, (boxes, classes, mask) = fixture
    focal = reference_config(mining="focal", focal_gamma=0.0, focal_alpha=0.5)
    terms = refinedet_loss_terms(outputs, boxes, classes, mask, anchors, focal)
    t = terms["targets"]
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(t["arm_conf_t"], outputs["arm_conf"]).numpy()
    np.testing.assert_allclose(terms["arm"]["conf"], 0.5 * ce.sum(), rtol=1e-5)


def test_ohem_keeps_at_most_n_examples_per_image(fixture):
    _, _, anchors, outputs, (boxes, classes, mask) = fixture
    for nms in (0.0, 0.7):
        config = reference_config(mining="ohem", ohem_examples_per_image=64, ohem_nms_iou=nms)
        terms = refinedet_loss_terms(outputs, boxes, classes, mask, anchors, config)
        for stage in ("arm", "odm"):
            selected = (terms[stage]["positive"] | terms[stage]["negative"]).numpy().sum(1)
            assert np.all(selected <= 64) and np.all(selected > 0)
    # Without NMS the selection is exactly the 64 highest-loss anchors of each image.
    config = reference_config(mining="ohem", ohem_examples_per_image=64)
    terms = refinedet_loss_terms(outputs, boxes, classes, mask, anchors, config)
    np.testing.assert_array_equal((terms["arm"]["positive"] | terms["arm"]["negative"]).numpy().sum(1), [64, 64])


def test_zero_area_box_is_ignored_like_padding(fixture):
    _, config, anchors, outputs, (boxes, classes, mask) = fixture
    base = refinedet_tf.refinedet_loss(outputs, boxes, classes, mask, anchors, config)
    boxes2 = boxes.copy()
    boxes2[1, 2] = [0.4, 0.4, 0.4, 0.6]  # zero height, in the padded slot made valid
    mask2 = mask.copy()
    mask2[1, 2] = True
    classes2 = classes.copy()
    classes2[1, 2] = 3
    with_degenerate = refinedet_tf.refinedet_loss(outputs, boxes2, classes2, mask2, anchors, config)
    for k in base:
        assert float(base[k]) == float(with_degenerate[k])


def test_bad_ground_truth_is_a_clear_error(fixture):
    _, config, anchors, outputs, (boxes, classes, mask) = fixture

    def loss(b, c, m):
        return refinedet_tf.refinedet_loss(outputs, b, c, m, anchors, config)

    with pytest.raises(ValueError, match=r"expected gt_boxes_yxyx \[B, G, 4\], got shape \(2, 3, 3\)"):
        loss(boxes[..., :3], classes, mask)
    with pytest.raises(ValueError, match=r"expected gt_boxes_yxyx \[B, G, 4\]"):
        loss(boxes[0], classes, mask)
    with pytest.raises(TypeError, match="expected gt_classes int32, got float32"):
        loss(boxes, classes.astype(np.float32), mask)
    with pytest.raises(ValueError, match=r"expected gt_mask \[B, G\] bool"):
        loss(boxes, classes, mask.astype(np.int32))
    flipped = boxes.copy()
    flipped[0, 0] = flipped[0, 0][[2, 1, 0, 3]]
    with pytest.raises(tf.errors.InvalidArgumentError, match="ymax < ymin"):
        loss(flipped, classes, mask)
    nan = boxes.copy()
    nan[0, 1, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        loss(nan, classes, mask)
    bad_class = classes.copy()
    bad_class[0, 0] = 21
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"gt_classes of a valid box must be in 1..20"):
        loss(boxes, bad_class, mask)
    # Padding may hold anything: it is never looked at.
    junk = boxes.copy()
    junk[1, 2] = [np.nan, 1, 0, 0]
    loss(junk, classes, mask)


@pytest.mark.parametrize("mining", ["hard_negative", "ohem", "focal"])
def test_loss_compiles_with_xla_and_matches_eager(fixture, mining):
    _, _, anchors, outputs, (boxes, classes, mask) = fixture
    config = reference_config(negative_filtering="pytorch", mining=mining,
                              ohem_nms_iou=0.7 if mining == "ohem" else 0.0)

    @tf.function(jit_compile=True)
    def compiled(outputs, boxes, classes, mask):
        return refinedet_tf.refinedet_loss(outputs, boxes, classes, mask, anchors, config)

    eager = refinedet_tf.refinedet_loss(outputs, boxes, classes, mask, anchors, config)
    xla = compiled(outputs, boxes, classes, mask)
    for k in eager:
        np.testing.assert_allclose(xla[k], eager[k], rtol=1e-5, err_msg=k)
    # "Batched, no Python loop over images or boxes": a loop would be unrolled into one copy of
    # its body per image or box, so the graph would grow with B and M. Twice the images and
    # twice the (padded) boxes must give exactly the same XLA instructions, only wider.
    twice = {k: np.concatenate([v, v]) for k, v in outputs.items()}

    def pad(x):
        return np.concatenate([np.concatenate([x, np.zeros_like(x)], axis=1)] * 2)

    small = _hlo_opcodes(compiled, outputs, boxes, classes, mask)
    large = _hlo_opcodes(compiled, twice, pad(boxes), pad(classes), pad(mask))
    assert sum(small.values()) > 500 and "reduce" in small  # the pattern did parse the module
    assert large == small, {op: (small[op], large[op]) for op in small | large if small[op] != large[op]}


def _hlo_opcodes(function, *args):
    """Opcode -> count in the HLO of a jit-compiled tf.function for these arguments."""
    hlo = function.experimental_get_compiler_ir(*args)(stage="hlo")
    # An instruction: `[ROOT] %name = <shape, maybe a tuple> opcode(operands), attributes`.
    pattern = r"^\s*(?:ROOT\s+)?%?[\w.-]+\s*=\s*.*?\b([a-z][a-z0-9-]*)\("
    return collections.Counter(re.findall(pattern, hlo, flags=re.MULTILINE))
