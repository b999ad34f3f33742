"""MobileNetV2 (edge preset) from keras.applications plus an extra stride-64 block."""

import keras

from refinedet_tf.backbones.init import zero_residual_gammas

# Stride 8 and 16 taps are the expansion outputs just before each stride-2 depthwise conv, as
# SSDLite takes them: the richest maps at those resolutions.
_SOURCES = ("block_6_expand_relu", "block_13_expand_relu", "out_relu")


def mobilenet_v2_sources(images, backbone_weights="none", alpha=1.0):
    """ARM sources at strides 8 (192 ch at alpha 1), 16 (576), 32 (1280) and 64 (512, extra block).

    `backbone_weights`: "none", "imagenet" (Keras loads its 224 px weights: convolutions do not
    depend on the input size) or a local path to Keras' MobileNetV2 "notop" weights file.
    """
    weights = None if backbone_weights in (None, "none") else backbone_weights
    net = keras.applications.MobileNetV2(
        include_top=False, weights=weights, input_tensor=images, alpha=alpha)
    if weights is None:
        zero_residual_gammas(net, "_project_BN")
    sources = [net.get_layer(layer).output for layer in _SOURCES]
    sources.append(_extra_block(sources[-1]))
    return sources


def _extra_block(x):
    """SSDLite-style extra layer: 1x1 256, depthwise 3x3 stride 2, 1x1 512 (BN + ReLU6 each)."""
    x = keras.layers.Conv2D(256, 1, use_bias=False, name="extra_1x1")(x)
    x = keras.layers.BatchNormalization(name="extra_1x1_bn")(x)
    x = keras.layers.ReLU(6.0, name="extra_1x1_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="extra_dw")(x)
    x = keras.layers.BatchNormalization(name="extra_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name="extra_dw_relu")(x)
    x = keras.layers.Conv2D(512, 1, use_bias=False, name="extra_project")(x)
    x = keras.layers.BatchNormalization(name="extra_project_bn")(x)
    return keras.layers.ReLU(6.0, name="extra_project_relu")(x)
