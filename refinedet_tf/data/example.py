"""The example contract every reader yields.

An *example* is a dict (numpy values from the Python readers, tensors with the same keys and
dtypes from `tf.data`):

  image       uint8 [H, W, 3] RGB: the stored pixels, decoded. EXIF orientation is NOT applied
              (TensorFlow's decoders ignore it, and so do the annotation tools that wrote VOC
              and COCO boxes): boxes always refer to the pixels as stored.
  image_id    str: VOC file stem, COCO str(image id), TFRecord `image/source_id` (else the
              `image/filename` stem).
  height      int32: H, the original stored size.
  width       int32: W.
  boxes       float32 [N, 4] normalized [ymin, xmin, ymax, xmax], 0 <= min <= max <= 1
              (min == max only for a zero-area box kept for evaluation, policy.py).
  classes     int32 [N] contiguous class ids in 1..C-1 (through the label map; 0 is background).
  difficult   bool [N] (VOC's flag; False elsewhere unless the TFRecord stores it).
  is_crowd    bool [N] (COCO's `iscrowd`; False elsewhere).

Readers also expose *metadata*: the same dicts without `image` (plus `image_path`), so an
evaluator can be fed ground truth without decoding images.

Where the rest lives: the pixel conventions of VOC and COCO boxes in `box_conventions.py`; what
every command does with bad input and annotation quirks in `policy.py`, and the `Report` and
`BadExampleError` it produces in `report.py`; the base of the VOC and COCO readers in
`reader.py`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

KEYS = ("image", "image_id", "height", "width", "boxes", "classes", "difficult", "is_crowd")
METADATA_KEYS = ("image_id", "height", "width", "boxes", "classes", "difficult", "is_crowd")


def check_example(example: dict, num_classes: int | None = None) -> None:
    """Asserts that a numpy example follows the contract; raises ValueError saying what is off."""
    missing = [k for k in KEYS if k not in example]
    if missing:
        raise ValueError(f"example is missing keys {missing}; has {sorted(example)}")
    image = np.asarray(example["image"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    if image.shape[:2] != (int(example["height"]), int(example["width"])):
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]} but height/width say "
            f"{int(example['width'])}x{int(example['height'])}")
    boxes = np.asarray(example["boxes"])
    n = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.dtype != np.float32 or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be float32 [N, 4], got {boxes.dtype} {list(boxes.shape)}")
    for key, dtype in (("classes", np.int32), ("difficult", np.bool_), ("is_crowd", np.bool_)):
        value = np.asarray(example[key])
        if value.dtype != dtype or value.shape != (n,):
            raise ValueError(f"{key} must be {np.dtype(dtype)} [{n}], got {value.dtype} {list(value.shape)}")
    if n and not (np.all(boxes >= 0) and np.all(boxes <= 1)
                  and np.all(boxes[:, 2:] >= boxes[:, :2])):
        raise ValueError(f"boxes must satisfy 0 <= min <= max <= 1, got {boxes.tolist()}")
    classes = np.asarray(example["classes"])
    if n and (classes.min() < 1 or (num_classes is not None and classes.max() >= num_classes)):
        raise ValueError(f"classes must be in 1..{num_classes and num_classes - 1}, got {classes.tolist()}")


def output_signature():
    """The `tf.TensorSpec`s of an example in `tf.data` (dict with `KEYS`)."""
    return {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "image_id": tf.TensorSpec([], tf.string),
        "height": tf.TensorSpec([], tf.int32),
        "width": tf.TensorSpec([], tf.int32),
        "boxes": tf.TensorSpec([None, 4], tf.float32),
        "classes": tf.TensorSpec([None], tf.int32),
        "difficult": tf.TensorSpec([None], tf.bool),
        "is_crowd": tf.TensorSpec([None], tf.bool),
    }
