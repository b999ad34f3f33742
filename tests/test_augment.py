"""Tests of refinedet_tf.data.augment: samplers, emit rule, photometric ops, expand, graph mode."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.config import get_preset
from refinedet_tf.data import augment as A
from refinedet_tf.preprocessing import mean_pixel_rgb

CONFIG = get_preset("vgg16_320", image_size=64)
FILL = mean_pixel_rgb(CONFIG)
SEED_SPEC = tf.TensorSpec([2], tf.int64)
BOXES_SPEC = tf.TensorSpec([None, 4], tf.float32)
INT_SPEC = tf.TensorSpec([], tf.int32)


def random_boxes(rng, n):
    """[n, 4] normalized yxyx boxes with positive extent."""
    lo = rng.uniform(0.0, 0.8, size=(n, 2))
    size = rng.uniform(0.05, 1.0, size=(n, 2)) * (1.0 - lo)
    return np.concatenate([lo, lo + size], axis=1).astype(np.float32)


def random_example(rng, n, height=None, width=None):
    height = height or int(rng.randint(40, 160))
    width = width or int(rng.randint(40, 160))
    return {
        "image": rng.randint(0, 256, size=(height, width, 3)).astype(np.uint8),
        "image_id": f"img{n}",
        "height": np.int32(height), "width": np.int32(width),
        "boxes": random_boxes(rng, n),
        "classes": rng.randint(1, 21, size=n).astype(np.int32),
        "difficult": rng.rand(n) < 0.2,
        "is_crowd": np.zeros(n, bool),
    }


def iou_np(box, boxes):
    """IoU of one yxyx box against [N, 4], float64."""
    ih = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iw = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ih * iw

    def area(b):
        return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])

    return inter / (area(box) + area(boxes) - inter)


@tf.function(input_signature=[SEED_SPEC, BOXES_SPEC, INT_SPEC, INT_SPEC])
def sample_crop_fn(seed, boxes, canvas_h, canvas_w):
    return A.sample_crop(seed, boxes, canvas_h, canvas_w)


@tf.function(input_signature=[SEED_SPEC, BOXES_SPEC, INT_SPEC, INT_SPEC])
def draw_fn(seed, boxes, height, width):
    return A.draw_augmentation(seed, boxes, height, width)


def test_crop_candidates_follow_caffe_sampler_formula():
    candidates = np.concatenate(
        [A.generate_crop_candidates(tf.constant([7, s], tf.int64)).numpy() for s in range(8)],
        axis=1).astype(np.float64)  # [7, 400, 4]
    np.testing.assert_allclose(candidates[0], np.tile([[0, 0, 1, 1]], (400, 1)), atol=1e-6)
    crops = candidates[1:].reshape(-1, 4)
    h, w = crops[:, 2] - crops[:, 0], crops[:, 3] - crops[:, 1]
    scale, aspect = np.sqrt(h * w), w / h
    eps = 1e-5
    assert crops.min() >= -eps and crops.max() <= 1 + eps
    assert h.max() <= 1 + eps and w.max() <= 1 + eps
    assert scale.min() >= 0.3 - eps and scale.max() <= 1 + eps
    assert aspect.min() >= 0.5 - eps and aspect.max() <= 2 + eps
    # The ranges are used, not just respected.
    assert scale.min() < 0.35 and scale.max() > 0.95
    assert aspect.min() < 0.6 and aspect.max() > 1.8


def test_each_sampler_satisfies_its_constraint_on_many_seeds():
    rng = np.random.RandomState(1)
    samplers = A.SSD_BATCH_SAMPLERS
    picked = np.zeros(len(samplers), int)
    found_count = np.zeros(len(samplers), int)
    for s in range(150):
        n = int(rng.randint(0, 5))
        gt = random_boxes(rng, n)
        if s % 3 == 0:  # a large box, so that the IoU >= 0.7 / 0.9 samplers can find crops
            n, gt = 1, np.array([[0.1, 0.15, 0.1 + rng.uniform(0.5, 0.9),
                                  0.15 + rng.uniform(0.5, 0.85)]], np.float32)
        ch, cw = int(rng.randint(60, 700)), int(rng.randint(60, 700))
        out = sample_crop_fn(tf.constant([3, s], tf.int64), gt, ch, cw)
        found, crops = out["found"].numpy(), out["sampler_crops_px"].numpy()
        sampler = int(out["sampler"])
        assert found[sampler] and found[0]
        np.testing.assert_array_equal(out["crop_px"].numpy(), crops[sampler])
        picked[sampler] += 1
        found_count += found
        assert found[6] == (n > 0)  # max_jaccard <= 1 needs some ground truth (Caffe)
        for k in np.flatnonzero(found):
            y0, x0, y1, x1 = crops[k]
            assert 0 <= y0 < y1 <= ch and 0 <= x0 < x1 <= cw
            if k == 0:
                assert (y0, x0, y1, x1) == (0, 0, ch, cw)
                continue
            # Scale and aspect bounds, with the +-1 pixel the snap to the grid may move.
            hi_h, lo_h = (y1 - y0 + 1) / ch, (y1 - y0 - 1) / ch
            hi_w, lo_w = (x1 - x0 + 1) / cw, (x1 - x0 - 1) / cw
            assert hi_h * hi_w >= 0.3 ** 2 and lo_h * lo_w <= 1.0
            assert hi_w / lo_h >= 0.5 and lo_w / hi_h <= 2.0
            crop = np.array([y0 / ch, x0 / cw, y1 / ch, x1 / cw])
            best = iou_np(crop, gt.astype(np.float64)).max()
            bound = samplers[k]
            if bound.min_jaccard is not None:
                assert best >= bound.min_jaccard - 1e-5, (s, k, best)
            if bound.max_jaccard is not None:
                assert best <= bound.max_jaccard + 1e-5
    # Every sampler gets picked on some seed; IoU >= 0.9 is rare but reachable in 50 trials.
    assert (np.delete(picked, 5) > 0).all() and found_count[5] > 0, (picked, found_count)


def test_sampler_pick_is_uniform_among_found():
    gt = np.array([[0.2, 0.2, 0.8, 0.8]], np.float32)  # big box: samplers 0-4 and 6 usually find
    picks, eligible = np.zeros(7), np.zeros(7)
    for s in range(300):
        out = sample_crop_fn(tf.constant([11, s], tf.int64), gt, 300, 300)
        found = out["found"].numpy()
        picks[int(out["sampler"])] += 1
        eligible += found / found.sum()
    # Each sampler is picked as often as a uniform pick among the found ones predicts
    # (within 4.5 binomial standard deviations).
    assert (np.abs(picks - eligible) <= 4.5 * np.sqrt(eligible) + 1).all(), (picks, eligible)
    assert eligible[0] > 40 and eligible[1] > 40


def test_center_emit_rule_clips_and_renormalizes():
    rng = np.random.RandomState(2)
    boxes_px = random_boxes(rng, 200) * 100.0
    for crop in ([10, 20, 60, 90], [30, 30, 31, 95], [0, 0, 100, 100]):
        boxes, keep = A.project_boxes_to_crop(tf.constant(boxes_px), tf.constant(crop))
        boxes, keep = boxes.numpy(), keep.numpy()
        assert boxes.min() >= 0 and boxes.max() <= 1 and np.isfinite(boxes).all()
        cy = (boxes_px[:, 0] + boxes_px[:, 2]) / 2
        cx = (boxes_px[:, 1] + boxes_px[:, 3]) / 2
        centre_in = (cy >= crop[0]) & (cy <= crop[2]) & (cx >= crop[1]) & (cx <= crop[3])
        clipped = np.clip(boxes_px, [crop[0], crop[1]] * 2, [crop[2], crop[3]] * 2)
        expected = (clipped - [crop[0], crop[1]] * 2) / ([crop[2] - crop[0], crop[3] - crop[1]] * 2)
        non_empty = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
        np.testing.assert_array_equal(keep, centre_in & non_empty)
        np.testing.assert_allclose(boxes[keep], expected[keep], atol=1e-5)
        assert keep.any() and (crop[2] == 100 or not keep.all())


def test_random_decisions_follow_their_probabilities():
    boxes = np.array([[0.1, 0.1, 0.6, 0.7]], np.float32)
    rows = []
    for s in range(400):
        d = draw_fn(tf.constant([5, s], tf.int64), boxes, 100, 150)
        p = {k: v.numpy() for k, v in d["photometric"].items()}
        rows.append(dict(p, expanded=d["expand"]["expanded"].numpy(),
                         ratio=d["expand"]["canvas_height"].numpy() / 100,
                         mirror=d["mirror"].numpy(), interpolation=d["interpolation"].numpy()))

    def rate(k):
        return np.mean([r[k] for r in rows])

    for name in ("brightness_on", "contrast_on", "saturation_on", "hue_on", "contrast_first",
                 "expanded", "mirror"):
        assert 0.4 <= rate(name) <= 0.6, (name, rate(name))
    counts = np.bincount([r["interpolation"] for r in rows], minlength=5)
    assert counts.shape == (5,) and (counts >= 0.12 * 400).all() and (counts <= 0.28 * 400).all()

    def values(k):
        return np.array([r[k] for r in rows])

    for name, lo, hi in (("brightness_delta", -32, 32), ("contrast_factor", 0.5, 1.5),
                         ("saturation_factor", 0.5, 1.5), ("hue_delta", -0.1, 0.1)):
        v = values(name)
        assert v.min() >= lo and v.max() <= hi and v.min() < lo + 0.1 * (hi - lo) and (
            v.max() > hi - 0.1 * (hi - lo)), name
    ratio = values("ratio")[values("expanded")]
    assert ratio.min() >= 1.0 and ratio.max() <= 4.0 and ratio.max() > 3.5
    assert (values("ratio")[~values("expanded")] == 1.0).all()


def test_photometric_stays_in_range_and_follows_caffe_order():
    rng = np.random.RandomState(3)
    image = rng.randint(0, 256, size=(16, 24, 3)).astype(np.float32)
    image[:4] = 255.0  # saturated pixels: brightness/contrast must clip
    image[4:8] = 0.0
    image = tf.constant(image)
    for s in range(30):
        params = A.random_photometric_params(tf.constant([9, s], tf.int64))
        out = A.apply_photometric(image, params).numpy()
        assert out.min() >= 0.0 and out.max() <= 255.0 and np.isfinite(out).all()
        p = {k: v.numpy() for k, v in params.items()}
        x = image
        if p["brightness_on"]:
            x = tf.clip_by_value(x + p["brightness_delta"], 0, 255)

        def contrast(y):
            return tf.clip_by_value(y * p["contrast_factor"], 0, 255)

        if p["contrast_on"] and p["contrast_first"]:
            x = contrast(x)
        if p["saturation_on"]:
            x = tf.clip_by_value(tf.image.adjust_saturation(x, p["saturation_factor"]), 0, 255)
        if p["hue_on"]:
            x = tf.clip_by_value(tf.image.adjust_hue(x, p["hue_delta"]), 0, 255)
        if p["contrast_on"] and not p["contrast_first"]:
            x = contrast(x)
        np.testing.assert_allclose(out, x.numpy(), atol=1e-3)
    np.testing.assert_array_equal(A.apply_photometric(image, A.photometric_off()), image)


def test_hue_delta_units_match_opencv_scale():
    """18 OpenCV hue units (0..180 scale) == 36 degrees == 0.1 in tf.image.adjust_hue."""
    assert A.HUE_DELTA == pytest.approx(0.1)
    rgb = np.array([[[255, 0, 0], [200, 60, 30], [40, 200, 90], [30, 60, 220]]], np.uint8)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = hsv[..., 0] + 18  # all hues here stay below 180
    expected = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    got = A.adjust_hue(tf.constant(rgb, tf.float32), 18 * A.HUE_TURNS_PER_OPENCV_UNIT).numpy()
    np.testing.assert_allclose(got, expected, atol=4.0)  # uint8 HSV quantization


def _box_image(rng, height, width, box_px):
    """Noise with green in [60, 200] plus one box of the unique colour (255, 0, 255)."""
    image = rng.randint(0, 256, size=(height, width, 3)).astype(np.float32)
    image[..., 1] = rng.randint(60, 201, size=(height, width))
    y0, x0, y1, x1 = box_px
    image[y0:y1, x0:x1] = (255.0, 0.0, 255.0)
    return image


def test_expand_crop_mirror_keep_box_on_its_pixels():
    rng = np.random.RandomState(4)
    colour = np.array([255.0, 0.0, 255.0])
    checked = 0
    for s in range(40):
        height, width = int(rng.randint(50, 140)), int(rng.randint(50, 140))
        y0, x0 = int(rng.randint(0, height - 20)), int(rng.randint(0, width - 20))
        y1, x1 = int(rng.randint(y0 + 10, height + 1)), int(rng.randint(x0 + 10, width + 1))
        image = tf.constant(_box_image(rng, height, width, (y0, x0, y1, x1)))
        box = np.array([[y0 / height, x0 / width, y1 / height, x1 / width]], np.float32)
        d = draw_fn(tf.constant([13, s], tf.int64), box, height, width)
        crop_px = d["crop"]["crop_px"]

        def distort(piece):
            return A.apply_photometric(piece, d["photometric"])

        # The fused crop equals cropping the materialized canvas of the distorted image.
        fused = A.crop_expanded_image(image, d["expand"], crop_px, FILL, distort).numpy()
        canvas = A.expand_image(distort(image), d["expand"], FILL).numpy()
        cy0, cx0, cy1, cx1 = crop_px.numpy()
        np.testing.assert_allclose(fused, canvas[cy0:cy1, cx0:cx1], atol=1e-3)

        cropped = A.crop_expanded_image(image, d["expand"], crop_px, FILL)
        boxes_px = A.boxes_to_canvas_pixels(box, height, width, d["expand"])
        boxes, keep = A.project_boxes_to_crop(boxes_px, crop_px)
        flipped, boxes = A.mirror_image_and_boxes(cropped, boxes, d["mirror"])
        if not keep.numpy()[0]:
            continue
        checked += 1
        flipped = flipped.numpy()
        ch, cw = flipped.shape[:2]
        is_colour = (flipped == colour).all(axis=-1)
        expected = np.zeros_like(is_colour)
        by0, bx0, by1, bx1 = np.round(boxes.numpy()[0] * [ch, cw, ch, cw]).astype(int)
        expected[by0:by1, bx0:bx1] = True
        np.testing.assert_array_equal(is_colour, expected)
    assert checked >= 15


def test_full_augmentation_keeps_box_on_its_pixels_after_resize():
    rng = np.random.RandomState(5)
    size, checked = 64, 0
    for s in range(30):
        height, width = int(rng.randint(60, 140)), int(rng.randint(60, 140))
        box_px = (10, 12, height - 8, width - 15)
        image = _box_image(rng, height, width, box_px)
        box = np.array([[box_px[0] / height, box_px[1] / width,
                         box_px[2] / height, box_px[3] / width]], np.float32)
        d = draw_fn(tf.constant([17, s], tf.int64), box, height, width)
        d["photometric"] = A.photometric_off()
        out, boxes, keep = A.apply_augmentation(image, box, d, size, FILL)
        if not keep.numpy()[0]:
            continue
        crop = d["crop"]["crop_px"].numpy()
        scale = max(1.0, size / (crop[2] - crop[0]), size / (crop[3] - crop[1]))
        margin = int(np.ceil(4 * scale))
        by0, bx0, by1, bx1 = np.round(boxes.numpy()[0] * size).astype(int)
        inner = out.numpy()[by0 + margin:by1 - margin, bx0 + margin:bx1 - margin]
        if inner.size == 0:
            continue
        checked += 1
        np.testing.assert_allclose(inner, np.broadcast_to([255.0, 0.0, 255.0], inner.shape),
                                   atol=1.0)
    assert checked >= 10


def test_same_seed_same_example_and_different_seed_differs():
    rng = np.random.RandomState(6)
    example = random_example(rng, 3)
    run = tf.function(lambda ex, seed: A.augment_example(ex, CONFIG, seed))
    a = run(example, tf.constant([1, 2], tf.int64))
    b = run(example, tf.constant([1, 2], tf.int64))
    c = run(example, tf.constant([1, 3], tf.int64))
    for key in ("image", "boxes", "classes"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())


def test_image_whose_boxes_are_all_dropped_trains_with_zero_boxes():
    rng = np.random.RandomState(7)
    example = random_example(rng, 1, 120, 120)
    example["boxes"] = np.array([[0.0, 0.0, 0.1, 0.1]], np.float32)  # a corner box
    run = tf.function(lambda ex, seed: A.augment_example(ex, CONFIG, seed))
    dropped = None
    for s in range(60):
        out = run(example, tf.constant([21, s], tf.int64))
        if out["boxes"].shape[0] == 0:
            dropped = out
            break
    assert dropped is not None, "no seed dropped the corner box"
    assert dropped["boxes"].shape == (0, 4) and dropped["classes"].shape == (0,)
    assert dropped["image"].shape == (64, 64, 3) and np.isfinite(dropped["image"].numpy()).all()
    # An image without any box at all also trains.
    example["boxes"] = np.zeros((0, 4), np.float32)
    for name in ("classes", "difficult", "is_crowd"):
        example[name] = example[name][:0]
    out = run(example, tf.constant([21, 0], tf.int64))
    assert out["boxes"].shape == (0, 4) and np.isfinite(out["image"].numpy()).all()


def test_eval_path_resizes_bilinear_and_keeps_boxes():
    rng = np.random.RandomState(8)
    example = random_example(rng, 2)
    out = A.augment_example(example, CONFIG, augment=False)
    np.testing.assert_array_equal(out["boxes"].numpy(), example["boxes"])
    np.testing.assert_array_equal(out["classes"].numpy(), example["classes"])
    resized = tf.image.resize(example["image"].astype(np.float32), [64, 64], method="bilinear")
    expected = resized.numpy()[..., ::-1] - np.array(CONFIG.pixel_mean_bgr, np.float32)
    np.testing.assert_allclose(out["image"].numpy(), expected, atol=1e-4)
    with pytest.raises(ValueError, match="seed"):
        A.augment_example(example, CONFIG, augment=True)


def test_flip_augmentation_in_stretch_mode_is_the_eval_path_or_its_mirror():
    config = get_preset("vgg16_320", image_size=64, augmentation="flip")
    rng = np.random.RandomState(9)
    example = random_example(rng, 2)
    plain = A.augment_example(example, config, augment=False)
    boxes = example["boxes"]
    mirrored_boxes = np.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], axis=1)
    run = tf.function(lambda seed: A.augment_example(example, config, seed))
    flips = 0
    for s in range(16):
        seed = tf.constant([11, s], tf.int64)
        out = run(seed)
        if A.draw_mirror(seed).numpy():
            flips += 1
            np.testing.assert_array_equal(out["image"].numpy(), plain["image"].numpy()[:, ::-1])
            np.testing.assert_allclose(out["boxes"].numpy(), mirrored_boxes, atol=1e-6)
        else:
            np.testing.assert_array_equal(out["image"].numpy(), plain["image"].numpy())
            np.testing.assert_array_equal(out["boxes"].numpy(), boxes)
        np.testing.assert_array_equal(out["classes"].numpy(), example["classes"])  # no box dropped
        assert "image_info" not in out
    assert 3 <= flips <= 13


def _graph_ops(graph_def):
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def test_augmentation_runs_in_tf_data_graph_without_py_function():
    # Examples made by TF ops (from_generator would itself add a py_function).
    def make_example(i):
        seed = tf.stack([i, i])
        size = tf.random.stateless_uniform([2], seed, 40, 120, tf.int32)
        image = tf.random.stateless_uniform(tf.concat([size, [3]], 0), seed, 0, 256, tf.int32)
        n = tf.cast(i, tf.int32)
        lo = tf.random.stateless_uniform([n, 2], seed, 0.0, 0.5)
        return {"image": tf.cast(image, tf.uint8), "image_id": tf.strings.as_string(i),
                "height": size[0], "width": size[1],
                "boxes": tf.concat([lo, lo + 0.4], axis=1),
                "classes": tf.ones([n], tf.int32), "difficult": tf.zeros([n], tf.bool),
                "is_crowd": tf.zeros([n], tf.bool)}

    dataset = tf.data.Dataset.range(3).map(make_example)
    dataset = dataset.enumerate().map(
        lambda i, ex: A.augment_example(ex, CONFIG, A.example_seed([0, 0], i)))
    graph_def = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = _graph_ops(graph_def)
    assert "StatelessRandomUniformV2" in ops and "AdjustHue" in ops  # the map body is there
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    outputs = list(dataset)
    assert [o["image"].shape for o in outputs] == [(64, 64, 3)] * 3
