"""ResNet-101/50 from keras.applications plus the extra `res6` block of the Caffe
RefineDet's examples/refinedet/ResNet101_COCO_320.py."""

import keras

from refinedet_tf.backbones.init import zero_residual_gammas

_SOURCES = {
    "resnet101": ("conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
    "resnet50": ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
}
_APPLICATIONS = {"resnet101": "ResNet101", "resnet50": "ResNet50"}


def resnet_sources(images, name, backbone_weights="none"):
    """ARM sources res3 (stride 8), res4 (16), res5 (32) and res6 (64) of a Keras ResNet.

    `backbone_weights`: "none", "imagenet" or a local path to Keras' "notop" weights file.
    """
    weights = None if backbone_weights in (None, "none") else backbone_weights
    net = getattr(keras.applications, _APPLICATIONS[name])(
        include_top=False, weights=weights, input_tensor=images)
    if weights is None:
        zero_residual_gammas(net, "_3_bn")
    sources = [net.get_layer(layer).output for layer in _SOURCES[name]]
    sources.append(_res6(sources[-1]))
    return sources


def _res6(x):
    """ResNet101_COCO_320.py's ResBody '6': bottleneck 128-128-512, stride 2, projection shortcut.

    Stride on the first 1x1 conv, as Caffe's ResNet and Keras' ResNet (v1) blocks do.
    """
    shortcut = keras.layers.Conv2D(512, 1, strides=2, name="res6_branch1")(x)
    shortcut = keras.layers.BatchNormalization(epsilon=1.001e-5, name="res6_branch1_bn")(shortcut)
    y = keras.layers.Conv2D(128, 1, strides=2, name="res6_branch2a")(x)
    y = keras.layers.BatchNormalization(epsilon=1.001e-5, name="res6_branch2a_bn")(y)
    y = keras.layers.ReLU(name="res6_branch2a_relu")(y)
    y = keras.layers.Conv2D(128, 3, padding="same", name="res6_branch2b")(y)
    y = keras.layers.BatchNormalization(epsilon=1.001e-5, name="res6_branch2b_bn")(y)
    y = keras.layers.ReLU(name="res6_branch2b_relu")(y)
    y = keras.layers.Conv2D(512, 1, name="res6_branch2c")(y)
    y = keras.layers.BatchNormalization(epsilon=1.001e-5, name="res6_branch2c_bn")(y)
    return keras.layers.ReLU(name="res6_relu")(keras.layers.Add(name="res6_add")([shortcut, y]))
