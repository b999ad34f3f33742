"""Faster R-CNN config, model, detection output and importer on small models (the VGG16 parity
is tests/test_frcnn_forward_parity.py).

Tolerances: hand cases compare exactly where the arithmetic is exact (integer boxes, zero
offsets) and to 1e-6 where a softmax or a division by the image size rounds; `detect` and
`detect_builtin` must give the same rows (boxes to 1e-6 of the image: both gather the same
float32 boxes and divide them by the same size).
"""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.convert.faster_rcnn_pytorch import (
    fc6_kernel_from_pytorch,
    load_simple_faster_rcnn_state_dict,
    num_classes_of,
)
from refinedet_tf.faster_rcnn.anchors import grid_anchors
from refinedet_tf.faster_rcnn.config import (
    STRUCTURAL_FIELDS,
    FasterRCNNConfig,
    faster_rcnn_preset,
    faster_rcnn_preset_names,
)
from refinedet_tf.faster_rcnn.head import RoIPooling
from refinedet_tf.faster_rcnn.model import (
    build_faster_rcnn,
    decode_detections,
    detect,
    detect_builtin,
    faster_rcnn_anchors,
)
from refinedet_tf.faster_rcnn.rpn import ProposalLayer

KEYS = os.path.join(os.path.dirname(__file__), "data", "golden_frcnn", "state_dict_keys_frcnn_vgg16.json")
LITE = "faster_rcnn_mobilenetv2_lite_256"

# ---------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("name", faster_rcnn_preset_names())
def test_presets_round_trip_json(name):
    config = faster_rcnn_preset(name)
    assert config.name == name
    assert FasterRCNNConfig.from_json(config.to_json()) == config


def test_paper_preset_numbers():
    c = faster_rcnn_preset("faster_rcnn_vgg16")
    assert (c.image_size, c.num_classes, c.backbone, c.frozen_backbone_blocks) == (1008, 21, "vgg16", 2)
    assert c.pixel_mean_bgr == (102.9801, 115.9465, 122.7717) and c.preprocessing == "caffe_bgr"
    assert (c.anchor_ratios, c.anchor_scales, c.anchor_base_size) == ((0.5, 1.0, 2.0), (8.0, 16.0, 32.0), 16)
    assert (c.anchor_center, c.round_base_anchors, c.anchors_per_location) == (7.5, True, 9)
    assert (c.rpn_positive_iou, c.rpn_negative_iou, c.rpn_samples_per_image, c.rpn_positive_fraction) == (
        0.7, 0.3, 256, 0.5)
    assert c.proposal_counts(True) == (12000, 2000) and c.proposal_counts(False) == (6000, 300)
    assert (c.rpn_nms_iou, c.rpn_min_size) == (0.7, 16.0)
    assert (c.roi_samples_per_image, c.roi_foreground_fraction, c.roi_foreground_iou,
            c.roi_background_iou_high, c.roi_background_iou_low) == (128, 0.25, 0.5, 0.5, 0.0)
    assert (c.roi_pooling, c.roi_output_size, c.roi_spatial_scale) == ("pool", 7, 1 / 16)
    assert (c.head_units, c.head_dropout, c.box_stds) == (4096, 0.5, (0.1, 0.1, 0.2, 0.2))
    assert (c.score_threshold, c.nms_iou, c.max_detections) == (0.05, 0.3, 100)
    sfr = faster_rcnn_preset("faster_rcnn_vgg16_sfr")
    assert (sfr.anchor_center, sfr.round_base_anchors, sfr.head_dropout) == (8.0, False, 0.0)


def test_input_pipeline_settings():
    # Faster R-CNN's input keeps the aspect; the references augment with a flip only, the CPU
    # demo (from scratch) with SSD's augmentation.
    paper, demo = faster_rcnn_preset("faster_rcnn_vgg16"), faster_rcnn_preset(LITE)
    assert (paper.resize_mode, paper.augmentation) == ("keep_aspect", "flip")
    assert (demo.resize_mode, demo.augmentation, demo.max_expand_ratio) == ("keep_aspect", "ssd", 2.0)
    assert not {"augmentation", "max_expand_ratio"} & set(STRUCTURAL_FIELDS)


def test_structural_fields_are_fields():
    names = {f.name for f in dataclasses.fields(FasterRCNNConfig)}
    assert set(STRUCTURAL_FIELDS) <= names
    assert "score_threshold" not in STRUCTURAL_FIELDS and "num_classes" in STRUCTURAL_FIELDS


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=1000), "multiple of the feature stride 16"),
    (dict(roi_pooling="crop"), "roi_pooling must be one of"),
    (dict(num_classes=1), "num_classes counts background"),
    (dict(nms_iou=1.5), "nms_iou must be in [0, 1]"),
    (dict(backbone_alpha=0.5), "backbone_alpha is MobileNetV2's"),
    (dict(head_dropout=1.0), "head_dropout must be in [0, 1)"),
    (dict(test_post_nms_top_n=0), "test_post_nms_top_n must be >= 1"),
    (dict(rpn_negative_iou=0.8), "rpn_negative_iou 0.8 must be <= rpn_positive_iou"),
    (dict(min_side=1200), "min_side 1200 must be <= max_side 1000"),
    (dict(augmentation="ssd_lite"), "augmentation must be one of ('ssd', 'flip'), got 'ssd_lite'"),
    (dict(max_expand_ratio=0.5), "max_expand_ratio must be >= 1"),
])
def test_bad_settings_raise(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        faster_rcnn_preset("faster_rcnn_vgg16", **overrides)


def test_bad_names_raise():
    with pytest.raises(ValueError, match="known presets: .*faster_rcnn_vgg16"):
        faster_rcnn_preset("vgg16_frcnn")
    with pytest.raises(ValueError, match=r"unknown FasterRCNNConfig field\(s\) \['rpn_size'\]"):
        faster_rcnn_preset("faster_rcnn_vgg16", rpn_size=3)
    with pytest.raises(ValueError, match="frozen_backbone_blocks must be in \\[0, 0\\] for mobilenetv2"):
        faster_rcnn_preset(LITE, frozen_backbone_blocks=2)
    assert faster_rcnn_preset("faster_rcnn_vgg16", num_classes=5, anchor_scales=[4, 8]).anchor_scales == (4, 8)


# ---------------------------------------------------------------------------------------------
# Model (the CPU preset: MobileNetV2 x0.35, 256 px canvas, 16 x 16 map)


@pytest.fixture(scope="module")
def lite_config():
    return faster_rcnn_preset(LITE)


@pytest.fixture(scope="module")
def lite_model(lite_config):
    tf.keras.utils.set_random_seed(1)
    return build_faster_rcnn(lite_config)


@pytest.fixture(scope="module")
def lite_inputs():
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 1.0, (2, 256, 256, 3)).astype(np.float32)
    image_info = np.array([[256.0, 256.0, 1.0], [192.0, 240.0, 0.75]], np.float32)
    return {"images": images, "image_info": image_info}


@pytest.fixture(scope="module")
def lite_outputs(lite_model, lite_inputs):
    """The model's inference outputs (eager: ~1-4 s a call on 2 cores, so computed once)."""
    return lite_model(lite_inputs, training=False)


@pytest.fixture(scope="module")
def lite_training_outputs(lite_model, lite_inputs):
    """Training-mode outputs: 512 proposals, BatchNorm on batch statistics (in inference an
    untrained BatchNorm network shrinks its activations to ~1e-7, so every score ties)."""
    return lite_model(lite_inputs, training=True)


def test_output_shapes(lite_outputs, lite_training_outputs, lite_inputs):
    anchors = 16 * 16 * 9
    for out, rois in ((lite_outputs, 100), (lite_training_outputs, 512)):
        assert set(out) == {"features", "rpn_loc", "rpn_logits", "rois_yxyx_px", "rois_valid", "roi_logits",
                            "roi_loc", "image_info"}
        assert out["features"].shape == (2, 16, 16, 192)
        assert out["rpn_loc"].shape == (2, anchors, 4) and out["rpn_logits"].shape == (2, anchors, 2)
        assert out["rois_yxyx_px"].shape == (2, rois, 4) and out["rois_valid"].shape == (2, rois)
        assert out["rois_valid"].dtype == tf.bool
        assert out["roi_logits"].shape == (2, rois, 7) and out["roi_loc"].shape == (2, rois, 7, 4)
        np.testing.assert_array_equal(out["image_info"], lite_inputs["image_info"])


def test_rois_lie_in_the_valid_area(lite_outputs, lite_inputs):
    out = lite_outputs
    rois, valid = out["rois_yxyx_px"].numpy(), out["rois_valid"].numpy()
    for image, (height, width, scale) in enumerate(lite_inputs["image_info"]):
        kept = rois[image][valid[image]]
        assert len(kept) > 0
        assert kept.min() >= 0 and kept[:, 2].max() <= height and kept[:, 3].max() <= width
        # the size filter: 8 px of the original image, times the scale
        assert np.all(kept[:, 2] - kept[:, 0] >= 8.0 * scale) and np.all(kept[:, 3] - kept[:, 1] >= 8.0 * scale)
        assert np.all(rois[image][~valid[image]] == 0)


def test_roi_head_runs_on_other_rois(lite_model, lite_outputs):
    """What a training loss does: the same head layers on sampled RoIs, here the model's own."""
    out = lite_outputs
    head = lite_model.get_layer("roi_head")
    again = head([out["features"], out["rois_yxyx_px"], out["rois_valid"]], training=False)
    np.testing.assert_allclose(again["roi_logits"], out["roi_logits"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(again["roi_loc"], out["roi_loc"], rtol=1e-6, atol=1e-6)
    sampled = head([out["features"], tf.constant([[[0.0, 0.0, 64.0, 64.0]] * 3] * 2), tf.ones([2, 3], tf.bool)])
    assert sampled["roi_logits"].shape == (2, 3, 7) and sampled["roi_loc"].shape == (2, 3, 7, 4)


def test_anchors_of_the_canvas(lite_model, lite_config):
    anchors = lite_model.get_layer("proposals").anchors_yxyx_px
    np.testing.assert_array_equal(anchors, faster_rcnn_anchors(lite_config))
    # Hand values: cell (0, 0), ratio 0.5 (h / w), scale 2: h = 32 sqrt(0.5), w = 32 / sqrt(0.5),
    # centre 8; the last cell (15, 15), ratio 2, scale 8 adds 240 to every coordinate.
    h, w = 32 * np.sqrt(0.5), 32 / np.sqrt(0.5)
    np.testing.assert_allclose(anchors[0], [8 - h / 2, 8 - w / 2, 8 + h / 2, 8 + w / 2], atol=1e-5)
    h, w = 128 * np.sqrt(2.0), 128 / np.sqrt(2.0)
    np.testing.assert_allclose(anchors[-1], [248 - h / 2, 248 - w / 2, 248 + h / 2, 248 + w / 2], atol=1e-4)
    # A non-square canvas: (y, x, a) rows of a 20 x 26 map.
    wide = faster_rcnn_anchors(lite_config, (320, 416))
    assert wide.shape == (20 * 26 * 9, 4)
    np.testing.assert_array_equal(wide, grid_anchors(20, 26, **lite_config.anchor_options()))
    with pytest.raises(ValueError, match="multiples of 16"):
        faster_rcnn_anchors(lite_config, (320, 410))


def test_custom_layers_round_trip_their_config(lite_model):
    proposals = lite_model.get_layer("proposals")
    copy = ProposalLayer.from_config(json.loads(json.dumps(proposals.get_config())))
    np.testing.assert_array_equal(copy.anchors_yxyx_px, proposals.anchors_yxyx_px)
    assert (copy.train_counts, copy.test_counts, copy.min_size) == ((2000, 512), (1000, 100), 8.0)
    pooling = lite_model.get_layer("roi_head").get_layer("roi_pooling")
    copy = RoIPooling.from_config(pooling.get_config())
    assert (copy.mode, copy.output_size, copy.spatial_scale) == ("align", 7, 1 / 16)


# ---------------------------------------------------------------------------------------------
# Detection output


def hand_outputs():
    """Two images on a 256 canvas, 4 RoIs, 3 classes (bg, 1, 2), zero offsets (boxes = RoIs).

    Image 0 is 100 x 200: roi 0 and roi 1 overlap (IoU 0.82); roi 2 crosses the image's
    bottom-right corner (clipped to [60, 150, 100, 200]); roi 3 is padding (rois_valid False)
    with a confident score that must be ignored. roi 0 and roi 1 have equal class-2 scores.
    Image 1 has no valid RoI.
    """
    rois = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [60, 150, 120, 260], [0, 0, 30, 30]], np.float32)
    probs = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.5, 0.04, 0.46], [0.0001, 0.9998, 0.0001]], np.float32)
    return {
        "rois_yxyx_px": np.stack([rois, rois]),
        "rois_valid": np.array([[True, True, True, False], [False] * 4]),
        "roi_logits": np.log(np.stack([probs, probs])),
        "roi_loc": np.zeros((2, 4, 3, 4), np.float32),
        "image_info": np.array([[100.0, 200.0, 1.0], [256.0, 256.0, 1.0]], np.float32),
    }


HAND_CONFIG = faster_rcnn_preset(LITE, num_classes=3)


def test_decode_detections_clips_to_the_image():
    decoded = decode_detections(hand_outputs(), HAND_CONFIG)
    boxes = decoded["boxes_yxyx_px"].numpy()
    np.testing.assert_array_equal(boxes[0, 2, 1], [60, 150, 100, 200])
    np.testing.assert_array_equal(boxes[1, 2, 1], [60, 150, 120, 256])
    np.testing.assert_array_equal(boxes[0, 0, 2], [10, 10, 50, 50])
    scores = decoded["scores"].numpy()
    np.testing.assert_allclose(scores[0, :3], [[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.5, 0.04, 0.46]], atol=1e-6)
    assert np.all(scores[0, 3] == 0) and np.all(scores[1] == 0)  # invalid rows score 0


@pytest.mark.parametrize("detector", [detect, detect_builtin], ids=["combined_nms", "builtin"])
def test_detect_hand_case(detector):
    out = detector(hand_outputs(), HAND_CONFIG, max_detections=5)
    assert out["num_detections"].numpy().tolist() == [3, 0]
    # class 1: roi 0 (0.8) suppresses roi 1 (IoU 0.82 > 0.3); roi 2 (0.04) is under 0.05.
    # class 2: roi 2 (0.46); roi 0 and roi 1 tie at 0.1 and overlap: the lower index (0) stays.
    np.testing.assert_array_equal(out["detection_classes"][0], [1, 2, 2, 0, 0])
    np.testing.assert_allclose(out["detection_scores"][0], [0.8, 0.46, 0.1, 0, 0], atol=1e-6)
    # normalized by the image's valid size (100 x 200), not the canvas
    np.testing.assert_allclose(out["detection_boxes"][0, :3],
                               [[0.1, 0.05, 0.5, 0.25], [0.6, 0.75, 1.0, 1.0], [0.1, 0.05, 0.5, 0.25]], atol=1e-6)
    assert np.all(out["detection_boxes"][0, 3:] == 0) and np.all(out["detection_boxes"][1] == 0)
    assert out["detection_classes"].dtype == tf.int32 and out["num_detections"].dtype == tf.int32

    capped = detector(hand_outputs(), HAND_CONFIG, max_detections=2)
    assert capped["num_detections"].numpy().tolist() == [2, 0]
    np.testing.assert_array_equal(capped["detection_classes"][0], [1, 2])
    # Scores are kept strictly above the threshold: at 0.46 exactly, roi 2 goes.
    threshold = float(decode_detections(hand_outputs(), HAND_CONFIG)["scores"][0, 2, 2])
    strict = detector(hand_outputs(), HAND_CONFIG, max_detections=5, score_threshold=threshold)
    assert strict["num_detections"].numpy().tolist() == [1, 0]


def random_head_outputs(batch=2, rois=100, classes=7, canvas=256, seed=3):
    """Head outputs of a random model: random RoIs inside each image, logits N(0, 2), offsets N(0, 0.5)."""
    rng = np.random.default_rng(seed)
    image_info = np.array([[256.0, 256.0, 1.0], [160.0, 224.0, 0.7]][:batch], np.float32)
    y = rng.uniform(0, 1, (batch, rois, 2)) * image_info[:, None, :1]
    x = rng.uniform(0, 1, (batch, rois, 2)) * image_info[:, None, 1:2]
    boxes = np.stack([y.min(-1), x.min(-1), y.max(-1) + 8, x.max(-1) + 8], axis=-1).astype(np.float32)
    valid = np.arange(rois)[None, :] < np.array([[rois], [rois - 13]][:batch])
    return {"rois_yxyx_px": np.where(valid[..., None], boxes, 0).astype(np.float32), "rois_valid": valid,
            "roi_logits": rng.normal(0, 2, (batch, rois, classes)).astype(np.float32),
            "roi_loc": rng.normal(0, 0.5, (batch, rois, classes, 4)).astype(np.float32), "image_info": image_info}


def assert_same_detections(a, b):
    np.testing.assert_array_equal(a["num_detections"], b["num_detections"])
    np.testing.assert_array_equal(a["detection_classes"], b["detection_classes"])
    np.testing.assert_allclose(a["detection_scores"], b["detection_scores"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(a["detection_boxes"], b["detection_boxes"], rtol=0, atol=1e-6)


def test_detect_and_detect_builtin_agree_on_random_outputs(lite_config):
    outputs = random_head_outputs()
    for thresholds in (dict(), dict(score_threshold=0.3, nms_iou=0.5), dict(max_detections=7)):
        a = detect(outputs, lite_config, **thresholds)
        b = detect_builtin(outputs, lite_config, **thresholds)
        assert int(a["num_detections"][0]) > 0
        assert_same_detections(a, b)
    # One image (the TFLite export's static batch of 1) takes the no-map_fn path.
    single = {k: v[:1] for k, v in outputs.items()}
    assert_same_detections(detect(single, lite_config), detect_builtin(single, lite_config))


def test_detect_and_detect_builtin_agree_on_a_random_model(lite_config, lite_outputs, lite_training_outputs):
    # Inference outputs of the untrained model: scores all ~1/7, near-ties everywhere (both
    # detectors order equal scores by class, then RoI). Training-mode outputs: diverse scores,
    # 512 RoIs, more than pre_nms_top_k (100) per class.
    for outputs in (lite_outputs, lite_training_outputs):
        for score_threshold in (0.0, 0.14):
            a = detect(outputs, lite_config, score_threshold=score_threshold)
            assert int(a["num_detections"][0]) > 0
            assert_same_detections(a, detect_builtin(outputs, lite_config, score_threshold=score_threshold))


def test_detect_builtin_converts_to_tflite_builtins(lite_config, tmp_path):
    """The post-processing alone (no variables) with TFLITE_BUILTINS only; the interpreter gives
    TensorFlow's detections (boxes to 1e-6: XNNPACK may fuse the arithmetic differently)."""
    from refinedet_tf.export.tflite_detector import make_interpreter

    outputs = random_head_outputs(batch=1)
    names = list(outputs)
    module = tf.Module()
    module.fn = tf.function(lambda *values: detect_builtin(dict(zip(names, values)), lite_config),
                            input_signature=[tf.TensorSpec(np.shape(v), tf.as_dtype(np.asarray(v).dtype), name=k)
                                             for k, v in outputs.items()])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.fn.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    path = tmp_path / "detect.tflite"
    path.write_bytes(converter.convert())
    runner = make_interpreter(str(path)).get_signature_runner()
    got = runner(**{k: np.asarray(v) for k, v in outputs.items()})
    expected = detect(outputs, lite_config)
    assert int(got["num_detections"][0]) == int(expected["num_detections"][0]) > 0
    assert_same_detections(got, expected)


def test_pre_nms_top_k_limits_each_class(lite_config):
    outputs = random_head_outputs(batch=1)
    config = dataclasses.replace(lite_config, pre_nms_top_k=3)
    for detector in (detect, detect_builtin):
        out = detector(outputs, config, score_threshold=0.0, nms_iou=1.0)  # nothing suppressed
        classes = out["detection_classes"][0, :int(out["num_detections"][0])].numpy()
        assert np.bincount(classes, minlength=7)[1:].tolist() == [3] * 6


# ---------------------------------------------------------------------------------------------
# Importer (a small VGG16 model: 64 px canvas, 64-unit fc layers, 3 classes)

SMALL_UNITS, SMALL_CLASSES = 64, 3


@pytest.fixture(scope="module")
def small_vgg():
    config = faster_rcnn_preset("faster_rcnn_vgg16_sfr", image_size=64, head_units=SMALL_UNITS,
                                num_classes=SMALL_CLASSES)
    return build_faster_rcnn(config)


def small_state_dict(seed=0):
    """The reference's keys and layouts with the small head's sizes."""
    with open(KEYS, encoding="utf-8") as f:
        keys = json.load(f)
    sizes = {4096: SMALL_UNITS, 21: SMALL_CLASSES, 84: 4 * SMALL_CLASSES}
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in keys:
        if name.startswith("head."):
            shape = [sizes.get(s, s) for s in shape]
        state[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    return state


def test_frozen_blocks(small_vgg):
    trainable = {layer.name: layer.trainable for layer in small_vgg.layers if layer.name.startswith("block")}
    assert not any(trainable[n] for n in ("block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"))
    assert all(trainable[n] for n in ("block3_conv1", "block4_conv3", "block5_conv3"))


def test_import_small_model(small_vgg):
    state = small_state_dict()
    assert num_classes_of(state) == SMALL_CLASSES
    load_simple_faster_rcnn_state_dict(small_vgg, {"module." + k: v for k, v in state.items()})
    kernel, bias = small_vgg.get_layer("block5_conv3").get_weights()
    np.testing.assert_array_equal(kernel, state["extractor.28.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(bias, state["extractor.28.bias"])
    # fc6: the reference's NCHW-flattened product equals ours on the NHWC-flattened block.
    block = np.random.default_rng(1).normal(0, 1, (512, 7, 7)).astype(np.float32)
    theirs = state["head.classifier.0.weight"] @ block.reshape(-1)
    fc6 = small_vgg.get_layer("roi_head").get_layer("fc6").get_weights()[0]
    np.testing.assert_allclose(block.transpose(1, 2, 0).reshape(-1) @ fc6, theirs, rtol=1e-4, atol=1e-4)
    head = small_vgg.get_layer("roi_head")
    np.testing.assert_array_equal(head.get_layer("bbox_pred").get_weights()[0], state["head.cls_loc.weight"].T)


def test_import_errors_name_the_keys(small_vgg):
    before = small_vgg.get_layer("block1_conv1").get_weights()[0].copy()
    state = small_state_dict(seed=2)
    del state["rpn.loc.bias"]
    state["head.extra.weight"] = np.zeros(3, np.float32)
    state["head.score.weight"] = np.zeros((5, SMALL_UNITS), np.float32)
    with pytest.raises(ValueError) as error:
        load_simple_faster_rcnn_state_dict(small_vgg, state)
    message = str(error.value)
    assert "lacks ['rpn.loc.bias']" in message
    assert "keys not used: ['head.extra.weight']" in message
    assert "cls_score <- head.score: expected shapes [(64, 3), (3,)], got [(64, 5), (3,)]" in message
    # nothing was assigned
    np.testing.assert_array_equal(small_vgg.get_layer("block1_conv1").get_weights()[0], before)


def test_fc6_permutation_checks_its_size():
    with pytest.raises(ValueError, match="fc6 weight has 100 inputs, expected C \\* P \\* P = 512 \\* 7"):
        fc6_kernel_from_pytorch(np.zeros((4, 100), np.float32), 512, 7)
