"""refinedet-tf: RefineDet (Zhang et al., CVPR 2018) for TensorFlow 2 / Keras 3."""

from refinedet_tf.anchors import generate_anchors
from refinedet_tf.config import RefineDetConfig, get_preset, preset_names
from refinedet_tf.preprocessing import preprocess_images

__version__ = "0.1.0"
