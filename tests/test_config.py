import dataclasses
import json

import pytest

import refinedet_tf
from refinedet_tf.config import STRUCTURAL_FIELDS


def test_every_preset_resolves_with_reference_numbers():
    assert set(refinedet_tf.preset_names()) >= {
        "vgg16_320", "vgg16_512", "resnet101_320", "resnet101_512", "resnet50_320", "mobilenetv2_320"}
    c = refinedet_tf.get_preset("vgg16_320")
    assert (c.image_size, c.num_classes, c.anchor_strides, c.anchor_sizes) == (
        320, 21, (8, 16, 32, 64), (32, 64, 128, 256))
    assert c.variances == (0.1, 0.1, 0.2, 0.2)
    assert c.pixel_mean_bgr == (104, 117, 123) and c.preprocessing == "caffe_bgr"
    assert (c.neg_pos_ratio, c.objectness_threshold, c.match_iou) == (3, 0.01, 0.5)
    assert (c.nms_iou, c.score_threshold, c.pre_nms_top_k, c.max_detections) == (0.45, 0.01, 1000, 500)
    assert c.negative_filtering == "caffe" and not c.clip_anchors
    assert refinedet_tf.get_preset("mobilenetv2_320").preprocessing == "tf"
    assert refinedet_tf.get_preset("resnet101_512").image_size == 512


def test_overrides_and_frozen():
    c = refinedet_tf.get_preset("vgg16_512", num_classes=81, anchor_sizes=[16, 32, 64, 128])
    assert c.num_classes == 81 and c.anchor_sizes == (16, 32, 64, 128)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.num_classes = 3


def test_json_round_trip():
    c = refinedet_tf.get_preset("resnet50_320", mining="focal")
    assert refinedet_tf.RefineDetConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("name, overrides, message", [
    ("vgg16_321", {}, "unknown preset 'vgg16_321'"),
    ("vgg16_320", {"num_clases": 3}, r"unknown RefineDetConfig field\(s\) \['num_clases'\]"),
    ("vgg16_320", {"backbone": "vgg19"}, "backbone must be one of"),
    ("vgg16_320", {"image_size": 300}, "multiple of the largest stride 64"),
    ("vgg16_320", {"num_classes": 1}, "counts background"),
    ("vgg16_320", {"negative_filtering": "both"}, "negative_filtering must be one of"),
    ("vgg16_320", {"nms_iou": 1.5}, r"nms_iou must be in \[0, 1\]"),
    ("vgg16_320", {"augmentation": "mixup"}, r"augmentation must be one of \('ssd', 'flip'\), got 'mixup'"),
])
def test_bad_settings_are_clear_errors(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        refinedet_tf.get_preset(name, **overrides)


def test_resize_mode_and_augmentation():
    c = refinedet_tf.get_preset("mobilenetv2_lite_192")
    assert (c.resize_mode, c.augmentation) == ("stretch", "ssd")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.resize_mode = "keep_aspect"  # a property of the architecture, not a setting
    flip = refinedet_tf.get_preset("vgg16_320", augmentation="flip")
    assert refinedet_tf.RefineDetConfig.from_json(flip.to_json()).augmentation == "flip"
    # A config saved before the field existed reads as the augmentation it trained with.
    fields = json.loads(c.to_json())
    del fields["augmentation"]
    assert refinedet_tf.RefineDetConfig.from_json(json.dumps(fields)) == c
    assert "augmentation" not in STRUCTURAL_FIELDS and "resize_mode" not in {f.name for f in dataclasses.fields(c)}
