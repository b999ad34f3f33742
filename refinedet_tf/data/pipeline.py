"""From reader examples to model-ready batches: augment, pad to `max_boxes`, batch.

Input: a `tf.data.Dataset` of the reader contract (one dict per image): `image` uint8
[H, W, 3] RGB, `image_id` string, `height`, `width` int32, `boxes` float32 [N, 4] normalized
yxyx, `classes` int32 [N], `difficult` bool [N], `is_crowd` bool [N].

Output: `(images, targets)` batches. With B the batch size, G = `max_boxes`, S the image size;
`images` depends on `config.resize_mode` (data/augment.py):
  "stretch" (RefineDet): float32 [B, S, S, 3], preprocessed (`preprocess_images`), each image
    warped to the whole square.
  "keep_aspect" (Faster R-CNN, `build_faster_rcnn`'s input): dict
    images:     float32 [B, S, S, 3], preprocessed; each image resized keeping its aspect, at
                the top left, zeros (after preprocessing) bottom/right;
    image_info: float32 [B, 3], (valid height, valid width, scale): each image's size in
                canvas pixels and the factor it was resized by (from the original image,
                or from the augmented patch, whose pixels are the original's at 1:1).
  `image_pixels(images)` gives the [B, S, S, 3] tensor of either form, `valid_sizes(images)`
  each image's valid area. `loss_targets` and `make_distributed_dataset` pass `images` through.
  targets: dict
    boxes:         float32 [B, G, 4] normalized yxyx of the output image's valid area (the
                   whole image in "stretch"), zeros where padded;
    classes:       int32 [B, G], 0 (background) where padded;
    mask:          bool [B, G], True for real boxes (they come first);
    difficult:     bool [B, G]; is_crowd: bool [B, G] (False where padded);
    image_id:      string [B]; height, width: int32 [B], the original image size;
    num_truncated: int32 [B], boxes dropped because more than G survived the augmentation
                   (always 0 unless truncate_boxes=True).

Randomness: example i of the stream gets the seed `stateless_fold_in([seed, seed_stream], i)`
(i counts across epochs when repeating), so a seed gives the same batches on every run,
whatever `num_parallel_calls`, as long as `deterministic=True` (the shuffle is seeded too).
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from refinedet_tf.data.augment import augment_example, example_seed

DEFAULT_SHUFFLE_BUFFER = 1024


def _model_images(example):
    """An augmented example's model input: the image, or with image_info the keep_aspect dict."""
    if "image_info" in example:
        return {"images": example["image"], "image_info": example["image_info"]}
    return example["image"]


def image_pixels(images):
    """The float32 [B, S, S, 3] preprocessed images of a batch's `images`, either form."""
    return images["images"] if isinstance(images, Mapping) else images


def valid_sizes(images):
    """int32 [B, 2] (height, width) of each image's valid area in `image_pixels(images)`:
    image_info's for keep_aspect, the whole [S, S] for stretch."""
    if isinstance(images, Mapping):
        return tf.cast(tf.round(images["image_info"][:, :2]), tf.int32)
    shape = tf.shape(images)
    return tf.tile(shape[None, 1:3], [shape[0], 1])


def _pad_targets(example, max_boxes, truncate_boxes, num_input_boxes):
    """Pads an augmented example's per-box fields to `max_boxes` -> (images, targets)."""
    image_id = example.get("image_id", tf.constant("", tf.string))
    if not truncate_boxes:
        # Checked on the reader's boxes, so the error does not depend on the random crop.
        message = tf.strings.join([
            "image ", image_id,
            " has ", tf.strings.as_string(num_input_boxes), " boxes, more than max_boxes=",
            str(max_boxes), "; raise max_boxes or pass truncate_boxes=True"])
        tf.debugging.Assert(num_input_boxes <= max_boxes, [message])
    num_boxes = tf.shape(example["boxes"])[0]
    num_kept = tf.minimum(num_boxes, max_boxes)
    num_truncated = num_boxes - num_kept
    pad = max_boxes - num_kept

    def padded(value, rank_one_shape):
        value = value[:num_kept]
        paddings = [[0, pad]] + [[0, 0]] * (len(rank_one_shape) - 1)
        return tf.ensure_shape(tf.pad(value, paddings), rank_one_shape)

    targets = {
        "boxes": padded(example["boxes"], [max_boxes, 4]),
        "classes": padded(example["classes"], [max_boxes]),
        "mask": tf.range(max_boxes) < num_kept,
        "difficult": padded(example["difficult"], [max_boxes]),
        "is_crowd": padded(example["is_crowd"], [max_boxes]),
        "image_id": image_id,
        "height": tf.cast(example.get("height", 0), tf.int32),
        "width": tf.cast(example.get("width", 0), tf.int32),
        "num_truncated": num_truncated,
    }
    return _model_images(example), targets


def make_dataset(examples, config, batch_size, training, seed=0, max_boxes=100,
                 truncate_boxes=False, deterministic=True,
                 num_parallel_calls=tf.data.AUTOTUNE, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER,
                 repeat=None, seed_stream=0, skip_batches=0):
    """Reader examples -> `(images, targets)` batches (see the module docstring).

    Args:
      examples: tf.data.Dataset of reader-contract dicts.
      config: RefineDetConfig or FasterRCNNConfig (see `augment.augment_example`).
      batch_size: images per batch (per replica under a strategy).
      training: True: shuffle, `config.augmentation`, drop the last partial batch;
        False: the eval path (bilinear resize, boxes unchanged), keep the partial batch.
      seed: int, the augmentation and shuffle seed.
      max_boxes: G, the padded number of boxes per image.
      truncate_boxes: False: an image with more than G boxes raises InvalidArgumentError
        naming its image_id. True: keep the first G boxes left after augmentation and count
        the others in `targets["num_truncated"]`.
      deterministic: `tf.data.Options.deterministic` (order of the parallel map).
      num_parallel_calls: of the augmentation map.
      shuffle_buffer: examples in the shuffle buffer (training only; <= 1 disables it).
      repeat: repeat forever; defaults to `training`.
      seed_stream: int, a second seed component: distinct augmentation streams for input
        pipelines that share `seed` (make_distributed_dataset passes the pipeline id).
      skip_batches: start the stream this many batches in: the same batches as skipping them
        after the fact, but the skipped examples are never augmented (a resumed run repositions
        its data in seconds, not in the hours a long run's worth of augmentation would take).
    Returns:
      tf.data.Dataset of (images, dict of targets): images float32 [B, S, S, 3] ("stretch") or
      the dict {"images", "image_info"} ("keep_aspect"), see the module docstring.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_boxes < 1:
        raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
    repeat = training if repeat is None else repeat
    base_seed = tf.constant([seed, seed_stream], tf.int64)

    def prepare(index, example):
        num_input_boxes = tf.shape(tf.reshape(example["boxes"], [-1, 4]))[0]
        seed_i = example_seed(base_seed, index) if training else None
        augmented = augment_example(example, config, seed_i, augment=training)
        return _pad_targets(augmented, max_boxes, truncate_boxes, num_input_boxes)

    dataset = examples
    if training and shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.enumerate()
    if skip_batches:
        if not training:
            raise ValueError("skip_batches is for resuming training streams")
        # Batches are full in training (drop_remainder), so batch k starts at example k * B;
        # the enumerate index rides along, so the kept examples keep their augmentation seeds.
        dataset = dataset.skip(skip_batches * batch_size)
    dataset = dataset.map(prepare, num_parallel_calls=num_parallel_calls,
                          deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    return dataset.with_options(options)


def loss_targets(images, targets):
    """(images, targets) -> (images, the targets the training loss reads), all numeric.

    `images` passes through as it is (a tensor, or the keep_aspect dict).

    Strings (`image_id`) cannot be placed on accelerators by a distributed dataset, and the
    loss takes the mask as float32 (see `RefineDetTrainer.compute_losses`).
    """
    return images, {"boxes": targets["boxes"], "classes": targets["classes"],
                    "mask": tf.cast(targets["mask"], tf.float32)}


def make_distributed_dataset(strategy, examples_fn, config, global_batch_size, training=True,
                             seed=0, skip_steps=0, map_fn=None, **kwargs):
    """`make_dataset` under a tf.distribute strategy, one input pipeline per worker.

    Args:
      strategy: a tf.distribute.Strategy (MirroredStrategy, MultiWorkerMirroredStrategy, TPU).
      examples_fn: () -> tf.data.Dataset of reader examples (all of them; each input pipeline
        keeps its shard, `input_context.input_pipeline_id` of `num_input_pipelines`).
      config: RefineDetConfig or FasterRCNNConfig.
      global_batch_size: images per step over all replicas; each replica gets
        `input_context.get_per_replica_batch_size(global_batch_size)`.
      training, seed, **kwargs: as make_dataset (each pipeline also gets its own seed_stream).
      skip_steps: start this many global steps in (resuming): each pipeline skips one batch
        per step for each replica it feeds.
      map_fn: applied to each pipeline's batches, e.g. `loss_targets`.
    Returns:
      a tf.distribute.DistributedDataset of per-replica (images, targets) batches.
    """
    if "seed_stream" in kwargs:
        raise ValueError("make_distributed_dataset sets seed_stream to the input pipeline id")

    def dataset_fn(input_context):
        examples = examples_fn()
        if input_context.num_input_pipelines > 1:
            examples = examples.shard(input_context.num_input_pipelines,
                                      input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        local_replicas = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        data = make_dataset(examples, config, batch_size, training, seed=seed,
                            seed_stream=input_context.input_pipeline_id,
                            skip_batches=skip_steps * local_replicas, **kwargs)
        return data.map(map_fn) if map_fn is not None else data

    return strategy.distribute_datasets_from_function(dataset_fn)
