"""What the model confuses: a detection confusion matrix with a background row and column.

Per image, detections with score >= `score_threshold` are taken in descending score order;
each is matched to the not yet matched ground-truth box **of any class** with the highest IoU,
if that IoU >= `iou_threshold` (VOC's +1 pixel convention). Then:

  matched to a box of class t, predicted p -> matrix[t, p] += 1 (t == p: correct)
  matched to nothing                       -> matrix[0, p] += 1 (a false alarm on background)
  a ground-truth box of class t left over  -> matrix[t, 0] += 1 (missed)

Rows are the truth, columns the prediction; row and column 0 are background, so the matrix
counts every detection kept and every ground-truth box exactly once. Difficult boxes (VOC) are
matched but not counted, and so are the detections matched to them, as voc_eval ignores them.
This is the TF Object Detection API's and Ultralytics' definition, at their usual thresholds
(score 0.5, IoU 0.5).
"""

from __future__ import annotations

import numpy as np

DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_IOU_THRESHOLD = 0.5


def _iou_plus_one(box, boxes):
    """IoU of one VOC-pixel yxyx box with [N, 4], +1 pixel convention."""
    h = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1.0, 0, None)
    w = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1.0, 0, None)
    inter = h * w

    def area(b):
        return (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)

    return inter / (area(box) + area(boxes) - inter)


class ConfusionMatrix:
    """Accumulates the matrix over images (see the module docstring).

    Args:
      class_names: index = class id, 0 = background.
    """

    def __init__(self, class_names, score_threshold=DEFAULT_SCORE_THRESHOLD, iou_threshold=DEFAULT_IOU_THRESHOLD):
        self.class_names = list(class_names)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.matrix = np.zeros((len(self.class_names),) * 2, np.int64)

    def add(self, gt_boxes, gt_classes, det_boxes, det_scores, det_classes, gt_difficult=None):
        """One image; boxes [N, 4] yxyx in VOC pixels (as VOCEvaluator takes them)."""
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
        difficult = np.zeros(len(gt_classes), bool) if gt_difficult is None else np.asarray(gt_difficult, bool)
        det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
        det_scores = np.asarray(det_scores, np.float64).reshape(-1)
        det_classes = np.asarray(det_classes, np.int64).reshape(-1)
        taken = np.zeros(len(gt_classes), bool)
        for d in np.argsort(-det_scores, kind="stable"):
            if det_scores[d] < self.score_threshold:
                break
            iou = _iou_plus_one(det_boxes[d], gt_boxes) if len(gt_boxes) else np.zeros(0)
            iou = np.where(taken, -1.0, iou)
            g = int(np.argmax(iou)) if len(iou) else -1
            if g >= 0 and iou[g] >= self.iou_threshold:
                taken[g] = True
                if not difficult[g]:
                    self.matrix[gt_classes[g], det_classes[d]] += 1
            else:
                self.matrix[0, det_classes[d]] += 1
        for g in np.flatnonzero(~taken & ~difficult):
            self.matrix[gt_classes[g], 0] += 1

    def to_dict(self):
        return {"classes": self.class_names, "rows": "truth", "columns": "prediction",
                "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
                "matrix": self.matrix.tolist()}


def plot_confusion_matrix(confusion, path=None):
    """The matrix (`ConfusionMatrix.to_dict()`) as a heat map with counts, rows normalized for
    the colours. Writes a PNG to `path` and returns it, or returns the RGB image (uint8
    [H, W, 3]) when `path` is None; None without matplotlib (the optional `plot` extra)."""
    try:
        import matplotlib  # noqa: PLC0415  optional (plot extra)
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  optional (plot extra), after matplotlib.use

    matrix = np.asarray(confusion["matrix"])
    names = ["background"] + list(confusion["classes"][1:])
    n = len(names)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    axis.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for t in range(n):
        for p in range(n):
            if matrix[t, p]:
                axis.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=8,
                          color="white" if rows[t, p] > 0.5 else "black")
    axis.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(n), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"score >= {confusion['score_threshold']:g}, IoU >= {confusion['iou_threshold']:g}", fontsize=9)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return image
