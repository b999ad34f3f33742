"""PASCAL VOC average precision with py-faster-rcnn `voc_eval` semantics.

We implement the VOC protocol ourselves because pycocotools does not: COCO matching uses
IoU >= threshold on continuous coordinates, has no "difficult" flag and uses 101-point
interpolation, so it cannot reproduce the VOC07/VOC12 numbers that RefineDet reports.

Box format (every box argument here): `[ymin, xmin, ymax, xmax]` in original-image PIXELS of
the VOC convention, i.e. inclusive pixel indices, so a box covers `xmax - xmin + 1` columns and
`ymax - ymin + 1` rows (the "+1 convention" of the VOC devkit and py-faster-rcnn). Ground
truth and detections must use the same origin (both 1-based as in the VOC XML files, or both
0-based); IoU does not depend on the origin.

Protocol, per class, exactly as `voc_eval.py`:
  1. detections of the class over all images are sorted by descending score. The sort is
     STABLE: detections with equal scores keep the order in which they were added
     (`voc_eval` uses NumPy's default, unstable quicksort here, so its tie order is arbitrary);
  2. each detection takes the ground truth of the same image and class with the largest IoU
     (first one on ties), difficult ones included;
  3. if that IoU > `iou_threshold` (strictly): difficult ground truth -> the detection is
     ignored (neither TP nor FP); otherwise TP the first time that ground truth is taken and
     FP afterwards (duplicates). IoU <= threshold, or no ground truth in the image -> FP;
  4. recall = cumTP / #non-difficult ground truths, precision = cumTP / (cumTP + cumFP);
     ignored detections stay in the cumulative arrays as repeated points, as in `voc_eval`;
  5. "voc07": 11-point interpolated AP; "voc12" (VOC2010+): area under the monotone envelope.
A class with no non-difficult ground truth has undefined AP (`None`), excluded from the mAP.
"""

import numbers

import numpy as np

METRICS = ("voc07", "voc12")

# Bounds the [D, G] IoU block computed at once (D detections x G ground-truth slots), so a
# large validation set is matched in a few vectorized chunks without a big temporary.
_MAX_IOU_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------
# Input checks shared by the VOC and COCO evaluators (coco.py imports them).
# ----------------------------------------------------------------------------------------
def as_image_id(image_id):
    """Returns `image_id` as a plain `str` or `int` (NumPy integers accepted)."""
    if isinstance(image_id, str):
        return image_id
    if isinstance(image_id, numbers.Integral) and not isinstance(image_id, (bool, np.bool_)):
        return int(image_id)
    raise TypeError(f"image_id must be a str or an int, got {image_id!r} ({type(image_id).__name__})")


def as_boxes(boxes_yxyx, name, image_id):
    """[N, 4] finite float64 boxes with ymin <= ymax and xmin <= xmax (a copy)."""
    boxes = np.array(boxes_yxyx, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4), np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected {name} [N, 4] for image {image_id!r}, got shape {list(boxes.shape)}")
    if not np.all(np.isfinite(boxes)):
        row = int(np.flatnonzero(~np.all(np.isfinite(boxes), axis=1))[0])
        raise ValueError(f"{name} of image {image_id!r} has a non-finite box at row {row}: {boxes[row].tolist()}")
    reversed_rows = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if reversed_rows.size:
        row = int(reversed_rows[0])
        raise ValueError(
            f"{name} of image {image_id!r} row {row} is not [ymin, xmin, ymax, xmax] with "
            f"min <= max: {boxes[row].tolist()}"
        )
    return boxes


def as_vector(values, n, name, image_id, dtype):
    """[n] array of `dtype` (a copy); `values` must have exactly n elements."""
    array = np.array(values, dtype=dtype)
    if array.size == 0:
        array = array.reshape(0)
    if array.shape != (n,):
        raise ValueError(f"expected {name} [{n}] for image {image_id!r} (one per box), got shape {list(array.shape)}")
    return array


def as_classes(classes, n, num_classes, name, image_id):
    """[n] int64 class ids, each in 1..num_classes-1 (0 is background, never evaluated)."""
    raw = np.asarray(classes)
    if raw.size and not (np.issubdtype(raw.dtype, np.integer) or np.all(np.mod(raw, 1) == 0)):
        raise ValueError(f"{name} of image {image_id!r} must be integer class ids, got {raw.tolist()}")
    array = as_vector(raw, n, name, image_id, np.int64)
    bad = np.flatnonzero((array < 1) | (array >= num_classes))
    if bad.size:
        raise ValueError(
            f"{name} of image {image_id!r} has class id {int(array[bad[0]])} at row {int(bad[0])}; "
            f"expected 1..{num_classes - 1} (0 is background)"
        )
    return array


def as_scores(scores, n, image_id):
    """[n] finite float64 scores."""
    array = as_vector(scores, n, "scores", image_id, np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"scores of image {image_id!r} has a non-finite score at row {int(bad[0])}: {array[bad[0]]}")
    return array


def check_class_names(class_names):
    """A copy of `class_names` as a list of str; index 0 is background."""
    names = [str(name) for name in class_names]
    if len(names) < 2:
        raise ValueError(f"class_names must hold background plus at least one class, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    return names


# ----------------------------------------------------------------------------------------
# The VOC math.
# ----------------------------------------------------------------------------------------
def voc_iou(boxes_yxyx, gt_boxes_yxyx):
    """IoU with the VOC +1 pixel convention, broadcast over leading dimensions.

    Args:
      boxes_yxyx: [..., 4] pixel boxes (VOC convention), e.g. [D, 4] detections.
      gt_boxes_yxyx: [..., G, 4] pixel boxes, e.g. [D, G, 4] ground truth per detection.
    Returns:
      [..., G] float64 IoU of each box against each of its G ground truths; with the +1
      convention every valid box has area >= 1, so there is no division by zero.
    """
    bb = np.asarray(boxes_yxyx, np.float64)[..., None, :]
    gt = np.asarray(gt_boxes_yxyx, np.float64)
    # Same operations in the same order as voc_eval.py, so the floats agree bit for bit.
    iymin = np.maximum(gt[..., 0], bb[..., 0])
    ixmin = np.maximum(gt[..., 1], bb[..., 1])
    iymax = np.minimum(gt[..., 2], bb[..., 2])
    ixmax = np.minimum(gt[..., 3], bb[..., 3])
    iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
    ih = np.maximum(iymax - iymin + 1.0, 0.0)
    inters = iw * ih
    uni = (bb[..., 3] - bb[..., 1] + 1.0) * (bb[..., 2] - bb[..., 0] + 1.0) + (
        (gt[..., 3] - gt[..., 1] + 1.0) * (gt[..., 2] - gt[..., 0] + 1.0)
    ) - inters
    return inters / uni


def voc07_ap(recall, precision):
    """11-point interpolated AP (VOC2007): mean over t in {0, 0.1, ..., 1} of max precision
    at recall >= t (0 where recall never reaches t). recall, precision: [D] float arrays."""
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    ap = 0.0
    # np.arange, not exact tenths, as voc_eval does: 0.1 * 3 = 0.30000000000000004, so a
    # recall of exactly 0.3 does not reach the 4th point. Kept for parity with the paper.
    for t in np.arange(0.0, 1.1, 0.1):
        reached = recall >= t
        ap += (np.max(precision[reached]) if np.any(reached) else 0.0) / 11.0
    return float(ap)


def voc12_ap(recall, precision):
    """AP as the area under the monotone precision envelope (VOC2010+). [D] float arrays."""
    mrec = np.concatenate(([0.0], np.asarray(recall, np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, np.float64), [0.0]))
    # Envelope: precision at recall r becomes the max precision at any recall >= r.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


_AP_FUNCTIONS = {"voc07": voc07_ap, "voc12": voc12_ap}


def match_detections(det_image, det_boxes, gt_image, gt_boxes, gt_difficult, num_images, iou_threshold):
    """TP / FP flags of one class's detections, already sorted by descending score.

    Args:
      det_image: [D] int image index of each detection (in score order).
      det_boxes: [D, 4] pixel yxyx boxes.
      gt_image: [G] int image index of each ground truth of the class; ground truths of one
        image keep their input order (it decides argmax ties).
      gt_boxes: [G, 4] pixel yxyx boxes.
      gt_difficult: [G] bool.
      num_images: number of image indices.
      iou_threshold: a match needs IoU > iou_threshold.
    Returns:
      tp, fp: [D] float64 0/1 flags; a detection on a difficult ground truth has both 0.
    """
    num_dets = len(det_image)
    # Ground truth as padded per-image slots: [num_images, G] so detection d sees the row of
    # its own image. Padding slots get IoU -inf and can never be the argmax.
    order = np.argsort(gt_image, kind="stable")
    gt_image, gt_boxes, gt_difficult = gt_image[order], gt_boxes[order], gt_difficult[order]
    counts = np.bincount(gt_image, minlength=num_images)
    slots = max(int(counts.max(initial=0)), 1)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    slot = np.arange(len(gt_image)) - first[gt_image]
    padded_boxes = np.zeros((num_images, slots, 4))
    padded_boxes[gt_image, slot] = gt_boxes
    padded_valid = np.zeros((num_images, slots), bool)
    padded_valid[gt_image, slot] = True
    padded_difficult = np.zeros((num_images, slots), bool)
    padded_difficult[gt_image, slot] = gt_difficult

    best_iou = np.empty(num_dets)
    best_slot = np.empty(num_dets, np.int64)
    chunk = max(_MAX_IOU_ELEMENTS // slots, 1)
    for start in range(0, num_dets, chunk):
        images = det_image[start:start + chunk]
        iou = voc_iou(det_boxes[start:start + chunk], padded_boxes[images])
        iou = np.where(padded_valid[images], iou, -np.inf)
        best_slot[start:start + chunk] = np.argmax(iou, axis=1)
        best_iou[start:start + chunk] = np.max(iou, axis=1)

    matched = best_iou > iou_threshold
    on_difficult = matched & padded_difficult[det_image, best_slot]
    candidate = matched & ~on_difficult
    # voc_eval's greedy pass marks a ground truth taken by the first (highest-scored) detection
    # whose best match it is; every later one on it is a duplicate. The best match does not
    # depend on what is taken, so "first occurrence in score order" is that pass, vectorized.
    candidates = np.flatnonzero(candidate)
    gt_key = det_image[candidates] * slots + best_slot[candidates]
    _, first_hit = np.unique(gt_key, return_index=True)
    tp = np.zeros(num_dets)
    tp[candidates[first_hit]] = 1.0
    fp = (~matched | candidate).astype(np.float64) - tp
    return tp, fp


def precision_recall(tp, fp, num_positives):
    """Cumulative recall and precision ([D] each) from [D] TP/FP flags in score order."""
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    recall = tp / float(num_positives)
    # eps as in voc_eval: ignored detections before the first TP/FP give 0/eps = 0.
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision


def as_detections(image_id, boxes_yxyx, scores, classes, num_classes):
    """Checked detections of one image -> (image_id, boxes [D, 4], scores [D], classes [D]);
    the input checks every evaluator applies to `add_detections`."""
    image_id = as_image_id(image_id)
    boxes = as_boxes(boxes_yxyx, "detection boxes_yxyx", image_id)
    n = len(boxes)
    scores = as_scores(scores, n, image_id)
    classes = as_classes(classes, n, num_classes, "detection classes", image_id)
    return image_id, boxes, scores, classes


class VOCEvaluator:
    """Accumulates boxes image by image and computes VOC AP per class (see module doc).

    Only boxes are kept, so a whole validation set can be streamed through in batches; feeding
    in batches gives exactly the result of feeding everything at once.

    Args:
      class_names: names indexed by class id; index 0 is background and is never evaluated.
      metrics: any of "voc07" (11-point) and "voc12" (area under the envelope).
      iou_threshold: a detection matches when IoU > iou_threshold (strict, as voc_eval).
    """

    def __init__(self, class_names, metrics=METRICS, iou_threshold=0.5):
        self.class_names = check_class_names(class_names)
        self.metrics = tuple(metrics)
        unknown = [m for m in self.metrics if m not in _AP_FUNCTIONS]
        if not self.metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
        if not 0.0 <= iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self._image_index = {}  # image id -> index into the ground-truth lists
        self._gt = []  # per image: (boxes [N, 4], classes [N], difficult [N])
        self._dets = []  # per add_detections call: (image id, boxes [D, 4], scores [D], classes [D])

    @property
    def num_images(self):
        """Number of images whose ground truth was added."""
        return len(self._gt)

    def add_ground_truth(self, image_id, boxes_yxyx, classes, difficult=None):
        """Adds the ground truth of one image (call it once per image, even with no boxes).

        Args:
          image_id: str or int, unique over the data set.
          boxes_yxyx: [N, 4] float pixels [ymin, xmin, ymax, xmax], VOC convention.
          classes: [N] int class ids in 1..C-1.
          difficult: [N] bool, or None for all False.
        """
        image_id = as_image_id(image_id)
        if image_id in self._image_index:
            raise ValueError(f"ground truth for image {image_id!r} was already added")
        boxes = as_boxes(boxes_yxyx, "ground-truth boxes_yxyx", image_id)
        n = len(boxes)
        classes = as_classes(classes, n, len(self.class_names), "ground-truth classes", image_id)
        if difficult is None:
            difficult = np.zeros((n,), bool)
        else:
            difficult = as_vector(difficult, n, "difficult", image_id, bool)
        self._image_index[image_id] = len(self._gt)
        self._gt.append((boxes, classes, difficult))

    def add_detections(self, image_id, boxes_yxyx, scores, classes):
        """Adds detections of one image; may be called several times for the same image.

        Args:
          image_id: str or int; its ground truth may be added before or after.
          boxes_yxyx: [D, 4] float pixels [ymin, xmin, ymax, xmax], VOC convention.
          scores: [D] float.
          classes: [D] int class ids in 1..C-1.
        """
        detections = as_detections(image_id, boxes_yxyx, scores, classes, len(self.class_names))
        if len(detections[1]):
            self._dets.append(detections)

    def evaluate(self):
        """Computes AP per class and mAP for each metric.

        Returns:
          {metric: {"mAP": float or None, "per_class": {name: float or None},
                    "num_gt": {name: int}}  for each metric,
           "pr_curves": {name: {"recall": [D] array, "precision": [D] array,
                                "ap": {metric: float}} or None}}
          "num_gt" counts non-difficult ground truths. AP is None ("n/a") for a class with
          none; mAP is the mean over classes with a defined AP (None if there are none).
        Raises:
          ValueError: detections were added for an image without ground truth.
        """
        missing = sorted({str(d[0]) for d in self._dets if d[0] not in self._image_index})
        if missing:
            raise ValueError(
                f"detections for {len(missing)} image id(s) without ground truth: {missing[:5]}"
                + (" ..." if len(missing) > 5 else "")
            )
        gt_image, gt_boxes, gt_classes, gt_difficult = _concat_ground_truth(self._gt)
        det_image, det_boxes, det_scores, det_classes = self._concat_detections()

        per_class = {m: {} for m in self.metrics}
        num_gt = {}
        curves = {}
        for class_id, name in enumerate(self.class_names[1:], start=1):
            gt_sel = gt_classes == class_id
            num_positives = int(np.sum(~gt_difficult[gt_sel]))
            num_gt[name] = num_positives
            if num_positives == 0:
                for m in self.metrics:
                    per_class[m][name] = None
                curves[name] = None
                continue
            det_sel = np.flatnonzero(det_classes == class_id)
            det_sel = det_sel[np.argsort(-det_scores[det_sel], kind="stable")]
            tp, fp = match_detections(
                det_image[det_sel], det_boxes[det_sel], gt_image[gt_sel], gt_boxes[gt_sel],
                gt_difficult[gt_sel], len(self._gt), self.iou_threshold,
            )
            recall, precision = precision_recall(tp, fp, num_positives)
            aps = {m: _AP_FUNCTIONS[m](recall, precision) for m in self.metrics}
            for m in self.metrics:
                per_class[m][name] = aps[m]
            curves[name] = {"recall": recall, "precision": precision, "ap": aps}

        result = {}
        for m in self.metrics:
            defined = [ap for ap in per_class[m].values() if ap is not None]
            result[m] = {
                "mAP": float(np.mean(defined)) if defined else None,
                "per_class": per_class[m],
                "num_gt": dict(num_gt),
            }
        result["pr_curves"] = curves
        return result

    def _concat_detections(self):
        """All detections as flat arrays, in the order they were added."""
        if not self._dets:
            return np.zeros((0,), np.int64), np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), np.int64)
        image = np.concatenate([np.full(len(d[1]), self._image_index[d[0]], np.int64) for d in self._dets])
        boxes = np.concatenate([d[1] for d in self._dets])
        scores = np.concatenate([d[2] for d in self._dets])
        classes = np.concatenate([d[3] for d in self._dets])
        return image, boxes, scores, classes


def _concat_ground_truth(gt):
    """Per-image ground-truth tuples -> flat (image index, boxes, classes, difficult)."""
    if not gt:
        return np.zeros((0,), np.int64), np.zeros((0, 4)), np.zeros((0,), np.int64), np.zeros((0,), bool)
    image = np.concatenate([np.full(len(g[0]), i, np.int64) for i, g in enumerate(gt)])
    boxes = np.concatenate([g[0] for g in gt])
    classes = np.concatenate([g[1] for g in gt])
    difficult = np.concatenate([g[2] for g in gt])
    return image, boxes, classes, difficult
