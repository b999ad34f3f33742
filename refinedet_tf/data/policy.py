"""What every command does with bad input and annotation quirks: one policy, by purpose.

train.py, evaluate.py, export_saved_model.py (calibration images), prepare and inspect all build
their readers with a `Policy`; the readers apply it (`reader.finalize_boxes`, the TFRecord
reader's in-graph filter) and list what they did in their `Report`.

Two kinds of problem:

* **Bad examples** — the file cannot be used as it is: a missing or corrupt image, a malformed
  annotation, a size that disagrees with the image, a NaN, negative or inverted box
  (xmin > xmax), a class that is not in the label map, an image id listed twice.
  `on_bad_example="error"` (the default) stops with the file and the problem named;
  `"skip"` skips that example and lists it. The same for every purpose.

* **Quirks** — a box that is valid in its format but small, degenerate or partly outside the
  image. They never stop a run and are never silent; what happens depends on the purpose:

  | quirk                                   | train                    | evaluate / convert          |
  |-----------------------------------------|--------------------------|-----------------------------|
  | box reaching outside the image          | clipped, `clipped_box`   | clipped, `clipped_box`      |
  | side under MIN_TRAIN_BOX_PIXELS (a VOC  | dropped, `small_box`     | kept, `tiny_box` (voc_eval  |
  |   xmin == xmax box is 1 pixel wide)     |                          |   counts it)                |
  | zero area (COCO w or h = 0, or nothing  | dropped, `small_box`     | kept, `degenerate_box`      |
  |   left once clipped)                    |                          |   (pycocotools counts it)   |
  | image without objects                   | skipped, `empty`         | kept (detections on it are  |
  |                                         |                          |   false positives)          |

  ("convert" is `prepare`: its TFRecords keep every box the protocols count, and training
  drops the small ones when it reads them.) `clip_boxes=False` makes a box outside the image
  a bad example instead; `keep_empty` overrides the purpose's choice for empty images.

Why training drops boxes under 2 pixels: no anchor overlaps them, so only the forced
best-anchor match would claim one, regressing a >= 16-pixel anchor onto a 1-pixel box (a log
size target of about -14 in variance units) — one such box dominates the localization loss of
its batch. The smallest anchor of every preset is 16 pixels or more at its input size.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ON_BAD_EXAMPLE = ("error", "skip")
PURPOSES = ("train", "evaluate", "convert")
MIN_TRAIN_BOX_PIXELS = 2.0  # in the original image, on the shorter side
# The help of every command's --on_bad_example flag.
ON_BAD_EXAMPLE_HELP = ("error: stop at the first bad example (missing or corrupt image, unknown class, "
                       "inverted box, ...) naming the file; skip: skip it and list it in the report. "
                       "Small, zero-area and outside boxes are never errors (refinedet_tf/data/policy.py)")


@dataclasses.dataclass(frozen=True)
class Policy:
    """What readers do with bad input and quirks (see the module docstring).

    Attributes:
      on_bad_example: "error" or "skip".
      keep_empty: keep images without objects; None: the purpose's default (evaluate: yes).
      clip_boxes: clip boxes reaching outside the image (counted); False: a bad example.
      purpose: "train", "evaluate" or "convert".
    """

    on_bad_example: str = "error"
    keep_empty: bool | None = None
    clip_boxes: bool = True
    purpose: str = "train"

    def __post_init__(self):
        if self.on_bad_example not in ON_BAD_EXAMPLE:
            raise ValueError(
                f"on_bad_example must be one of {ON_BAD_EXAMPLE}, got {self.on_bad_example!r}")
        if self.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {self.purpose!r}")
        if self.keep_empty is None:
            object.__setattr__(self, "keep_empty", self.purpose == "evaluate")

    @property
    def min_box_pixels(self) -> float:
        """Boxes whose shorter side (original pixels) is below this are dropped (`small_box`)."""
        return MIN_TRAIN_BOX_PIXELS if self.purpose == "train" else 0.0

    @property
    def keeps_degenerate_boxes(self) -> bool:
        """Zero-area boxes are ground truth the protocols count (evaluate, convert)."""
        return self.purpose != "train"


def box_sides_pixels(boxes_yxyx, height, width):
    """Shorter side of each normalized box in pixels of its image: [N, 4] -> [N] (numpy), rounded
    to 1e-6 so that a 1-pixel box stored as normalized float32 measures 1, not 0.9999999."""
    boxes = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    sides = np.minimum((boxes[:, 2] - boxes[:, 0]) * float(height), (boxes[:, 3] - boxes[:, 1]) * float(width))
    return np.round(sides, 6)
