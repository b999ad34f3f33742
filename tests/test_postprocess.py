import numpy as np
import tensorflow as tf

import refinedet_tf
from golden import head_outputs, load, reference_config, swap_xy


def reference_best(detections, image, k):
    """The reference's k best rows of one image by score (its keep_top_k is a no-op)."""
    rows = detections[detections[:, 0] == image]
    return rows[np.argsort(-rows[:, 2], kind="stable")][:k]


def assert_same_detections(ours, reference_rows, atol_boxes=1e-5, atol_scores=1e-6):
    """Equal as sets of (class, score, box): equal scores are unordered ties in the reference
    (an unstable sort), so rows are compared after sorting by (score, class, box)."""
    n = int(ours["num_detections"])
    assert n == len(reference_rows)
    ours_rows = np.concatenate([
        ours["detection_classes"][:n, None].astype(np.float64),
        ours["detection_scores"][:n, None],
        ours["detection_boxes"][:n]], axis=1)
    ref_rows = np.concatenate([reference_rows[:, 1:3], swap_xy(reference_rows[:, 3:7])], axis=1)
    order = lambda r: np.lexsort((r[:, 3], r[:, 2], r[:, 0], -np.round(r[:, 1], 6)))
    a, b = ours_rows[order(ours_rows)], ref_rows[order(ref_rows)]
    np.testing.assert_array_equal(a[:, 0], b[:, 0])
    np.testing.assert_allclose(a[:, 1], b[:, 1], atol=atol_scores)
    np.testing.assert_allclose(a[:, 2:], b[:, 2:], atol=atol_boxes)
    # Our output is sorted by descending score.
    assert np.all(np.diff(ours["detection_scores"][:n]) <= 0)


def test_detections_equal_reference_top_500():
    g = load("loss")  # detect.npz was computed from these very tensors
    d = load("detect")
    config = reference_config()
    out = refinedet_tf.detect(head_outputs(g), refinedet_tf.generate_anchors(config), config)
    out = {k: v.numpy() for k, v in out.items()}
    assert out["detection_boxes"].shape == (2, 500, 4)
    for b in range(2):
        best = reference_best(d["detections"], b, 500)
        # The 500th and 501st reference scores differ, so "the 500 best" is one set.
        rows = reference_best(d["detections"], b, 501)
        assert rows[499, 2] > rows[500, 2]
        assert_same_detections({k: v[b] for k, v in out.items()}, best)


def test_every_class_keeps_the_reference_boxes_without_keep_top_k():
    """With keep_top_k out of the way, each class's NMS survivors equal the reference's."""
    g, d = load("loss"), load("detect")
    config = reference_config()
    total = int(d["num_detections_per_image"].max())
    out = refinedet_tf.detect(head_outputs(g), refinedet_tf.generate_anchors(config), config,
                              max_detections=total)
    classes = out["detection_classes"].numpy()
    for b in range(2):
        n = int(out["num_detections"][b])
        per_class = np.bincount(classes[b, :n], minlength=21)
        np.testing.assert_array_equal(per_class, d["num_detections_per_class"][b])


def test_keep_top_k_keeps_the_best_over_all_classes():
    g = load("loss")
    config = reference_config(max_detections=7)
    anchors = refinedet_tf.generate_anchors(config)
    small = refinedet_tf.detect(head_outputs(g), anchors, config)
    big = refinedet_tf.detect(head_outputs(g), anchors, config, max_detections=500)
    assert small["detection_boxes"].shape == (2, 7, 4)
    np.testing.assert_array_equal(small["num_detections"], [7, 7])
    np.testing.assert_allclose(small["detection_scores"], big["detection_scores"][:, :7])
    np.testing.assert_array_equal(small["detection_classes"], big["detection_classes"][:, :7])


def test_arm_filter_and_two_step_decoding_by_hand():
    config = refinedet_tf.get_preset("vgg16_320", num_classes=3)
    anchors = np.array([[0.2, 0.2, 0.4, 0.4], [0.5, 0.5, 0.9, 0.7]], np.float32)
    arm_loc = np.array([[[0.5, -0.5, 0.2, 0.0], [0, 0, 0, 0]]], np.float32)
    odm_loc = np.array([[[1.0, 0.0, 0.0, -0.5], [0, 0, 0, 0]]], np.float32)
    arm_conf = np.array([[[0.0, 2.0], [6.0, 0.0]]], np.float32)  # 2nd: P(object) = 0.0025 <= 0.01
    odm_conf = np.array([[[0.0, 3.0, 1.0], [0.0, 5.0, 0.0]]], np.float32)
    out = refinedet_tf.decode(
        {"arm_loc": arm_loc, "arm_conf": arm_conf, "odm_loc": odm_loc, "odm_conf": odm_conf}, anchors, config)
    # Anchor 0: centre (0.3, 0.3), size 0.2 -> refined centre (0.3 + 0.5*0.1*0.2, 0.3 - 0.5*0.1*0.2)
    # = (0.31, 0.29), h = 0.2*exp(0.04), w = 0.2.
    h = 0.2 * np.exp(0.2 * 0.2)
    np.testing.assert_allclose(out["refined_anchors"][0, 0], [0.31 - h / 2, 0.19, 0.31 + h / 2, 0.39], atol=1e-6)
    # ODM decodes against the refined anchor: cy += 1.0*0.1*h, w *= exp(-0.5*0.2).
    w = 0.2 * np.exp(-0.1)
    cy = 0.31 + 0.1 * h
    np.testing.assert_allclose(out["boxes"][0, 0], [cy - h / 2, 0.29 - w / 2, cy + h / 2, 0.29 + w / 2], atol=1e-6)
    softmax = np.exp([0.0, 3.0, 1.0]) / np.exp([0.0, 3.0, 1.0]).sum()
    np.testing.assert_allclose(out["scores"][0, 0], softmax, rtol=1e-6)
    np.testing.assert_array_equal(out["scores"][0, 1], [0, 0, 0])  # filtered by the ARM


def test_decode_compiles_with_xla():
    g = load("loss")
    config = reference_config()
    anchors = refinedet_tf.generate_anchors(config)
    compiled = tf.function(lambda o: refinedet_tf.decode(o, anchors, config), jit_compile=True)
    eager = refinedet_tf.decode(head_outputs(g), anchors, config)
    xla = compiled(head_outputs(g))
    for k in eager:
        np.testing.assert_allclose(xla[k], eager[k], rtol=1e-5, atol=1e-6)


def test_detect_runs_inside_tf_function_with_a_symbolic_batch():
    g = load("loss")
    config = reference_config(max_detections=20)
    anchors = refinedet_tf.generate_anchors(config)
    spec = {k: tf.TensorSpec([None] + list(v.shape[1:]), tf.float32) for k, v in head_outputs(g).items()}
    graph = tf.function(lambda o: refinedet_tf.detect(o, anchors, config), input_signature=[spec])
    out = graph(head_outputs(g))
    eager = refinedet_tf.detect(head_outputs(g), anchors, config)
    np.testing.assert_allclose(out["detection_scores"], eager["detection_scores"])
