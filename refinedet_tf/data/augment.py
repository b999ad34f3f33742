"""SSD/RefineDet training augmentation (Caffe's AnnotatedDataLayer with the
train_transform_param and batch_sampler of the Caffe RefineDet's examples/refinedet/*.py, SSD's
augmentation: Liu et al., ECCV 2016, section 2.2) as pure TF ops, and the resize of every
example, augmented or not, to the model's input.

Order, as in Caffe's `AnnotatedDataLayer::load_batch` and `DataTransformer::Transform`:

  1. photometric distortion (`DistortImage` -> `ApplyDistort`);
  2. expand onto a mean-filled canvas (`ExpandImage`, p 0.5, ratio uniform in [1, `max_expand_ratio`], 4 in the paper);
  3. one crop from the 7 batch samplers (`GenerateBatchSamples`), CENTER emit constraint;
  4. resize (below) with a random interpolation;
  5. mirror (p 0.5);
  6. `preprocess_images` (the preset's normalization).

`config.augmentation` picks the training augmentation: "ssd" is steps 1-6; "flip" is steps 4
(bilinear), 5, 6, the Faster R-CNN references' only augmentation. The eval path is 4
(bilinear) and 6. `config.resize_mode` picks step 4:

  * "stretch" (RefineDet): WARP resize to `image_size` x `image_size`.
  * "keep_aspect" (Faster R-CNN, py-faster-rcnn's `prep_im_for_blob`): scale the shorter side
    to `min_side` unless the longer would pass `max_side` (or the canvas `image_size`), resize
    to (round(h * scale), round(w * scale)), mirror inside that valid area, preprocess, then
    pad bottom/right with zeros to the `image_size` square canvas. The example also gets
    `image_info` = float32 (valid height, valid width, scale).

In both modes the boxes are normalized to the resized image's valid area (the whole output in
"stretch"), so the resize and the padding leave them unchanged.

Everything is TensorFlow ops with dynamic shapes (no `tf.py_function`, no numpy on the
training path), so it runs inside `tf.data.Dataset.map` in graph mode. Randomness is
stateless: `draw_augmentation(seed, ...)` turns one per-example seed (int [2]) into every random
decision of the example, so one seed gives one augmented example, bitwise, whatever the
parallelism. `apply_augmentation` executes the decisions; tests override them.

Box conventions. Input and output boxes are the library's format: normalized
`[ymin, xmin, ymax, xmax]` float32 in [0, 1] relative to the image they belong to. Inside,
geometry is in *canvas pixels*: the expanded canvas is `canvas_height x canvas_width` pixels,
the original image sits at `(offset_y, offset_x)`, and a crop is `[y0, x0, y1, x1]` int32
canvas pixels, end-exclusive. A box `b` of the original image covers canvas pixels
`b * [H, W, H, W] + [offset_y, offset_x, offset_y, offset_x]`.

Two deliberate, documented departures from Caffe, both making pixels and boxes agree exactly:
  * Crops are snapped to the canvas pixel grid *before* their IoU constraint is checked, so
    the crop that is cut is the crop that satisfied the constraint (Caffe checks the
    continuous crop and then cuts `int()`-truncated pixels).
  * The expanded canvas is never materialized: the photometric ops are per-pixel, so
    "distort the image, paste it on the canvas, crop" equals "crop the part of the image that
    falls inside the crop window, distort it, pad it with the mean". The result is the same,
    at a fraction of the memory when the expand ratio is large.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from refinedet_tf.box_coding import pairwise_iou
from refinedet_tf.config import AUGMENTATIONS
from refinedet_tf.preprocessing import mean_pixel_rgb, preprocess_images

# Photometric distortion (the Caffe scripts' distort_param), each op fires with this probability.
PHOTOMETRIC_PROB = 0.5
BRIGHTNESS_DELTA = 32.0  # added to every channel, uniform in [-32, 32]
CONTRAST_RANGE = (0.5, 1.5)  # Caffe's contrast is a pure scale: pixel * alpha
SATURATION_RANGE = (0.5, 1.5)  # HSV saturation multiplied by a factor
# Caffe's hue_delta 18 is on OpenCV's 8-bit hue scale, 0..180 = degrees / 2, so 18 units are
# 36 degrees. tf.image.adjust_hue takes a fraction of the full turn: 36 / 360 = 0.1.
HUE_DELTA_OPENCV = 18.0
HUE_TURNS_PER_OPENCV_UNIT = 1.0 / 180.0
HUE_DELTA = HUE_DELTA_OPENCV * HUE_TURNS_PER_OPENCV_UNIT  # 0.1 in tf.image.adjust_hue units

# Expand (the Caffe scripts' expand_param).
EXPAND_PROB = 0.5
MAX_EXPAND_RATIO = 4.0
MIN_EXPAND_RATIO_DELTA = 1e-2  # Caffe: `if (fabs(expand_ratio - 1.f) < 1e-2) return;`

MIRROR_PROB = 0.5
# Caffe interp_mode LINEAR, AREA, NEAREST, CUBIC, LANCZOS4 -> the nearest tf.image.resize
# methods (TF has no Lanczos-4; lanczos3 is the closest). No antialiasing, as in OpenCV.
TRAIN_INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic", "lanczos3")
EVAL_INTERPOLATION = "bilinear"

PIXEL_MAX = 255.0

RESIZE_MODES = ("stretch", "keep_aspect")  # the configs' `resize_mode`


@dataclasses.dataclass(frozen=True)
class BatchSampler:
    """One Caffe `BatchSampler` with `max_sample: 1`.

    A candidate crop draws `scale` uniform in [min_scale, max_scale] and `aspect` uniform in
    [max(min_aspect_ratio, scale^2), min(max_aspect_ratio, 1 / scale^2)], then has width
    `scale * sqrt(aspect)` and height `scale / sqrt(aspect)` in canvas-normalized units (so
    `aspect` is w/h in normalized units and the clamp keeps w, h <= 1) and a uniform position
    inside the canvas. It satisfies the sampler when some ground-truth box has
    `min_jaccard <= IoU <= max_jaccard`; a sampler with neither bound is always satisfied,
    one with a bound never is for an image without boxes (Caffe's `SatisfySampleConstraint`).
    """

    min_scale: float = 1.0
    max_scale: float = 1.0
    min_aspect_ratio: float = 1.0
    max_aspect_ratio: float = 1.0
    min_jaccard: float | None = None
    max_jaccard: float | None = None
    max_trials: int = 1

    @property
    def has_constraint(self) -> bool:
        return self.min_jaccard is not None or self.max_jaccard is not None


def _ssd_crop_sampler(**constraint) -> BatchSampler:
    return BatchSampler(0.3, 1.0, 0.5, 2.0, max_trials=50, **constraint)


# The Caffe scripts' batch_sampler list: the whole image, then 5 min-IoU crops, then any crop.
SSD_BATCH_SAMPLERS: tuple[BatchSampler, ...] = (
    BatchSampler(),
    _ssd_crop_sampler(min_jaccard=0.1),
    _ssd_crop_sampler(min_jaccard=0.3),
    _ssd_crop_sampler(min_jaccard=0.5),
    _ssd_crop_sampler(min_jaccard=0.7),
    _ssd_crop_sampler(min_jaccard=0.9),
    _ssd_crop_sampler(max_jaccard=1.0),
)


# ----------------------------------------------------------------------------- photometric


def adjust_brightness(image, delta):
    """image: [..., 3] float32 RGB in [0, 255]; delta: added to every channel. Clipped."""
    return tf.clip_by_value(image + delta, 0.0, PIXEL_MAX)


def adjust_contrast(image, factor):
    """Caffe/ssd contrast: `pixel * factor` (not tf.image.adjust_contrast, which scales about
    the image mean). image: [..., 3] float32 in [0, 255]. Clipped."""
    return tf.clip_by_value(image * factor, 0.0, PIXEL_MAX)


def adjust_saturation(image, factor):
    """HSV saturation times `factor` (clamped to [0, 1] by TF, saturated to 255 by OpenCV).

    image: [..., 3] float32 RGB in [0, 255]; the HSV conversion is scale invariant, so TF's
    op works on [0, 255] directly.
    """
    return tf.clip_by_value(tf.image.adjust_saturation(image, factor), 0.0, PIXEL_MAX)


def adjust_hue(image, delta_turns):
    """Rotates the hue by `delta_turns` of the full circle (tf.image.adjust_hue units).

    One OpenCV 8-bit hue unit is `HUE_TURNS_PER_OPENCV_UNIT` (2 degrees). TF wraps the hue
    around the circle; Caffe's uint8 `convertTo` saturates the H channel at 0 for negative
    shifts (OpenCV wraps H >= 180 back when converting to BGR), a quirk we do not copy.
    image: [..., 3] float32 RGB in [0, 255].
    """
    return tf.clip_by_value(tf.image.adjust_hue(image, delta_turns), 0.0, PIXEL_MAX)


def random_photometric_params(seed):
    """Draws Caffe `ApplyDistort`'s decisions (random_order_prob 0) for one image.

    seed: int32/int64 [2]. Returns a dict of scalar tensors:
      contrast_first: bool. Caffe draws `prob`; `prob > 0.5` gives brightness, contrast,
        saturation, hue; otherwise brightness, saturation, hue, contrast. We follow that.
      brightness_on, contrast_on, saturation_on, hue_on: bool, each True with p 0.5.
      brightness_delta in [-32, 32]; contrast_factor, saturation_factor in [0.5, 1.5];
      hue_delta in [-0.1, 0.1] turns (= +-18 OpenCV units).
    """
    u = tf.random.stateless_uniform([9], seed, dtype=tf.float32)

    def between(x, lo, hi):
        return lo + x * (hi - lo)

    return {
        "contrast_first": u[0] > 0.5,
        "brightness_on": u[1] < PHOTOMETRIC_PROB,
        "brightness_delta": between(u[2], -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA),
        "contrast_on": u[3] < PHOTOMETRIC_PROB,
        "contrast_factor": between(u[4], *CONTRAST_RANGE),
        "saturation_on": u[5] < PHOTOMETRIC_PROB,
        "saturation_factor": between(u[6], *SATURATION_RANGE),
        "hue_on": u[7] < PHOTOMETRIC_PROB,
        "hue_delta": between(u[8], -HUE_DELTA, HUE_DELTA),
    }


def photometric_off():
    """Photometric params that leave every image unchanged (for tests and ablations)."""
    false, zero, one = tf.constant(False), tf.constant(0.0), tf.constant(1.0)
    return {"contrast_first": false, "brightness_on": false, "brightness_delta": zero,
            "contrast_on": false, "contrast_factor": one, "saturation_on": false,
            "saturation_factor": one, "hue_on": false, "hue_delta": zero}


def apply_photometric(image, params):
    """Applies `random_photometric_params` decisions in Caffe's order.

    image: [H, W, 3] float32 RGB in [0, 255] (H or W may be 0). Returns the same shape, in
    [0, 255]: every op clips, as OpenCV's uint8 `saturate_cast` does after each step (we do
    not round to integers in between). An op that does not fire is not run.
    """

    def maybe(on, fn, x):
        return tf.cond(on, lambda: fn(x), lambda: x)

    def contrast(x):
        return adjust_contrast(x, params["contrast_factor"])

    image = maybe(params["brightness_on"],
                  lambda x: adjust_brightness(x, params["brightness_delta"]), image)
    image = maybe(params["contrast_on"] & params["contrast_first"], contrast, image)
    image = maybe(params["saturation_on"],
                  lambda x: adjust_saturation(x, params["saturation_factor"]), image)
    image = maybe(params["hue_on"], lambda x: adjust_hue(x, params["hue_delta"]), image)
    image = maybe(params["contrast_on"] & ~params["contrast_first"], contrast, image)
    return image


# ----------------------------------------------------------------------------- expand


def random_expand_params(seed, height, width, prob=EXPAND_PROB, max_ratio=MAX_EXPAND_RATIO):
    """Draws Caffe `ExpandImage`'s canvas for an image of `height x width` pixels.

    Returns a dict of int32 scalars (and `expanded` bool): canvas_height = floor(H * ratio),
    canvas_width = floor(W * ratio), offset_y = floor(u * (canvas_height - H)), offset_x
    likewise, with ratio uniform in [1, max_ratio] when the expand fires (p `prob`) and 1
    (canvas = image, offsets 0) otherwise or when ratio < 1.01, as in Caffe.
    """
    u = tf.random.stateless_uniform([4], seed, dtype=tf.float32)
    ratio = 1.0 + u[1] * (max_ratio - 1.0)
    expanded = (u[0] < prob) & (ratio - 1.0 >= MIN_EXPAND_RATIO_DELTA)
    ratio = tf.where(expanded, ratio, 1.0)
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    canvas_h = tf.cast(tf.floor(tf.cast(height, tf.float32) * ratio), tf.int32)
    canvas_w = tf.cast(tf.floor(tf.cast(width, tf.float32) * ratio), tf.int32)
    off_y = tf.cast(tf.floor(u[2] * tf.cast(canvas_h - height, tf.float32)), tf.int32)
    off_x = tf.cast(tf.floor(u[3] * tf.cast(canvas_w - width, tf.float32)), tf.int32)
    return {"expanded": expanded, "canvas_height": canvas_h, "canvas_width": canvas_w,
            "offset_y": off_y, "offset_x": off_x}


def boxes_to_canvas_pixels(boxes_yxyx, height, width, expand):
    """[N, 4] yxyx normalized to the image -> [N, 4] yxyx float32 canvas pixels."""
    scale = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    offset = tf.cast(tf.stack([expand["offset_y"], expand["offset_x"]] * 2), tf.float32)
    return tf.cast(boxes_yxyx, tf.float32) * scale + offset


def _pad_with_fill(image, paddings, fill_rgb):
    """Pads [h, w, 3] float32 with the colour `fill_rgb` (exact, unlike pad(x - c) + c).

    paddings: [[top, bottom], [left, right]] int32. Built by concatenating constant blocks,
    about twice as fast as padding channel by channel on large canvases.
    """
    (top, bottom), (left, right) = paddings
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    fill = tf.constant(fill_rgb, tf.float32)
    middle = tf.concat([tf.broadcast_to(fill, tf.stack([height, left, 3])), image,
                        tf.broadcast_to(fill, tf.stack([height, right, 3]))], axis=1)
    out_width = left + width + right
    return tf.concat([tf.broadcast_to(fill, tf.stack([top, out_width, 3])), middle,
                      tf.broadcast_to(fill, tf.stack([bottom, out_width, 3]))], axis=0)


def expand_image(image, expand, fill_rgb):
    """Materializes the expanded canvas (reference for tests; training uses crop_expanded_image).

    image: [H, W, 3] float32; expand: `random_expand_params` dict; fill_rgb: 3 floats.
    Returns [canvas_height, canvas_width, 3] float32 with the image at (offset_y, offset_x).
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    paddings = [[expand["offset_y"], expand["canvas_height"] - height - expand["offset_y"]],
                [expand["offset_x"], expand["canvas_width"] - width - expand["offset_x"]]]
    return _pad_with_fill(image, paddings, fill_rgb)


# ----------------------------------------------------------------------------- batch samplers


def generate_crop_candidates(seed, samplers=SSD_BATCH_SAMPLERS):
    """All candidate crops of all samplers at once, as one random draw.

    seed: int [2]. Returns [P, T, 4] float32 yxyx crops normalized to the canvas, where
    P = len(samplers) and T = max(max_trials); trials past a sampler's max_trials are drawn
    but never used. w = scale * sqrt(aspect), h = scale / sqrt(aspect), see BatchSampler.
    """
    def column(name):  # [P, 1], broadcasts against the [P, T] draws
        return tf.constant([[getattr(s, name)] for s in samplers], tf.float32)

    num_trials = max(s.max_trials for s in samplers)
    u = tf.random.stateless_uniform([len(samplers), num_trials, 4], seed, dtype=tf.float32)
    min_scale, max_scale = column("min_scale"), column("max_scale")
    scale = min_scale + u[..., 0] * (max_scale - min_scale)
    lo = tf.maximum(column("min_aspect_ratio"), tf.square(scale))
    hi = tf.minimum(column("max_aspect_ratio"), 1.0 / tf.square(scale))
    aspect = lo + u[..., 1] * (hi - lo)
    w = tf.minimum(scale * tf.sqrt(aspect), 1.0)
    h = tf.minimum(scale / tf.sqrt(aspect), 1.0)
    x0 = u[..., 2] * (1.0 - w)
    y0 = u[..., 3] * (1.0 - h)
    return tf.stack([y0, x0, y0 + h, x0 + w], axis=-1)


def snap_crops_to_pixels(crops_yxyx, canvas_height, canvas_width):
    """[..., 4] normalized crops -> [..., 4] int32 canvas pixels [y0, x0, y1, x1), y1 > y0.

    Edges are rounded to the nearest pixel line and kept inside the canvas, each crop at
    least one pixel high and wide.
    """
    ch, cw = tf.cast(canvas_height, tf.int32), tf.cast(canvas_width, tf.int32)
    size = tf.cast(tf.stack([ch, cw, ch, cw]), tf.float32)
    px = tf.cast(tf.round(crops_yxyx * size), tf.int32)
    y0 = tf.clip_by_value(px[..., 0], 0, ch - 1)
    x0 = tf.clip_by_value(px[..., 1], 0, cw - 1)
    y1 = tf.clip_by_value(px[..., 2], y0 + 1, ch)
    x1 = tf.clip_by_value(px[..., 3], x0 + 1, cw)
    return tf.stack([y0, x0, y1, x1], axis=-1)


def sample_crop(seed, boxes_yxyx, canvas_height, canvas_width, samplers=SSD_BATCH_SAMPLERS):
    """Caffe's GenerateBatchSamples + the uniform pick among the samplers that produced one.

    Every sampler's T trials are generated together (`generate_crop_candidates`), snapped to
    the canvas pixel grid, and compared with every ground-truth box as one [P*T, N] IoU;
    each sampler keeps its first satisfying trial (max_sample 1); one sampler is then picked
    uniformly among those that found a crop (the whole-image sampler always does).

    Args:
      seed: int [2].
      boxes_yxyx: [N, 4] float32 ground truth normalized to the canvas (N may be 0).
      canvas_height, canvas_width: int32 scalars, the canvas size in pixels.
    Returns a dict:
      crop_px: int32 [4] the chosen crop, canvas pixels [y0, x0, y1, x1).
      sampler: int32 scalar, index of the chosen sampler in `samplers`.
      found: bool [P], whether each sampler produced a crop.
      sampler_crops_px: int32 [P, 4], each sampler's first satisfying crop (whole canvas
        where it found none).
    """
    candidate_seed, pick_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    num_samplers = len(samplers)
    candidates = generate_crop_candidates(candidate_seed, samplers)  # [P, T, 4]
    num_trials = candidates.shape[1]
    crops_px = snap_crops_to_pixels(candidates, canvas_height, canvas_width)  # [P, T, 4]
    ch, cw = tf.cast(canvas_height, tf.float32), tf.cast(canvas_width, tf.float32)
    crops = tf.cast(crops_px, tf.float32) / tf.stack([ch, cw, ch, cw])
    boxes = tf.reshape(tf.cast(boxes_yxyx, tf.float32), [-1, 4])
    iou = pairwise_iou(tf.reshape(crops, [-1, 4]), boxes)  # [P*T, N]
    iou = tf.reshape(iou, [num_samplers, num_trials, -1])
    min_iou = tf.constant([-1.0 if s.min_jaccard is None else s.min_jaccard for s in samplers])
    max_iou = tf.constant([2.0 if s.max_jaccard is None else s.max_jaccard for s in samplers])
    overlaps = (iou >= min_iou[:, None, None]) & (iou <= max_iou[:, None, None])
    has_constraint = tf.constant([[s.has_constraint] for s in samplers])  # [P, 1]
    satisfied = tf.where(has_constraint, tf.reduce_any(overlaps, axis=-1), True)  # [P, T]
    trials = tf.range(num_trials)[None, :]  # [1, T]
    satisfied &= trials < tf.constant([[s.max_trials] for s in samplers])
    found = tf.reduce_any(satisfied, axis=1)  # [P]
    # First satisfying trial (argmax does not promise the first of ties); T - 1 if none.
    first = tf.reduce_min(tf.where(satisfied, trials, num_trials - 1), axis=1)
    whole = tf.stack([0, 0, tf.cast(canvas_height, tf.int32), tf.cast(canvas_width, tf.int32)])
    sampler_crops = tf.where(found[:, None], tf.gather(crops_px, first, batch_dims=1), whole)
    keys = tf.random.stateless_uniform([num_samplers], pick_seed, dtype=tf.float32)
    sampler = tf.argmax(tf.where(found, keys, -1.0), output_type=tf.int32)
    return {"crop_px": sampler_crops[sampler], "sampler": sampler, "found": found,
            "sampler_crops_px": sampler_crops}


# ----------------------------------------------------------------------------- crop and emit


def project_boxes_to_crop(boxes_px, crop_px):
    """Caffe's CENTER emit constraint + ProjectBBox.

    Args:
      boxes_px: [N, 4] float32 yxyx in canvas pixels (`boxes_to_canvas_pixels`).
      crop_px: int32 [4] the crop, canvas pixels [y0, x0, y1, x1).
    Returns:
      boxes: [N, 4] float32 yxyx normalized to the crop, clipped to [0, 1].
      keep: [N] bool, True where the box centre lies inside the crop (edges included) and the
        clipped box is not empty. Callers drop the others.
    """
    crop = tf.cast(crop_px, tf.float32)
    size = tf.stack([crop[2] - crop[0], crop[3] - crop[1]] * 2)
    cy = (boxes_px[:, 0] + boxes_px[:, 2]) / 2.0
    cx = (boxes_px[:, 1] + boxes_px[:, 3]) / 2.0
    centre_in = (cy >= crop[0]) & (cy <= crop[2]) & (cx >= crop[1]) & (cx <= crop[3])
    boxes = tf.clip_by_value((boxes_px - tf.stack([crop[0], crop[1]] * 2)) / size, 0.0, 1.0)
    non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, centre_in & non_empty


def crop_expanded_image(image, expand, crop_px, fill_rgb, distort=None):
    """The crop `crop_px` of the expanded canvas, without building the canvas.

    Cuts the part of `image` that falls inside the crop window, applies `distort` (a per-pixel
    function [h, w, 3] -> [h, w, 3], e.g. the photometric distortion) to it, and pads it with
    `fill_rgb` to the crop size. Equal to `crop(expand_image(distort(image)))`.

    Args:
      image: [H, W, 3] float32 RGB in [0, 255].
      expand: `random_expand_params` dict; crop_px: int32 [4] canvas pixels [y0, x0, y1, x1).
      fill_rgb: 3 floats, the canvas colour.
    Returns:
      [y1 - y0, x1 - x0, 3] float32.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    crop_h, crop_w = crop_px[2] - crop_px[0], crop_px[3] - crop_px[1]
    oy, ox = expand["offset_y"], expand["offset_x"]
    iy0 = tf.clip_by_value(crop_px[0] - oy, 0, height)
    iy1 = tf.clip_by_value(crop_px[2] - oy, 0, height)
    ix0 = tf.clip_by_value(crop_px[1] - ox, 0, width)
    ix1 = tf.clip_by_value(crop_px[3] - ox, 0, width)
    piece = image[iy0:iy1, ix0:ix1]
    if distort is not None:
        piece = distort(piece)
    top = tf.clip_by_value(oy + iy0 - crop_px[0], 0, crop_h)
    left = tf.clip_by_value(ox + ix0 - crop_px[1], 0, crop_w)
    paddings = [[top, crop_h - top - (iy1 - iy0)], [left, crop_w - left - (ix1 - ix0)]]
    return _pad_with_fill(piece, paddings, fill_rgb)


# ----------------------------------------------------------------------------- resize, mirror


def _resize(image, size_hw, method_index=None):
    """tf.image.resize of [h, w, 3] to size_hw (2 ints or int32 [2]), not clipped.

    method_index: None for bilinear (eval), or an int32 scalar tensor indexing
    TRAIN_INTERPOLATIONS (train).
    """
    def resize(method):
        return lambda: tf.image.resize(image, size_hw, method=method, antialias=False)

    if method_index is None:
        return resize(EVAL_INTERPOLATION)()
    return tf.switch_case(method_index, [resize(m) for m in TRAIN_INTERPOLATIONS])


def resize_image(image, size, method_index=None):
    """Warp-resizes [h, w, 3] float32 to [size, size, 3], clipped to [0, 255].

    method_index: None for bilinear (eval), or an int32 scalar tensor indexing
    TRAIN_INTERPOLATIONS (train). Bicubic and Lanczos overshoot, hence the clip.
    """
    resized = tf.ensure_shape(_resize(image, [size, size], method_index), [size, size, 3])
    return tf.clip_by_value(resized, 0.0, PIXEL_MAX)


def keep_aspect_size(height, width, min_side, max_side, canvas_size):
    """py-faster-rcnn's `prep_im_for_blob` scale, also capped so the image fits the canvas.

    scale = min_side / min(h, w); if round(scale * max(h, w)) > max_side, scale = max_side /
    max(h, w); then likewise with canvas_size. In float64, as py-faster-rcnn's numpy, so the
    rounding of the sizes matches it.

    Args:
      height, width: int scalars (tensors), the image size in pixels (> 0).
      min_side, max_side, canvas_size: ints.
    Returns:
      size_hw: int32 [2], (round(h * scale), round(w * scale)), each at least 1 and at most
        canvas_size.
      scale: float32 scalar.
    """
    size = tf.cast(tf.stack([height, width]), tf.float64)
    longer = tf.reduce_max(size)
    scale = float(min_side) / tf.reduce_min(size)
    for limit in (max_side, canvas_size):
        scale = tf.where(tf.round(scale * longer) > limit, float(limit) / longer, scale)
    # At least one pixel: a 1 x 5000 image would otherwise round to an empty side.
    size_hw = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
    return size_hw, tf.cast(scale, tf.float32)


def resize_keep_aspect(image, min_side, max_side, canvas_size, method_index=None):
    """Resizes [h, w, 3] float32 keeping its aspect (`keep_aspect_size`), clipped to [0, 255].

    method_index: as `resize_image`.
    Returns:
      resized: [h', w', 3] float32, h', w' <= canvas_size.
      image_info: float32 [3] (h', w', scale), py-faster-rcnn's im_info.
    """
    size_hw, scale = keep_aspect_size(tf.shape(image)[0], tf.shape(image)[1], min_side, max_side,
                                      canvas_size)
    resized = tf.clip_by_value(_resize(image, size_hw, method_index), 0.0, PIXEL_MAX)
    return resized, tf.concat([tf.cast(size_hw, tf.float32), scale[None]], axis=0)


def pad_to_canvas(image, canvas_size):
    """[h, w, C] with h, w <= canvas_size -> [canvas_size, canvas_size, C], zeros bottom/right."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    padded = tf.pad(image, [[0, canvas_size - height], [0, canvas_size - width], [0, 0]])
    return tf.ensure_shape(padded, [canvas_size, canvas_size, image.shape[-1]])


def draw_mirror(seed):
    """bool scalar, True with probability MIRROR_PROB. seed: int [2]."""
    return tf.random.stateless_uniform([], seed, dtype=tf.float32) < MIRROR_PROB


def mirror_image_and_boxes(image, boxes_yxyx, flip):
    """Horizontal flip when `flip` (bool scalar). image [H, W, 3]; boxes [N, 4] normalized."""
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    ymin, xmin, ymax, xmax = tf.unstack(boxes_yxyx, axis=-1)
    flipped = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)
    return image, tf.where(flip, flipped, boxes_yxyx)


# ----------------------------------------------------------------------------- whole example


def draw_augmentation(seed, boxes_yxyx, height, width, samplers=SSD_BATCH_SAMPLERS,
                      max_expand_ratio=MAX_EXPAND_RATIO):
    """Every random decision for one training example, from one seed.

    Args:
      seed: int32/int64 [2], the example's seed.
      boxes_yxyx: [N, 4] float32 ground truth normalized to the image (N may be 0).
      height, width: int32 scalars, the image size in pixels.
    Returns a dict: photometric (`random_photometric_params`), expand
    (`random_expand_params`), crop (`sample_crop`, on the canvas), mirror (bool scalar),
    interpolation (int32 scalar index into TRAIN_INTERPOLATIONS).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
    expand = random_expand_params(seeds[1], height, width, max_ratio=max_expand_ratio)
    boxes_px = boxes_to_canvas_pixels(boxes_yxyx, height, width, expand)
    canvas = tf.cast(tf.stack([expand["canvas_height"], expand["canvas_width"]] * 2), tf.float32)
    crop = sample_crop(seeds[2], boxes_px / canvas, expand["canvas_height"],
                       expand["canvas_width"], samplers)
    mirror = draw_mirror(seeds[3])
    interpolation = tf.random.stateless_uniform(
        [], seeds[4], minval=0, maxval=len(TRAIN_INTERPOLATIONS), dtype=tf.int32)
    return {"photometric": random_photometric_params(seeds[0]), "expand": expand,
            "crop": crop, "mirror": mirror, "interpolation": interpolation}


def crop_augmented_patch(image, boxes_yxyx, decisions, fill_rgb):
    """Photometric distortion, expand and crop of `draw_augmentation` decisions (steps 1-3).

    Args:
      image: [H, W, 3] uint8 or float RGB in [0, 255].
      boxes_yxyx: [N, 4] float32 normalized to the image.
      decisions: `draw_augmentation` output; fill_rgb: 3 floats, the expand canvas colour.
    Returns:
      patch: [h, w, 3] float32 RGB in [0, 255], the crop (1:1 pixels of the image and canvas).
      boxes: [N, 4] float32 yxyx normalized to the patch, in [0, 1].
      keep: [N] bool, the CENTER emit constraint; drop boxes where False.
    """
    image = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    expand, crop_px = decisions["expand"], decisions["crop"]["crop_px"]
    photometric = decisions["photometric"]
    patch = crop_expanded_image(image, expand, crop_px, fill_rgb,
                                distort=lambda piece: apply_photometric(piece, photometric))
    boxes_px = boxes_to_canvas_pixels(boxes_yxyx, height, width, expand)
    boxes, keep = project_boxes_to_crop(boxes_px, crop_px)
    return patch, boxes, keep


def apply_augmentation(image, boxes_yxyx, decisions, image_size, fill_rgb):
    """Executes `draw_augmentation` decisions on one image and its boxes.

    Args:
      image: [H, W, 3] uint8 or float RGB in [0, 255].
      boxes_yxyx: [N, 4] float32 normalized to the image.
      decisions: `draw_augmentation` output (entries may be replaced, e.g. photometric_off()).
      image_size: int, the output side S.
      fill_rgb: 3 floats, the expand canvas colour (`mean_pixel_rgb(config)`).
    Returns:
      image: [S, S, 3] float32 RGB in [0, 255] (not yet preprocessed).
      boxes: [N, 4] float32 yxyx normalized to the output image, in [0, 1].
      keep: [N] bool, the CENTER emit constraint; drop boxes where False.
    """
    cropped, boxes, keep = crop_augmented_patch(image, boxes_yxyx, decisions, fill_rgb)
    resized = resize_image(cropped, image_size, decisions["interpolation"])
    resized, boxes = mirror_image_and_boxes(resized, boxes, decisions["mirror"])
    return resized, boxes, keep


def _augment_before_resize(image, boxes_yxyx, config, seed):
    """`config.augmentation`'s steps before the resize, and its decisions for the rest.

    image: [H, W, 3] float32; boxes_yxyx: [N, 4] normalized; seed: int [2].
    Returns (image [h, w, 3] float32, boxes [N, 4] normalized to it, keep [N] bool or None when
    every box stays, mirror bool scalar, interpolation int32 scalar or None for bilinear).
    """
    if config.augmentation == "ssd":
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        decisions = draw_augmentation(seed, boxes_yxyx, height, width,
                                      max_expand_ratio=config.max_expand_ratio)
        patch, boxes, keep = crop_augmented_patch(image, boxes_yxyx, decisions, mean_pixel_rgb(config))
        return patch, boxes, keep, decisions["mirror"], decisions["interpolation"]
    if config.augmentation == "flip":
        # The references flip with a fixed bilinear resize (OpenCV INTER_LINEAR).
        return image, boxes_yxyx, None, draw_mirror(tf.cast(seed, tf.int64)), None
    raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {config.augmentation!r}")


def augment_example(example, config, seed=None, augment=True):
    """One example of the reader contract -> one model-ready example.

    Args:
      example: dict with `image` uint8 [H, W, 3] RGB, `boxes` float32 [N, 4] normalized yxyx,
        `classes` int32 [N] (1..C-1), `difficult` bool [N], `is_crowd` bool [N], `image_id`,
        `height`, `width`. Missing per-box fields default to False.
      config: RefineDetConfig or FasterRCNNConfig: `image_size`, `preprocessing`,
        `pixel_mean_bgr`, `augmentation`, `max_expand_ratio`, `resize_mode` (and `min_side`,
        `max_side` for "keep_aspect").
      seed: int [2], the example's seed (required when augment=True).
      augment: True: the training augmentation `config.augmentation`; False: the eval path
        (bilinear resize, boxes unchanged).
    Returns a dict: `image` float32 [S, S, 3] preprocessed (keep_aspect: the valid area at the
      top left, zeros elsewhere); `boxes` float32 [N', 4] normalized yxyx of the output image's
      valid area; `classes` int32 [N']; `difficult`, `is_crowd` bool [N']; keep_aspect only:
      `image_info` float32 [3] (valid height, valid width, scale); `image_id`, `height`,
      `width` passed through (the original size). N' <= N (the input's boxes) with the "ssd"
      augmentation (boxes failing the CENTER rule are dropped), N' = N otherwise.
    """
    if augment and seed is None:
        raise ValueError("augment_example(augment=True) needs a per-example seed (int [2])")
    if config.resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {config.resize_mode!r}")
    image = tf.cast(example["image"], tf.float32)
    boxes = tf.reshape(tf.cast(example["boxes"], tf.float32), [-1, 4])
    num_boxes = tf.shape(boxes)[0]
    per_box = {"classes": tf.cast(example["classes"], tf.int32)}
    for name in ("difficult", "is_crowd"):
        per_box[name] = (tf.cast(example[name], tf.bool) if name in example
                         else tf.zeros([num_boxes], tf.bool))
    keep, mirror, interpolation = None, None, None
    if augment:
        image, boxes, keep, mirror, interpolation = _augment_before_resize(image, boxes, config, seed)
    out = {}
    if config.resize_mode == "stretch":
        pixels = resize_image(image, config.image_size, interpolation)
    else:
        pixels, out["image_info"] = resize_keep_aspect(
            image, config.min_side, config.max_side, config.image_size, interpolation)
    if mirror is not None:
        # Before any padding: a keep_aspect image mirrors inside its valid area.
        pixels, boxes = mirror_image_and_boxes(pixels, boxes, mirror)
    if keep is not None:
        boxes = tf.boolean_mask(boxes, keep)
        per_box = {name: tf.boolean_mask(value, keep) for name, value in per_box.items()}
    pixels = preprocess_images(pixels, config)
    if config.resize_mode == "keep_aspect":
        # Padded after preprocessing, so the padding is exactly zero whatever the normalization.
        pixels = pad_to_canvas(pixels, config.image_size)
    out.update({"image": pixels, "boxes": boxes, **per_box})
    for name in ("image_id", "height", "width"):
        if name in example:
            out[name] = example[name]
    return out


def example_seed(base_seed, index):
    """The seed of example `index` (int64 scalar) in the stream `base_seed` (int [2])."""
    return tf.random.experimental.stateless_fold_in(
        tf.cast(base_seed, tf.int64), tf.cast(index, tf.int64))

