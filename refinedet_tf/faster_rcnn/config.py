"""Faster R-CNN presets: every number of a Faster R-CNN model in one frozen dataclass.

The numbers are the paper's (Ren et al., NeurIPS 2015) as py-faster-rcnn runs them
(`lib/fast_rcnn/config.py`, `models/pascal_voc/VGG16/faster_rcnn_end2end/*.prototxt`,
`experiments/cfgs/faster_rcnn_end2end.yml`); where simple-faster-rcnn-pytorch
(`utils/config.py`, `model/`) differs, a field switches to its variant (the project's
FASTER_RCNN.md §1 tabulates both). A user reads this file to see what
`faster_rcnn_vgg16` is; `faster_rcnn_preset(name, **overrides)` changes fields.

Units: sizes are pixels of the resized image on the padded canvas (py-faster-rcnn's blob);
`image_size` is the canvas side (square, images padded bottom/right, a multiple of the feature
stride 16), and `image_info` = (height, width, scale) of each image inside it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from refinedet_tf.config import AUGMENTATIONS
from refinedet_tf.recipe import FROM_SCRATCH_RECIPE, TrainingRecipe

BACKBONES = ("vgg16", "mobilenetv2")
PREPROCESSING = ("caffe_bgr", "tf")
ROI_POOLING = ("pool", "align")
MINING = ("sample", "ohem")
FEATURE_STRIDE = 16  # VGG16 conv5_3 and MobileNetV2 block_13_expand: both stride 16

# py-faster-rcnn cfg PIXEL_MEANS (BGR) of its VGG16.v2.caffemodel.
PFR_PIXEL_MEAN_BGR = (102.9801, 115.9465, 122.7717)
# simple-faster-rcnn-pytorch's `caffe_normalize` subtracts [122.7717, 115.9465, 102.9801] from
# the BGR channels in that order (PFR's means reversed): its caffe-pretrained checkpoints expect it.
SFR_CAFFE_PIXEL_MEAN_BGR = (122.7717, 115.9465, 102.9801)


@dataclasses.dataclass(frozen=True)
class FasterRCNNConfig:
    """Everything that defines a Faster R-CNN model, its targets, losses and decoding.

    `num_classes` counts background (VOC 21). Defaults are py-faster-rcnn's VGG16 end2end.
    """

    name: str = "custom"
    # Model.
    image_size: int = 1008  # padded canvas side: 600 x 1000 fits in both orientations, 63 x 63 cells
    backbone: str = "vgg16"
    backbone_weights: str = "none"  # "none", "imagenet" or a local Keras weights file
    backbone_alpha: float = 1.0  # MobileNetV2 width multiplier (1.0 for vgg16)
    # VGG16 blocks whose convs stay frozen: conv1_1..conv2_2 (py-faster-rcnn lr_mult 0,
    # simple-faster-rcnn `features[:10]`); 0 when training from scratch.
    frozen_backbone_blocks: int = 2
    num_classes: int = 21
    # Input normalization applied before the model (refinedet_tf/preprocessing.py).
    preprocessing: str = "caffe_bgr"
    pixel_mean_bgr: tuple[float, float, float] = PFR_PIXEL_MEAN_BGR
    # Resize rule of the data pipeline (cfg TRAIN/TEST.SCALES (600,), MAX_SIZE 1000): shorter side to
    # min_side unless the longer would pass max_side; the image must also fit the canvas.
    min_side: int = 600
    max_side: int = 1000
    # Training augmentation (refinedet_tf.config.AUGMENTATIONS): "flip", a horizontal flip with
    # p 0.5, is the references' only one (TRAIN.USE_FLIPPED); "ssd" adds SSD's photometric
    # distortion, expand (canvas up to max_expand_ratio times the image side) and random crop.
    augmentation: str = "flip"
    max_expand_ratio: float = 4.0
    # Anchors (lib/rpn/generate_anchors.py): 9 per cell, a = 3 * ratio_index + scale_index.
    anchor_base_size: int = 16
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    anchor_scales: tuple[float, ...] = (8.0, 16.0, 32.0)  # side = base size * scale
    anchor_center: float = 7.5  # py-faster-rcnn 7.5; simple-faster-rcnn 8.0
    round_base_anchors: bool = True  # py-faster-rcnn's integer anchors; simple-faster-rcnn False
    # RPN (rpn_conv/3x3, rpn_cls_score, rpn_bbox_pred) and its targets (anchor_target_layer.py).
    rpn_channels: int = 512
    rpn_positive_iou: float = 0.7  # RPN_POSITIVE_OVERLAP
    rpn_negative_iou: float = 0.3  # RPN_NEGATIVE_OVERLAP
    rpn_samples_per_image: int = 256  # RPN_BATCHSIZE
    rpn_positive_fraction: float = 0.5  # RPN_FG_FRACTION
    # The references' quirk: a box whose best IoU is 0 makes every inside anchor positive.
    rpn_zero_best_iou_forces_positives: bool = False
    rpn_sigma: float = 3.0  # smooth-L1 sigma of the RPN box loss
    # Proposal layer (proposal_layer.py): counts per image, NMS, size filter.
    train_pre_nms_top_n: int = 12000
    train_post_nms_top_n: int = 2000
    test_pre_nms_top_n: int = 6000
    test_post_nms_top_n: int = 300
    rpn_nms_iou: float = 0.7
    rpn_min_size: float = 16.0  # pixels of the original image (times image_info's scale)
    # RoI sampling (proposal_target_layer.py): per image.
    roi_samples_per_image: int = 128  # TRAIN.BATCH_SIZE
    roi_foreground_fraction: float = 0.25  # FG_FRACTION
    roi_foreground_iou: float = 0.5  # FG_THRESH
    roi_background_iou_high: float = 0.5  # BG_THRESH_HI
    roi_background_iou_low: float = 0.0  # BG_THRESH_LO of the end2end yml (cfg default 0.1)
    # Which RoIs train the head: "sample" (the references' random draw above) or "ohem" (seed 001:
    # every proposal is scored without gradient and the roi_samples_per_image x images hardest of
    # the minibatch train it; faster_rcnn/ohem.py).
    mining: str = "sample"
    ohem_per_image: bool = False  # True: the hardest roi_samples_per_image of each image instead
    ohem_nms_iou: float = 1.0  # diversity NMS over the ranked RoIs (seed 001's OHEM default 0.7); 1.0: off
    # RoI head: pooling, fc6/fc7, cls_score and class-specific bbox_pred.
    roi_pooling: str = "pool"  # "pool": RoIPool (the paper's); "align": RoIAlign
    roi_output_size: int = 7
    roi_align_sampling_ratio: int = 2
    head_units: int = 4096
    head_dropout: float = 0.5  # py-faster-rcnn; simple-faster-rcnn 0.0
    box_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)  # BBOX_NORMALIZE_STDS (y, x, h, w)
    roi_sigma: float = 1.0  # smooth-L1 sigma of the head box loss
    # Post-processing (lib/fast_rcnn/test.py): per class score > threshold, NMS, then the best
    # max_detections over the classes.
    score_threshold: float = 0.05
    nms_iou: float = 0.3  # TEST.NMS
    pre_nms_top_k: int = 300  # per class, RoIs entering NMS (>= test_post_nms_top_n: all)
    max_detections: int = 100  # --num_dets

    def __post_init__(self):
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("preprocessing", self.preprocessing, PREPROCESSING)
        _check_choice("roi_pooling", self.roi_pooling, ROI_POOLING)
        _check_choice("mining", self.mining, MINING)
        _check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        if self.max_expand_ratio < 1.0:
            raise ValueError(f"max_expand_ratio must be >= 1 (1 disables expand), got {self.max_expand_ratio}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {self.num_classes}")
        if self.image_size < FEATURE_STRIDE or self.image_size % FEATURE_STRIDE:
            raise ValueError(f"image_size must be a positive multiple of the feature stride {FEATURE_STRIDE}, "
                             f"got {self.image_size}")
        if self.backbone_alpha != 1.0 and self.backbone != "mobilenetv2":
            raise ValueError(f"backbone_alpha is MobileNetV2's width multiplier; {self.backbone} needs 1.0")
        max_frozen = 5 if self.backbone == "vgg16" else 0
        if not 0 <= self.frozen_backbone_blocks <= max_frozen:
            raise ValueError(f"frozen_backbone_blocks must be in [0, {max_frozen}] for {self.backbone}, "
                             f"got {self.frozen_backbone_blocks}")
        if len(self.pixel_mean_bgr) != 3:
            raise ValueError(f"pixel_mean_bgr must have 3 entries, got {self.pixel_mean_bgr}")
        if not self.anchor_ratios or not self.anchor_scales:
            raise ValueError(f"anchor_ratios and anchor_scales must be non-empty, got {self.anchor_ratios}, "
                             f"{self.anchor_scales}")
        for field in ("anchor_ratios", "anchor_scales"):
            if any(v <= 0 for v in getattr(self, field)):
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        if len(self.box_stds) != 4 or any(s <= 0 for s in self.box_stds):
            raise ValueError(f"box_stds must be 4 positive numbers, got {self.box_stds}")
        for field in ("rpn_positive_iou", "rpn_negative_iou", "rpn_positive_fraction", "rpn_nms_iou",
                      "roi_foreground_fraction", "roi_foreground_iou", "roi_background_iou_high",
                      "roi_background_iou_low", "score_threshold", "nms_iou", "ohem_nms_iou"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field} must be in [0, 1], got {value}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.rpn_negative_iou > self.rpn_positive_iou:
            raise ValueError(f"rpn_negative_iou {self.rpn_negative_iou} must be <= rpn_positive_iou "
                             f"{self.rpn_positive_iou}")
        if self.roi_background_iou_low > self.roi_background_iou_high:
            raise ValueError(f"roi_background_iou_low {self.roi_background_iou_low} must be <= "
                             f"roi_background_iou_high {self.roi_background_iou_high}")
        for field in ("rpn_channels", "rpn_samples_per_image", "train_pre_nms_top_n", "train_post_nms_top_n",
                      "test_pre_nms_top_n", "test_post_nms_top_n", "roi_samples_per_image", "roi_output_size",
                      "roi_align_sampling_ratio", "head_units", "pre_nms_top_k", "max_detections",
                      "anchor_base_size", "min_side", "max_side"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} must be <= max_side {self.max_side}")
        if not self.rpn_min_size > 0:
            # generate_proposals needs it: a surviving box must have ymax > 0 (see proposals.py).
            raise ValueError(f"rpn_min_size must be > 0, got {self.rpn_min_size}")

    @property
    def resize_mode(self) -> str:
        """How the data pipeline sizes images (data/augment.py): "keep_aspect", py-faster-rcnn's
        min_side / max_side rule, the image at the canvas' top left with image_info."""
        return "keep_aspect"

    @property
    def feature_stride(self) -> int:
        """Pixels per cell of the feature map the RPN and the RoI head read (16)."""
        return FEATURE_STRIDE

    @property
    def roi_spatial_scale(self) -> float:
        """Feature cells per canvas pixel: 1/16 (the prototxts' spatial_scale 0.0625)."""
        return 1.0 / self.feature_stride

    @property
    def anchors_per_location(self) -> int:
        return len(self.anchor_ratios) * len(self.anchor_scales)

    def anchor_options(self) -> dict[str, Any]:
        """Keyword arguments of `faster_rcnn.anchors.grid_anchors` (besides the map size)."""
        return {"feature_stride": self.feature_stride, "base_size": self.anchor_base_size,
                "ratios": self.anchor_ratios, "scales": self.anchor_scales,
                "anchor_center": self.anchor_center, "round_base_anchors": self.round_base_anchors}

    def proposal_counts(self, training: bool) -> tuple[int, int]:
        """(pre_nms_top_n, post_nms_top_n) of the proposal layer in training or inference."""
        if training:
            return self.train_pre_nms_top_n, self.train_post_nms_top_n
        return self.test_pre_nms_top_n, self.test_post_nms_top_n

    def training_recipe(self) -> TrainingRecipe:
        """Seed 003's schedule when the backbone starts from ImageNet weights; from scratch, the
        demo's (refinedet_tf/recipe.py)."""
        return FROM_SCRATCH_RECIPE if self.backbone_weights == "none" else FINE_TUNE_RECIPE

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FasterRCNNConfig":
        return cls(**_coerce(json.loads(text)))


# simple-faster-rcnn-pytorch's trainer (seed 003, utils/config.py): SGD momentum 0.9, lr 1e-3,
# weight decay 5e-4, one image per step, 14 epochs with lr x 0.1 after epoch 9, evaluated after
# every epoch (the best kept).
FINE_TUNE_RECIPE = TrainingRecipe(
    name="fine-tune (simple-faster-rcnn-pytorch's)", optimizer="sgd", batch_size=1, lr=1e-3, warmup_steps=0,
    lr_schedule="multistep", lr_boundaries=(9 / 14,), clip_grad_norm=0.0, epochs=14.0, min_steps=1000,
    evaluations=14)


def _check_choice(field, value, choices):
    if value not in choices:
        raise ValueError(f"{field} must be one of {choices}, got {value!r}")


def _coerce(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; frozen configs keep tuples so they stay hashable."""
    known = {f.name for f in dataclasses.fields(FasterRCNNConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown FasterRCNNConfig field(s) {unknown}; known: {sorted(known)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


# Fields that decide the network's variables or what its outputs mean: a checkpoint only fits a
# config that agrees on all of them. The canvas (image_size) fixes the anchors, i.e. what row i
# of rpn_loc / rpn_logits refers to (the variables themselves do not depend on it); the anchor
# geometry fixes what the RPN offsets are relative to; roi_pooling what fc6 reads; box_stds the
# scale of roi_loc.
STRUCTURAL_FIELDS = ("image_size", "backbone", "backbone_alpha", "num_classes", "anchor_base_size",
                     "anchor_ratios", "anchor_scales", "anchor_center", "round_base_anchors", "rpn_channels",
                     "roi_pooling", "roi_output_size", "head_units", "box_stds")

# simple-faster-rcnn-pytorch's variant of the model (its checkpoints and the parity fixtures):
# centre-8 unrounded anchors, no dropout, the caffe-pretrained checkpoints' pixel means.
_SFR = dict(anchor_center=8.0, round_base_anchors=False, head_dropout=0.0, pixel_mean_bgr=SFR_CAFFE_PIXEL_MEAN_BGR)

_PRESETS: dict[str, FasterRCNNConfig] = {
    # The paper's VGG16 model as py-faster-rcnn trains and tests it (end2end).
    "faster_rcnn_vgg16": FasterRCNNConfig(name="faster_rcnn_vgg16"),
    # The same network with simple-faster-rcnn-pytorch's switches: what its checkpoints
    # (convert/faster_rcnn_pytorch.py) and the golden_frcnn fixtures need.
    "faster_rcnn_vgg16_sfr": FasterRCNNConfig(name="faster_rcnn_vgg16_sfr", **_SFR),
    # The CPU demo: trains from scratch on 2 cores (the synthetic set: 256 px images, 6 classes,
    # objects ~12-180 px). MobileNetV2 x0.35 is the backbone RefineDet's demo trains from scratch
    # in minutes (BatchNorm, zero-gamma residuals); its stride-16 tap (block_13_expand_relu, 192
    # channels) gives a 16 x 16 map. A narrow VGG16 has no BatchNorm and 13 plain convs, which
    # train poorly from scratch. Anchors 32, 64, 128 px (scales 2, 4, 8) span the objects, whose
    # log-mean side is ~64 px; RPN min size 8 px keeps the ~12 px objects. RoIAlign: RoIPool's
    # whole-cell quantization is coarse on a 16 x 16 map. 2 x 256-unit fc layers and a 128-channel
    # RPN instead of 4096 / 512 (fc6 reads 7 x 7 x 192 = 9408 values). Proposals: the map has
    # only 2304 anchors, so fewer are kept (train 2000 -> 512, test 1000 -> 100), and at most
    # 100 detections per image (3-9 objects in each). Augmentation "ssd", not the references'
    # flip only: this preset trains from scratch on a small synthetic set, and the SSD
    # augmentation is what makes RefineDet's from-scratch demo work on it; expand up to 2x, the
    # ratio RefineDet's demo measured best on the same synthetic images (not re-measured here).
    # The head is most of a training step's time on a CPU (batch 16: 2.9 of 3.8 s, RoIAlign's
    # gathers and their backward about half of it), so it pools one bilinear sample per bin
    # (sampling ratio 1: on a 16 x 16 map a bin spans at most ~2 cells, and below one cell
    # Detectron's adaptive ratio ceil(bin size) is 1 too) and trains on 64 RoIs per image (3-9
    # objects, so the 25% foreground cap of 16 is rarely reached): 1.6 s per step of 16.
    "faster_rcnn_mobilenetv2_lite_256": FasterRCNNConfig(
        name="faster_rcnn_mobilenetv2_lite_256", image_size=256, backbone="mobilenetv2", backbone_alpha=0.35,
        frozen_backbone_blocks=0, num_classes=7, preprocessing="tf", min_side=256, max_side=256,
        anchor_scales=(2.0, 4.0, 8.0), anchor_center=8.0, round_base_anchors=False, rpn_channels=128,
        train_pre_nms_top_n=2000, train_post_nms_top_n=512, test_pre_nms_top_n=1000, test_post_nms_top_n=100,
        rpn_min_size=8.0, roi_samples_per_image=64, roi_pooling="align", roi_align_sampling_ratio=1,
        head_units=256, head_dropout=0.0, pre_nms_top_k=100, augmentation="ssd", max_expand_ratio=2.0),
}


def faster_rcnn_preset_names() -> list[str]:
    return sorted(_PRESETS)


def faster_rcnn_preset(name: str, **overrides) -> FasterRCNNConfig:
    """Returns the Faster R-CNN preset `name` with `overrides` replacing its fields.

    Raises ValueError naming the known presets (or fields) when one is wrong.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown Faster R-CNN preset {name!r}; known presets: {faster_rcnn_preset_names()}")
    return dataclasses.replace(_PRESETS[name], **_coerce(overrides))
