"""COCO metrics through pycocotools: perfect detections, a known shift, undefined classes,
category id mapping, incremental feeding, and error cases."""

import numpy as np
import pytest

from refinedet_tf.evaluation import COCOEvaluator, format_ap_table

# Pixel [ymin, xmin, ymax, xmax], COCO convention (width = xmax - xmin). Areas: 20x20 = 400
# (small, < 32^2), 60x60 = 3600 (medium), 100x100 = 10000 (large).
SMALL = [10, 10, 30, 30]
MEDIUM = [100, 100, 160, 160]
LARGE = [200, 200, 300, 300]


def _evaluator(names=("background", "cat", "dog"), **kwargs):
    return COCOEvaluator(list(names), **kwargs)


def test_ground_truth_as_detections_gives_ap_one(capsys):
    ev = _evaluator()
    ev.add_ground_truth(1, [SMALL, MEDIUM, LARGE], [1, 2, 1], height=400, width=400)
    ev.add_ground_truth(2, [LARGE, MEDIUM], [2, 2])
    ev.add_detections(1, [SMALL, MEDIUM, LARGE], [0.9, 0.8, 0.7], [1, 2, 1])
    ev.add_detections(2, [LARGE, MEDIUM], [0.6, 0.5], [2, 2])
    coco = ev.evaluate()["coco"]
    for key in ("AP", "AP50", "AP75", "APm", "APl", "AR10", "AR100"):
        assert coco[key] == pytest.approx(1.0), key
    # AR1 keeps 1 detection per image and class: cat finds 1 of 2 in image 1 (recall 1/2),
    # dog 1 of 1 in image 1 and 1 of 2 in image 2 (recall 2/3): (1/2 + 2/3) / 2 = 7/12.
    assert coco["AR1"] == pytest.approx(7 / 12)
    # dog has no small box: APs over cat only (still 1); ARs likewise.
    assert coco["APs"] == pytest.approx(1.0)
    assert coco["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert coco["num_gt"] == {"cat": 2, "dog": 3}
    assert "Average Precision" in coco["summary"]
    assert capsys.readouterr().out == ""  # pycocotools' prints are silenced


def test_partial_shift_gives_known_ap():
    # A 100 x 100 box shifted right by 16 px: IoU = 84 / 116 = 0.724. It matches at the IoU
    # thresholds .50, .55, .60, .65, .70 (precision 1 at every recall) and at none of
    # .75 .. .95 (precision 0): AP = 5 / 10 = 0.5, AP50 = 1, AP75 = 0.
    ev = _evaluator()
    gt = np.array([LARGE, [0, 0, 100, 100]], float)
    ev.add_ground_truth("a", gt, [1, 2])
    ev.add_detections("a", gt + [0, 16, 0, 16], [0.9, 0.8], [1, 2])
    coco = ev.evaluate()["coco"]
    assert coco["AP"] == pytest.approx(0.5)
    assert coco["AP50"] == pytest.approx(1.0)
    assert coco["AP75"] == pytest.approx(0.0)
    assert coco["APl"] == pytest.approx(0.5)
    assert coco["APs"] is None and coco["APm"] is None  # no small/medium GT: pycocotools' -1


def test_shift_below_half_iou_gives_zero():
    # Shift 40 px: IoU = 60 / 140 = 0.43 < 0.5 at every threshold.
    ev = _evaluator()
    ev.add_ground_truth("a", [LARGE], [1])
    ev.add_detections("a", [np.add(LARGE, [0, 40, 0, 40])], [0.9], [1])
    coco = ev.evaluate()["coco"]
    assert coco["AP"] == 0.0 and coco["AP50"] == 0.0


def test_class_without_ground_truth_is_none_and_excluded():
    ev = _evaluator(("background", "cat", "dog", "bird"))
    # cat found perfectly, dog missed, bird has no ground truth but a false detection.
    ev.add_ground_truth(7, [LARGE, MEDIUM], [1, 2])
    ev.add_detections(7, [LARGE, SMALL], [0.9, 0.8], [1, 3])
    result = ev.evaluate()
    coco = result["coco"]
    assert coco["per_class"] == {"cat": pytest.approx(1.0), "dog": 0.0, "bird": None}
    assert coco["AP"] == pytest.approx(0.5)  # mean of cat (1) and dog (0)
    assert result["pr_curves"]["bird"] is None
    assert result["pr_curves"]["cat"]["precision"].shape == (101,)
    table = format_ap_table(result)
    assert "n/a" in table and "coco AP: 0.5000" in table


def test_no_detections_gives_zero_not_crash():
    ev = _evaluator()
    ev.add_ground_truth(1, [LARGE], [1])
    coco = ev.evaluate()["coco"]
    assert coco["AP"] == 0.0 and coco["per_class"] == {"cat": 0.0, "dog": None}


def test_category_ids_mapping_and_crowd():
    # Contiguous 1, 2 -> dataset categories 18, 44 (gaps as in COCO).
    ev = _evaluator(category_ids=[None, 18, 44])
    ev.add_ground_truth(1, [LARGE, MEDIUM], [1, 2], is_crowd=[False, True])
    ev.add_detections(1, [LARGE], [0.9], [1])
    coco = ev.evaluate()["coco"]
    assert coco["per_class"] == {"cat": pytest.approx(1.0), "dog": None}  # crowd-only class
    assert coco["num_gt"] == {"cat": 1, "dog": 0}
    with pytest.raises(ValueError, match="expected 3 entries"):
        _evaluator(category_ids=[18, 44])
    with pytest.raises(ValueError, match="no entry for class id"):
        _evaluator(category_ids={1: 18})


def test_incremental_feed_equals_one_shot():
    rng = np.random.default_rng(0)
    data = []
    for image_id in range(8):
        n = int(rng.integers(1, 5))
        yx = rng.uniform(0, 300, size=(n, 2))
        hw = rng.uniform(8, 120, size=(n, 2))
        gt = np.concatenate([yx, yx + hw], axis=1)
        cls = rng.integers(1, 3, size=n)
        det = gt + rng.normal(0, 6, size=gt.shape)
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        data.append((image_id, gt, cls, det, rng.random(n), cls))
    once = _evaluator()
    for image_id, gt, cls, det, scores, det_cls in data:
        once.add_ground_truth(image_id, gt, cls)
        once.add_detections(image_id, det, scores, det_cls)
    batched = _evaluator()
    for image_id, gt, cls, *_ in data:
        batched.add_ground_truth(image_id, gt, cls)
    for image_id, _, _, det, scores, det_cls in data:
        batched.add_detections(image_id, det[:1], scores[:1], det_cls[:1])
        batched.add_detections(image_id, det[1:], scores[1:], det_cls[1:])
    a, b = once.evaluate()["coco"], batched.evaluate()["coco"]
    assert a == b
    assert 0.0 < a["AP"] < 1.0


def test_errors_name_the_offender():
    ev = _evaluator()
    ev.add_ground_truth(1, [LARGE], [1])
    with pytest.raises(ValueError, match="image 1 was already added"):
        ev.add_ground_truth(1, [LARGE], [1])
    ev.add_detections(99, [LARGE], [0.5], [1])
    with pytest.raises(ValueError, match=r"without ground truth: \['99'\]"):
        ev.evaluate()
