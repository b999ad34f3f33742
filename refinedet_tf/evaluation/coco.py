"""COCO box AP/AR through pycocotools' `COCOeval` (iouType "bbox"), fed from memory.

Box format (every box argument here): `[ymin, xmin, ymax, xmax]` in original-image pixels of
the COCO convention: continuous coordinates, width = xmax - xmin (NO +1, unlike VOC). They are
handed to pycocotools as `[x, y, w, h]`.

Ground truth and detections are accumulated image by image (only boxes are kept); `evaluate`
builds the COCO ground-truth dict and the results list in memory, so no annotation file is
needed. Image ids are mapped to internal integers 1..N on the pycocotools side, so str (VOC
stems) and int (COCO) ids both work.
"""

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from refinedet_tf.evaluation.results import resolve_category_ids, yxyx_to_coco_xywh
from refinedet_tf.evaluation.voc import as_boxes, as_classes, as_detections, as_image_id, as_vector, check_class_names

# Order of COCOeval.stats for iouType "bbox" (see COCOeval.summarize).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class COCOEvaluator:
    """Accumulates boxes image by image and computes the 12 COCO box metrics with pycocotools.

    Args:
      class_names: names indexed by contiguous class id; index 0 is background.
      category_ids: the data set's category id of each class: None (identity), a sequence
        indexed by class id like class_names (entry 0 ignored), or {class id: category id}.
        For COCO this maps 1..80 to COCO's 1..90 with gaps.
    """

    def __init__(self, class_names, category_ids=None):
        self.class_names = check_class_names(class_names)
        self.category_ids = resolve_category_ids(category_ids, len(self.class_names))
        self._images = {}  # image id -> {"boxes", "classes", "is_crowd", "areas", "height", "width"}
        self._dets = []  # per add_detections call: (image id, boxes [D, 4], scores [D], classes [D])

    @property
    def num_images(self):
        """Number of images whose ground truth was added."""
        return len(self._images)

    def add_ground_truth(self, image_id, boxes_yxyx, classes, is_crowd=None, height=None, width=None, areas=None):
        """Adds the ground truth of one image (call it once per image, even with no boxes).

        Args:
          image_id: str or int, unique over the data set (COCO: the integer image id).
          boxes_yxyx: [N, 4] float pixels [ymin, xmin, ymax, xmax], COCO convention.
          classes: [N] int contiguous class ids in 1..C-1.
          is_crowd: [N] bool, or None for all False. Crowd boxes are ignored by COCOeval.
          height, width: image size in pixels (stored in the image record; optional).
          areas: [N] float object areas for the small/medium/large split, or None to use the
            box area w * h. Official COCO numbers use the annotation's (mask) `area`: pass it
            to reproduce APs/APm/APl exactly.
        """
        image_id = as_image_id(image_id)
        if image_id in self._images:
            raise ValueError(f"ground truth for image {image_id!r} was already added")
        boxes = as_boxes(boxes_yxyx, "ground-truth boxes_yxyx", image_id)
        n = len(boxes)
        record = {
            "boxes": boxes,
            "classes": as_classes(classes, n, len(self.class_names), "ground-truth classes", image_id),
            "is_crowd": (np.zeros((n,), bool) if is_crowd is None
                         else as_vector(is_crowd, n, "is_crowd", image_id, bool)),
            "areas": None if areas is None else as_vector(areas, n, "areas", image_id, np.float64),
            "height": height,
            "width": width,
        }
        self._images[image_id] = record

    def add_detections(self, image_id, boxes_yxyx, scores, classes):
        """Adds detections of one image; may be called several times for the same image.

        Args:
          image_id: str or int; its ground truth may be added before or after.
          boxes_yxyx: [D, 4] float pixels [ymin, xmin, ymax, xmax], COCO convention.
          scores: [D] float.
          classes: [D] int contiguous class ids in 1..C-1.
        """
        detections = as_detections(image_id, boxes_yxyx, scores, classes, len(self.class_names))
        if len(detections[1]):
            self._dets.append(detections)

    def evaluate(self):
        """Runs COCOeval (evaluate, accumulate, summarize) with its printing silenced.

        Returns:
          {"coco": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                    "ARm", "ARl": float or None (None where pycocotools reports -1, i.e. no
                    ground truth in that area range),
                    "per_class": {name: AP@[.5:.95] or None (no ground truth)},
                    "num_gt": {name: number of non-crowd ground truths},
                    "summary": pycocotools' printed summary (str)},
           "pr_curves": {name: {"recall": [101] recall thresholds, "precision": [101] at
                         IoU 0.5, all areas, 100 detections, "ap": {"AP", "AP50"}} or None}}
        Raises:
          ValueError: detections were added for an image without ground truth.
        """
        missing = sorted({str(d[0]) for d in self._dets if d[0] not in self._images})
        if missing:
            raise ValueError(
                f"detections for {len(missing)} image id(s) without ground truth: {missing[:5]}"
                + (" ..." if len(missing) > 5 else "")
            )
        internal_id = {image_id: i for i, image_id in enumerate(self._images, start=1)}
        log = io.StringIO()
        # pycocotools prints progress and the summary table; keep it out of the caller's
        # output but return the summary.
        with contextlib.redirect_stdout(log):
            coco_gt = COCO()
            coco_gt.dataset = self._ground_truth_dataset(internal_id)
            coco_gt.createIndex()
            coco_dt = self._load_results(coco_gt, internal_id)
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.summarize()
        return self._result(coco_eval, summary.getvalue())

    def _ground_truth_dataset(self, internal_id):
        """The COCO ground-truth dict: images, annotations (ids from 1), categories."""
        images, annotations = [], []
        for image_id, record in self._images.items():
            image = {"id": internal_id[image_id], "file_name": str(image_id)}
            if record["height"] is not None:
                image["height"] = int(record["height"])
            if record["width"] is not None:
                image["width"] = int(record["width"])
            images.append(image)
            xywh = yxyx_to_coco_xywh(record["boxes"])
            areas = xywh[:, 2] * xywh[:, 3] if record["areas"] is None else record["areas"]
            for box, cls, crowd, area in zip(xywh.tolist(), record["classes"].tolist(), record["is_crowd"], areas):
                annotations.append({
                    # COCOeval stores matched gt ids in dtm and treats 0 as "unmatched": start at 1.
                    "id": len(annotations) + 1,
                    "image_id": internal_id[image_id],
                    "category_id": self.category_ids[cls],
                    "bbox": box,
                    "area": float(area),
                    "iscrowd": int(crowd),
                })
        categories = [{"id": self.category_ids[c], "name": self.class_names[c]}
                      for c in range(1, len(self.class_names))]
        return {"images": images, "annotations": annotations, "categories": categories}

    def _load_results(self, coco_gt, internal_id):
        """pycocotools results object; an empty one when there are no detections."""
        results = []
        for image_id, boxes, scores, classes in self._dets:
            for box, score, cls in zip(yxyx_to_coco_xywh(boxes).tolist(), scores.tolist(), classes.tolist()):
                results.append({
                    "image_id": internal_id[image_id],
                    "category_id": self.category_ids[cls],
                    "bbox": box,
                    "score": score,
                })
        if results:
            return coco_gt.loadRes(results)
        # loadRes indexes results[0] and fails on an empty list; no detections is a valid
        # (all-zero) outcome, so build the empty results object directly.
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                           "categories": list(coco_gt.dataset["categories"]), "annotations": []}
        coco_dt.createIndex()
        return coco_dt

    def _result(self, coco_eval, summary):
        """Result dict from an accumulated and summarized COCOeval."""
        metrics = {name: _defined(value) for name, value in zip(STAT_NAMES, coco_eval.stats)}
        # precision (pycocotools' letters): [T iou thresholds, R recall thresholds, K categories, A areas,
        # M max dets];
        # area index 0 = "all", max-dets index -1 = 100; -1 entries mean "no ground truth".
        precision = coco_eval.eval["precision"][:, :, :, 0, -1]
        category_index = {cat: k for k, cat in enumerate(coco_eval.params.catIds)}
        per_class, num_gt, curves = {}, {}, {}
        for c in range(1, len(self.class_names)):
            name = self.class_names[c]
            num_gt[name] = sum(
                int(np.sum((r["classes"] == c) & ~r["is_crowd"])) for r in self._images.values()
            )
            p = precision[:, :, category_index[self.category_ids[c]]]
            if not np.any(p > -1):
                per_class[name] = None
                curves[name] = None
                continue
            per_class[name] = float(np.mean(p[p > -1]))
            p50 = p[0]
            curves[name] = {
                "recall": np.array(coco_eval.params.recThrs),
                "precision": np.array(p50),
                "ap": {"AP": per_class[name], "AP50": float(np.mean(p50[p50 > -1]))},
            }
        metrics.update(per_class=per_class, num_gt=num_gt, summary=summary, by_size=self._by_size(coco_eval))
        return {"coco": metrics, "pr_curves": curves}

    def _by_size(self, coco_eval):
        """AP (IoU 0.5:0.95) and AP50 per COCO area range, with its non-crowd ground-truth count:
        {"small" (< 32^2 px), "medium", "large" (>= 96^2): {"boxes", "AP", "AP50"}} (None where
        the range has no box). pycocotools' own area semantics: boxes outside the range are
        ignored, detections outside it are ignored unless they match a box inside."""
        params = coco_eval.params
        precision = coco_eval.eval["precision"][..., -1]  # [T, R, K, A]
        out = {}
        for a, label in enumerate(params.areaRngLbl):
            if label == "all":
                continue
            low, high = params.areaRng[a]
            boxes = 0
            for record in self._images.values():
                b = record["boxes"]
                areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) if record["areas"] is None else record["areas"]
                boxes += int(np.sum((areas >= low) & (areas < high) & ~record["is_crowd"]))
            p = precision[:, :, :, a]
            p50 = p[0]
            out[label] = {"boxes": boxes, "AP": float(np.mean(p[p > -1])) if np.any(p > -1) else None,
                          "AP50": float(np.mean(p50[p50 > -1])) if np.any(p50 > -1) else None}
        return out


def _defined(value):
    """pycocotools' -1 ("undefined") -> None, else a float."""
    return None if value == -1 else float(value)
