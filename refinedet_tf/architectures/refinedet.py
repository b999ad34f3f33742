"""RefineDet (Zhang et al., CVPR 2018) behind the detector interface (`base.Architecture`)."""

import tensorflow as tf

from refinedet_tf.anchors import generate_anchors
from refinedet_tf.architectures.base import Architecture, TrainingStage
from refinedet_tf.config import STRUCTURAL_FIELDS
from refinedet_tf.data.inspect import anchor_warning, check_anchors
from refinedet_tf.losses import normalize_loss_terms, refinedet_loss_terms
from refinedet_tf.model import build_refinedet
from refinedet_tf.postprocess import decode, detect, detect_builtin

ARM_LOSSES = ("arm_loc", "arm_conf")
ODM_LOSSES = ("odm_loc", "odm_conf")


class RefineDet(Architecture):
    """The network of `model.build_refinedet`, the losses of `losses.py` (ARM and ODM, each
    normalized by its global positive count), the two-step decoding of `postprocess.py`."""

    loss_names = (*ARM_LOSSES, *ODM_LOSSES, "total")
    structural_fields = STRUCTURAL_FIELDS
    head_layer_prefixes = ("arm_", "tcb_", "odm_")

    def __init__(self, config):
        super().__init__(config)
        self.anchors_yxyx = generate_anchors(config)

    def build_model(self):
        return build_refinedet(self.config)

    def losses(self, network, inputs, targets, global_sum, training=True, step=None):
        del step  # nothing is drawn at random: hard negatives are ranked
        outputs = network(inputs, training=training)
        # The mask may arrive as numbers: distributed input pipelines carry no bool tensors.
        mask = tf.cast(targets["mask"], tf.bool)
        terms = refinedet_loss_terms(outputs, targets["boxes"], targets["classes"], mask,
                                     self.anchors_yxyx, self.config)
        counts = global_sum(tf.cast(tf.stack([terms["arm"]["num_pos"], terms["odm"]["num_pos"]]), tf.float32))
        losses = normalize_loss_terms(terms, self.config, counts[0], counts[1])
        losses["num_pos"] = counts[1]
        return losses

    def detect(self, outputs, max_detections=None, score_threshold=None, nms_iou=None):
        return detect(outputs, self.anchors_yxyx, self.config, max_detections=max_detections,
                      score_threshold=score_threshold, nms_iou=nms_iou)

    def detect_builtin(self, outputs):
        return detect_builtin(outputs, self.anchors_yxyx, self.config)

    def class_scores(self, outputs):
        return decode(outputs, self.anchors_yxyx, self.config)["scores"]

    def training_stages(self, total_steps, first_stage_steps=0):
        """With `first_stage_steps` (this library's option; the paper trains both steps end to
        end from the start): an ARM warm-up that optimizes the ARM losses only, TCB and ODM
        frozen, then joint training."""
        stages = []
        if first_stage_steps:
            stages.append(TrainingStage("ARM warm-up", min(first_stage_steps, total_steps), ARM_LOSSES,
                                        frozen_layers=("tcb_", "odm_")))
        if total_steps > first_stage_steps:
            stages.append(TrainingStage("joint", total_steps))
        return stages

    def anchor_warning(self, metadata, class_names, sample=None):
        return anchor_warning(*check_anchors(self.config, metadata, class_names, sample=sample,
                                             only_when_low=True))
