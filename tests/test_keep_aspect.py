"""The keep-aspect resize mode (Faster R-CNN's input): py-faster-rcnn's scale rule, the padded
canvas with image_info, boxes normalized to the valid area, the "flip" and "ssd" augmentations
in that mode, and make_dataset's dict batches."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_EXPECTED, textured
from refinedet_tf.config import get_preset
from refinedet_tf.data import augment as A, read_dataset
from refinedet_tf.data.pipeline import image_pixels, make_dataset, valid_sizes
from refinedet_tf.faster_rcnn.config import faster_rcnn_preset
from refinedet_tf.preprocessing import preprocess_images

LITE = "faster_rcnn_mobilenetv2_lite_256"
# Canvas 64, shorter side to 48 unless the longer passes 64: small enough to be fast.
SMALL = dict(image_size=64, min_side=48, max_side=64)


def small_config(**overrides):
    return faster_rcnn_preset(LITE, **{**SMALL, **overrides})


def example_of(image, boxes):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return {"image": image, "image_id": "x", "height": np.int32(image.shape[0]),
            "width": np.int32(image.shape[1]), "boxes": boxes, "classes": np.arange(1, n + 1, dtype=np.int32),
            "difficult": np.zeros(n, bool), "is_crowd": np.zeros(n, bool)}


# ---------------------------------------------------------------------------------------------
# The scale rule


@pytest.mark.parametrize("hw, sides, expected", [
    ((375, 500), (600, 1000, 1008), (600, 800, 1.6)),  # py-faster-rcnn's VOC case
    ((500, 375), (600, 1000, 1008), (800, 600, 1.6)),  # the same, portrait
    ((300, 1000), (600, 1000, 1008), (300, 1000, 1.0)),  # 2.0 would make the longer side 2000 > 1000
    ((200, 400), (600, 1000, 512), (256, 512, 1.28)),  # 2.5 fits max_side (1000) but not the canvas
    ((256, 256), (256, 256, 256), (256, 256, 1.0)),  # the demo preset on its synthetic images
    ((1, 5000), (600, 1000, 1008), (1, 1000, 0.2)),  # 0.2 pixels high rounds to 0: kept at 1
])
def test_scale_rule_on_hand_cases(hw, sides, expected):
    size_hw, scale = A.keep_aspect_size(*hw, *sides)
    assert tuple(size_hw.numpy()) == expected[:2] and size_hw.dtype == tf.int32
    assert scale.numpy() == np.float32(expected[2])
    resized, info = A.resize_keep_aspect(tf.zeros(hw + (3,)), *sides)
    assert resized.shape == expected[:2] + (3,)
    np.testing.assert_array_equal(info.numpy(), np.array(expected, np.float32))


def test_scale_rule_properties_on_random_sizes():
    rng = np.random.default_rng(0)
    min_side, max_side, canvas = 600, 1000, 896
    limit = min(max_side, canvas)
    for h, w in rng.integers(20, 3000, size=(200, 2)):
        size_hw, scale = A.keep_aspect_size(int(h), int(w), min_side, max_side, canvas)
        rh, rw = size_hw.numpy()
        # The shorter side reaches min_side unless the longer side hits its limit, never passed.
        assert max(rh, rw) <= limit
        assert (min(rh, rw) == min_side) or (max(rh, rw) == limit), (h, w, rh, rw)
        # One scale for both sides: the aspect is kept up to the rounding to whole pixels.
        s = float(scale.numpy())
        assert abs(rh - h * s) <= 0.5 + 1e-6 * h * s and abs(rw - w * s) <= 0.5 + 1e-6 * w * s


# ---------------------------------------------------------------------------------------------
# One example: canvas, padding, boxes


@pytest.mark.parametrize("preprocessing", ["tf", "caffe_bgr"])
def test_eval_path_pads_with_exact_zeros_and_keeps_boxes(preprocessing):
    config = small_config(preprocessing=preprocessing)
    image = textured(30, 50, seed=1)
    boxes = [[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]]
    out = A.augment_example(example_of(image, boxes), config, augment=False)
    # 48 / 30 = 1.6 would make the width 80 > 64, so scale = 64 / 50 = 1.28: 38 x 64.
    np.testing.assert_array_equal(out["image_info"].numpy(), np.array([38, 64, 1.28], np.float32))
    pixels = out["image"].numpy()
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.float32
    assert (pixels[38:] == 0).all() and (pixels[:, 64:] == 0).all()
    direct = tf.image.resize(image.astype(np.float32), [38, 64], method="bilinear")
    np.testing.assert_array_equal(pixels[:38, :64], preprocess_images(direct, config).numpy())
    np.testing.assert_array_equal(out["boxes"].numpy(), np.float32(boxes))


def test_padding_is_exactly_zero_with_a_fractional_caffe_mean():
    # py-faster-rcnn's means are fractional (102.9801, ...): padding after preprocessing keeps
    # them out of the canvas instead of leaving a rounding residue.
    config = small_config(preprocessing="caffe_bgr")
    assert config.pixel_mean_bgr[0] != round(config.pixel_mean_bgr[0])
    out = A.augment_example(example_of(textured(60, 20, seed=2), []), config, augment=False)
    info = out["image_info"].numpy()
    np.testing.assert_array_equal(info, np.array([64, 21, 64 / 60], np.float32))  # round(20 * 64/60) = 21
    assert (out["image"].numpy()[:, 21:] == 0).all()


def test_flip_mirrors_the_valid_area_only_and_its_boxes():
    config = small_config(augmentation="flip", preprocessing="caffe_bgr")
    image = textured(30, 50, seed=3)
    boxes = np.array([[0.1, 0.2, 0.6, 0.5], [0.3, 0.0, 0.9, 1.0]], np.float32)
    example = example_of(image, boxes)
    plain = A.augment_example(example, config, augment=False)
    run = tf.function(lambda seed: A.augment_example(example, config, seed))
    flips = 0
    for s in range(24):
        seed = tf.constant([5, s], tf.int64)
        out = run(seed)
        np.testing.assert_array_equal(out["image_info"].numpy(), plain["image_info"].numpy())
        if not A.draw_mirror(seed).numpy():
            np.testing.assert_array_equal(out["image"].numpy(), plain["image"].numpy())
            np.testing.assert_array_equal(out["boxes"].numpy(), boxes)
            continue
        flips += 1
        pixels, want = out["image"].numpy(), plain["image"].numpy()
        np.testing.assert_array_equal(pixels[:38, :64], want[:38, :64][:, ::-1])  # valid area mirrored
        assert (pixels[38:] == 0).all()  # the padding stays at the bottom
        np.testing.assert_allclose(out["boxes"].numpy(), [[0.1, 0.5, 0.6, 0.8], [0.3, 0.0, 0.9, 1.0]],
                                   atol=1e-6)
    assert 6 <= flips <= 18  # p 0.5 over 24 seeds


def test_flip_mirrors_inside_the_valid_area_when_the_padding_is_at_the_right():
    config = small_config(augmentation="flip", preprocessing="tf")
    image = textured(60, 20, seed=4)  # 64 x 21 on the canvas: padding at the right
    example = example_of(image, [[0.0, 0.0, 0.5, 0.25]])
    seed = next(tf.constant([6, s], tf.int64) for s in range(50)
                if A.draw_mirror(tf.constant([6, s], tf.int64)).numpy())
    out = A.augment_example(example, config, seed)
    plain = A.augment_example(example, config, augment=False)
    pixels = out["image"].numpy()
    np.testing.assert_array_equal(pixels[:, :21], plain["image"].numpy()[:, :21][:, ::-1])
    assert (pixels[:, 21:] == 0).all() and (pixels[:, 20] != 0).any()
    np.testing.assert_allclose(out["boxes"].numpy(), [[0.0, 0.75, 0.5, 1.0]], atol=1e-6)


def _ssd_runs(config, items):
    """augment_example over (image, boxes, seed) items in a tf.data map (it builds the SSD graph
    faster than a tf.function does) -> [(output, crop_px, expanded)], with the crop and expand
    decisions the augmentation drew."""
    def augment(image, boxes, seed):
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        decisions = A.draw_augmentation(seed, boxes, height, width, max_expand_ratio=config.max_expand_ratio)
        example = {"image": image, "boxes": boxes, "classes": tf.ones([tf.shape(boxes)[0]], tf.int32)}
        return (A.augment_example(example, config, seed), decisions["crop"]["crop_px"],
                decisions["expand"]["expanded"])

    signature = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, 4], tf.float32),
                 tf.TensorSpec([2], tf.int64))
    dataset = tf.data.Dataset.from_generator(lambda: iter(items), output_signature=signature)
    return [_numpy(x) for x in dataset.map(augment)]


def test_ssd_augmentation_resizes_its_patch_keeping_the_aspect():
    config = small_config(augmentation="ssd")
    rng = np.random.default_rng(7)
    items = []
    for s in range(16):
        height, width = (int(v) for v in rng.integers(30, 120, size=2))
        lo = rng.uniform(0.0, 0.6, size=(3, 2))
        boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, size=(3, 2))], 1).astype(np.float32)
        items.append((textured(height, width, seed=s), boxes, np.array([8, s], np.int64)))
    whole = 0
    for out, crop, expanded in _ssd_runs(config, items):
        # image_info is the keep-aspect size of the crop the augmentation drew for this seed.
        size_hw, scale = A.keep_aspect_size(crop[2] - crop[0], crop[3] - crop[1], 48, 64, 64)
        info = out["image_info"]
        np.testing.assert_array_equal(info, np.r_[size_hw.numpy(), scale.numpy()].astype(np.float32))
        h, w = int(info[0]), int(info[1])
        assert out["image"].shape == (64, 64, 3)
        content = (out["image"] != 0).any(axis=-1)
        assert not content[h:].any() and not content[:, w:].any()  # the padding is exactly zero
        if not expanded:
            # The patch is all image (the mean-filled expand canvas preprocesses to zero too):
            # every row and column of the valid area has content.
            whole += 1
            assert content[:h, :w].any(axis=1).all() and content[:h, :w].any(axis=0).all()
        kept = out["boxes"]  # may be empty: the crop can drop every box
        assert ((kept >= 0.0) & (kept <= 1.0)).all() and (kept[:, 2:] > kept[:, :2]).all()
    assert 3 <= whole <= 13  # expand fires with p 0.5


# ---------------------------------------------------------------------------------------------
# make_dataset


# tiny_voc's images (conftest TINY_SIZES) on the 64 canvas: a 50 x 100 -> 32 x 64 (0.64, capped by
# max_side 64), b 80 x 64 -> 60 x 48 (0.75), c 40 x 40 -> 48 x 48 (1.2).
TINY_INFO = {"a": (32, 64, 0.64), "b": (60, 48, 0.75), "c": (48, 48, 1.2)}


def _numpy(batch):
    return tf.nest.map_structure(lambda t: t.numpy(), batch)


def test_eval_batches_are_dicts_with_image_info_per_image(tiny_voc):
    config = small_config()
    dataset = make_dataset(read_dataset(tiny_voc), config, batch_size=3, training=False, max_boxes=4)
    spec_images = dataset.element_spec[0]
    assert set(spec_images) == {"images", "image_info"}
    (images, targets), = [_numpy(b) for b in dataset]
    assert images["images"].shape == (3, 64, 64, 3) and images["images"].dtype == np.float32
    assert images["image_info"].shape == (3, 3) and images["image_info"].dtype == np.float32
    for i, image_id in enumerate(targets["image_id"]):
        name = image_id.decode()
        np.testing.assert_array_equal(images["image_info"][i], np.array(TINY_INFO[name], np.float32))
        h, w = TINY_INFO[name][:2]
        assert (images["images"][i, h:] == 0).all() and (images["images"][i, :, w:] == 0).all()
        assert (images["images"][i, :h, :w] != 0).any(axis=-1).mean() > 0.9
        expected_boxes = np.array(TINY_EXPECTED[name][0], np.float32)
        np.testing.assert_allclose(targets["boxes"][i][targets["mask"][i]], expected_boxes, atol=1e-6)
    np.testing.assert_array_equal(image_pixels(images), images["images"])
    np.testing.assert_array_equal(valid_sizes(images), images["image_info"][:, :2].astype(np.int32))


@pytest.mark.parametrize("augmentation", ["flip", "ssd"])
def test_training_batches_are_dicts_with_image_info(tiny_voc, augmentation):
    config = small_config(augmentation=augmentation)

    def batches(seed):
        dataset = make_dataset(read_dataset(tiny_voc), config, batch_size=3, training=True, seed=seed,
                               max_boxes=4, shuffle_buffer=3)
        return [_numpy(b) for b in dataset.take(2)]

    first = batches(1)
    if augmentation == "flip":
        # Seeding is augmentation-agnostic (test_pipeline.py checks it with "ssd", whose graph
        # is slow to build three times): checked here with the cheap one.
        again, other = batches(1), batches(2)
        for a, b in zip(first, again):
            for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
                if x.dtype == object:  # strings
                    assert x.tolist() == y.tolist()
                else:
                    assert x.tobytes() == y.tobytes()  # bitwise
        assert any(not np.array_equal(a[0]["images"], b[0]["images"]) for a, b in zip(first, other))
    for images, targets in first:
        assert images["images"].shape == (3, 64, 64, 3) and images["image_info"].shape == (3, 3)
        boxes, mask = targets["boxes"], targets["mask"]
        assert boxes.min() >= 0.0 and boxes.max() <= 1.0
        for i, image_id in enumerate(targets["image_id"]):
            h, w = images["image_info"][i, :2].astype(int)
            assert (images["images"][i, h:] == 0).all() and (images["images"][i, :, w:] == 0).all()
            if augmentation == "flip":  # the resize does not depend on the flip
                np.testing.assert_array_equal(images["image_info"][i],
                                              np.array(TINY_INFO[image_id.decode()], np.float32))
                assert mask[i].sum() == len(TINY_EXPECTED[image_id.decode()][0])


def test_stretch_configs_keep_tensor_batches(tiny_voc):
    config = get_preset("vgg16_320", image_size=64)
    images, _ = next(iter(make_dataset(read_dataset(tiny_voc), config, batch_size=2, training=False)))
    assert isinstance(images, tf.Tensor) and images.shape == (2, 64, 64, 3)
    assert image_pixels(images) is images
    np.testing.assert_array_equal(valid_sizes(images), [[64, 64], [64, 64]])
