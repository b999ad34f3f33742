"""The confusion matrix on a hand-made case, AP by object size, and both through evaluate.py."""

import io
import json

import numpy as np
import pytest

from refinedet_tf.evaluation.confusion import ConfusionMatrix, plot_confusion_matrix
from refinedet_tf.evaluation.runner import DetectionEvaluation

NAMES = ["background", "cat", "dog", "bird"]


def test_hand_made_case():
    """VOC pixels, yxyx. Ground truth: cat A, dog B, bird C (missed), cat D (difficult)."""
    gt = np.array([[1, 1, 10, 10], [21, 21, 40, 40], [61, 61, 70, 70], [81, 81, 90, 90]], float)
    gt_classes = [1, 2, 3, 1]
    difficult = [False, False, False, True]
    det = np.array([
        [1, 1, 10, 10],      # 0.9 cat on cat A: right
        [21, 21, 40, 41],    # 0.8 cat on dog B: IoU 20*19/20*20 ... >= 0.5, wrong class
        [1, 1, 10, 11],      # 0.7 dog on cat A, already taken: nothing left with IoU >= 0.5 -> false alarm
        [81, 81, 90, 90],    # 0.6 bird on the difficult cat D: not counted
        [41, 41, 50, 50],    # 0.55 dog on empty space: false alarm
        [61, 61, 70, 70],    # 0.4 bird on bird C: below the 0.5 score threshold, so C is missed
    ], float)
    scores = [0.9, 0.8, 0.7, 0.6, 0.55, 0.4]
    det_classes = [1, 1, 2, 3, 2, 3]
    confusion = ConfusionMatrix(NAMES)
    confusion.add(gt, gt_classes, det, scores, det_classes, difficult)
    expected = np.zeros((4, 4), int)
    expected[1, 1] = 1  # cat -> cat
    expected[2, 1] = 1  # dog -> cat
    expected[0, 2] = 2  # background -> dog, twice
    expected[3, 0] = 1  # bird missed
    np.testing.assert_array_equal(confusion.matrix, expected)
    # Every kept, non-ignored detection and every non-difficult box is counted once.
    assert confusion.matrix[:, 1:].sum() == 4 and confusion.matrix[1:, :].sum() == 3
    lower = ConfusionMatrix(NAMES, score_threshold=0.3)
    lower.add(gt, gt_classes, det, scores, det_classes, difficult)
    assert lower.matrix[3, 3] == 1 and lower.matrix[3, 0] == 0


def test_an_image_without_ground_truth_or_detections():
    confusion = ConfusionMatrix(NAMES)
    confusion.add(np.zeros((0, 4)), [], [[1, 1, 5, 5]], [0.9], [2])
    confusion.add([[1, 1, 5, 5]], [3], np.zeros((0, 4)), [], [])
    assert confusion.matrix[0, 2] == 1 and confusion.matrix[3, 0] == 1 and confusion.matrix.sum() == 2


def test_plot_is_an_image_or_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    confusion = ConfusionMatrix(NAMES)
    confusion.add([[1, 1, 10, 10]], [1], [[1, 1, 10, 10]], [0.9], [2])
    image = plot_confusion_matrix(confusion.to_dict())
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert plot_confusion_matrix(confusion.to_dict(), str(tmp_path / "m.png")) == str(tmp_path / "m.png")


def test_evaluation_reports_the_matrix_and_ap_by_size():
    """A 200 x 200 image: a small (10 px), a medium (50 px) and a large (110 px) cat, each
    found exactly; one extra dog. AP by size is 1 per size; the dog is a false alarm."""
    evaluation = DetectionEvaluation(NAMES, ("voc07",))
    gt = np.array([[0, 0, 10, 10], [50, 50, 100, 100], [80, 80, 190, 190]], np.float32) / 200
    det = np.concatenate([gt, [[0.9, 0.9, 0.95, 0.95]]]).astype(np.float32)
    targets = {"image_id": [b"x"], "height": [200], "width": [200], "boxes": gt[None],
               "classes": np.array([[1, 1, 1]]), "mask": np.ones((1, 3), bool), "difficult": np.zeros((1, 3), bool),
               "is_crowd": np.zeros((1, 3), bool)}
    detections = {"detection_boxes": det[None], "detection_scores": np.array([[0.9, 0.8, 0.7, 0.6]]),
                  "detection_classes": np.array([[1, 1, 1, 2]]), "num_detections": np.array([4])}
    evaluation.add_batch(targets, detections)
    result = evaluation.result()
    assert "coco" not in result  # asked for VOC only; the size split still runs pycocotools
    assert {k: v["boxes"] for k, v in result["by_size"].items()} == {"small": 1, "medium": 1, "large": 1}
    assert all(v["AP50"] == pytest.approx(1.0) for v in result["by_size"].values())
    matrix = np.array(result["confusion_matrix"]["matrix"])
    assert matrix[1, 1] == 3 and matrix[0, 2] == 1 and matrix.sum() == 4


def test_evaluate_command_writes_and_prints_them(tiny_trained_model_dir, synthetic_val_dir, tmp_path):
    from refinedet_tf.evaluation.command import EvalOptions, run

    stream = io.StringIO()
    run(EvalOptions(data=synthetic_val_dir, checkpoint=tiny_trained_model_dir, split="val", max_images=16,
                    output_dir=str(tmp_path)), stream=stream)
    printed = stream.getvalue()
    assert "by object size (COCO areas" in printed and "confusion at score >= 0.5, IoU >= 0.5:" in printed
    written = json.loads((tmp_path / "confusion_matrix.json").read_text())
    matrix = np.array(written["matrix"])
    assert written["classes"][0] == "background" and matrix.shape == (7, 7)
    assert np.trace(matrix[1:, 1:]) > matrix[1:, 1:].sum() / 2  # a trained model: mostly right
    assert (tmp_path / "confusion_matrix.png").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["by_size"]) == {"small", "medium", "large"}
