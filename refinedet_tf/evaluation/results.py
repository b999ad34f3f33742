"""COCO results JSON: write, read with validation, and convert back to per-image arrays.

The file is the format of the COCO detection challenge and of pycocotools' `COCO.loadRes`:
  [{"image_id": ..., "category_id": int, "bbox": [x, y, w, h], "score": float}, ...]
`bbox` is in original-image pixels of the COCO convention: continuous coordinates, x = xmin,
y = ymin, w = xmax - xmin, h = ymax - ymin (no +1). `image_id` is the data set's own id: the
integer id for COCO, the file stem string for VOC. `category_id` is the data set's own category
id (COCO: 1..90 with gaps), mapped from the library's contiguous class ids 1..C-1.

Reading never drops an entry silently: any bad entry raises a ValueError naming its index and
image id.
"""

import json
import math
import numbers
from collections.abc import Mapping

import numpy as np

from refinedet_tf.evaluation.voc import as_boxes, as_image_id, as_scores

# Written precision: 1e-3 px is far below any IoU that matters; 6 decimals keep score ties rare
# (ties decide the ranking order) while keeping a 5,000-image file a manageable size.
_BBOX_DECIMALS = 3
_SCORE_DECIMALS = 6

_REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")


def resolve_category_ids(category_ids, num_classes):
    """Contiguous class id -> data set category id, as a dict over 1..num_classes-1.

    Args:
      category_ids: None (identity: class id i is category i); a sequence indexed by class
        id, of length num_classes like `class_names` (entry 0, background, is ignored); or a
        mapping {class id: category id} covering 1..num_classes-1.
      num_classes: C, background included.
    """
    classes = range(1, num_classes)
    if category_ids is None:
        return {c: c for c in classes}
    if isinstance(category_ids, Mapping):
        missing = [c for c in classes if c not in category_ids]
        if missing:
            raise ValueError(f"category_ids has no entry for class id(s) {missing[:10]}")
        mapping = {c: category_ids[c] for c in classes}
    else:
        category_ids = list(category_ids)
        if len(category_ids) != num_classes:
            raise ValueError(
                f"category_ids must be indexed by class id like class_names: expected "
                f"{num_classes} entries (entry 0 = background, ignored), got {len(category_ids)}"
            )
        mapping = {c: category_ids[c] for c in classes}
    for c, cat in mapping.items():
        if not _is_int(cat):
            raise ValueError(f"category id of class {c} must be an int, got {cat!r}")
    mapping = {c: int(cat) for c, cat in mapping.items()}
    if len(set(mapping.values())) != len(mapping):
        raise ValueError(f"category_ids must be distinct, got {sorted(mapping.values())}")
    return mapping


def yxyx_to_coco_xywh(boxes_yxyx):
    """[N, 4] pixel [ymin, xmin, ymax, xmax] -> [N, 4] COCO [x, y, w, h] (no +1)."""
    b = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    return np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], axis=1)


def coco_xywh_to_yxyx(boxes_xywh):
    """Inverse of `yxyx_to_coco_xywh`: [N, 4] [x, y, w, h] -> [N, 4] [ymin, xmin, ymax, xmax]."""
    b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    return np.stack([b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], axis=1)


def detections_to_coco_results(detections_by_image, category_ids=None, decimals=None):
    """Per-image detections -> list of COCO result dicts (what the JSON file holds).

    Args:
      detections_by_image: {image_id: (boxes_yxyx [D, 4] float pixels, scores [D] float,
        classes [D] int contiguous ids 1..C-1)}; image_id a str or int.
      category_ids: None (identity, any class id >= 1), a sequence indexed by class id
        (length C, entry 0 ignored) or a mapping {class id: category id}; see
        `resolve_category_ids`.
      decimals: None for full precision, else (bbox decimals, score decimals).
    Returns:
      list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"} in input order.
    """
    lookup = _category_lookup(category_ids)
    entries = []
    for image_id, detection in detections_by_image.items():
        image_id = as_image_id(image_id)
        boxes, scores, classes = _unpack_detection(detection, image_id)
        xywh = yxyx_to_coco_xywh(boxes)
        for box, score, cls in zip(xywh.tolist(), scores.tolist(), classes.tolist()):
            if decimals is not None:
                box = [round(v, decimals[0]) for v in box]
                score = round(score, decimals[1])
            entries.append({"image_id": image_id, "category_id": lookup(cls, image_id), "bbox": box, "score": score})
    return entries


def write_coco_results(path, detections_by_image, category_ids=None):
    """Writes detections as a COCO results JSON file and returns the number of entries.

    Args: as `detections_to_coco_results`; path: output file. Boxes are written with
    3 decimals (1e-3 px) and scores with 6.
    """
    entries = detections_to_coco_results(
        detections_by_image, category_ids, decimals=(_BBOX_DECIMALS, _SCORE_DECIMALS)
    )
    with open(path, "w") as f:
        json.dump(entries, f)
    return len(entries)


def read_coco_results(path, known_image_ids=None, known_category_ids=None, allow_empty=False):
    """Reads and validates a COCO results JSON file.

    Args:
      path: the JSON file.
      known_image_ids: image ids of the data set (str stems for VOC, ints for COCO); an entry
        with any other id is an error. None skips this check.
      known_category_ids: the data set's category ids; None skips this check.
      allow_empty: accept an empty list (otherwise "no detections in FILE").
    Returns:
      list of {"image_id", "category_id": int, "bbox": [x, y, w, h] floats, "score": float},
      new dicts in file order (keys other than the four are not kept).
    Raises:
      ValueError naming the file and, for a bad entry, its index and image id: unreadable
      JSON, not a list, empty, missing key, bbox not 4 finite numbers, negative width or
      height, non-finite score, unknown image id or category id.
    """
    with open(path) as f:
        text = f.read()
    if not text.strip():
        if allow_empty:
            return []
        raise ValueError(f"no detections in {path} (the file is empty)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of detections, got a {type(data).__name__}")
    if not data and not allow_empty:
        raise ValueError(f"no detections in {path} (an empty list)")
    known_images = None if known_image_ids is None else {as_image_id(i) for i in known_image_ids}
    known_categories = None if known_category_ids is None else {int(c) for c in known_category_ids}
    return [_validate_entry(path, index, entry, known_images, known_categories) for index, entry in enumerate(data)]


def coco_results_to_detections(entries, category_ids=None):
    """Inverse of `detections_to_coco_results`: result dicts -> per-image arrays.

    Args:
      entries: list of validated result dicts (as `read_coco_results` returns).
      category_ids: the same mapping used for writing (None = identity).
    Returns:
      {image_id: (boxes_yxyx [D, 4] float64 pixels, scores [D] float64, classes [D] int64)}
      with images and detections in first-seen file order.
    Raises:
      ValueError naming the entry whose category id maps to no class.
    """
    if category_ids is None:
        to_class = None
    else:
        forward = resolve_category_ids(category_ids, _num_classes(category_ids))
        to_class = {cat: c for c, cat in forward.items()}
    grouped = {}
    for index, entry in enumerate(entries):
        cat = entry["category_id"]
        if to_class is not None and cat not in to_class:
            raise ValueError(f"entry {index} (image_id {entry['image_id']!r}) has category_id {cat} of no class")
        cls = cat if to_class is None else to_class[cat]
        grouped.setdefault(entry["image_id"], []).append((entry["bbox"], entry["score"], cls))
    detections = {}
    for image_id, rows in grouped.items():
        boxes = coco_xywh_to_yxyx([r[0] for r in rows])
        detections[image_id] = (boxes, np.array([r[1] for r in rows], np.float64),
                                np.array([r[2] for r in rows], np.int64))
    return detections


def _validate_entry(path, index, entry, known_images, known_categories):
    """One checked result dict (a new dict), or ValueError naming the entry."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: entry {index} must be an object, got {entry!r}")
    where = f"{path}: entry {index} (image_id {entry.get('image_id')!r})"
    missing = [k for k in _REQUIRED_KEYS if k not in entry]
    if missing:
        raise ValueError(f"{where} is missing key(s) {missing}")
    image_id = entry["image_id"]
    if not (isinstance(image_id, str) or _is_int(image_id)):
        raise ValueError(f"{where}: image_id must be a str or an int")
    if known_images is not None and image_id not in known_images:
        raise ValueError(f"{where}: unknown image id {image_id!r}")
    category_id = entry["category_id"]
    if not _is_int(category_id):
        raise ValueError(f"{where}: category_id must be an int, got {category_id!r}")
    if known_categories is not None and category_id not in known_categories:
        raise ValueError(f"{where}: unknown category id {category_id}")
    bbox = entry["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise ValueError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
    if not all(math.isfinite(v) for v in bbox):
        raise ValueError(f"{where}: bbox has a non-finite value: {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"{where}: bbox has a negative width or height (x2 < x1 or y2 < y1): {bbox!r}")
    score = entry["score"]
    if not _is_number(score) or not math.isfinite(score):
        raise ValueError(f"{where}: score must be a finite number, got {score!r}")
    return {"image_id": image_id, "category_id": int(category_id), "bbox": [float(v) for v in bbox],
            "score": float(score)}


def _category_lookup(category_ids):
    """(class id, image id) -> category id; raises naming the image for a bad class id."""
    mapping = None if category_ids is None else resolve_category_ids(category_ids, _num_classes(category_ids))

    def lookup(cls, image_id):
        if mapping is None and cls >= 1:
            return int(cls)
        if mapping is not None and cls in mapping:
            return mapping[cls]
        expected = ">= 1" if mapping is None else f"1..{len(mapping)}"
        raise ValueError(f"detections of image {image_id!r} have class id {cls}; expected {expected} (0 is background)")

    return lookup


def _num_classes(category_ids):
    """C (background included) implied by a sequence or a mapping of category ids."""
    if isinstance(category_ids, Mapping):
        return max(category_ids, default=0) + 1
    return len(category_ids)


def _unpack_detection(detection, image_id):
    """(boxes [D, 4], scores [D], classes [D]) checked arrays of one image."""
    try:
        boxes, scores, classes = detection
    except (TypeError, ValueError):
        raise ValueError(
            f"detections of image {image_id!r} must be a (boxes_yxyx, scores, classes) tuple"
        ) from None
    boxes = as_boxes(boxes, "boxes_yxyx", image_id)
    scores = as_scores(scores, len(boxes), image_id)
    classes = np.array(classes)
    classes = classes.reshape(0) if classes.size == 0 else classes
    if classes.shape != (len(boxes),) or (classes.size and not np.issubdtype(classes.dtype, np.integer)):
        raise ValueError(f"detections of image {image_id!r}: expected int classes [{len(boxes)}], got {classes!r}")
    return boxes, scores, classes.astype(np.int64)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
