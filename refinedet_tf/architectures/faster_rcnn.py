"""Faster R-CNN (Ren et al., NeurIPS 2015) behind the detector interface (`base.Architecture`).

One training step, as both references' end-to-end training (simple-faster-rcnn-pytorch's
`FasterRCNNTrainer.forward`, py-faster-rcnn's end2end train.prototxt), batched:

    network(inputs, training=True) -> features, RPN outputs, proposals (train counts)
    anchor_targets      -> RPN labels (256 sampled anchors per image) and offsets
    sample_roi_targets  -> 128 RoIs per image (proposals + ground truths), labels, offsets
    roi_head(features, sampled RoIs) -> the head's outputs on those RoIs only
    the four losses, each normalized per image over the global batch (losses.normalize)

or, with mining "ohem", the head's RoIs are the hardest of all candidates (`_hard_rois`).

The random draws are stateless hashes of (step, replica, index) (`faster_rcnn.sampling`): a run
draws the same anchors and RoIs each time it is run, resumed, or compiled with XLA.
"""

import tensorflow as tf

from refinedet_tf.architectures.base import Architecture
from refinedet_tf.faster_rcnn import losses as frcnn_losses, ohem
from refinedet_tf.faster_rcnn.anchor_targets import anchor_targets
from refinedet_tf.faster_rcnn.config import STRUCTURAL_FIELDS
from refinedet_tf.faster_rcnn.model import (
    build_faster_rcnn,
    decode_detections,
    detect,
    detect_builtin,
    normalized_to_pixels,
)
from refinedet_tf.faster_rcnn.roi_targets import sample_roi_targets

# Loss names as seed 003 plots them (rpn_loc_loss, rpn_cls_loss, roi_loc_loss, roi_cls_loss,
# total_loss).
LOSS_NAMES = ("rpn_loc", "rpn_cls", "roi_loc", "roi_cls", "total")


def _step_seeds(step):
    """(RPN seed, RoI seed): int64 [2] each, distinct per step, per replica and per draw."""
    step = tf.cast(0 if step is None else step, tf.int64)
    context = tf.distribute.get_replica_context()
    replica = tf.cast(0 if context is None else context.replica_id_in_sync_group, tf.int64)
    return tf.stack([step, 2 * replica]), tf.stack([step, 2 * replica + 1])


class FasterRCNN(Architecture):
    """The network of `faster_rcnn.model.build_faster_rcnn`, the targets of `anchor_targets` and
    `roi_targets`, the four losses of `faster_rcnn.losses`, the detection output of
    `faster_rcnn.model.detect`."""

    loss_names = LOSS_NAMES
    structural_fields = STRUCTURAL_FIELDS
    head_layer_prefixes = ("rpn", "roi_head")

    def build_model(self):
        return build_faster_rcnn(self.config)

    def fixed_frozen_layers(self):
        """VGG16's first blocks stay frozen in every stage (conv1, conv2: both references)."""
        if self.config.backbone != "vgg16":
            return ()
        return tuple(f"block{block}_" for block in range(1, self.config.frozen_backbone_blocks + 1))

    def losses(self, network, inputs, targets, global_sum, training=True, step=None):
        config = self.config
        outputs = network(inputs, training=training)
        info = outputs["image_info"]
        gt_boxes = normalized_to_pixels(targets["boxes"], info)
        gt_valid = tf.cast(targets["mask"], tf.bool)
        gt_classes = tf.cast(targets["classes"], tf.int32)
        rpn_seed, roi_seed = _step_seeds(step)

        rpn = anchor_targets(
            tf.constant(network.get_layer("proposals").anchors_yxyx_px), gt_boxes, gt_valid, info,
            positive_iou=config.rpn_positive_iou, negative_iou=config.rpn_negative_iou,
            samples_per_image=config.rpn_samples_per_image, positive_fraction=config.rpn_positive_fraction,
            seed=rpn_seed, zero_best_iou_forces_positives=config.rpn_zero_best_iou_forces_positives)
        rpn_terms = {
            "rpn_loc": frcnn_losses.rpn_loc_loss(outputs["rpn_loc"], rpn.loc_targets, rpn.labels, config.rpn_sigma),
            "rpn_cls": frcnn_losses.rpn_cls_loss(outputs["rpn_logits"], rpn.labels),
        }
        head = network.get_layer("roi_head")
        if config.mining == "ohem":
            rois, trained, per_image = self._hard_rois(head, outputs, gt_boxes, gt_classes, gt_valid, training)
        else:
            rois = sample_roi_targets(
                outputs["rois_yxyx_px"], outputs["rois_valid"], gt_boxes, gt_classes, gt_valid,
                num_samples=config.roi_samples_per_image, foreground_fraction=config.roi_foreground_fraction,
                foreground_iou=config.roi_foreground_iou, background_iou_high=config.roi_background_iou_high,
                background_iou_low=config.roi_background_iou_low, box_stds=config.box_stds, seed=roi_seed)
            trained = head([outputs["features"], rois["rois_yxyx_px"], rois["valid"]], training=training)
            per_image = True
        roi_terms = {
            "roi_loc": frcnn_losses.roi_loc_loss(trained["roi_loc"], rois["box_targets"], rois["labels"],
                                                 rois["valid"], config.roi_sigma),
            "roi_cls": frcnn_losses.roi_cls_loss(trained["roi_logits"], rois["labels"], rois["valid"]),
        }
        losses = frcnn_losses.normalize(rpn_terms, global_sum)
        losses.update(frcnn_losses.normalize(roi_terms, global_sum, per_image=per_image))
        losses["total"] = tf.add_n([losses[name] for name in LOSS_NAMES[:-1]])
        losses["num_pos"] = global_sum(tf.reduce_sum(tf.cast(rois["foreground"] & rois["valid"], tf.float32)))
        return losses

    def _hard_rois(self, head, outputs, gt_boxes, gt_classes, gt_valid, training):
        """OHEM (seed 001; faster_rcnn/ohem.py): every proposal and ground truth is a candidate,
        the roi_samples_per_image x B with the largest losses (over the replica's minibatch, or
        per image with ohem_per_image) are trained.

        One head pass over all candidates, with gradient; the selection reads its per-RoI
        losses without gradient, and only the selected rows enter the loss. The gradient is the
        seed's (its trainable pass on the selected RoIs only), with one difference: the seed's
        read-only pass draws its own dropout mask. A second pass on the gathered RoIs would be
        padded to [B, K B] rows under whole-minibatch selection (one image may get all K B),
        B times the work of this pass.

        Returns: (targets dict with `valid` = selected, the head's outputs on all candidates,
        whether the losses are normalized per image).
        """
        config = self.config
        candidates = ohem.all_roi_targets(outputs["rois_yxyx_px"], outputs["rois_valid"], gt_boxes, gt_classes,
                                          gt_valid, foreground_iou=config.roi_foreground_iou,
                                          box_stds=config.box_stds)
        trained = head([outputs["features"], candidates["rois_yxyx_px"], candidates["valid"]], training=training)
        per_roi = ohem.per_roi_losses(trained["roi_logits"], trained["roi_loc"], candidates["labels"],
                                      candidates["box_targets"], candidates["valid"], sigma=config.roi_sigma)
        batch = outputs["features"].shape[0]
        if batch is None and not config.ohem_per_image:
            raise ValueError("OHEM over the whole minibatch needs a static batch size")
        count = config.roi_samples_per_image * (1 if config.ohem_per_image else batch)
        selected = ohem.select_hard_examples(
            per_roi, candidates["rois_yxyx_px"], candidates["labels"], candidates["valid"], num_selected=count,
            per_image=config.ohem_per_image, nms_iou=config.ohem_nms_iou if config.ohem_nms_iou < 1.0 else None)
        return {**candidates, "valid": selected}, trained, config.ohem_per_image

    def detect(self, outputs, max_detections=None, score_threshold=None, nms_iou=None):
        return detect(outputs, self.config, max_detections=max_detections, score_threshold=score_threshold,
                      nms_iou=nms_iou)

    def detect_builtin(self, outputs):
        return detect_builtin(outputs, self.config)

    def class_scores(self, outputs):
        return decode_detections(outputs, self.config)["scores"]
