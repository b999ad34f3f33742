"""Do a preset's anchors fit a data set's boxes? Anchor recall, and anchor sizes fitted to the boxes.

The first question RefineDet's maintainers answer on custom data sets ("redesign the anchor
scales"): a box that no anchor overlaps by `match_iou` is matched only by the forced best-anchor
rule, and a level whose anchors are far from its objects' sizes learns them badly.

Training warp-resizes every image to image_size x image_size, which scales x and y by the same
factors for boxes and anchors alike: IoUs in normalized coordinates are the IoUs in the network's
input, so no image needs to be resized here. Sizes are reported in input pixels
(sqrt(h * w) * image_size).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from refinedet_tf.anchors import generate_anchors

CHUNK = 2048  # boxes per IoU block: CHUNK x anchors float32 stays well under 100 MB at 512 px


def max_iou_with_anchors(boxes_yxyx, anchors_yxyx):
    """Best IoU of each box with any anchor: [N, 4] x [A, 4] normalized yxyx -> [N] (numpy)."""
    boxes = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    anchors = np.asarray(anchors_yxyx, np.float64)
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    best = np.zeros(len(boxes))
    for start in range(0, len(boxes), CHUNK):
        b = boxes[start:start + CHUNK, None, :]
        h = np.clip(np.minimum(b[..., 2], anchors[:, 2]) - np.maximum(b[..., 0], anchors[:, 0]), 0, None)
        w = np.clip(np.minimum(b[..., 3], anchors[:, 3]) - np.maximum(b[..., 1], anchors[:, 1]), 0, None)
        inter = h * w
        area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        union = area_b + area_a - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        best[start:start + CHUNK] = iou.max(axis=1)
    return best


def box_sizes_pixels(boxes_yxyx, image_size):
    """sqrt(h * w) of normalized boxes in input pixels: [N]."""
    b = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    return np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)) * image_size


def size_buckets(anchor_sizes):
    """One bucket per level: edges at the geometric means of neighbouring anchor sizes.

    Returns [(name, low, high)] in input pixels, e.g. ("~32 px", 0, 45.3) for sizes 32, 64, ...
    """
    sizes = [float(s) for s in anchor_sizes]
    edges = [0.0] + [math.sqrt(a * b) for a, b in zip(sizes, sizes[1:])] + [math.inf]
    return [(f"~{s:g} px ({lo:.0f}-{'inf' if hi == math.inf else f'{hi:.0f}'})", lo, hi)
            for s, lo, hi in zip(sizes, edges, edges[1:])]


@dataclasses.dataclass
class AnchorFit:
    """Anchor recall of a config on a set of boxes (see `anchor_fit`)."""

    match_iou: float
    anchor_sizes: tuple
    num_boxes: int
    recall: float | None
    per_class: dict
    per_size: dict
    best_iou: np.ndarray = dataclasses.field(repr=False)

    def to_dict(self):
        return {"match_iou": self.match_iou, "anchor_sizes": list(self.anchor_sizes), "num_boxes": self.num_boxes,
                "recall": self.recall, "per_class": self.per_class, "per_size": self.per_size}


def _fraction(mask):
    return float(np.mean(mask)) if len(mask) else None


def anchor_fit(config, boxes_yxyx, classes, class_names):
    """Fraction of boxes whose best IoU with the config's anchors is >= config.match_iou.

    Args:
      config: a RefineDetConfig (anchors, image_size, match_iou).
      boxes_yxyx: [N, 4] normalized boxes (the caller chooses which: non-difficult, trainable).
      classes: [N] class ids; class_names: names by id.
    Returns:
      AnchorFit with the overall recall, per class {name: {"boxes", "recall"}} and per size
      bucket (`size_buckets`) {bucket: {"boxes", "recall"}}; recall None when there is no box.
    """
    boxes = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    classes = np.asarray(classes, np.int64).reshape(-1)
    best = max_iou_with_anchors(boxes, generate_anchors(config))
    hit = best >= config.match_iou
    per_class = {}
    for c in sorted(set(classes.tolist())):
        mask = classes == c
        per_class[class_names[c]] = {"boxes": int(mask.sum()), "recall": _fraction(hit[mask])}
    sizes = box_sizes_pixels(boxes, config.image_size)
    per_size = {}
    for name, low, high in size_buckets(config.anchor_sizes):
        mask = (sizes >= low) & (sizes < high)
        per_size[name] = {"boxes": int(mask.sum()), "recall": _fraction(hit[mask])}
    return AnchorFit(config.match_iou, tuple(config.anchor_sizes), len(boxes), _fraction(hit), per_class,
                     per_size, best)


def suggest_anchor_sizes(config, boxes_yxyx):
    """4 anchor sizes (input pixels, increasing) fitted to the boxes, and the recall they give.

    Candidates: the geometric quantiles of the box sizes at 1/8, 3/8, 5/8, 7/8 (one level per
    quarter of the boxes), and the preset's sizes scaled by 2^(k/4), k = -8..4 (the preset's
    own among them, so the suggestion never fits worse than the preset). Each candidate keeps
    the preset's strides and ratios; the one with the highest recall wins (ties: the one
    closest to the preset's sizes). Sizes are rounded to whole pixels.

    Returns:
      (sizes tuple of 4 floats, recall float or None).
    """
    boxes = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    if not len(boxes):
        return tuple(config.anchor_sizes), None
    sizes = box_sizes_pixels(boxes, config.image_size)
    sizes = sizes[sizes > 0]
    candidates = []
    if len(sizes):
        quantiles = np.exp(np.quantile(np.log(sizes), [0.125, 0.375, 0.625, 0.875]))
        candidates.append(tuple(np.maximum.accumulate(np.maximum(np.round(quantiles), 1.0))))
    preset = np.asarray(config.anchor_sizes, np.float64)
    candidates += [tuple(np.maximum(np.round(preset * 2 ** (k / 4)), 1.0)) for k in range(-8, 5)]
    best, best_key = None, None
    for candidate in dict.fromkeys(candidates):  # unique, in order
        trial = dataclasses.replace(config, anchor_sizes=tuple(float(s) for s in candidate))
        recall = float(np.mean(max_iou_with_anchors(boxes, generate_anchors(trial)) >= config.match_iou))
        distance = float(np.abs(np.log(np.asarray(candidate) / preset)).sum())
        key = (recall, -distance)
        if best_key is None or key > best_key:
            best, best_key = candidate, key
    return tuple(float(s) for s in best), best_key[0]
