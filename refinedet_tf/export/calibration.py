"""Calibration data for int8 quantization: the first images of a data set or of an image
folder, preprocessed as the exported models expect (`contract.resize_and_preprocess`)."""

from __future__ import annotations

import glob
import os

import tensorflow as tf

from refinedet_tf import data as data_lib
from refinedet_tf.data.image_io import IMAGE_EXTENSIONS
from refinedet_tf.export.contract import resize_and_preprocess

DEFAULT_NUM_CALIBRATION = 100


def calibration_images(path, config, num_images=DEFAULT_NUM_CALIBRATION, split=None,
                       label_map=None, on_bad_example="error", report_stream=None):
    """The first `num_images` images of a data set, preprocessed for the network.

    Args:
      path: a VOC folder, a COCO .json or TFRecord files (read with `refinedet_tf.data`), or a
        folder / glob of image files (.jpg, .jpeg, .png, .bmp, .gif; sorted by name).
      config: the model's config (image size and normalization).
      split: VOC split (None: every annotated image).
      label_map: for readers that need one (VOC folders without labelmap.txt).
      on_bad_example: the data policy's choice for a data set (data/policy.py); the data set is
        read with the evaluation policy (only its images are used).
      report_stream: where the data set reader's report goes (None: not printed).
    Returns:
      a list of float32 [1, S, S, 3] arrays (warp-resized and normalized as the exported
      models expect). Raises ValueError when no image is found.
    """
    images = []
    for rgb in _iter_rgb_images(path, split, label_map, on_bad_example, report_stream):
        images.append(resize_and_preprocess(rgb[None], config).numpy())
        if len(images) >= num_images:
            break
    if not images:
        raise ValueError(f"no calibration image found in {path}")
    return images


def _iter_rgb_images(path, split, label_map, on_bad_example, report_stream):
    if any(c in path for c in "*?[") and not glob.glob(path):
        raise ValueError(f"no calibration image found in {path}: the pattern matches no file")
    files = _image_files(path)
    if files:
        for name in files:
            yield _decode_file(name)
        return
    reader = data_lib.open_reader(path, split=split, label_map=label_map, on_bad_example=on_bad_example,
                                  purpose="evaluate")
    if report_stream is not None:
        print(f"calibration data {path}:\n  " + reader.report.format(max_issues=10).replace("\n", "\n  "),
              file=report_stream)
    for example in reader.as_dataset():
        yield example["image"].numpy()


def _image_files(path):
    """Image files of a plain folder or a glob ([] for a data set path)."""
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "Annotations")):
            return []
        names = [os.path.join(path, n) for n in os.listdir(path)]
    elif any(c in path for c in "*?["):
        names = glob.glob(path)
    else:
        return []
    return sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(n))


def _decode_file(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise ValueError(f"{path}: cannot decode image: {e.message.split('[Op:')[0].strip()}") from None
