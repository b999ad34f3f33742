"""VOC AP: hand-computed cases, the +1 pixel convention, difficult handling, ties, undefined
classes, incremental feeding, and agreement with a transcription of py-faster-rcnn voc_eval."""

import numpy as np
import pytest

from refinedet_tf.evaluation import VOCEvaluator, format_ap_table, voc07_ap, voc12_ap, voc_iou

# Boxes below are pixel [ymin, xmin, ymax, xmax], VOC +1 convention.
G1 = [1, 1, 10, 10]  # 10 x 10 px
G2 = [20, 20, 40, 40]  # difficult
G3 = [5, 5, 50, 50]


def _hand_case():
    ev = VOCEvaluator(["background", "cat"])
    ev.add_ground_truth("img_a", [G1, G2], [1, 1], difficult=[False, True])
    ev.add_ground_truth("img_b", [G3], [1])
    # d1 0.9 on G1 (TP), d2 0.8 on G1 again (duplicate: FP), d3 0.7 on difficult G2 (ignored),
    # d4 0.6 in img_b on nothing (FP), d5 0.5 on G3 (TP). Added out of score order on purpose.
    ev.add_detections("img_b", [[60, 60, 70, 70], G3], [0.6, 0.5], [1, 1])
    ev.add_detections("img_a", [G1, G1, G2], [0.9, 0.8, 0.7], [1, 1, 1])
    return ev


def test_hand_computed_voc07_and_voc12():
    result = _hand_case().evaluate()
    # npos = 2 (G1, G3; G2 is difficult). In score order d1..d5:
    #   tp = [1, 0, 0, 0, 1], fp = [0, 1, 0, 1, 0]   (d3 is neither)
    #   cumtp = [1, 1, 1, 1, 2], cumfp = [0, 1, 1, 2, 2]
    #   recall    = [.5, .5, .5, .5, 1]
    #   precision = [1, 1/2, 1/2, 1/3, 1/2]
    # VOC07: t in {0, .1, .2, .3, .4, .5} -> max precision with recall >= t = 1   (6 points)
    #        t in {.6, .7, .8, .9, 1.0}   -> only recall 1 qualifies -> 1/2      (5 points)
    #        AP = (6 * 1 + 5 * 0.5) / 11 = 8.5 / 11
    # VOC12: envelope over recall [0, .5, .5, .5, .5, 1, 1] = [1, 1, .5, .5, .5, .5, 0];
    #        AP = (.5 - 0) * 1 + (1 - .5) * .5 = 0.75
    # (Counting d3 as FP would give 0.7 for VOC12; counting d2 as TP would give recall > 1.)
    assert result["voc07"]["per_class"]["cat"] == pytest.approx(8.5 / 11, abs=1e-12)
    assert result["voc12"]["per_class"]["cat"] == pytest.approx(0.75, abs=1e-12)
    assert result["voc07"]["mAP"] == pytest.approx(8.5 / 11, abs=1e-12)
    assert result["voc07"]["num_gt"] == {"cat": 2}
    curve = result["pr_curves"]["cat"]
    np.testing.assert_allclose(curve["recall"], [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(curve["precision"], [1, 1 / 2, 1 / 2, 1 / 3, 1 / 2])


def test_iou_uses_plus_one_convention_and_threshold_is_strict():
    # G1 is 10 x 10 = 100 px; [1, 1, 10, 5] covers 10 x 5 = 50 px, all inside G1 -> IoU 50/100.
    # (Without the +1: 9 * 4 / (9 * 9) = 0.444.)
    assert voc_iou(np.array([[1, 1, 10, 5]]), np.array([[G1]]))[0, 0] == 0.5
    ev = VOCEvaluator(["background", "cat"])
    ev.add_ground_truth(0, [G1], [1])
    ev.add_detections(0, [[1, 1, 10, 5]], [0.9], [1])
    # IoU exactly 0.5 is not > 0.5: FP, AP 0.
    assert ev.evaluate()["voc12"]["per_class"]["cat"] == 0.0


def test_ap_functions_on_hand_values():
    # One TP at recall 1 after one FP: precision [0, 1/2].
    assert voc12_ap([0.0, 1.0], [0.0, 0.5]) == 0.5
    assert voc07_ap([0.0, 1.0], [0.0, 0.5]) == pytest.approx(0.5)
    # Recall reaching 0.3 exactly misses np.arange's 0.30000000000000004 point, as voc_eval:
    # thresholds 0, .1, .2 get precision 1 -> 3/11.
    assert voc07_ap([0.3], [1.0]) == pytest.approx(3 / 11)
    assert voc12_ap([], []) == 0.0 and voc07_ap([], []) == 0.0


def test_ground_truth_as_detections_gives_ap_one():
    rng = np.random.default_rng(0)
    ev = VOCEvaluator(["background", "a", "b"])
    for image in range(4):
        boxes = _random_boxes(rng, 5)
        classes = rng.integers(1, 3, size=5)
        ev.add_ground_truth(f"im{image}", boxes, classes)
        ev.add_detections(f"im{image}", boxes, rng.uniform(0.1, 1.0, size=5), classes)
    result = ev.evaluate()
    for metric in ("voc07", "voc12"):
        assert result[metric]["mAP"] == pytest.approx(1.0)
        assert all(ap == pytest.approx(1.0) for ap in result[metric]["per_class"].values())


@pytest.mark.parametrize("shift, expected_ap", [(30, 1.0), (40, 0.0)])
def test_shifted_detections(shift, expected_ap):
    # 100 x 100 px box shifted right by s: IoU = (100 - s) * 100 / (2 * 100 * 100 - (100 - s) * 100)
    #   s = 30 -> 70 / 130 = 0.538 (TP), s = 40 -> 60 / 140 = 0.429 (FP).
    gt = np.array([[0, 0, 99, 99], [200, 200, 299, 299]], float)
    ev = VOCEvaluator(["background", "cat"])
    ev.add_ground_truth("x", gt, [1, 1])
    ev.add_detections("x", gt + [0, shift, 0, shift], [0.9, 0.8], [1, 1])
    result = ev.evaluate()
    assert result["voc07"]["per_class"]["cat"] == pytest.approx(expected_ap)
    assert result["voc12"]["per_class"]["cat"] == pytest.approx(expected_ap)


def test_class_without_ground_truth_is_none_and_excluded_from_map():
    ev = VOCEvaluator(["background", "cat", "dog", "bird", "cow"])
    ev.add_ground_truth("a", [G1, G3, G2], [1, 2, 4], difficult=[False, False, True])
    # cat: found (AP 1); dog: missed (AP 0); bird: no GT but a detection; cow: difficult only.
    ev.add_detections("a", [G1, [60, 60, 70, 70], G2], [0.9, 0.8, 0.7], [1, 3, 4])
    result = ev.evaluate()
    for metric in ("voc07", "voc12"):
        per_class = result[metric]["per_class"]
        assert per_class == {"cat": pytest.approx(1.0), "dog": 0.0, "bird": None, "cow": None}
        assert result[metric]["mAP"] == pytest.approx(0.5)  # mean of cat and dog only
    assert result["pr_curves"]["bird"] is None
    table = format_ap_table(result)
    assert "bird" in table and "n/a" in table and "voc07 mAP: 0.5000" in table


def test_no_ground_truth_at_all_gives_undefined_map():
    ev = VOCEvaluator(["background", "cat"])
    ev.add_ground_truth("a", np.zeros((0, 4)), [])
    assert ev.evaluate()["voc12"] == {"mAP": None, "per_class": {"cat": None}, "num_gt": {"cat": 0}}


def test_ties_keep_input_order():
    # Two detections with equal scores: the stable sort keeps input order.
    def ap(first_is_hit):
        ev = VOCEvaluator(["background", "cat"])
        ev.add_ground_truth(0, [G1], [1])
        dets = [G1, [60, 60, 70, 70]] if first_is_hit else [[60, 60, 70, 70], G1]
        ev.add_detections(0, dets, [0.5, 0.5], [1, 1])
        r = ev.evaluate()
        return r["voc07"]["per_class"]["cat"], r["voc12"]["per_class"]["cat"]

    # hit first: precision [1, 1/2] at recall [1, 1] -> 1.0 for both metrics.
    assert ap(True) == (pytest.approx(1.0), pytest.approx(1.0))
    # miss first: precision [0, 1/2] at recall [0, 1] -> 0.5 for both metrics.
    assert ap(False) == (pytest.approx(0.5), pytest.approx(0.5))


def test_incremental_feed_equals_one_shot():
    rng = np.random.default_rng(1)
    images = [(f"im{i}", *_random_image(rng)) for i in range(12)]
    once = VOCEvaluator(["background", "a", "b", "c"])
    for image_id, gt, gt_cls, diff, det, scores, det_cls in images:
        once.add_ground_truth(image_id, gt, gt_cls, diff)
        once.add_detections(image_id, det, scores, det_cls)
    batched = VOCEvaluator(["background", "a", "b", "c"])
    # Detections before ground truth, in batches of 5 images, each image's split in two calls.
    for start in range(0, len(images), 5):
        for image_id, _, _, _, det, scores, det_cls in images[start:start + 5]:
            half = len(det) // 2
            batched.add_detections(image_id, det[:half], scores[:half], det_cls[:half])
            batched.add_detections(image_id, det[half:], scores[half:], det_cls[half:])
    for image_id, gt, gt_cls, diff, *_ in reversed(images):
        batched.add_ground_truth(image_id, gt, gt_cls, diff)
    a, b = once.evaluate(), batched.evaluate()
    for metric in ("voc07", "voc12"):
        assert a[metric] == b[metric]
    assert 0.0 < a["voc12"]["mAP"] < 1.0  # a non-trivial case


def test_agrees_with_py_faster_rcnn_voc_eval_transcription():
    rng = np.random.default_rng(2)
    images = [(i, *_random_image(rng)) for i in range(30)]
    ev = VOCEvaluator(["background", "a", "b", "c"])
    for image_id, gt, gt_cls, diff, det, scores, det_cls in images:
        ev.add_ground_truth(image_id, gt, gt_cls, diff)
        ev.add_detections(image_id, det, scores, det_cls)
    result = ev.evaluate()
    for cls, name in enumerate(["a", "b", "c"], start=1):
        for metric, use_07 in (("voc07", True), ("voc12", False)):
            expected = _voc_eval_reference(images, cls, use_07)
            assert result[metric]["per_class"][name] == pytest.approx(expected, abs=1e-12)


def test_matching_is_chunked_without_changing_results(monkeypatch):
    rng = np.random.default_rng(3)
    images = [(i, *_random_image(rng)) for i in range(6)]

    def run():
        ev = VOCEvaluator(["background", "a", "b", "c"])
        for image_id, gt, gt_cls, diff, det, scores, det_cls in images:
            ev.add_ground_truth(image_id, gt, gt_cls, diff)
            ev.add_detections(image_id, det, scores, det_cls)
        return ev.evaluate()["voc12"]

    full = run()
    monkeypatch.setattr("refinedet_tf.evaluation.voc._MAX_IOU_ELEMENTS", 3)
    assert run() == full


def test_bad_inputs_raise_naming_the_offender():
    ev = VOCEvaluator(["background", "cat"])
    ev.add_ground_truth("a", [G1], [1])
    with pytest.raises(ValueError, match="image 'a' was already added"):
        ev.add_ground_truth("a", [G1], [1])
    with pytest.raises(ValueError,
                       match=r"expected ground-truth boxes_yxyx \[N, 4\] for image 'b', got shape \[1, 3\]"):
        ev.add_ground_truth("b", [[1, 2, 3]], [1])
    with pytest.raises(ValueError, match="class id 2 at row 0; expected 1..1"):
        ev.add_ground_truth("b", [G1], [2])
    with pytest.raises(ValueError, match="class id 0 at row 0"):
        ev.add_detections("a", [G1], [0.5], [0])
    with pytest.raises(ValueError, match="non-finite score at row 1"):
        ev.add_detections("a", [G1, G1], [0.5, np.nan], [1, 1])
    with pytest.raises(ValueError, match="row 0 is not"):
        ev.add_detections("a", [[10, 10, 1, 1]], [0.5], [1])
    with pytest.raises(TypeError, match="image_id must be a str or an int"):
        ev.add_detections(1.5, [G1], [0.5], [1])
    with pytest.raises(ValueError, match="metrics must be"):
        VOCEvaluator(["background", "cat"], metrics=("voc2007",))
    ev.add_detections("ghost", [G1], [0.5], [1])
    with pytest.raises(ValueError, match=r"without ground truth: \['ghost'\]"):
        ev.evaluate()


# ----------------------------------------------------------------------------------------
def _random_boxes(rng, n):
    """[n, 4] integer pixel yxyx boxes inside a 200 x 200 image."""
    ymin, xmin = rng.integers(1, 150, size=(2, n))
    h, w = rng.integers(5, 50, size=(2, n))
    return np.stack([ymin, xmin, ymin + h, xmin + w], axis=1).astype(float)


def _random_image(rng):
    """Ground truth with some difficult boxes, and detections near and away from it."""
    n = int(rng.integers(1, 6))
    gt = _random_boxes(rng, n)
    gt_cls = rng.integers(1, 4, size=n)
    diff = rng.random(n) < 0.2
    near = gt[rng.integers(0, n, size=6)] + rng.normal(0, 4, size=(6, 4)).round()
    near[:, 2:] = np.maximum(near[:, 2:], near[:, :2])
    det = np.concatenate([near, _random_boxes(rng, 3)])
    det_cls = np.concatenate([gt_cls[rng.integers(0, n, size=6)], rng.integers(1, 4, size=3)])
    return gt, gt_cls, diff, det, rng.random(len(det)), det_cls


def _voc_eval_reference(images, classname, use_07_metric, ovthresh=0.5):
    """Line-by-line transcription of py-faster-rcnn's voc_eval (xyxy order, per-box loop)."""
    class_recs, npos = {}, 0
    for image_id, gt, gt_cls, diff, *_ in images:
        sel = gt_cls == classname
        bbox = gt[sel][:, [1, 0, 3, 2]]
        difficult = diff[sel].astype(bool)
        npos += sum(~difficult)
        class_recs[image_id] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}
    image_ids, confidence, bb_all = [], [], []
    for image_id, *_, det, scores, det_cls in images:
        for box, score, c in zip(det, scores, det_cls):
            if c == classname:
                image_ids.append(image_id)
                confidence.append(score)
                bb_all.append(box[[1, 0, 3, 2]])
    confidence = np.array(confidence)
    BB = np.array(bb_all).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def test_detection_thinner_than_a_pixel_is_scored_as_one_pixel_thick():
    from refinedet_tf.evaluation.runner import DetectionEvaluation

    # GT: VOC pixels rows 11..11 (one pixel), columns 1..100 of a 100x100 image.
    targets = {"image_id": np.array([b"a"]), "height": np.array([100]), "width": np.array([100]),
               "mask": np.array([[True]]), "boxes": np.array([[[0.10, 0.0, 0.11, 1.0]]], np.float64),
               "classes": np.array([[1]]), "difficult": np.array([[False]])}
    # A detection 0.3 px high on that row: 1-based pixels would give ymin 11.2 > ymax 10.5.
    detections = {"num_detections": np.array([1]), "detection_boxes": np.array([[[0.102, 0.0, 0.105, 1.0]]]),
                  "detection_scores": np.array([[0.9]]), "detection_classes": np.array([[1]])}
    evaluation = DetectionEvaluation(["background", "thin"])
    evaluation.add_batch(targets, detections)
    result = evaluation.result()
    assert result["voc07"]["mAP"] == pytest.approx(1.0)
