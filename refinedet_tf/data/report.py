"""What a reader or the prepare command produced, skipped, fixed or converted (`Report`), and
the error a bad example raises (`BadExampleError`). `policy.py` decides which is which.
"""

from __future__ import annotations

import collections
import dataclasses
import json

from refinedet_tf.data.policy import MIN_TRAIN_BOX_PIXELS


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
