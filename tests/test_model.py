import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import refinedet_tf


@pytest.mark.parametrize("name", refinedet_tf.preset_names())
def test_every_preset_builds_with_outputs_in_anchor_order(name):
    config = refinedet_tf.get_preset(name)
    model = refinedet_tf.build_refinedet(config)
    num_anchors = refinedet_tf.generate_anchors(config).shape[0]
    shapes = {k: tuple(v.shape) for k, v in model.output.items()}
    assert shapes == {"arm_loc": (None, num_anchors, 4), "arm_conf": (None, num_anchors, 2),
                      "odm_loc": (None, num_anchors, 4), "odm_conf": (None, num_anchors, config.num_classes)}
    assert all(v.dtype == "float32" for v in model.output.values())


def test_vgg16_320_parameter_count_equals_reference():
    model = refinedet_tf.build_refinedet(refinedet_tf.get_preset("vgg16_320"))
    assert model.count_params() == 34_440_884  # RefineDet.PyTorch build_refinedet('train', 320, 21)


@pytest.mark.parametrize("name, size", [("vgg16_320", 256), ("mobilenetv2_320", 256), ("resnet50_320", 256)])
def test_gradient_reaches_every_trainable_weight(name, size):
    config = refinedet_tf.get_preset(name, image_size=size, num_classes=4)
    model = refinedet_tf.build_refinedet(config)
    # From scratch, residual branches end in a zero-gamma BatchNorm (backbones/init.py), which
    # rightly stops their convs' gradient at step 0; this test is about wiring, so undo it.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(np.ones(layer.gamma.shape, np.float32))
    anchors = refinedet_tf.generate_anchors(config)
    images = tf.random.stateless_normal([2, size, size, 3], seed=[1, 2]) * 50.0
    # One box per level (anchor sizes 0.125, 0.25, 0.5, 1.0 at 256 px), so every head has
    # positives: a head without any selected anchor legitimately gets a zero gradient.
    boxes = tf.constant([[[0.05, 0.05, 0.17, 0.17], [0.5, 0.5, 0.75, 0.75],
                          [0.2, 0.2, 0.8, 0.8], [0.0, 0.0, 1.0, 1.0]]] * 2)
    classes = tf.constant([[1, 3, 2, 1]] * 2)
    mask = tf.constant([[True, True, True, True], [True, True, True, False]])
    with tf.GradientTape() as tape:
        losses = refinedet_tf.refinedet_loss(model(images, training=True), boxes, classes, mask, anchors, config)
    grads = tape.gradient(losses["total"], model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not missing, f"no gradient for {missing}"
    zero = [v.path for v, g in zip(model.trainable_variables, grads) if not np.any(g.numpy())]
    assert not zero, f"all-zero gradient for {zero}"


def test_heads_flatten_in_reference_order():
    """Output row = ((level offset + row * W + column) * 3 + anchor): a bias-only ARM head proves it."""
    config = refinedet_tf.get_preset("vgg16_320", image_size=128)
    model = refinedet_tf.build_refinedet(config)
    layer = model.get_layer("arm_loc_1")  # stride 16 -> 8x8 map
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.arange(12, dtype=np.float32)])
    out = model(np.zeros([1, 128, 128, 3], np.float32))["arm_loc"].numpy()[0]
    start = 16 * 16 * 3  # level 0 of a 128 px image is 16x16
    level1 = out[start:start + 8 * 8 * 3].reshape(8, 8, 3, 4)
    np.testing.assert_array_equal(level1[5, 2], np.arange(12).reshape(3, 4))


def test_tcb_batch_norm_normalizes_every_tcb_conv_and_drops_their_biases():
    config = refinedet_tf.get_preset("mobilenetv2_lite_192", image_size=128)
    assert config.tcb_batch_norm
    plain = refinedet_tf.build_refinedet(dataclasses.replace(config, tcb_batch_norm=False))
    normed = refinedet_tf.build_refinedet(config)

    def tcb_layers(model, kind):
        return {layer.name for layer in model.layers if layer.name.startswith("tcb_") and isinstance(layer, kind)}

    convs = tcb_layers(plain, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))
    assert len(convs) == 4 * 3 + 3  # three convs per level, a deconv for each of the three lower levels
    assert tcb_layers(plain, keras.layers.BatchNormalization) == set()
    assert tcb_layers(normed, keras.layers.BatchNormalization) == {f"{name}_bn" for name in convs}
    for name in convs:
        assert plain.get_layer(name).use_bias and not normed.get_layer(name).use_bias
    # Same input/output contract; BN adds 2 trainable (and 2 moving) values per channel and drops
    # the bias: one extra value per channel of each of the 15 layers.
    channels = config.tcb_channels

    def trainable(m):
        return sum(int(np.prod(w.shape)) for w in m.trainable_weights)

    assert trainable(normed) - trainable(plain) == 15 * channels
    out = normed(tf.zeros([2, 128, 128, 3]), training=True)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in plain(tf.zeros([2, 128, 128, 3])).items()}
