"""RefineDet assembled as in the paper's Fig. 1: backbone -> ARM -> TCB -> ODM."""

import keras

from refinedet_tf.backbones import backbone_sources
from refinedet_tf.heads import anchor_refinement_module, object_detection_module, transfer_connection_blocks
from refinedet_tf.layers import batch_norm_layers

BATCH_NORM_MOMENTUM = 0.99


def build_refinedet(config):
    """The RefineDet network of a preset.

    Input: float32 [B, S, S, 3], S = config.image_size, already preprocessed
    (`preprocessing.preprocess_images`). Outputs (dict, all float32, A anchors in the order of
    `anchors.generate_anchors`):
      arm_loc [B, A, 4] (ty, tx, th, tw) w.r.t. the anchors;
      arm_conf [B, A, 2] logits (background, object);
      odm_loc [B, A, 4] (ty, tx, th, tw) w.r.t. the refined anchors;
      odm_conf [B, A, num_classes] logits, class 0 = background.
    """
    size = config.image_size
    images = keras.Input((size, size, 3), name="images")
    sources = backbone_sources(images, config)
    k = config.anchors_per_location
    arm_loc, arm_conf = anchor_refinement_module(sources, k)
    tcb = transfer_connection_blocks(sources, config.tcb_channels, config.tcb_batch_norm)
    odm_loc, odm_conf = object_detection_module(tcb, k, config.num_classes)
    outputs = {"arm_loc": arm_loc, "arm_conf": arm_conf, "odm_loc": odm_loc, "odm_conf": odm_conf}
    model = keras.Model(images, outputs, name=f"refinedet_{config.name}")
    for layer in batch_norm_layers(model):
        # keras.applications' MobileNetV2 uses 0.999: its moving statistics need ~5,000 steps
        # to forget their initial values, so a short run (or any run from scratch) evaluates
        # with wrong statistics. 0.99 forgets them within ~500 steps and changes nothing for
        # long fine-tuning runs.
        layer.momentum = BATCH_NORM_MOMENTUM
    return model

