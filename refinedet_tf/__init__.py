"""refinedet-tf: RefineDet (Zhang et al., CVPR 2018) for TensorFlow 2 / Keras 3.

Public API (see README.md): presets, the model, anchors, losses, decoding and the importer of
RefineDet.PyTorch weights. Boxes are normalized [ymin, xmin, ymax, xmax] everywhere.
"""

from refinedet_tf.anchors import generate_anchors
from refinedet_tf.config import RefineDetConfig, get_preset, preset_names
from refinedet_tf.convert.pytorch import load_pytorch_state_dict
from refinedet_tf.losses import refinedet_loss
from refinedet_tf.model import build_refinedet
from refinedet_tf.postprocess import decode, detect
from refinedet_tf.preprocessing import preprocess_images

__version__ = "0.1.0"

__all__ = [
    "RefineDetConfig", "build_refinedet", "decode", "detect", "generate_anchors", "get_preset",
    "load_pytorch_state_dict", "preprocess_images", "preset_names", "refinedet_loss",
]
