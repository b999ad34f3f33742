"""The example contract every reader yields, its validation, and pixel <-> normalized boxes.

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

Pixel conventions (both directions are here because evaluation writes results back):
  VOC XML: 1-based inclusive pixel indices. normalized xmin = (xmin - 1) / W, xmax = xmax / W
    (same for y with H), so a box covering the whole image is [1, 1, H, W] -> [0, 0, 1, 1].
  COCO [x, y, w, h]: continuous pixel coordinates. xmin = x / W, xmax = (x + w) / W.

Bad input and annotation quirks: `policy.py` says what every command does with them (raise
`BadExampleError(path, reason)` — a ValueError naming the file — or skip and count in a
`Report`; quirks such as 1-pixel or zero-area boxes are dropped for training and kept for
evaluation, always listed).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math

import numpy as np

from refinedet_tf.data.policy import MIN_TRAIN_BOX_PIXELS, Policy, box_sides_pixels

KEYS = ("image", "image_id", "height", "width", "boxes", "classes", "difficult", "is_crowd")
METADATA_KEYS = ("image_id", "height", "width", "boxes", "classes", "difficult", "is_crowd")
__all__ = ["KEYS", "METADATA_KEYS", "BadExampleError", "Policy", "Report", "RawBox", "ExampleReader"]


class BadExampleError(ValueError):
    """An example that cannot be used as it is; `path` names the file, `reason` the problem."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


# Report issue kinds, and what each means.
ISSUE_KINDS = {
    "skipped": "example skipped (bad input, on_bad_example='skip')",
    "empty": "image with no objects skipped (keep_empty=False)",
    "small_box": f"box under {MIN_TRAIN_BOX_PIXELS:g} px on a side (or of zero area) dropped for training",
    "tiny_box": f"box under {MIN_TRAIN_BOX_PIXELS:g} px on a side, kept: the evaluation protocols count it",
    "degenerate_box": "zero-area box kept: the evaluation protocols count it (no detection can match it)",
    "clipped_box": "box outside the image clipped to it",
    "grayscale": "grayscale image decoded to RGB",
    "cmyk": "CMYK/YCCK JPEG decoded to RGB",
    "alpha": "alpha channel dropped",
    "16bit": "16-bit image scaled to 8 bits (value >> 8)",
    "other_format": "image format other than JPEG/PNG",
    "reencoded_png": "image re-encoded losslessly as 8-bit RGB PNG",
    "format_mismatch": "file extension disagrees with its content (decoded by content)",
    "exif_orientation": "EXIF orientation tag present and not applied (boxes follow stored pixels)",
    "size_from_image": "annotation has no size; the image's size was used",
}


@dataclasses.dataclass(frozen=True)
class Issue:
    path: str
    kind: str
    detail: str = ""


class Report:
    """Counters of what a reader (or the prepare command) produced, skipped, fixed or converted.

    `images`, `boxes` and `per_class` (class name -> boxes) count the examples produced;
    `issues` lists every skipped or changed file with its reason. Adding the same issue twice
    (a reader iterated for a second epoch) counts it once.
    """

    def __init__(self):
        self.images = 0
        self.boxes = 0
        self.per_class: collections.Counter = collections.Counter()
        self.issues: list[Issue] = []
        self._seen: set[Issue] = set()

    def add(self, path: str, kind: str, detail: str = "") -> bool:
        """Records an issue; returns False when it was already recorded."""
        if kind not in ISSUE_KINDS:
            raise ValueError(f"unknown report issue kind {kind!r}; known: {sorted(ISSUE_KINDS)}")
        issue = Issue(str(path), kind, detail)
        if issue in self._seen:
            return False
        self._seen.add(issue)
        self.issues.append(issue)
        return True

    def mark(self) -> int:
        """A position to `rollback` to: issues of an example that is then skipped are dropped."""
        return len(self.issues)

    def rollback(self, mark: int) -> None:
        for issue in self.issues[mark:]:
            self._seen.discard(issue)
        del self.issues[mark:]

    def count_example(self, classes, names, sign: int = 1) -> None:
        """Counts one produced example (`sign=-1` un-counts one found bad later)."""
        self.images += sign
        self.boxes += sign * len(classes)
        for c in classes:
            self.per_class[names[int(c)]] += sign

    def count(self, kind: str) -> int:
        return sum(1 for issue in self.issues if issue.kind == kind)

    def counts(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(i.kind for i in self.issues).items()))

    @property
    def skipped(self) -> list[Issue]:
        """Examples not produced: bad ones (policy 'skip') and empty ones."""
        return [i for i in self.issues if i.kind in ("skipped", "empty")]

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "boxes": self.boxes,
            "per_class": dict(sorted(self.per_class.items())),
            "counts": self.counts(),
            "issues": [dataclasses.asdict(i) for i in self.issues],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def format(self, max_issues: int = 50) -> str:
        """A human-readable summary: totals, per class, issue counts, then each issue."""
        lines = [f"images: {self.images}", f"boxes: {self.boxes}"]
        width = max((len(n) for n in self.per_class), default=0)
        lines += [f"  {name:<{width}}  {n}" for name, n in sorted(self.per_class.items())]
        for kind, n in self.counts().items():
            lines.append(f"{kind}: {n}  ({ISSUE_KINDS[kind]})")
        shown = [i for i in self.issues if i.kind in ("skipped", "empty", "small_box")]
        shown += [i for i in self.issues if i not in shown]
        for issue in shown[:max_issues]:
            lines.append(f"  [{issue.kind}] {issue.path}" + (f": {issue.detail}" if issue.detail else ""))
        if len(shown) > max_issues:
            lines.append(f"  ... {len(shown) - max_issues} more (see the JSON report)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Pixel <-> normalized converters (numpy; evaluation uses the inverses).


def voc_pixels_to_normalized(boxes_voc_yxyx, height, width):
    """VOC 1-based inclusive pixel boxes -> normalized boxes.

    Args:
      boxes_voc_yxyx: [..., 4] [ymin, xmin, ymax, xmax] as written in VOC XML.
      height, width: the image size in pixels.
    Returns:
      float32 [..., 4] normalized yxyx: ((ymin - 1) / H, (xmin - 1) / W, ymax / H, xmax / W).
    """
    b = np.asarray(boxes_voc_yxyx, np.float64)
    scale = np.array([height, width, height, width], np.float64)
    shift = np.array([1.0, 1.0, 0.0, 0.0])
    return ((b - shift) / scale).astype(np.float32)


def normalized_to_voc_pixels(boxes_yxyx, height, width):
    """Inverse of `voc_pixels_to_normalized`: float64 [..., 4] (y*H + 1, x*W + 1, y*H, x*W)."""
    b = np.asarray(boxes_yxyx, np.float64)
    scale = np.array([height, width, height, width], np.float64)
    return b * scale + np.array([1.0, 1.0, 0.0, 0.0])


def coco_xywh_to_normalized(boxes_xywh, height, width):
    """COCO [x, y, w, h] continuous pixel boxes -> float32 [..., 4] normalized yxyx."""
    b = np.asarray(boxes_xywh, np.float64)
    x, y, w, h = np.moveaxis(b, -1, 0)
    return np.stack([y / height, x / width, (y + h) / height, (x + w) / width], -1).astype(np.float32)


def normalized_to_coco_xywh(boxes_yxyx, height, width):
    """Inverse of `coco_xywh_to_normalized`: float64 [..., 4] [x, y, w, h] pixels."""
    b = np.asarray(boxes_yxyx, np.float64)
    ymin, xmin, ymax, xmax = np.moveaxis(b, -1, 0)
    return np.stack([xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height], -1)


# ---------------------------------------------------------------------------------------------
# Validation.


@dataclasses.dataclass(frozen=True)
class RawBox:
    """One annotated box as the file wrote it, before conversion.

    `corners` are (xmin, ymin, xmax, ymax) in the file's own pixel convention (VOC: 1-based
    inclusive; COCO: x, y, x + w, y + h); `where` says which object it is, for messages.
    """

    corners: tuple[float, float, float, float]
    class_id: int
    difficult: bool = False
    is_crowd: bool = False
    where: str = ""


def finalize_boxes(path, raw_boxes, height, width, convention, policy, report):
    """Validates raw pixel boxes, converts them to normalized yxyx and applies the policy.

    Per box, in order (see policy.py for the table):
      * non-finite or negative coordinates, xmin > xmax or ymin > ymax: a bad example (raises);
      * a box reaching outside the image is clipped (`clipped_box`), or with `clip_boxes=False`
        is a bad example;
      * its size in pixels: VOC corners are 1-based inclusive, so xmin == xmax is a box 1 pixel
        wide (voc_eval counts it); COCO's w = 0 is zero area. A shorter side under
        `policy.min_box_pixels` (training: 2) drops the box (`small_box`); otherwise a zero-area
        box is kept as `degenerate_box` and one under 2 pixels as `tiny_box`, both listed.

    Args:
      path: the annotation file, for messages and the report.
      raw_boxes: list of `RawBox`.
      height, width: the image size in pixels.
      convention: "voc" (1-based inclusive) or "coco" (continuous).
      policy: a `Policy`; report: a `Report` receiving clipped, dropped and suspicious boxes.
    Returns:
      dict with boxes float32 [N, 4] (0 <= min <= max <= 1), classes int32 [N], difficult bool
      [N], is_crowd bool [N].
    Raises:
      BadExampleError naming `path`, the object and the problem.
    """
    if convention not in ("voc", "coco"):
        raise ValueError(f"unknown box convention {convention!r}")
    kept = []
    for box in raw_boxes:
        xmin, ymin, xmax, ymax = box.corners
        coords = f"(xmin={_fmt(xmin)}, ymin={_fmt(ymin)}, xmax={_fmt(xmax)}, ymax={_fmt(ymax)})"
        if not all(math.isfinite(v) for v in box.corners):
            raise BadExampleError(path, f"{box.where} has a non-finite coordinate {coords}")
        if min(box.corners) < 0:
            raise BadExampleError(path, f"{box.where} has a negative coordinate {coords}")
        if xmin > xmax or ymin > ymax:
            raise BadExampleError(path, f"{box.where} has xmin > xmax or ymin > ymax {coords}")
        if convention == "voc":
            yxyx = voc_pixels_to_normalized([ymin, xmin, ymax, xmax], height, width)
        else:
            yxyx = coco_xywh_to_normalized([xmin, ymin, xmax - xmin, ymax - ymin], height, width)
        clipped = np.clip(yxyx, 0.0, 1.0)
        where = f"{box.where} {coords}"
        if np.any(clipped != yxyx):
            where = f"{where} reaches outside the {width}x{height} image"
            if not policy.clip_boxes:
                raise BadExampleError(path, f"{where} (clip_boxes=False)")
            report.add(path, "clipped_box", where)
        side = float(box_sides_pixels(clipped, height, width)[0])
        if side < policy.min_box_pixels or (side <= 0 and not policy.keeps_degenerate_boxes):
            report.add(path, "small_box", f"{where} is {side:g} px on its shorter side")
            continue
        if side <= 0:
            report.add(path, "degenerate_box", f"{where} has zero area")
        elif side < MIN_TRAIN_BOX_PIXELS:
            report.add(path, "tiny_box", f"{where} is {side:g} px on its shorter side")
        kept.append((clipped, box))
    return {
        "boxes": np.array([k[0] for k in kept], np.float32).reshape(-1, 4),
        "classes": np.array([k[1].class_id for k in kept], np.int32),
        "difficult": np.array([k[1].difficult for k in kept], bool),
        "is_crowd": np.array([k[1].is_crowd for k in kept], bool),
    }


def _fmt(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


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


# ---------------------------------------------------------------------------------------------
# The producer side of the contract: what the VOC and COCO readers share.


class ExampleReader:
    """Base of the Python readers (VOC, COCO): annotations eagerly, pixels lazily.

    A reader is built by parsing every annotation and probing every image *header* (existence,
    format, real size against the annotation's), applying the `Policy`; what survives is
    `metadata`, a list of dicts with the contract's keys but `image`, plus `image_path` and
    `annotation_path`. Iterating decodes images; a file that fails only then (a truncated
    JPEG) is skipped and counted under on_bad_example="skip", so `metadata` can still list
    it: the prepare command's TFRecords are the fully checked set.

    Attributes: label_map, policy, report, metadata.
    """

    format = "?"

    def __init__(self, label_map, policy: Policy, check_images: bool = True):
        self.label_map = label_map
        self.check_images = check_images
        self.policy = policy
        self.report = Report()
        self.metadata: list[dict] = []

    def __len__(self):
        return len(self.metadata)

    @property
    def image_ids(self) -> list[str]:
        return [m["image_id"] for m in self.metadata]

    def _image_size(self, image_path: str, height, width, referenced_by: str, size_issue_path: str):
        """The image's (height, width): the annotation's (0 when it has none), checked against
        the file's header when `self.check_images`, or read from the header when missing (and
        reported as size_from_image under `size_issue_path`). Image issues go to the report."""
        from refinedet_tf.data import image_io

        if self.check_images or not (height and width):
            info = image_io.probe_file(image_path, referenced_by=referenced_by)
            if height and width:
                image_io.check_size(image_path, info, (height, width), referenced_by)
            else:
                self.report.add(size_issue_path, "size_from_image", f"{info.width}x{info.height}")
                height, width = info.height, info.width
            for kind, detail in image_io.image_issues(image_path, info):
                self.report.add(image_path, kind, detail)
        return height, width

    def _metadata(self, image_id: str, image_path: str, annotation_path: str, raw_boxes,
                  height, width, convention: str) -> dict:
        """One metadata entry: the boxes finalized under the policy (see finalize_boxes)."""
        meta = {"image_id": image_id, "height": np.int32(height), "width": np.int32(width)}
        meta.update(finalize_boxes(annotation_path, raw_boxes, height, width, convention,
                                   self.policy, self.report))
        meta.update(image_path=image_path, annotation_path=annotation_path)
        return meta

    def _collect(self, path: str, parse) -> None:
        """Runs `parse()` (-> metadata dict) for one example and applies the policy to it."""
        mark = self.report.mark()
        try:
            meta = parse()
        except BadExampleError as e:
            if self.policy.on_bad_example == "error":
                raise
            self.report.rollback(mark)
            self.report.add(e.path, "skipped", e.reason)
            return
        if len(meta["classes"]) == 0 and not self.policy.keep_empty:
            self.report.add(path, "empty", "no objects (keep_empty=True keeps such images)")
            return
        self.metadata.append(meta)
        self.report.count_example(meta["classes"], self.label_map.names)

    def load(self, meta: dict):
        """Decodes one metadata entry: returns (example dict, LoadedImage); raises BadExampleError."""
        from refinedet_tf.data import image_io

        loaded = image_io.load_image(
            meta["image_path"], (int(meta["height"]), int(meta["width"])), meta["annotation_path"])
        for kind, detail in loaded.issues:
            self.report.add(meta["image_path"], kind, detail)
        example = {"image": loaded.image}
        example.update({k: meta[k] for k in METADATA_KEYS})
        return example, loaded

    def __iter__(self):
        """Yields examples (numpy dicts with exactly `KEYS`) in metadata order."""
        for meta in self.metadata:
            try:
                example, _ = self.load(meta)
            except BadExampleError as e:
                if self.policy.on_bad_example == "error":
                    raise
                if self.report.add(e.path, "skipped", e.reason):
                    self.report.count_example(meta["classes"], self.label_map.names, sign=-1)
                continue
            yield example

    def as_dataset(self):
        """A `tf.data.Dataset` of the examples (through `from_generator`, in metadata order)."""
        import tensorflow as tf

        # from_generator wants a callable that returns a fresh iterator per epoch.
        return tf.data.Dataset.from_generator(lambda: iter(self), output_signature=output_signature())


def output_signature():
    """The `tf.TensorSpec`s of an example in `tf.data` (dict with `KEYS`)."""
    import tensorflow as tf

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
