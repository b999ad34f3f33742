"""Detection architectures behind one interface (`base.Architecture`): the trainer, the
evaluator and the exporters take an architecture object and never name one.

    from refinedet_tf.architectures import architecture_for
    architecture = architecture_for(config)   # RefineDet for a RefineDetConfig, FasterRCNN for a FasterRCNNConfig
    model = architecture.build_model()
"""

import dataclasses
import json

from refinedet_tf.architectures.base import Architecture, TrainingStage, sum_over_replicas
from refinedet_tf.architectures.faster_rcnn import FasterRCNN
from refinedet_tf.architectures.refinedet import RefineDet
from refinedet_tf.config import RefineDetConfig
from refinedet_tf.faster_rcnn.config import FasterRCNNConfig

# Each config class and the architecture it builds.
_ARCHITECTURES = ((RefineDetConfig, RefineDet), (FasterRCNNConfig, FasterRCNN))


def architecture_for(config):
    """The architecture of a config; its config class says which."""
    for config_class, architecture in _ARCHITECTURES:
        if isinstance(config, config_class):
            return architecture(config)
    raise TypeError(f"no architecture builds a {type(config).__name__}")


def config_from_json(text):
    """The config that a run (model_dir/config.json) or an export (assets/config.json) wrote,
    as the config class of its architecture. The one place that reads them, so that a second
    architecture's configs load wherever RefineDet's do."""
    fields = set(json.loads(text))
    # The class whose fields cover the file's; a file from an older version may lack new fields
    # (their defaults apply), and the fields that distinguish the classes are always written.
    unknown = {}
    for config_class, _ in _ARCHITECTURES:
        unknown[config_class] = fields - {f.name for f in dataclasses.fields(config_class)}
        if not unknown[config_class]:
            return config_class.from_json(text)
    closest = min(unknown, key=lambda c: len(unknown[c]))
    raise ValueError(f"not a config of any architecture: unknown {closest.__name__} field(s) "
                     f"{sorted(unknown[closest])}")


__all__ = ["Architecture", "FasterRCNN", "RefineDet", "TrainingStage", "architecture_for", "config_from_json",
           "sum_over_replicas"]
