"""Zero-gamma initialization of residual branches when a backbone trains from scratch."""

import keras
import numpy as np
import pytest

import refinedet_tf
from refinedet_tf.backbones.init import zero_residual_gammas


def _zero_gamma_layers(model):
    return sorted(layer.name for layer in model.layers
                  if isinstance(layer, keras.layers.BatchNormalization) and not np.any(layer.gamma.numpy()))


@pytest.mark.parametrize("name, expected", [
    # MobileNetV2: blocks 2, 4-5, 7-9, 11-12, 14-15 have a residual connection.
    ("mobilenetv2_320", [f"block_{k}_project_BN" for k in (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)]),
    # ResNet-50: 3 + 4 + 6 + 3 bottlenecks, each ending in its "_3_bn".
    ("resnet50_320", [f"conv{stage}_block{block}_3_bn"
                      for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3)) for block in range(1, blocks + 1)]),
])
def test_from_scratch_every_residual_branch_ends_with_zero_gamma_and_nothing_else(name, expected):
    model = refinedet_tf.build_refinedet(refinedet_tf.get_preset(name, image_size=128))
    assert _zero_gamma_layers(model) == sorted(expected)


def test_a_residual_block_starts_as_the_identity():
    model = refinedet_tf.build_refinedet(refinedet_tf.get_preset("mobilenetv2_lite_192", image_size=128))
    probe = keras.Model(model.input, [model.get_layer("block_1_project_BN").output,
                                      model.get_layer("block_2_add").output])
    images = np.random.default_rng(0).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32)
    shortcut, block = probe(images, training=True)
    assert np.abs(shortcut.numpy()).max() > 0.1
    np.testing.assert_array_equal(block.numpy(), shortcut.numpy())


def test_pretrained_weights_are_not_zeroed(tmp_path):
    net = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(128, 128, 3))
    path = str(tmp_path / "mobilenet_v2_notop.weights.h5")
    net.save_weights(path)
    model = refinedet_tf.build_refinedet(
        refinedet_tf.get_preset("mobilenetv2_320", image_size=128, backbone_weights=path))
    assert _zero_gamma_layers(model) == []


def test_a_wrong_block_name_is_an_error_not_a_silent_no_op():
    net = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3), alpha=0.35)
    with pytest.raises(ValueError, match="block_2_expand_BN does not feed block_2_add"):
        zero_residual_gammas(net, "_expand_BN")
    with pytest.raises(ValueError):
        zero_residual_gammas(net, "_no_such_BN")
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="no residual block"):
        zero_residual_gammas(plain, "_bn")
    assert zero_residual_gammas(net, "_project_BN") == 10
