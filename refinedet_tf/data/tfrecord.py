"""TFRecords of `tf.train.Example` with the TF Object Detection API's feature keys.

Records written by that API (create_pascal_tf_record.py, create_coco_tf_record.py) read as they
are, and ours read in it. Keys:

  image/encoded            bytes  the image file (JPEG or PNG)                     required
  image/height, /width     int64  stored size in pixels                            required
  image/format             bytes  b"jpeg" | b"png" (informational: decoding sniffs content)
  image/filename           bytes  the original file name
  image/source_id          bytes  the image id (else the filename stem is used)
  image/key/sha256         bytes  hex digest of image/encoded (written, not read)
  image/object/bbox/{ymin,xmin,ymax,xmax}  float  normalized, one entry per object
  image/object/class/label int64  the dataset's class id (COCO category id; 1..C-1 for names)
  image/object/class/text  bytes  class name (used when no label is stored)
  image/object/difficult   int64  0/1 (optional)
  image/object/is_crowd    int64  0/1 (optional)

Labels: with a `LabelMap`, `class/label` is read as a dataset id and mapped to the contiguous
id (`class/text` through the names when labels are absent). Without one, the reader uses the
`<name>.labelmap.pbtxt` that `prepare` wrote next to the shards when there is exactly one
matching; with none, labels are taken as contiguous ids already, which does NOT hold for COCO
records made elsewhere (labels are category ids 1..90): pass the label map there.

Reading is pure TensorFlow (`parse_example`), so it runs inside `tf.data` in parallel; a
record that breaks the contract fails with an error naming the feature key.
"""

from __future__ import annotations

import glob
import hashlib
import os

import numpy as np
import tensorflow as tf

from refinedet_tf.data.example import METADATA_KEYS
from refinedet_tf.data.label_map import LabelMap, load_label_map
from refinedet_tf.data.policy import MIN_TRAIN_BOX_PIXELS, Policy, box_sides_pixels
from refinedet_tf.data.report import BadExampleError, Report

REQUIRED_KEYS = ("image/encoded", "image/height", "image/width")
_BOX_KEYS = tuple(f"image/object/bbox/{k}" for k in ("ymin", "xmin", "ymax", "xmax"))


def is_tfrecord_path(path: str) -> bool:
    return ".tfrecord" in os.path.basename(path) or ".record" in os.path.basename(path)


# ---------------------------------------------------------------------------------------------
# Writing.


def make_tf_example(meta: dict, encoded: bytes, image_format: str, filename: str,
                    label_map: LabelMap) -> tf.train.Example:
    """A `tf.train.Example` for one example's metadata and its encoded image.

    Args:
      meta: a metadata dict (the example contract without `image`).
      encoded: the image file bytes; image_format: "jpeg" or "png".
      filename: the original file name (stored as image/filename).
      label_map: turns contiguous class ids into the stored dataset ids and names.
    """
    boxes = np.asarray(meta["boxes"], np.float32).reshape(-1, 4)
    classes = np.asarray(meta["classes"], np.int64)
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([image_format.encode()]),
        "image/height": _int64([int(meta["height"])]),
        "image/width": _int64([int(meta["width"])]),
        "image/filename": _bytes([filename.encode()]),
        "image/source_id": _bytes([str(meta["image_id"]).encode()]),
        "image/key/sha256": _bytes([hashlib.sha256(encoded).hexdigest().encode()]),
        "image/object/class/label": _int64([label_map.dataset_ids[c] for c in classes]),
        "image/object/class/text": _bytes([label_map.names[c].encode() for c in classes]),
        "image/object/difficult": _int64(np.asarray(meta["difficult"], np.int64).tolist()),
        "image/object/is_crowd": _int64(np.asarray(meta["is_crowd"], np.int64).tolist()),
    }
    for k, key in enumerate(_BOX_KEYS):
        feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=boxes[:, k].tolist()))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def serialize(example: tf.train.Example) -> bytes:
    # Deterministic: protobuf maps (the feature dict) otherwise serialize in hash order.
    return example.SerializeToString(deterministic=True)


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _int64(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


# ---------------------------------------------------------------------------------------------
# Reading.


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/difficult": tf.io.VarLenFeature(tf.int64),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    **{key: tf.io.VarLenFeature(tf.float32) for key in _BOX_KEYS},
}


class _ClassLookup:
    """dataset id / class name -> contiguous id tables for a label map (None: identity)."""

    def __init__(self, label_map: LabelMap | None):
        self.label_map = label_map
        if label_map is None:
            return
        ids = tf.constant(label_map.dataset_ids[1:], tf.int64)
        contiguous = tf.range(1, label_map.num_classes, dtype=tf.int32)
        self.by_id = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(ids, contiguous), -1)
        names = list(label_map.name_to_id)
        self.by_name = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(names), tf.constant([label_map.name_to_id[n] for n in names], tf.int32)), -1)

    def __call__(self, labels, texts, n):
        if self.label_map is None:
            assert_have = tf.debugging.assert_equal(
                tf.size(labels), n, message="image/object/class/label must have one entry per box "
                "(without a label map, class/text cannot be used)")
            with tf.control_dependencies([assert_have]):
                return tf.cast(labels, tf.int32)
        has_labels = tf.equal(tf.size(labels), n)
        assert_have = tf.debugging.Assert(
            tf.logical_or(has_labels, tf.equal(tf.size(texts), n)),
            ["image/object/class/label or image/object/class/text must have one entry per box; "
             "boxes:", n, "labels:", tf.size(labels), "texts:", tf.size(texts)])
        with tf.control_dependencies([assert_have]):
            classes = tf.cond(has_labels, lambda: self.by_id.lookup(labels),
                              lambda: self.by_name.lookup(texts))
        known = tf.debugging.Assert(
            tf.reduce_all(classes >= 1),
            ["image/object/class/label (or /text) holds a class that is not in the label map; "
             "labels:", labels, "texts:", texts])
        with tf.control_dependencies([known]):
            return tf.identity(classes)


def parse_example(serialized, label_map: LabelMap | None = None, decode: bool = True,
                  lookup: _ClassLookup | None = None):
    """Parses one serialized `tf.train.Example` into the example contract (pure TF).

    Args:
      serialized: scalar string tensor.
      label_map: see the module docstring (None: labels are contiguous ids already).
      decode: False leaves out `image` (metadata only, no decoding).
      lookup: prebuilt tables (readers build them once); made from `label_map` when None.
    Returns:
      dict of tensors with `example.KEYS` (without `image` when decode is False).
    """
    lookup = lookup or _ClassLookup(label_map)
    f = tf.io.parse_single_example(serialized, _FEATURES)
    dense = {k: tf.sparse.to_dense(v) for k, v in f.items() if isinstance(v, tf.SparseTensor)}
    boxes = tf.stack([dense[k] for k in _BOX_KEYS], axis=-1)
    n = tf.shape(dense["image/object/bbox/ymin"])[0]
    checks = [tf.debugging.assert_equal(
        tf.size(dense[k]), n, message=f"{k} must have as many entries as image/object/bbox/ymin")
        for k in _BOX_KEYS[1:]]
    with tf.control_dependencies(checks):
        boxes = tf.identity(boxes)
    classes = lookup(dense["image/object/class/label"], dense["image/object/class/text"], n)
    filename_stem = tf.strings.regex_replace(
        tf.strings.regex_replace(f["image/filename"], r"^.*[/\\]", ""), r"\.[^.]*$", "")
    image_id = tf.where(tf.strings.length(f["image/source_id"]) > 0, f["image/source_id"], filename_stem)
    out = {
        "image_id": image_id,
        "height": tf.cast(f["image/height"], tf.int32),
        "width": tf.cast(f["image/width"], tf.int32),
        "boxes": boxes,
        "classes": classes,
        "difficult": _flags(dense["image/object/difficult"], n, "image/object/difficult"),
        "is_crowd": _flags(dense["image/object/is_crowd"], n, "image/object/is_crowd"),
    }
    if decode:
        image = tf.io.decode_image(f["image/encoded"], channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        same = tf.debugging.assert_equal(
            tf.shape(image)[:2], tf.stack([out["height"], out["width"]]),
            message="image/height and image/width disagree with the decoded image/encoded size")
        with tf.control_dependencies([same]):
            out = {"image": tf.identity(image), **out}
    return out


def _flags(values, n, key):
    """Optional per-box 0/1 flags: absent means all False; else one per box."""
    ok = tf.debugging.Assert(
        tf.logical_or(tf.equal(tf.size(values), 0), tf.equal(tf.size(values), n)),
        [f"{key} must be empty or have one entry per box; entries:", tf.size(values), "boxes:", n])
    with tf.control_dependencies([ok]):
        return tf.cond(tf.equal(tf.size(values), n), lambda: values > 0,
                       lambda: tf.zeros([n], tf.bool))


class TFRecordReader:
    """Reads TFRecord files (a path, a glob or a list) into examples, in sorted file order.

    Args:
      path_or_glob: a file, a glob ("out/train-*.tfrecord"), a folder of *.tfrecord* files,
        or a list of those.
      label_map: a `LabelMap`, a label map file, or None: the label map `prepare` wrote next
        to the shards if there is one, else labels are taken as contiguous ids.
    Attributes:
      files, label_map (None: identity), label_map_path (the file it came from, or None).
    Raises:
      BadExampleError when no file matches, or a file's first record lacks a required key.
    """

    format = "tfrecord"

    def __init__(self, path_or_glob, label_map=None, *, on_bad_example: str = "error",
                 keep_empty: bool | None = None, clip_boxes: bool = True, purpose: str = "train"):
        self.files = list_files(path_or_glob)
        self.label_map_path = label_map if isinstance(label_map, str) else None
        if label_map is None:
            self.label_map_path = find_prepared_label_map(self.files)
            label_map = self.label_map_path
        if isinstance(label_map, str):
            label_map = load_label_map(label_map)
        self.label_map = label_map
        # prepare already applied the checks that need the source files (bad examples, clipping):
        # what is left to a reader is the purpose's choice of boxes and empty images.
        self.policy = Policy(on_bad_example, keep_empty, clip_boxes, purpose)
        self._lookup = _ClassLookup(label_map)
        self._metadata = None
        self._report = None
        for path in self.files:
            check_first_record(path)

    def as_dataset(self, decode: bool = True) -> tf.data.Dataset:
        """A deterministic `tf.data.Dataset` of example dicts (files in order, records in order),
        with the policy applied (training drops small boxes, then empty images)."""
        lookup, policy = self._lookup, self.policy
        dataset = tf.data.TFRecordDataset(self.files).map(
            lambda s: apply_box_policy(parse_example(s, decode=decode, lookup=lookup), policy),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not policy.keep_empty:
            dataset = dataset.filter(lambda e: tf.shape(e["classes"])[0] > 0)
        return dataset

    def __iter__(self):
        """Yields numpy examples (image_id as str)."""
        for example in self.as_dataset().as_numpy_iterator():
            example["image_id"] = example["image_id"].decode()
            yield example

    @property
    def metadata(self) -> list[dict]:
        """Every kept record's example without `image` (parsed once, images not decoded)."""
        if self._metadata is None:
            self._read_metadata()
        return self._metadata

    def __len__(self):
        return len(self.metadata)

    @property
    def report(self) -> Report:
        """Images, boxes and per-class counts of the kept records, and what the policy dropped
        (small boxes, empty images) or flagged (tiny and degenerate boxes), per record."""
        if self._report is None:
            self._read_metadata()
        return self._report

    def _read_metadata(self):
        names = self.label_map.names if self.label_map else _IdNames()
        report, metadata = Report(), []
        raw = tf.data.TFRecordDataset(self.files).map(
            lambda s: parse_example(s, decode=False, lookup=self._lookup))
        for k, meta in enumerate(raw.as_numpy_iterator()):
            meta["image_id"] = meta["image_id"].decode()
            where = f"{self.files[0] if len(self.files) == 1 else 'TFRecords'} record {k} (image {meta['image_id']})"
            sides = box_sides_pixels(meta["boxes"], meta["height"], meta["width"])
            keep = sides >= self.policy.min_box_pixels
            if not self.policy.keeps_degenerate_boxes:
                keep &= sides > 0
            for j in np.flatnonzero(~keep):
                report.add(where, "small_box", f"box {j} is {sides[j]:g} px on its shorter side")
            for j in np.flatnonzero(keep & (sides <= 0)):
                report.add(where, "degenerate_box", f"box {j} has zero area")
            for j in np.flatnonzero(keep & (sides > 0) & (sides < MIN_TRAIN_BOX_PIXELS)):
                report.add(where, "tiny_box", f"box {j} is {sides[j]:g} px on its shorter side")
            meta.update({key: meta[key][keep] for key in ("boxes", "classes", "difficult", "is_crowd")})
            if not len(meta["classes"]) and not self.policy.keep_empty:
                report.add(where, "empty", "no objects (keep_empty=True keeps such images)")
                continue
            metadata.append({key: meta[key] for key in METADATA_KEYS})
            report.count_example(meta["classes"], names)
        self._metadata, self._report = metadata, report


def apply_box_policy(example, policy: Policy):
    """In-graph: drops the boxes the policy drops (training: shorter side under 2 pixels)."""
    if policy.keeps_degenerate_boxes and policy.min_box_pixels <= 0:
        return example
    boxes = example["boxes"]
    height = tf.cast(example["height"], tf.float32)
    width = tf.cast(example["width"], tf.float32)
    sides = tf.minimum((boxes[:, 2] - boxes[:, 0]) * height, (boxes[:, 3] - boxes[:, 1]) * width)
    sides = tf.round(sides * 1e6) / 1e6
    keep = sides >= policy.min_box_pixels
    out = dict(example)
    for key in ("boxes", "classes", "difficult", "is_crowd"):
        out[key] = tf.boolean_mask(example[key], keep)
    return out


class _IdNames:
    """Stands for class names when there is no label map: "class 3"."""

    def __getitem__(self, class_id):
        return f"class {class_id}"


def list_files(path_or_glob) -> list[str]:
    """Sorted TFRecord files named by a path, glob, folder, or list of them."""
    if isinstance(path_or_glob, (list, tuple)):
        return [f for p in path_or_glob for f in list_files(p)]
    path = str(path_or_glob)
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if is_tfrecord_path(f))
    elif glob.has_magic(path):
        files = sorted(glob.glob(path))
    else:
        files = [path] if os.path.isfile(path) else []
    if not files:
        raise BadExampleError(path, "no TFRecord file found")
    return files


def find_prepared_label_map(files: list[str]) -> str | None:
    """The `<name>.labelmap.pbtxt` that `prepare` wrote next to `files`, or None.

    The files must share one folder and all start with `<name>`; when several names fit
    ("train" and "train-small"), the longest, most specific one wins.
    """
    folders = {os.path.dirname(f) for f in files}
    if len(folders) != 1:
        return None
    suffix = ".labelmap.pbtxt"
    candidates = [c for c in glob.glob(os.path.join(glob.escape(folders.pop() or "."), "*" + suffix))
                  if all(os.path.basename(f).startswith(os.path.basename(c)[:-len(suffix)]) for f in files)]
    return max(candidates, key=len) if candidates else None


def check_first_record(path: str) -> None:
    """Raises BadExampleError naming the file and key when its first record lacks a required key."""
    try:
        first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError as e:
        raise BadExampleError(path, f"not a readable TFRecord file: {e.message}") from None
    if first is None:
        return  # an empty shard is valid (more shards than examples)
    try:
        example = tf.train.Example.FromString(first.numpy())
    except Exception as e:  # protobuf's DecodeError has no stable import path
        raise BadExampleError(path, f"first record is not a tf.train.Example: {e}") from None
    keys = example.features.feature
    for key in REQUIRED_KEYS:
        if key not in keys:
            raise BadExampleError(
                path, f"record 0 lacks the required feature {key!r} (TF Object Detection API keys); "
                      f"it has {sorted(keys)}")
