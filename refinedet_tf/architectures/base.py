"""The detector interface: all that the trainer, the evaluator and the exporters know of an
architecture.

An architecture turns its config into a Keras network (preprocessed images -> a dict of raw
outputs), raw outputs and a batch's targets into losses, and raw outputs into detections.
Everything else (data, the training loop, evaluation, checkpoints, export) is shared, so a second
architecture plugs in by implementing this class; nothing outside `architectures/` names one.
"""

import abc
import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TrainingStage:
    """A part of a run that optimizes some of the losses with some layers frozen.

    Attributes:
      name: printed when a run has several stages.
      end_step: the stage runs until the optimizer has taken this many steps in all.
      losses: names of the losses summed into the optimized total; None: all (`total`).
      frozen_layers: layer-name prefixes whose layers the stage leaves untouched (trainable
        False: no gradient, no weight decay, BatchNorm statistics kept).
    """

    name: str
    end_step: int
    losses: tuple | None = None
    frozen_layers: tuple = ()


class Architecture(abc.ABC):
    """One detection architecture (RefineDet, Faster R-CNN), built from its config.

    The config is a frozen dataclass with at least: name, image_size, num_classes (with
    background at 0), the preprocessing fields `preprocessing.preprocess_images` reads, and the
    post-processing defaults max_detections, score_threshold and nms_iou.
    """

    #: Loss names the trainer logs, `total` (what is optimized) last.
    loss_names: tuple = ("total",)
    #: Config fields that decide the network's variables or the meaning of its outputs: a
    #: checkpoint only fits a config that agrees on all of them.
    structural_fields: tuple = ()
    #: Layer-name prefixes of the detection heads; every other layer with weights is backbone
    #: (`--freeze_backbone` freezes those).
    head_layer_prefixes: tuple = ()

    def __init__(self, config):
        self.config = config

    @abc.abstractmethod
    def build_model(self):
        """-> keras.Model: the pipeline's model inputs for this config (float32 [B, S, S, 3]
        preprocessed images, or the dict `data.pipeline` documents) -> dict of raw outputs."""

    @abc.abstractmethod
    def losses(self, network, inputs, targets, global_sum, training=True, step=None):
        """The forward pass and the training losses of one replica's batch.

        The architecture runs the network itself: a two-stage detector runs part of it again on
        inputs it samples from the first pass (Faster R-CNN's RoI head on the sampled RoIs).

        Args:
          network: the Keras network of `build_model`.
          inputs: the batch's model inputs, as the data pipeline gives them for this config.
          targets: dict boxes [B, G, 4] normalized yxyx, classes [B, G] int32 (1..C-1), mask
            [B, G] (number or bool; True where a box is real).
          global_sum: sums a tensor over all replicas (identity on one device). Losses
            normalized by a count (positives, sampled anchors) divide by the count of the
            whole global batch, so that N replicas compute the gradient one device would.
          training: the network's mode (dropout, BatchNorm, proposal counts).
          step: the optimizer's step (int scalar tensor), for architectures that draw samples:
            the same step draws the same samples, so a run is reproducible and resumable.
        Returns:
          dict with every name of `loss_names` (float32 scalars; each replica's share, which
          the replicas' sum makes the global value) and `num_pos`, the global positive count.
        """

    @abc.abstractmethod
    def detect(self, outputs, max_detections=None, score_threshold=None, nms_iou=None):
        """Raw outputs -> detections (None: the config's thresholds).

        Returns:
          dict detection_boxes [B, D, 4] normalized yxyx, detection_scores [B, D],
          detection_classes [B, D] int32 contiguous class ids (1..C-1, 0 in padding rows),
          num_detections [B] int32; D = max_detections.
        """

    @abc.abstractmethod
    def detect_builtin(self, outputs):
        """`detect` (the config's thresholds) from TFLite built-in ops only, for TFLite and ONNX."""

    @abc.abstractmethod
    def class_scores(self, outputs):
        """[B, A, C] float32 class probabilities of every candidate box (column 0 = background),
        before NMS: the SavedModel's optional raw_detection_scores."""

    def training_stages(self, total_steps, first_stage_steps=0):
        """The stages of a run of `total_steps`. `first_stage_steps` > 0 asks for a warm-up that
        trains only the first stage (RefineDet's ARM); architectures without one refuse it."""
        if first_stage_steps:
            raise ValueError(f"{type(self).__name__} has no first-stage warm-up")
        return [TrainingStage("joint", total_steps)]

    def fixed_frozen_layers(self):
        """Layer-name prefixes that no stage trains (a backbone's frozen first blocks)."""
        return ()

    def anchor_warning(self, metadata, class_names, sample=None):
        """One line for the start of a run when the training boxes fit the architecture's
        anchors badly, else None (no check by default)."""
        del metadata, class_names, sample
        return None


def sum_over_replicas(values):
    """`values` summed over the replicas of the current replica context (as is on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)
