"""COCO instances JSON (`images`, `annotations`, `categories`).

Boxes are `bbox: [x, y, w, h]` in continuous pixels; they become normalized yxyx through
`box_conventions.coco_xywh_to_normalized` (x / W, (x + w) / W). `iscrowd` is kept as `is_crowd`;
`difficult` is always False. Category ids map to contiguous ids through the label map's
`dataset_ids` (by default the JSON's own categories in id order, so COCO's 80 categories with
ids 1..90 become 1..80). Examples come in the order of the JSON's `images` list; `image_id` is
str(image id).

Structural problems of the JSON itself (an annotation whose image_id is not in `images`, an
image id listed twice) are bad examples naming the JSON file and the id: under
on_bad_example="skip" the annotation, or every image sharing the duplicated id, is skipped.
"""

from __future__ import annotations

import collections
import json
import os

from refinedet_tf.data.label_map import LabelMap, load_label_map
from refinedet_tf.data.policy import Policy
from refinedet_tf.data.reader import ExampleReader, RawBox
from refinedet_tf.data.report import BadExampleError


class CocoReader(ExampleReader):
    """Reads a COCO instances JSON into examples (see `reader.ExampleReader`).

    Args:
      annotation_file: the JSON file.
      image_dir: the folder `file_name`s are relative to; None tries, in order, the JSON's
        folder, `<json dir>/../<split>` (COCO's layout: annotations/instances_val2017.json next
        to val2017/), `<json dir>/images` and `<json dir>/../images`, and keeps the first that
        holds the first image.
      label_map: a `LabelMap`, a label map file, or None for the JSON's categories.
      on_bad_example, keep_empty, clip_boxes, purpose: the `policy.Policy`.
      check_images: probe every image header when building (existence, format, real size).
    Raises:
      BadExampleError naming the file, under on_bad_example="error".
    """

    format = "coco"

    def __init__(self, annotation_file: str, image_dir: str | None = None, label_map=None, *,
                 on_bad_example: str = "error", keep_empty: bool | None = None,
                 clip_boxes: bool = True, purpose: str = "train", check_images: bool = True):
        data = _load_json(annotation_file)
        super().__init__(_resolve_label_map(annotation_file, data, label_map),
                         Policy(on_bad_example, keep_empty, clip_boxes, purpose), check_images)
        self.annotation_file = annotation_file
        images = data["images"]
        self.image_dir = image_dir if image_dir is not None else _find_image_dir(annotation_file, images)
        by_image = collections.defaultdict(list)
        ids = collections.Counter(_image_id(annotation_file, image) for image in images)
        for ann in data["annotations"]:
            self._collect_annotation(ann, ids, by_image)
        for image in images:
            image_id = image["id"]
            where = f"{annotation_file} (image id {image_id})"
            if ids[image_id] > 1:
                self._collect(where, lambda: _raise(
                    annotation_file, f"image id {image_id} is listed {ids[image_id]} times in 'images'"))
                continue
            self._collect(where, lambda: self._parse(image, by_image[image_id]))

    def _collect_annotation(self, ann, ids, by_image):
        """Groups annotations by image; one pointing at an unknown image is a bad example."""
        try:
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise BadExampleError(self.annotation_file, f"annotation {ann!r:.80} has no image_id")
            if ann["image_id"] not in ids:
                raise BadExampleError(
                    self.annotation_file,
                    f"annotation {ann.get('id')} refers to image_id {ann['image_id']}, "
                    "which is not in 'images'")
        except BadExampleError as e:
            if self.policy.on_bad_example == "error":
                raise
            self.report.add(e.path, "skipped", e.reason)
            return
        by_image[ann["image_id"]].append(ann)

    def _parse(self, image: dict, annotations: list[dict]) -> dict:
        path = self.annotation_file
        image_id = image["id"]
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise BadExampleError(path, f"image id {image_id} has no file_name")
        image_path = os.path.join(self.image_dir, file_name)
        height, width = self._image_size(image_path, *_size(path, image),
                                         referenced_by=f"{path} (image id {image_id})",
                                         size_issue_path=image_path)
        raw = []
        for ann in annotations:
            where = f"annotation {ann.get('id')} (image id {image_id})"
            category = ann.get("category_id")
            class_id = self.label_map.dataset_id_to_id.get(category)
            if class_id is None:
                raise BadExampleError(
                    path, f"{where} has category_id {category!r}, which is not in the label map "
                          f"(ids {list(self.label_map.dataset_ids[1:6])}...)")
            bbox = ann.get("bbox")
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                raise BadExampleError(path, f"{where} bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            raw.append(RawBox((x, y, x + w, y + h), class_id, False, bool(ann.get("iscrowd", 0)), where))
        return self._metadata(str(image_id), image_path, path, raw, height, width, "coco")


def _raise(path, reason):
    raise BadExampleError(path, reason)


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise BadExampleError(path, "annotation file not found") from None
    except json.JSONDecodeError as e:
        raise BadExampleError(path, f"malformed JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadExampleError(path, f"cannot read annotation file: {e}") from None
    if not isinstance(data, dict):
        raise BadExampleError(path, "a COCO file must hold a JSON object")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise BadExampleError(path, f"a COCO instances file needs a list {key!r}; keys: {sorted(data)}")
    return data


def _image_id(path, image):
    if not isinstance(image, dict) or "id" not in image:
        raise BadExampleError(path, f"entry of 'images' has no id: {image!r:.80}")
    return image["id"]


def _size(path, image):
    try:
        return int(image.get("height") or 0), int(image.get("width") or 0)
    except (TypeError, ValueError):
        size = f"{image.get('width')}x{image.get('height')}"
        raise BadExampleError(path, f"image id {image['id']} has a non-numeric size {size}") from None


def _resolve_label_map(path, data, label_map) -> LabelMap:
    if isinstance(label_map, LabelMap):
        return label_map
    if label_map is not None:
        return load_label_map(label_map)
    categories = data.get("categories")
    if not categories:
        raise BadExampleError(path, "no 'categories' in the JSON and no label map given")
    try:
        categories = sorted(categories, key=lambda c: int(c["id"]))
        return LabelMap.from_names([c["name"] for c in categories], [int(c["id"]) for c in categories])
    except (KeyError, TypeError, ValueError) as e:
        raise BadExampleError(path, f"bad 'categories': {e}") from None


def _find_image_dir(annotation_file: str, images: list) -> str:
    json_dir = os.path.dirname(os.path.abspath(annotation_file))
    stem = os.path.splitext(os.path.basename(annotation_file))[0]
    split = stem.split("_", 1)[1] if stem.startswith("instances_") else stem
    candidates = [json_dir, os.path.join(json_dir, "..", split), os.path.join(json_dir, "images"),
                  os.path.join(json_dir, "..", "images")]
    first = next((im["file_name"] for im in images if isinstance(im, dict) and im.get("file_name")), None)
    for folder in candidates:
        if first and os.path.isfile(os.path.join(folder, first)):
            return os.path.normpath(folder)
    return os.path.dirname(annotation_file)
