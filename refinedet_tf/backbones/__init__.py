"""Backbones: each returns the four ARM source maps, strides 8, 16, 32, 64."""

from refinedet_tf.backbones.mobilenet_v2 import mobilenet_v2_sources
from refinedet_tf.backbones.resnet import resnet_sources
from refinedet_tf.backbones.vgg16 import vgg16_reduced_sources


def backbone_sources(images, config):
    """The four ARM source feature maps of `config.backbone` for the input tensor `images`.

    Args:
      images: Keras tensor [B, S, S, 3], preprocessed as `config.preprocessing` says.
    Returns:
      list of 4 Keras tensors [B, S/8, S/8, C0] ... [B, S/64, S/64, C3].
    """
    if config.backbone == "vgg16":
        return vgg16_reduced_sources(images, config.backbone_weights)
    if config.backbone in ("resnet101", "resnet50"):
        return resnet_sources(images, config.backbone, config.backbone_weights)
    if config.backbone == "mobilenetv2":
        return mobilenet_v2_sources(images, config.backbone_weights, config.backbone_alpha)
    raise ValueError(f"unknown backbone {config.backbone!r}")
