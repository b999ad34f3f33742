"""Presets: every number of a RefineDet model in one frozen dataclass.

A user reads this one file to see what `vgg16_320` is. Command lines override fields through
`get_preset(name, **overrides)`; a run writes `dataclasses.asdict(config)` next to its
checkpoints. The numbers are the paper's (Zhang et al., CVPR 2018, section 4) and those of the
Caffe original's training scripts (sfzhang15/RefineDet, examples/refinedet/*.py).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from refinedet_tf.recipe import FROM_SCRATCH_RECIPE, TrainingRecipe

BACKBONES = ("vgg16", "resnet101", "resnet50", "mobilenetv2")
PREPROCESSING = ("caffe_bgr", "tf")
NEGATIVE_FILTERING = ("caffe", "pytorch")
MINING = ("hard_negative", "ohem", "focal")
# Training augmentation of the data pipeline (data/augment.py): "ssd" = SSD's photometric
# distortion, expand, random crop and flip; "flip" = a horizontal flip with p 0.5 only.
AUGMENTATIONS = ("ssd", "flip")


@dataclasses.dataclass(frozen=True)
class RefineDetConfig:
    """Everything that defines a RefineDet model, its targets, losses and decoding.

    Sizes are in input pixels; `num_classes` counts background (VOC 21, COCO 81).
    """

    name: str = "custom"
    # Model.
    image_size: int = 320
    backbone: str = "vgg16"
    backbone_weights: str = "none"  # "none", "imagenet" or a local weights file path
    backbone_alpha: float = 1.0  # MobileNetV2 width multiplier (1.0 for the other backbones)
    num_classes: int = 21
    tcb_channels: int = 256
    # BatchNorm after each TCB conv (no conv bias then). The paper's TCB has none; MobileNet
    # detectors (SSDLite) normalize their heads, and from scratch it trains faster.
    tcb_batch_norm: bool = False
    # Anchors (PriorBox): one level per ARM source, 3 anchors per location (ratios 1, 2, 1/2).
    anchor_strides: tuple[int, ...] = (8, 16, 32, 64)
    anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0)
    aspect_ratios: tuple[float, ...] = (2.0,)  # each also flipped (1/r)
    clip_anchors: bool = False  # Caffe/paper: no clip; RefineDet.PyTorch clips (cx, cy, w, h)
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)  # (cy, cx, h, w)
    # Input normalization applied before the model (see preprocessing.py).
    preprocessing: str = "caffe_bgr"  # "caffe_bgr": BGR minus mean; "tf": RGB scaled to [-1, 1]
    pixel_mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0)
    # Training augmentation (AUGMENTATIONS): "ssd" is the Caffe scripts' (distort, expand, crop, flip).
    augmentation: str = "ssd"
    # The "ssd" augmentation's expand_param: expand's canvas is up to this many times the image side.
    max_expand_ratio: float = 4.0
    # Matching and losses.
    match_iou: float = 0.5
    neg_pos_ratio: int = 3
    objectness_threshold: float = 0.01  # theta: negative-anchor filtering and ARM score filter
    negative_filtering: str = "caffe"  # "caffe": theta drops pos and neg; "pytorch": pos only
    mining: str = "hard_negative"  # "hard_negative" (3:1), "ohem", "focal"
    ohem_examples_per_image: int = 256
    ohem_nms_iou: float = 0.0  # > 0 enables NMS over loss-ranked boxes (OHEM, Shrivastava et al. CVPR 2016, uses 0.7)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    loc_weight: float = 1.0
    # Post-processing (DetectionOutput).
    score_threshold: float = 0.01
    nms_iou: float = 0.45
    pre_nms_top_k: int = 1000  # per class
    max_detections: int = 500  # keep_top_k, per image

    def __post_init__(self):
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("preprocessing", self.preprocessing, PREPROCESSING)
        _check_choice("negative_filtering", self.negative_filtering, NEGATIVE_FILTERING)
        _check_choice("mining", self.mining, MINING)
        _check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        if self.backbone_alpha != 1.0 and self.backbone != "mobilenetv2":
            raise ValueError(f"backbone_alpha is MobileNetV2's width multiplier; {self.backbone} needs 1.0")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {self.num_classes}")
        if len(self.anchor_strides) != len(self.anchor_sizes):
            raise ValueError(
                f"anchor_strides {self.anchor_strides} and anchor_sizes {self.anchor_sizes} "
                "must have one entry per level")
        if len(self.anchor_strides) != 4:
            raise ValueError(f"RefineDet has 4 levels, got anchor_strides {self.anchor_strides}")
        if self.image_size % max(self.anchor_strides):
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of the largest stride "
                f"{max(self.anchor_strides)}")
        if len(self.variances) != 4:
            raise ValueError(f"variances must have 4 entries, got {self.variances}")
        if self.max_expand_ratio < 1.0:
            raise ValueError(f"max_expand_ratio must be >= 1 (1 disables expand), got {self.max_expand_ratio}")
        for field in ("match_iou", "objectness_threshold", "score_threshold", "nms_iou", "ohem_nms_iou"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field} must be in [0, 1], got {value}")

    @property
    def anchors_per_location(self) -> int:
        return 1 + 2 * len(self.aspect_ratios)

    def training_recipe(self) -> TrainingRecipe:
        """What train.py's unset flags take for this preset (`recipe_for`)."""
        return recipe_for(self)

    @property
    def resize_mode(self) -> str:
        """How the data pipeline sizes images (data/augment.py): "stretch", warped to
        image_size x image_size; RefineDet's anchors tile the whole square."""
        return "stretch"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RefineDetConfig":
        fields = json.loads(text)
        return cls(**_coerce(fields))


def _check_choice(field, value, choices):
    if value not in choices:
        raise ValueError(f"{field} must be one of {choices}, got {value!r}")


def _coerce(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; frozen configs keep tuples so they stay hashable."""
    known = {f.name: f for f in dataclasses.fields(RefineDetConfig)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"unknown RefineDetConfig field(s) {unknown}; known: {sorted(known)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


_VGG = dict(backbone="vgg16", preprocessing="caffe_bgr")
_PRESETS: dict[str, RefineDetConfig] = {
    "vgg16_320": RefineDetConfig(name="vgg16_320", image_size=320, **_VGG),
    "vgg16_512": RefineDetConfig(name="vgg16_512", image_size=512, **_VGG),
    "resnet101_320": RefineDetConfig(name="resnet101_320", image_size=320, backbone="resnet101"),
    "resnet101_512": RefineDetConfig(name="resnet101_512", image_size=512, backbone="resnet101"),
    "resnet50_320": RefineDetConfig(name="resnet50_320", image_size=320, backbone="resnet50"),
    "mobilenetv2_320": RefineDetConfig(
        name="mobilenetv2_320", image_size=320, backbone="mobilenetv2", preprocessing="tf",
        tcb_batch_norm=True),
    # The demo: small enough to train from scratch on a 2-core CPU in minutes (train.py's default).
    # Expand up to 2x, not the paper's 4x: the synthetic objects already span 9-134 px at 192 px,
    # and zooming out by up to 4x mostly made objects smaller than any in val and large ones
    # rare (VOC07 after 750 / 1500 steps, one seed each: 4x 0.60 / 0.78, 2x 0.71 / 0.85,
    # no expand 0.75 / 0.84).
    "mobilenetv2_lite_192": RefineDetConfig(
        name="mobilenetv2_lite_192", image_size=192, backbone="mobilenetv2", backbone_alpha=0.35,
        preprocessing="tf", tcb_channels=64, tcb_batch_norm=True, num_classes=7,
        anchor_sizes=(20.0, 40.0, 80.0, 160.0), max_expand_ratio=2.0),
}


# Fields that decide the network's variables or what its outputs mean: a checkpoint only fits a
# config that agrees on all of them (a resumed run; a checkpoint checked against --preset).
STRUCTURAL_FIELDS = ("image_size", "backbone", "backbone_alpha", "num_classes", "tcb_channels",
                     "tcb_batch_norm", "anchor_strides", "anchor_sizes", "aspect_ratios")


# Fine-tuning an ImageNet backbone: the paper's recipe. VOC07+12 (16,551 images) trains 120k
# iterations at batch 32, lr 1e-3, x0.1 at 80k and 100k: 232 epochs.
FINE_TUNE_RECIPE = TrainingRecipe(
    name="fine-tune (the paper's)", optimizer="sgd", batch_size=32, lr=None, warmup_steps=0,
    lr_schedule="multistep", lr_boundaries=(0.667, 0.833), clip_grad_norm=0.0, epochs=232.0,
    min_steps=1000, evaluations=0)
def recipe_for(config: RefineDetConfig) -> TrainingRecipe:
    """The paper's schedule when the backbone starts from weights, the demo's from scratch."""
    return FROM_SCRATCH_RECIPE if config.backbone_weights == "none" else FINE_TUNE_RECIPE


def parse_overrides(assignments, config_class=None) -> dict[str, Any]:
    """`field=value` strings (train.py's repeatable `--config`) -> overrides for `get_preset`.

    `config_class`: whose fields they set (default RefineDetConfig; `presets.parse_overrides`
    passes the preset's).

    Values are read by the field's type: numbers, `true`/`false`, names, and comma-separated
    tuples (`anchor_sizes=16,32,64,128`). Raises ValueError naming the field and the problem;
    `get_preset` then checks the values themselves (ranges, choices, consistency).
    """
    config_class = config_class or RefineDetConfig
    fields = {f.name: f.type for f in dataclasses.fields(config_class)}
    out = {}
    for text in assignments:
        name, sep, value = str(text).partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValueError(f"--config takes field=value, got {text!r}")
        if name not in fields:
            raise ValueError(f"--config {text!r}: unknown {config_class.__name__} field {name!r}; "
                             f"known: {sorted(fields)}")
        if name in out:
            raise ValueError(f"--config sets {name} twice")
        out[name] = _parse_value(name, fields[name], value)
    return out


def _parse_value(name, annotation, text):
    annotation = str(annotation)
    try:
        if annotation.startswith("tuple["):
            item = float if "float" in annotation else int
            items = tuple(item(v) for v in text.replace("(", "").replace(")", "").split(",") if v.strip())
            if not items:
                raise ValueError("empty")
            return items
        if annotation == "bool":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("not a boolean")
            return text.lower() in ("true", "1")
        if annotation == "int":
            return int(text)
        if annotation == "float":
            return float(text)
        return text
    except ValueError:
        kind = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(
            annotation, "comma-separated numbers" if annotation.startswith("tuple[") else annotation)
        raise ValueError(f"--config {name}={text!r}: {name} takes {kind}") from None


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str, **overrides) -> RefineDetConfig:
    """Returns the preset `name` with `overrides` replacing its fields.

    Raises ValueError naming the known presets (or fields) when one is wrong.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {preset_names()}")
    return dataclasses.replace(_PRESETS[name], **_coerce(overrides))
