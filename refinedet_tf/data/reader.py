"""The base of the Python readers (VOC, COCO): annotations parsed eagerly and checked against
the policy, pixels decoded lazily.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from refinedet_tf.data import image_io
from refinedet_tf.data.box_conventions import coco_xywh_to_normalized, voc_pixels_to_normalized
from refinedet_tf.data.example import METADATA_KEYS, output_signature
from refinedet_tf.data.policy import MIN_TRAIN_BOX_PIXELS, Policy, box_sides_pixels
from refinedet_tf.data.report import BadExampleError, Report


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
        # from_generator wants a callable that returns a fresh iterator per epoch.
        return tf.data.Dataset.from_generator(lambda: iter(self), output_signature=output_signature())
