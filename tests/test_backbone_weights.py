"""Backbone weight loading, with weights the tests create (no network)."""

import os

import keras
import numpy as np
import pytest

import refinedet_tf
from refinedet_tf.backbones.vgg16 import reduce_fc_weights


def test_fc_decimation_picks_every_fourth_unit_and_every_third_tap():
    # fc1 input index = (row * 7 + col) * 512 + channel (Keras Flatten of [7, 7, 512]).
    rows, cols, chans, outs = np.meshgrid(np.arange(7), np.arange(7), np.arange(512), [0, 4, 8],
                                          indexing="ij")
    fc1 = np.zeros((7 * 7 * 512, 4096), np.float32)
    code = rows * 1_000_000 + cols * 10_000 + chans * 10 + outs // 4
    fc1.reshape(7, 7, 512, 4096)[..., [0, 4, 8]] = code
    fc2 = np.arange(4096 * 4096, dtype=np.float32).reshape(4096, 4096)
    k6, b6, k7, b7 = reduce_fc_weights(fc1, np.arange(4096.0), fc2, np.arange(4096.0))
    assert k6.shape == (3, 3, 512, 1024) and k7.shape == (1, 1, 1024, 1024)
    # Tap (1, 2) of the dilated 3x3 kernel is row 3, column 6 of the 7x7 fc window.
    assert k6[1, 2, 17, 2] == 3 * 1_000_000 + 6 * 10_000 + 17 * 10 + 2
    np.testing.assert_array_equal(b6[:3], [0, 4, 8])
    assert k7[0, 0, 2, 3] == fc2[8, 12]
    with pytest.raises(ValueError, match="expected VGG16 fc1"):
        reduce_fc_weights(fc1[:100], b6, fc2, b7)


@pytest.mark.slow
def test_vgg16_local_imagenet_file_is_converted(tmp_path):
    """A file in the layout of Keras' VGG16 ImageNet weights (with top), made here."""
    vgg = keras.applications.VGG16(include_top=True, weights=None)
    marker = vgg.get_layer("block4_conv3")
    kernel, bias = marker.get_weights()
    marker.set_weights([np.full_like(kernel, 0.25), bias])
    fc1 = vgg.get_layer("fc1")
    k, b = fc1.get_weights()
    fc1.set_weights([k, np.arange(4096, dtype=np.float32)])
    path = str(tmp_path / "vgg16_imagenet.weights.h5")
    vgg.save_weights(path)
    del vgg
    model = refinedet_tf.build_refinedet(
        refinedet_tf.get_preset("vgg16_320", image_size=128, backbone_weights=path))
    np.testing.assert_array_equal(model.get_layer("block4_conv3").get_weights()[0], 0.25)
    np.testing.assert_array_equal(model.get_layer("fc6").get_weights()[1], np.arange(0, 4096, 4))
    os.remove(path)


def test_bad_weights_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="could not load VGG16 ImageNet weights"):
        refinedet_tf.build_refinedet(
            refinedet_tf.get_preset("vgg16_320", image_size=128, backbone_weights=str(tmp_path / "nope.h5")))


def test_mobilenet_v2_local_weights_file(tmp_path):
    net = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(128, 128, 3))
    layer = net.get_layer("block_6_expand")
    layer.set_weights([np.full_like(w, 0.5) for w in layer.get_weights()])
    path = str(tmp_path / "mobilenet_v2_notop.weights.h5")
    net.save_weights(path)
    model = refinedet_tf.build_refinedet(
        refinedet_tf.get_preset("mobilenetv2_320", image_size=128, backbone_weights=path))
    np.testing.assert_array_equal(model.get_layer("block_6_expand").get_weights()[0], 0.5)
