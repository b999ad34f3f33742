"""Pascal VOC folders: `Annotations/<id>.xml`, `JPEGImages/`, `ImageSets/Main/<split>.txt`.

Boxes in the XML are 1-based inclusive pixel indices; they become normalized yxyx through
`box_conventions.voc_pixels_to_normalized` ((xmin - 1) / W, xmax / W). The `difficult` flag is kept;
`is_crowd` is always False. Class names go through the label map: an unknown name is a bad
example naming the class and the file.

Without a split, every `Annotations/*.xml` is read, in sorted file-name order; with one, the
ids of `ImageSets/Main/<split>.txt` in the file's order. The image is `JPEGImages/<filename>`
(the XML's `<filename>`), else `JPEGImages/<id>.jpg|.jpeg|.png`. `<folder>` and `<path>` are
ignored (they usually point to the annotator's machine).
"""

from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET

from refinedet_tf.data import image_io
from refinedet_tf.data.label_map import LabelMap, default_label_map_path, load_label_map
from refinedet_tf.data.policy import Policy
from refinedet_tf.data.reader import ExampleReader, RawBox
from refinedet_tf.data.report import BadExampleError


def is_voc_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "Annotations"))


def list_splits(root: str) -> list[str]:
    """Split names with a file in `ImageSets/Main/` (class-specific `<class>_<split>` excluded)."""
    files = glob.glob(os.path.join(root, "ImageSets", "Main", "*.txt"))
    return sorted(os.path.basename(f)[:-4] for f in files if "_" not in os.path.basename(f))


def read_split(root: str, split: str) -> list[str]:
    """Image ids of `ImageSets/Main/<split>.txt` (first token per line), in file order."""
    path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        raise BadExampleError(path, f"split file not found; splits in this folder: {list_splits(root)}")
    with open(path, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise BadExampleError(path, f"image ids listed more than once: {dup[:10]}")
    return ids


class VocReader(ExampleReader):
    """Reads a VOC folder into examples (see `reader.ExampleReader` for the attributes).

    Args:
      root: the folder holding `Annotations/` and `JPEGImages/`.
      split: a name in `ImageSets/Main/`, or None for every annotation file.
      label_map: a `LabelMap`, a label map file, or None for the folder's own `labelmap.txt`
        / `labelmap.pbtxt` (an error when there is none: class ids must not depend on which
        classes a split happens to contain).
      on_bad_example, keep_empty, clip_boxes, purpose: the `policy.Policy`.
      check_images: probe every image header when building (existence, format, real size);
        False trusts the XML sizes (faster for a quick look at annotations).
    Raises:
      BadExampleError naming the file, under on_bad_example="error".
    """

    format = "voc"

    def __init__(self, root: str, split: str | None = None, label_map=None, *,
                 on_bad_example: str = "error", keep_empty: bool | None = None,
                 clip_boxes: bool = True, purpose: str = "train", check_images: bool = True):
        if not is_voc_dir(root):
            raise BadExampleError(root, "not a VOC folder (no Annotations/ inside)")
        super().__init__(_resolve_label_map(root, label_map),
                         Policy(on_bad_example, keep_empty, clip_boxes, purpose), check_images)
        self.root = root
        self.split = split
        if split is None:
            files = sorted(glob.glob(os.path.join(root, "Annotations", "*.xml")))
            ids = [os.path.basename(f)[:-4] for f in files]
        else:
            ids = read_split(root, split)
        for image_id in ids:
            xml_path = os.path.join(root, "Annotations", f"{image_id}.xml")
            self._collect(xml_path, lambda: self._parse(image_id, xml_path))

    def _parse(self, image_id: str, xml_path: str) -> dict:
        annotation = parse_xml(xml_path)
        image_path = self._image_path(image_id, annotation["filename"])
        height, width = self._image_size(image_path, annotation["height"], annotation["width"],
                                         referenced_by=xml_path, size_issue_path=xml_path)
        raw = []
        for k, obj in enumerate(annotation["objects"]):
            class_id = self.label_map.name_to_id.get(obj["name"])
            if class_id is None:
                raise BadExampleError(
                    xml_path, f"object {k} has class {obj['name']!r}, which is not in the label map "
                              f"({len(self.label_map.names) - 1} classes: {list(self.label_map.names[1:6])}...)")
            raw.append(RawBox(obj["corners"], class_id, obj["difficult"], False,
                              f"object {k} ({obj['name']})"))
        return self._metadata(image_id, image_path, xml_path, raw, height, width, "voc")

    def _image_path(self, image_id: str, filename: str | None) -> str:
        folder = os.path.join(self.root, "JPEGImages")
        candidates = [filename] if filename else []
        candidates += [image_id + ext for ext in image_io.IMAGE_EXTENSIONS]
        for name in candidates:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
        # Not found: name the file the XML asked for, so the error message is the useful one.
        return os.path.join(folder, candidates[0])


def _resolve_label_map(root, label_map) -> LabelMap:
    if isinstance(label_map, LabelMap):
        return label_map
    if label_map is None:
        label_map = default_label_map_path(root)
        if label_map is None:
            raise BadExampleError(
                root, "no label map given and none in the folder (labelmap.txt or labelmap.pbtxt); "
                      "pass one, e.g. data/voc_labelmap.txt for Pascal VOC")
    return load_label_map(label_map)


def parse_xml(xml_path: str) -> dict:
    """Parses one VOC annotation file.

    Returns:
      dict: filename (str or None), height, width (int, 0 when absent), objects: list of
      dicts name, difficult (bool), corners (xmin, ymin, xmax, ymax) as written (floats).
    Raises:
      BadExampleError naming the file: unreadable, malformed XML, missing or non-numeric fields.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise BadExampleError(xml_path, "annotation file not found") from None
    except ET.ParseError as e:
        raise BadExampleError(xml_path, f"malformed XML: {e}") from None
    except OSError as e:
        raise BadExampleError(xml_path, f"cannot read annotation: {e.strerror or e}") from None
    if root.tag != "annotation":
        raise BadExampleError(xml_path, f"root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    height = _number(xml_path, size, "height", "size", int, default=0) if size is not None else 0
    width = _number(xml_path, size, "width", "size", int, default=0) if size is not None else 0
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise BadExampleError(xml_path, f"object {k} has no <name>")
        box = obj.find("bndbox")
        if box is None:
            raise BadExampleError(xml_path, f"object {k} ({name}) has no <bndbox>")
        corners = tuple(_number(xml_path, box, tag, f"object {k} ({name})", float)
                        for tag in ("xmin", "ymin", "xmax", "ymax"))
        difficult = _number(xml_path, obj, "difficult", f"object {k} ({name})", int, default=0)
        objects.append({"name": name, "difficult": bool(difficult), "corners": corners})
    filename = (root.findtext("filename") or "").strip() or None
    return {"filename": filename, "height": height, "width": width, "objects": objects}


def _number(xml_path, element, tag, where, cast, default=None):
    text = element.findtext(tag)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise BadExampleError(xml_path, f"{where} has no <{tag}>")
    try:
        value = float(text)
        return int(value) if cast is int and value == int(value) else cast(value)
    except (ValueError, OverflowError):
        raise BadExampleError(xml_path, f"{where} <{tag}> is not a number: {text.strip()!r}") from None
