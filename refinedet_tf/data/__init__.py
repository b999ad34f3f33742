"""Datasets: readers (VOC, COCO, TFRecord) yielding the example contract of `example.py`.

    from refinedet_tf import data
    ds = data.read_dataset("VOCdevkit/VOC2007", split="test", label_map="data/voc_labelmap.txt")
    reader = data.open_reader("out/train-*.tfrecord")   # .metadata: ground truth, no pixels

See `example.py` for the contract (keys, dtypes), `box_conventions.py` for the pixel
conventions, `policy.py` and `report.py` for bad input,
`prepare.py` for the TFRecord conversion command, `synthetic.py` for the built-in demo set.
"""

from __future__ import annotations

import glob
import os

from refinedet_tf.data import coco, tfrecord, voc
from refinedet_tf.data.box_conventions import (
    coco_xywh_to_normalized,
    normalized_to_coco_xywh,
    normalized_to_voc_pixels,
    voc_pixels_to_normalized,
)
from refinedet_tf.data.example import KEYS
from refinedet_tf.data.label_map import LabelMap, load_label_map
from refinedet_tf.data.policy import Policy
from refinedet_tf.data.report import BadExampleError, Report

FORMATS = ("voc", "coco", "tfrecord")


def detect_format(path_or_glob) -> str:
    """"voc" for a folder with Annotations/, "coco" for a .json, "tfrecord" for TFRecord files.

    Raises BadExampleError saying what was looked for.
    """
    if isinstance(path_or_glob, (list, tuple)):
        return "tfrecord"
    path = str(path_or_glob)
    if os.path.isdir(path):
        if voc.is_voc_dir(path):
            return "voc"
        if any(tfrecord.is_tfrecord_path(f) for f in os.listdir(path)):
            return "tfrecord"
    elif path.endswith(".json"):
        return "coco"
    elif tfrecord.is_tfrecord_path(path) or any(tfrecord.is_tfrecord_path(f) for f in glob.glob(path)):
        return "tfrecord"
    raise BadExampleError(
        path, "cannot tell the dataset format: expected a VOC folder (with Annotations/), a COCO "
              ".json, or *.tfrecord* files; pass format=")


def open_reader(path_or_glob, format: str | None = None, split: str | None = None,
                label_map=None, **kwargs):
    """The reader object for a dataset: `VocReader`, `CocoReader` or `TFRecordReader`.

    Args:
      path_or_glob: VOC folder, COCO JSON, or TFRecord file/glob/folder/list.
      format: one of FORMATS, or None to detect it.
      split: VOC split name (ImageSets/Main/<split>.txt); not used by the other formats.
      label_map: `LabelMap` or label map file (see each reader for its default).
      **kwargs: reader options: the policy (on_bad_example, keep_empty, clip_boxes, purpose:
        see policy.py), check_images (VOC, COCO), image_dir (COCO).
    """
    format = format or detect_format(path_or_glob)
    if format == "voc":
        return voc.VocReader(path_or_glob, split, label_map, **kwargs)
    if split is not None:
        raise ValueError(f"split={split!r} is for VOC folders; a {format} split is its own file")
    if format == "coco":
        return coco.CocoReader(path_or_glob, label_map=label_map, **kwargs)
    if format == "tfrecord":
        # Reading images and annotations is prepare's work; only the policy applies here.
        unused = sorted(set(kwargs) - {"on_bad_example", "keep_empty", "clip_boxes", "purpose"})
        if unused:
            raise ValueError(f"TFRecord reading takes no options {unused}: prepare applied them")
        return tfrecord.TFRecordReader(path_or_glob, label_map, **kwargs)
    raise ValueError(f"format must be one of {FORMATS}, got {format!r}")


def read_dataset(path_or_glob, format: str | None = None, split: str | None = None,
                 label_map=None, **kwargs):
    """A `tf.data.Dataset` of example dicts (`example.KEYS`), in a deterministic order.

    Same arguments as `open_reader`. VOC and COCO go through `from_generator` (images decoded
    in Python by TensorFlow's decoder); TFRecords are parsed and decoded in the graph.
    """
    return open_reader(path_or_glob, format, split, label_map, **kwargs).as_dataset()


__all__ = [
    "FORMATS", "KEYS", "BadExampleError", "LabelMap", "Policy", "Report", "coco_xywh_to_normalized",
    "detect_format", "load_label_map", "normalized_to_coco_xywh", "normalized_to_voc_pixels",
    "open_reader", "read_dataset", "voc_pixels_to_normalized",
]
