"""Detection architectures behind one interface (`base.Architecture`): the trainer, the
evaluator and the exporters take an architecture object and never name one.

    from refinedet_tf.architectures import architecture_for
    architecture = architecture_for(config)   # RefineDet for a RefineDetConfig
    model = architecture.build_model()
"""

from refinedet_tf.architectures.base import Architecture, TrainingStage, sum_over_replicas
from refinedet_tf.architectures.refinedet import RefineDet
from refinedet_tf.config import RefineDetConfig


def architecture_for(config):
    """The architecture of a config; its config class says which."""
    if isinstance(config, RefineDetConfig):
        return RefineDet(config)
    raise TypeError(f"no architecture builds a {type(config).__name__}")


def config_from_json(text):
    """The config that a run (model_dir/config.json) or an export (assets/config.json) wrote,
    as the config class of its architecture. The one place that reads them, so that a second
    architecture's configs load wherever RefineDet's do."""
    return RefineDetConfig.from_json(text)


__all__ = ["Architecture", "RefineDet", "TrainingStage", "architecture_for", "config_from_json", "sum_over_replicas"]
