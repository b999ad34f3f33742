"""Input normalization: what the model expects, given RGB pixels in [0, 255].

The model itself applies no normalization (its input is "already preprocessed", as in the
reference); the data pipeline and the exported serving signatures call this one function.
"""

import tensorflow as tf


def preprocess_images(images_rgb, config):
    """Normalizes images the way the preset's backbone was trained.

    Args:
      images_rgb: [..., H, W, 3] RGB pixels in [0, 255], any real or integer dtype.
      config: a RefineDetConfig; `config.preprocessing` selects
        "caffe_bgr" (channels reversed to BGR, minus `pixel_mean_bgr`: VGG/ResNet Caffe weights)
        or "tf" (scaled to [-1, 1]: MobileNetV2).
    Returns:
      float32 tensor of the same shape.
    """
    images = tf.cast(images_rgb, tf.float32)
    if config.preprocessing == "caffe_bgr":
        return images[..., ::-1] - tf.constant(config.pixel_mean_bgr, tf.float32)
    if config.preprocessing == "tf":
        return images / 127.5 - 1.0
    raise ValueError(f"unknown preprocessing {config.preprocessing!r}")


def unpreprocess_images(images, config):
    """Inverse of `preprocess_images`, for display: float32 RGB in [0, 255] (not clipped).

    Args:
      images: [..., H, W, 3] preprocessed images (tensor or array).
      config: the RefineDetConfig that preprocessed them.
    """
    images = tf.cast(images, tf.float32)
    if config.preprocessing == "caffe_bgr":
        return (images + tf.constant(config.pixel_mean_bgr, tf.float32))[..., ::-1]
    if config.preprocessing == "tf":
        return (images + 1.0) * 127.5
    raise ValueError(f"unknown preprocessing {config.preprocessing!r}")


def mean_pixel_rgb(config):
    """The RGB fill value whose preprocessed value is zero (expand's canvas colour)."""
    if config.preprocessing == "caffe_bgr":
        return tuple(config.pixel_mean_bgr[::-1])
    return (127.5, 127.5, 127.5)
