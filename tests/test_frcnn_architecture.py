"""Faster R-CNN behind the detector interface: presets and configs found by name and by file,
the training losses composed from the pinned stages, reproducible sampling, frozen blocks.

The composition test rebuilds the losses from the stages the golden tests pin
(tests/test_frcnn_anchor_targets.py, test_frcnn_roi_targets.py, test_frcnn_losses.py) with the
same seeds, so it can only pass when `FasterRCNN.losses` wires exactly those stages together;
it compares to 1e-6 relative (the same float32 ops in the same order, run once eagerly and once
inside the interface). The OHEM test recomputes the per-RoI losses in numpy: 1e-5 relative (float32
log-sum-exp in another order).
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf import presets
from refinedet_tf.architectures import FasterRCNN, RefineDet, architecture_for, config_from_json
from refinedet_tf.architectures.faster_rcnn import _step_seeds
from refinedet_tf.config import RefineDetConfig
from refinedet_tf.faster_rcnn import losses as frcnn_losses, ohem
from refinedet_tf.faster_rcnn.anchor_targets import anchor_targets
from refinedet_tf.faster_rcnn.config import FasterRCNNConfig
from refinedet_tf.faster_rcnn.model import normalized_to_pixels
from refinedet_tf.faster_rcnn.roi_targets import sample_roi_targets
from refinedet_tf.training.run import _set_trainable

LITE = "faster_rcnn_mobilenetv2_lite_256"
SMALL = dict(image_size=64, min_side=64, max_side=64, num_classes=3)


def test_one_preset_lookup_for_both_architectures():
    names = presets.preset_names()
    assert "mobilenetv2_lite_192" in names and LITE in names and "faster_rcnn_vgg16" in names
    assert isinstance(presets.get_preset("vgg16_320"), RefineDetConfig)
    frcnn = presets.get_preset(LITE, num_classes=4)
    assert isinstance(frcnn, FasterRCNNConfig) and frcnn.num_classes == 4
    assert presets.config_class(LITE) is FasterRCNNConfig
    with pytest.raises(ValueError, match="unknown preset 'faster_rcnn_vgg19'.*faster_rcnn_vgg16"):
        presets.get_preset("faster_rcnn_vgg19")


def test_config_overrides_are_read_by_the_presets_own_fields():
    assert presets.parse_overrides(["mining=ohem", "anchor_scales=2,4,8", "ohem_per_image=true"], LITE) == {
        "mining": "ohem", "anchor_scales": (2.0, 4.0, 8.0), "ohem_per_image": True}
    with pytest.raises(ValueError, match="unknown FasterRCNNConfig field 'tcb_channels'"):
        presets.parse_overrides(["tcb_channels=128"], LITE)
    with pytest.raises(ValueError, match="unknown RefineDetConfig field 'rpn_channels'"):
        presets.parse_overrides(["rpn_channels=128"], "vgg16_320")
    with pytest.raises(ValueError, match="mining must be one of"):
        presets.get_preset(LITE, mining="focal")


@pytest.mark.parametrize("name", ["vgg16_320", "mobilenetv2_lite_192", LITE, "faster_rcnn_vgg16"])
def test_config_files_load_as_their_architectures_config(name):
    config = presets.get_preset(name)
    loaded = config_from_json(config.to_json())
    assert loaded == config and type(loaded) is type(config)
    assert type(architecture_for(loaded)) is (FasterRCNN if isinstance(config, FasterRCNNConfig) else RefineDet)


def test_a_config_file_of_no_architecture_is_refused():
    text = presets.get_preset(LITE).to_json().replace('"rpn_channels"', '"rpn_chanels"')
    with pytest.raises(ValueError, match=r"unknown FasterRCNNConfig field\(s\) \['rpn_chanels'\]"):
        config_from_json(text)


def test_seeds_differ_by_step_and_draw():
    rpn0, roi0 = (s.numpy().tolist() for s in _step_seeds(tf.constant(0, tf.int64)))
    rpn7, roi7 = (s.numpy().tolist() for s in _step_seeds(tf.constant(7, tf.int64)))
    assert rpn0 == [0, 0] and roi0 == [0, 1] and rpn7 == [7, 0] and roi7 == [7, 1]


def test_normalized_to_pixels_scales_by_each_images_valid_size():
    boxes = tf.constant([[[0.0, 0.5, 1.0, 1.0]], [[0.25, 0.25, 0.5, 0.75]]])
    info = tf.constant([[600.0, 800.0, 1.6], [400.0, 200.0, 1.0]])
    np.testing.assert_array_equal(normalized_to_pixels(boxes, info).numpy(),
                                  [[[0, 400, 600, 800]], [[100, 50, 200, 150]]])


@pytest.fixture(scope="module")
def small():
    config = presets.get_preset(LITE, **SMALL)
    architecture = architecture_for(config)
    tf.keras.utils.set_random_seed(0)
    return architecture, architecture.build_model()


def _batch(size=64):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    info = np.array([[size, size, 1.0], [size * 3 // 4, size, 0.75]], np.float32)
    boxes = np.array([[[0.1, 0.1, 0.6, 0.5], [0.5, 0.4, 0.9, 0.9]], [[0.2, 0.3, 0.7, 0.8], [0, 0, 0, 0]]], np.float32)
    targets = {"boxes": boxes, "classes": np.array([[1, 2], [2, 0]], np.int32),
               "mask": np.array([[1, 1], [1, 0]], np.float32)}
    return {"images": images, "image_info": info}, targets


def test_losses_are_the_pinned_stages_composed(small):
    architecture, model = small
    config = architecture.config
    inputs, targets = _batch()
    step = tf.constant(5, tf.int64)
    got = architecture.losses(model, inputs, targets, lambda x: x, training=False, step=step)

    # The same stages by hand, with the seeds the interface derives from the step.
    outputs = model(inputs, training=False)
    gt = normalized_to_pixels(targets["boxes"], inputs["image_info"])
    valid = tf.cast(targets["mask"], tf.bool)
    rpn_seed, roi_seed = _step_seeds(step)
    rpn = anchor_targets(tf.constant(model.get_layer("proposals").anchors_yxyx_px), gt, valid, inputs["image_info"],
                         positive_iou=config.rpn_positive_iou, negative_iou=config.rpn_negative_iou,
                         samples_per_image=config.rpn_samples_per_image,
                         positive_fraction=config.rpn_positive_fraction, seed=rpn_seed)
    rois = sample_roi_targets(outputs["rois_yxyx_px"], outputs["rois_valid"], gt, targets["classes"], valid,
                              num_samples=config.roi_samples_per_image,
                              foreground_fraction=config.roi_foreground_fraction,
                              foreground_iou=config.roi_foreground_iou,
                              background_iou_high=config.roi_background_iou_high,
                              background_iou_low=config.roi_background_iou_low, box_stds=config.box_stds,
                              seed=roi_seed)
    assert config.roi_samples_per_image == 64  # the preset's, not the module default 128
    head = model.get_layer("roi_head")([outputs["features"], rois["rois_yxyx_px"], rois["valid"]], training=False)
    want = frcnn_losses.normalize({
        "rpn_loc": frcnn_losses.rpn_loc_loss(outputs["rpn_loc"], rpn.loc_targets, rpn.labels, sigma=3.0),
        "rpn_cls": frcnn_losses.rpn_cls_loss(outputs["rpn_logits"], rpn.labels),
        "roi_loc": frcnn_losses.roi_loc_loss(head["roi_loc"], rois["box_targets"], rois["labels"], rois["valid"]),
        "roi_cls": frcnn_losses.roi_cls_loss(head["roi_logits"], rois["labels"], rois["valid"]),
    })
    assert config.rpn_sigma == 3.0 and config.roi_sigma == 1.0  # the defaults used by hand above
    assert set(got) == {*architecture.loss_names, "num_pos"}
    for name in architecture.loss_names:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-6, err_msg=name)
    assert got["num_pos"].numpy() == np.sum(rois["foreground"].numpy() & rois["valid"].numpy()) > 0
    assert all(got[name].numpy() > 0 for name in ("rpn_cls", "roi_cls", "rpn_loc"))


def test_sampling_is_reproducible_per_step_and_differs_between_steps():
    # The preset's 256 px: more anchors inside the images than the 256 drawn, more RoIs than the 128
    # (at 128 px only 148 anchors lie inside: all are drawn, whatever the seed).
    config = presets.get_preset(LITE, **{**SMALL, "image_size": 256, "min_side": 256, "max_side": 256})
    architecture = architecture_for(config)
    tf.keras.utils.set_random_seed(1)
    model = architecture.build_model()
    # Initial logits are ~0 (std 0.01 weights): every anchor's and RoI's cross entropy is ln 2 or
    # ln C whichever are drawn. Random scorers make the loss depend on the drawn set.
    rng = np.random.default_rng(0)
    for layer in (model.get_layer("rpn").get_layer("rpn_cls"), model.get_layer("roi_head").get_layer("cls_score")):
        layer.set_weights([rng.normal(0, 1, w.shape).astype(np.float32) for w in layer.get_weights()])
    inputs, targets = _batch(256)

    def run(step):
        losses = architecture.losses(model, inputs, targets, lambda x: x, training=False,
                                     step=tf.constant(step, tf.int64))
        return [float(losses[k]) for k in ("rpn_cls", "roi_cls")]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_vgg16_first_blocks_stay_frozen_through_every_stage():
    config = presets.get_preset("faster_rcnn_vgg16", image_size=64, min_side=64, max_side=64, head_units=16,
                                rpn_channels=16, num_classes=3)
    architecture = architecture_for(config)
    model = architecture.build_model()
    _set_trainable(model, architecture, frozen_layers=(), freeze_backbone=False)
    trainable = {layer.name: layer.trainable for layer in model.layers if layer.weights}
    assert not trainable["block1_conv1"] and not trainable["block2_conv2"]
    assert trainable["block3_conv1"] and trainable["block5_conv3"] and trainable["rpn"] and trainable["roi_head"]
    _set_trainable(model, architecture, frozen_layers=(), freeze_backbone=True)
    assert not model.get_layer("block3_conv1").trainable and model.get_layer("roi_head").trainable


def test_ohem_trains_the_hardest_rois_of_the_minibatch(small):
    """mining "ohem": the roi losses are the means over the 2 x 8 candidates (proposals and
    ground truths of both images) with the largest classification + box loss, by hand in numpy."""
    _, model = small
    config = dataclasses.replace(presets.get_preset(LITE, **SMALL), mining="ohem", roi_samples_per_image=8)
    architecture = architecture_for(config)
    inputs, targets = _batch()
    got = architecture.losses(model, inputs, targets, lambda x: x, training=False, step=tf.constant(0, tf.int64))

    outputs = model(inputs, training=False)
    gt = normalized_to_pixels(targets["boxes"], inputs["image_info"])
    candidates = ohem.all_roi_targets(outputs["rois_yxyx_px"], outputs["rois_valid"], gt, targets["classes"],
                                      tf.cast(targets["mask"], tf.bool))
    head = model.get_layer("roi_head")([outputs["features"], candidates["rois_yxyx_px"], candidates["valid"]])
    logits, loc = head["roi_logits"].numpy(), head["roi_loc"].numpy()
    labels, valid = candidates["labels"].numpy(), candidates["valid"].numpy()
    box_targets = candidates["box_targets"].numpy()
    shifted = logits - logits.max(-1, keepdims=True)
    cross_entropy = np.log(np.exp(shifted).sum(-1)) - np.take_along_axis(shifted, labels[..., None], -1)[..., 0]
    d = np.abs(np.take_along_axis(loc, labels[..., None, None], 2)[:, :, 0] - box_targets)
    smooth_l1 = np.where(d < 1.0, 0.5 * d * d, d - 0.5).sum(-1) * (labels > 0)
    per_roi = np.where(valid, cross_entropy + smooth_l1, -np.inf)
    assert valid.sum() > 16  # more candidates than selected: the choice matters
    hardest = np.argsort(-per_roi.ravel(), kind="stable")[:16]
    np.testing.assert_allclose(got["roi_cls"].numpy(), cross_entropy.ravel()[hardest].mean(), rtol=1e-5)
    np.testing.assert_allclose(got["roi_loc"].numpy(), smooth_l1.ravel()[hardest].sum() / 16, rtol=1e-5)
    assert got["num_pos"].numpy() == (labels.ravel()[hardest] > 0).sum() > 0
