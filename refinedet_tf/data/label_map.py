"""Label maps: class names <-> contiguous class ids <-> a dataset's own class ids.

Class ids used everywhere in the library are *contiguous*: 0 is background, object classes are
1..C-1, and C = `num_classes` (VOC 21, COCO 81). A dataset may number its classes differently
(COCO category ids run 1..90 with gaps), so a `LabelMap` keeps, for each contiguous id, the
dataset's own id (`dataset_ids`). The contiguous id of a class is its position in the label
map file; the class names live in data files, never in code.

Two file forms are read:
  * a plain names file: one class name per line, blank lines and `#` comments ignored; the
    dataset id of the k-th name is k (1-based). A leading "background" line is allowed and
    dropped (index 0 is always background).
  * the TF Object Detection API `.pbtxt` form:
        item { id: 1 name: "person" display_name: "person" }
    `id` is the dataset id; items keep their file order. We parse this small text-proto subset
    ourselves rather than depend on the `object_detection` package (large, and pinned to
    protobuf versions that fight TensorFlow's).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

BACKGROUND = "background"
_BACKGROUND_ALIASES = ("background", "__background__")


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Class names indexed by contiguous id; index 0 is "background".

    Attributes:
      names: tuple of C names; `names[0] == "background"`.
      dataset_ids: tuple of C ints: the dataset's own id of each class (`dataset_ids[0] == 0`);
        e.g. COCO category ids, or 1..C-1 for a names file.
      display_names: tuple of C human-readable names (the pbtxt `display_name`, else `name`).
    """

    names: tuple[str, ...]
    dataset_ids: tuple[int, ...]
    display_names: tuple[str, ...] = ()

    def __post_init__(self):
        names = tuple(self.names)
        ids = tuple(int(i) for i in self.dataset_ids)
        display = tuple(self.display_names) or names
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "dataset_ids", ids)
        object.__setattr__(self, "display_names", display)
        if len(names) < 2 or names[0] != BACKGROUND:
            raise ValueError(
                f"a LabelMap needs 'background' at index 0 and at least one class, got {names[:3]}")
        if len(ids) != len(names) or len(display) != len(names):
            raise ValueError(
                f"LabelMap has {len(names)} names but {len(ids)} dataset_ids and "
                f"{len(display)} display_names")
        if ids[0] != 0:
            raise ValueError(f"dataset_ids[0] (background) must be 0, got {ids[0]}")
        _check_unique("name", names[1:])
        _check_unique("dataset id", ids[1:])
        if any(i <= 0 for i in ids[1:]):
            raise ValueError(f"dataset ids of object classes must be >= 1, got {ids[1:]}")

    @classmethod
    def from_names(cls, names, dataset_ids=None, display_names=None) -> "LabelMap":
        """A map from object class names (no background); dataset ids default to 1..len(names)."""
        names = [str(n) for n in names]
        if dataset_ids is None:
            dataset_ids = range(1, len(names) + 1)
        display = (BACKGROUND, *display_names) if display_names else ()
        return cls((BACKGROUND, *names), (0, *dataset_ids), display)

    @property
    def num_classes(self) -> int:
        """C, counting background."""
        return len(self.names)

    @functools.cached_property
    def name_to_id(self) -> dict[str, int]:
        """Class name -> contiguous id. Display names are accepted too where they are unique."""
        mapping = {name: i for i, name in enumerate(self.names) if i > 0}
        for i, name in enumerate(self.display_names):
            if i > 0:
                mapping.setdefault(name, i)
        return mapping

    @functools.cached_property
    def dataset_id_to_id(self) -> dict[int, int]:
        """The dataset's own class id -> contiguous id."""
        return {d: i for i, d in enumerate(self.dataset_ids) if i > 0}

    def to_pbtxt(self) -> str:
        """The TF Object Detection API text form (round-trips through `parse_pbtxt`)."""
        lines = []
        for i in range(1, self.num_classes):
            lines.append(
                f"item {{\n  id: {self.dataset_ids[i]}\n  name: {_quote(self.names[i])}\n"
                f"  display_name: {_quote(self.display_names[i])}\n}}\n")
        return "".join(lines)

    def save(self, path: str) -> None:
        """Writes `.pbtxt` form (keeps dataset ids) or, for any other suffix, a names file."""
        if path.endswith(".pbtxt"):
            text = self.to_pbtxt()
        else:
            text = "".join(name + "\n" for name in self.names[1:])
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def load_label_map(path: str) -> LabelMap:
    """Reads a names file or a `.pbtxt` label map (see the module docstring).

    Raises ValueError naming the file and the problem (missing file, bad syntax, duplicates).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read label map: {e.strerror or e}") from None
    try:
        if path.endswith(".pbtxt") or re.match(r"\s*(#[^\n]*\n\s*)*item\s*:?\s*\{", text):
            return parse_pbtxt(text)
        return parse_names(text)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def parse_names(text: str) -> LabelMap:
    """One class name per line; blank lines and `#` comments ignored; optional background line."""
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if names and names[0].lower() in _BACKGROUND_ALIASES:
        names = names[1:]
    if not names:
        raise ValueError("label map has no class names")
    return LabelMap.from_names(names)


def parse_pbtxt(text: str) -> LabelMap:
    """Parses `item { id: N name: "..." display_name: "..." }` entries, keeping file order.

    Unknown fields inside an item (keypoints, frequency, ...) are ignored; an item with id 0 is
    the background entry some maps carry and is skipped.
    """
    items = [fields for key, fields in _TextProto(text).parse() if key == "item"]
    names, ids, display = [], [], []
    for n, fields in enumerate(items, 1):
        if not isinstance(fields, list):
            raise ValueError(f"item #{n} is not a message {{ ... }}")
        item = {}
        for key, value in fields:
            item.setdefault(key, value)
        if "id" not in item or "name" not in item and "display_name" not in item:
            raise ValueError(f"item #{n} needs an id and a name, got fields {sorted(item)}")
        try:
            dataset_id = int(item["id"])
        except (TypeError, ValueError):
            raise ValueError(f"item #{n}: id must be an integer, got {item['id']!r}") from None
        name = str(item.get("name", item.get("display_name")))
        if dataset_id == 0:
            continue
        names.append(name)
        ids.append(dataset_id)
        display.append(str(item.get("display_name", name)))
    if not names:
        raise ValueError("label map has no items")
    return LabelMap.from_names(names, ids, display)


def _check_unique(what, values):
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate {what} {v!r} in label map")
        seen.add(v)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _TextProto:
    """A tokenizer + recursive parser for the protobuf text format subset label maps use.

    Grammar: message := (field)* ; field := NAME [':'] ('{' message '}' | scalar) [',' | ';'].
    Returns nested lists of (name, value) pairs; scalars are str (quoted) or int/float/str.
    """

    _TOKEN = re.compile(
        r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
        r"""|(?P<punct>[{}:;,<>])|(?P<word>[^\s{}:;,<>"'#]+)""")

    def __init__(self, text):
        self.tokens = []
        pos = 0
        while pos < len(text):
            m = self._TOKEN.match(text, pos)
            if not m:
                raise ValueError(f"line {text.count(chr(10), 0, pos) + 1}: unexpected {text[pos]!r}")
            if m.lastgroup:
                self.tokens.append((m.lastgroup, m.group(m.lastgroup), text.count("\n", 0, pos) + 1))
            pos = m.end()
        self.i = 0

    def parse(self):
        fields = self._message(top=True)
        return fields

    def _next(self):
        if self.i >= len(self.tokens):
            raise ValueError("unexpected end of file (missing '}'?)")
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _message(self, top=False):
        fields = []
        while True:
            if self.i >= len(self.tokens):
                if top:
                    return fields
                raise ValueError("unexpected end of file (missing '}')")
            kind, value, line = self.tokens[self.i]
            if kind == "punct" and value in "}>":
                if top:
                    raise ValueError(f"line {line}: unmatched {value!r}")
                self.i += 1
                return fields
            if kind == "punct" and value in ",;":
                self.i += 1
                continue
            if kind != "word":
                raise ValueError(f"line {line}: expected a field name, got {value!r}")
            self.i += 1
            name = value
            kind, value, line = self._next()
            if kind == "punct" and value == ":":
                kind, value, line = self._next()
            if kind == "punct" and value in "{<":
                fields.append((name, self._message()))
            elif kind == "str":
                fields.append((name, _unquote(value)))
            elif kind == "word":
                fields.append((name, _number(value)))
            else:
                raise ValueError(f"line {line}: expected a value for {name!r}, got {value!r}")


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _number(word: str):
    for cast in (int, float):
        try:
            return cast(word)
        except ValueError:
            pass
    return word  # enums / identifiers


def default_label_map_path(root: str) -> str | None:
    """A label map stored in a dataset folder (`labelmap.txt` / `labelmap.pbtxt`), if any."""
    for name in ("labelmap.pbtxt", "label_map.pbtxt", "labelmap.txt", "label_map.txt"):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None
