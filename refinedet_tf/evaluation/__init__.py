"""Detection metrics: VOC AP (py-faster-rcnn semantics), COCO AP (pycocotools), results
files, PR-curve plots and text reports.

Every evaluator takes boxes as `[ymin, xmin, ymax, xmax]` in original-image pixels; VOC uses
the +1 pixel convention, COCO continuous coordinates (see each module's docstring).
"""

from refinedet_tf.evaluation.coco import COCOEvaluator
from refinedet_tf.evaluation.plots import plot_pr_curves
from refinedet_tf.evaluation.report import format_ap_table
from refinedet_tf.evaluation.results import (
    coco_results_to_detections,
    detections_to_coco_results,
    read_coco_results,
    write_coco_results,
)
from refinedet_tf.evaluation.voc import VOCEvaluator, voc07_ap, voc12_ap, voc_iou

__all__ = [
    "COCOEvaluator",
    "VOCEvaluator",
    "coco_results_to_detections",
    "detections_to_coco_results",
    "format_ap_table",
    "plot_pr_curves",
    "read_coco_results",
    "voc07_ap",
    "voc12_ap",
    "voc_iou",
    "write_coco_results",
]
