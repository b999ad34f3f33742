import numpy as np
import tensorflow as tf

import refinedet_tf
from detection_parity import assert_detections_agree
from golden import head_outputs, load, reference_config


def test_detections_equal_reference_top_500():
    """The same heads in, the same 500 detections out (up to float rounding of the softmax:
    detection_parity.py with a head error of 0)."""
    g = load("loss")  # detect.npz was computed from these very tensors
    d = load("detect")
    config = reference_config()
    anchors = refinedet_tf.generate_anchors(config)
    out = refinedet_tf.detect(head_outputs(g), anchors, config)
    out = {k: v.numpy() for k, v in out.items()}
    assert out["detection_boxes"].shape == (2, 500, 4)
    heads = head_outputs(g)
    for b in range(2):
        assert_detections_agree(
            {k: v[b] for k, v in out.items()}, {k: v[b] for k, v in heads.items()},
            d["detections"][d["detections"][:, 0] == b], {k: v[b] for k, v in heads.items()},
            anchors, config, max_excused=2)


def test_every_class_keeps_the_reference_boxes_without_keep_top_k():
    """With keep_top_k out of the way, each class's NMS survivors equal the reference's."""
    g, d = load("loss"), load("detect")
    total = int(d["num_detections_per_image"].max())
    config = reference_config(max_detections=total)
    anchors = refinedet_tf.generate_anchors(config)
    out = refinedet_tf.detect(head_outputs(g), anchors, config)
    out = {k: v.numpy() for k, v in out.items()}
    heads = head_outputs(g)
    for b in range(2):
        assert_detections_agree(
            {k: v[b] for k, v in out.items()}, {k: v[b] for k, v in heads.items()},
            d["detections"][d["detections"][:, 0] == b], {k: v[b] for k, v in heads.items()},
            anchors, config, max_excused=2)


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
