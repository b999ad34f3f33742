"""Running a detector over an evaluation dataset and scoring it: the one code path used by
`evaluate.py` and by the training loop's periodic evaluation.

Images are only ever held one batch at a time; the evaluators keep boxes only.
"""

import time

import numpy as np
import tensorflow as tf

from refinedet_tf.data.box_conventions import normalized_to_voc_pixels
from refinedet_tf.evaluation.coco import COCOEvaluator
from refinedet_tf.evaluation.confusion import ConfusionMatrix
from refinedet_tf.evaluation.voc import VOCEvaluator

VOC_METRICS = ("voc07", "voc12")


def make_predict_fn(model, architecture, max_detections=None):
    """tf.function: a pipeline batch's images (preprocessed [B, S, S, 3], or the keep_aspect dict
    with image_info, `data.pipeline`) -> `architecture.detect`'s dict."""
    @tf.function(reduce_retracing=True)
    def predict(images):
        return architecture.detect(model(images, training=False), max_detections=max_detections)

    return predict


def _voc_pixels(boxes_yxyx, height, width):
    """Normalized boxes in VOC's 1-based inclusive pixels, as voc_eval reads them.

    Rounded to 1e-4 pixel: a VOC box stored as normalized float32 comes back to its integer
    corners (a 1-pixel box [7, 7], not [7.0000001, 7.00000003]). A box thinner than a pixel (a
    zero-area COCO box, or a detection of an untrained model) would come out with
    min = y*H + 1 > max = y*H; it becomes one pixel thick instead, the thinnest box VOC's
    inclusive extents can express.
    """
    boxes = np.round(normalized_to_voc_pixels(boxes_yxyx, height, width), 4)
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2])
    return boxes


def ground_truth_targets(meta):
    """One image's ground truth (a reader's metadata entry) as a batch of one, in the eval
    pipeline's target layout (`DetectionEvaluation.add_batch`)."""
    boxes = np.asarray(meta["boxes"], np.float32).reshape(-1, 4)
    return {
        "image_id": [meta["image_id"]], "height": [meta["height"]], "width": [meta["width"]],
        "boxes": boxes[None], "classes": np.asarray(meta["classes"])[None],
        "mask": np.ones((1, len(boxes)), bool), "difficult": np.asarray(meta["difficult"], bool)[None],
        "is_crowd": np.asarray(meta["is_crowd"], bool)[None],
    }


def _to_str(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class DetectionEvaluation:
    """Feeds batches of (targets, detections) to the VOC and/or COCO evaluators, and to the
    diagnostics: a confusion matrix (confusion.py) and AP by object size (COCO's areas).

    Args:
      class_names: list, index = class id, 0 = background.
      metrics: subset of ("voc07", "voc12", "coco").
      category_ids: dataset ids per class id for COCO (label map `dataset_ids`), or None.
      diagnostics: also compute `confusion_matrix` and `by_size` (the latter runs pycocotools
        even when "coco" is not among the metrics).
    """

    def __init__(self, class_names, metrics=("voc07",), category_ids=None, diagnostics=True):
        unknown = sorted(set(metrics) - set(VOC_METRICS) - {"coco"})
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: voc07, voc12, coco")
        self.metrics = tuple(metrics)
        voc = tuple(m for m in metrics if m in VOC_METRICS)
        self.voc = VOCEvaluator(class_names, metrics=voc) if voc else None
        wants_coco = "coco" in metrics or diagnostics
        self.coco = COCOEvaluator(class_names, category_ids=category_ids) if wants_coco else None
        self.confusion = ConfusionMatrix(class_names) if diagnostics else None
        self.num_images = 0

    def add_batch(self, targets, detections):
        """targets: the eval pipeline's dict (numpy or tensors); detections: `Architecture.detect`'s dict."""
        t = {k: np.asarray(v) for k, v in targets.items()}
        d = {k: np.asarray(v) for k, v in detections.items()}
        for i in range(len(t["image_id"])):
            image_id = _to_str(t["image_id"][i])
            h, w = int(t["height"][i]), int(t["width"][i])
            valid = t["mask"][i]
            gt_norm = t["boxes"][i][valid]
            gt_classes = t["classes"][i][valid]
            difficult = t["difficult"][i][valid] if "difficult" in t else None
            n = int(d["num_detections"][i])
            det_norm = d["detection_boxes"][i][:n]
            scores = d["detection_scores"][i][:n]
            det_classes = d["detection_classes"][i][:n].astype(np.int64)
            if self.voc is not None:
                self.voc.add_ground_truth(image_id, _voc_pixels(gt_norm, h, w), gt_classes, difficult)
                self.voc.add_detections(image_id, _voc_pixels(det_norm, h, w), scores, det_classes)
            if self.confusion is not None:
                self.confusion.add(_voc_pixels(gt_norm, h, w), gt_classes, _voc_pixels(det_norm, h, w), scores,
                                   det_classes, difficult)
            if self.coco is not None:
                scale = np.array([h, w, h, w], np.float64)
                crowd = t["is_crowd"][i][valid] if "is_crowd" in t else None
                self.coco.add_ground_truth(image_id, gt_norm * scale, gt_classes, is_crowd=crowd, height=h, width=w)
                self.coco.add_detections(image_id, det_norm * scale, scores, det_classes)
            self.num_images += 1

    def result(self):
        """{metric: {...}} from the evaluators, plus `pr_curves` of the VOC one."""
        out = {}
        if self.voc is not None:
            out.update(self.voc.evaluate())
        if self.coco is not None:
            coco = self.coco.evaluate()
            if "coco" in self.metrics:
                out["coco"] = coco["coco"]
                out.setdefault("pr_curves", coco.get("pr_curves"))
            if self.confusion is not None:
                out["by_size"] = coco["coco"]["by_size"]
        if self.confusion is not None:
            out["confusion_matrix"] = self.confusion.to_dict()
        return out


def evaluate_dataset(predict_fn, dataset, class_names, metrics=("voc07",), category_ids=None,
                     max_batches=None, on_batch=None, diagnostics=True):
    """Runs `predict_fn` over an eval-pipeline dataset and scores it.

    Args:
      predict_fn: preprocessed images -> `detect` dict (e.g. `make_predict_fn`).
      dataset: `(images, targets)` batches from `make_dataset(..., training=False)`.
      on_batch: optional callback(images, targets, detections), e.g. to draw examples.
      diagnostics: also the confusion matrix and AP by size (`DetectionEvaluation`).
    Returns:
      (result dict as `DetectionEvaluation.result`, {"images": n, "seconds": s}).
    """
    evaluation = DetectionEvaluation(class_names, metrics, category_ids, diagnostics=diagnostics)
    start = time.perf_counter()
    for step, (images, targets) in enumerate(dataset):
        if max_batches is not None and step >= max_batches:
            break
        detections = predict_fn(images)
        if on_batch is not None:
            on_batch(images, targets, detections)
        evaluation.add_batch(targets, detections)
    seconds = time.perf_counter() - start
    return evaluation.result(), {"images": evaluation.num_images, "seconds": seconds}


def summary_map(result, metric="voc07"):
    """The headline number of a result (mAP for VOC, AP for COCO), or None."""
    if metric == "coco":
        return result.get("coco", {}).get("AP")
    return result.get(metric, {}).get("mAP")
