"""Every preset of the library by name, whatever its architecture: what `--preset` looks up.

Each architecture keeps its presets beside its config class (`refinedet_tf/config.py`,
`refinedet_tf/faster_rcnn/config.py`); this module only finds a name in them, so the command
lines, checkpoints and the trainer take any preset without naming an architecture.
"""

from __future__ import annotations

from refinedet_tf import config as refinedet_config
from refinedet_tf.faster_rcnn import config as faster_rcnn_config

# (the config class, its preset names, its preset lookup) per architecture.
_FAMILIES = (
    (refinedet_config.RefineDetConfig, refinedet_config.preset_names, refinedet_config.get_preset),
    (faster_rcnn_config.FasterRCNNConfig, faster_rcnn_config.faster_rcnn_preset_names,
     faster_rcnn_config.faster_rcnn_preset),
)


def preset_names() -> list[str]:
    """All preset names, sorted."""
    return sorted(name for _, names, _ in _FAMILIES for name in names())


def _family(name):
    for family in _FAMILIES:
        if name in family[1]():
            return family
    raise ValueError(f"unknown preset {name!r}; known presets: {preset_names()}")


def config_class(name: str) -> type:
    """The config class of preset `name` (RefineDetConfig, FasterRCNNConfig)."""
    return _family(name)[0]


def get_preset(name: str, **overrides):
    """The preset `name` with `overrides` replacing its fields, as its own config class.

    Raises ValueError naming the known presets, or the unknown fields, when one is wrong.
    """
    return _family(name)[2](name, **overrides)


def parse_overrides(assignments, preset: str) -> dict:
    """`field=value` strings (train.py's repeatable `--config`) -> overrides for `get_preset`,
    each read by the type of that field in the preset's config class (`config.parse_overrides`)."""
    return refinedet_config.parse_overrides(assignments, config_class(preset))
