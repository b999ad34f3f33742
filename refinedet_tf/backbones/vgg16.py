"""VGG16-reduced (SSD/RefineDet): VGG16 convs, fc6/fc7 as convolutions, conv6_1/conv6_2, L2Norm.

Layer names of the VGG16 part are keras.applications.VGG16's, so ImageNet weights map by name.
"""

import keras
import numpy as np

from refinedet_tf.layers import L2Normalization

_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16_reduced_sources(images, backbone_weights="none"):
    """Builds VGG16-reduced on `images`; returns [conv4_3 L2Norm, conv5_3 L2Norm, fc7, conv6_2].

    Channels 512, 512, 1024, 512 at strides 8, 16, 32, 64 (40, 20, 10, 5 at 320 px).
    `backbone_weights`: "none", "imagenet" (Keras' VGG16 ImageNet file, downloaded) or a local
    path to that same file (`vgg16_weights_tf_dim_ordering_tf_kernels.h5`, with the top).
    """
    x = images
    conv_layers = []
    sources = []
    for block, (channels, repeats) in enumerate(_BLOCKS, start=1):
        for i in range(1, repeats + 1):
            layer = keras.layers.Conv2D(
                channels, 3, padding="same", activation="relu", name=f"block{block}_conv{i}")
            conv_layers.append(layer)
            x = layer(x)
        if block == 4:
            sources.append(L2Normalization(10.0, name="conv4_3_l2norm")(x))
        if block == 5:
            sources.append(L2Normalization(8.0, name="conv5_3_l2norm")(x))
            # pool5 is 2x2/2 here (SSD used 3x3/1): that gives the stride-32 fc7 map.
            x = keras.layers.MaxPooling2D(2, 2, name="pool5")(x)
        elif block == 3:
            # Caffe/PyTorch ceil mode; TF "same" pads the odd row/column at the end with -inf,
            # which is exactly ceil mode for a 2x2/2 pool.
            x = keras.layers.MaxPooling2D(2, 2, padding="same", name="pool3")(x)
        elif block < 5:
            x = keras.layers.MaxPooling2D(2, 2, name=f"pool{block}")(x)
    fc6 = keras.layers.Conv2D(1024, 3, padding="same", dilation_rate=3, activation="relu", name="fc6")
    fc7 = keras.layers.Conv2D(1024, 1, activation="relu", name="fc7")
    x = fc7(fc6(x))
    sources.append(x)
    x = keras.layers.Conv2D(256, 1, activation="relu", name="conv6_1")(x)
    # Symmetric padding as Caffe/PyTorch; "same" would pad 0 before and 1 after for even sizes.
    x = keras.layers.ZeroPadding2D(1, name="conv6_2_pad")(x)
    x = keras.layers.Conv2D(512, 3, strides=2, name="conv6_2")(x)
    sources.append(keras.layers.ReLU(name="conv6_2_relu")(x))

    if backbone_weights not in (None, "none"):
        _load_imagenet_weights(conv_layers, fc6, fc7, backbone_weights)
    return sources


def reduce_fc_weights(fc1_kernel, fc1_bias, fc2_kernel, fc2_bias):
    """Converts VGG16's fc1/fc2 into the reduced, dilated fc6 (3x3, 1024) and fc7 (1x1, 1024).

    SSD's decimation: keep every 4th output unit and every 3rd spatial tap (0, 3, 6 of 7); the
    3x3 kernel with dilation 3 then covers the same 7x7 field as the original fc6.

    Args:
      fc1_kernel: [7*7*512, 4096] (Keras Flatten order: row, column, channel); fc1_bias [4096].
      fc2_kernel: [4096, 4096]; fc2_bias [4096].
    Returns:
      fc6_kernel [3, 3, 512, 1024], fc6_bias [1024], fc7_kernel [1, 1, 1024, 1024], fc7_bias [1024].
    """
    fc1_kernel = np.asarray(fc1_kernel)
    if fc1_kernel.shape != (7 * 7 * 512, 4096) or np.shape(fc2_kernel) != (4096, 4096):
        raise ValueError(
            f"expected VGG16 fc1 [25088, 4096] and fc2 [4096, 4096], got {fc1_kernel.shape} "
            f"and {np.shape(fc2_kernel)}")
    fc6_kernel = fc1_kernel.reshape(7, 7, 512, 4096)[::3, ::3, :, ::4]
    fc7_kernel = np.asarray(fc2_kernel)[::4, ::4].reshape(1, 1, 1024, 1024)
    return fc6_kernel, np.asarray(fc1_bias)[::4], fc7_kernel, np.asarray(fc2_bias)[::4]


def _load_imagenet_weights(conv_layers, fc6, fc7, backbone_weights):
    try:
        vgg = keras.applications.VGG16(include_top=True, weights=backbone_weights)
    except (ValueError, OSError) as error:
        raise ValueError(
            f"could not load VGG16 ImageNet weights from {backbone_weights!r}: expected 'imagenet' "
            f"or the path of Keras' VGG16 weights file with its top layers ({error})") from error
    for layer in conv_layers:
        layer.set_weights(vgg.get_layer(layer.name).get_weights())
    fc6_kernel, fc6_bias, fc7_kernel, fc7_bias = reduce_fc_weights(
        *vgg.get_layer("fc1").get_weights(), *vgg.get_layer("fc2").get_weights())
    fc6.set_weights([fc6_kernel, fc6_bias])
    fc7.set_weights([fc7_kernel, fc7_bias])
