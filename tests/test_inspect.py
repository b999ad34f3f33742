"""`python -m refinedet_tf.data.inspect`: counts and anchor recall on a hand-made set, the
suggestion, the PNGs, and train.py's one-line warning."""

import dataclasses
import io
import json

import numpy as np
import pytest

from conftest import make_voc, textured
from refinedet_tf.config import get_preset
from refinedet_tf.data import inspect
from refinedet_tf.data.anchor_fit import max_iou_with_anchors, size_buckets
from refinedet_tf.data.voc import VocReader

# mobilenetv2_lite_192 at 64 px: strides 8, 16, 32, 64 (maps 8, 4, 2, 1), anchor sizes 20, 40,
# 80, 160 px, ratios 1, 2, 1/2. In a 64 x 64 image (VOC 1-based inclusive corners):
OBJECTS = [
    ("cat", 19, 19, 38, 38),     # = the stride-8 anchor of cell (3, 3), ratio 1: [18, 38) px -> IoU 1
    ("dog", 5, 5, 44, 44),       # = the stride-16 anchor of cell (1, 1), ratio 1: [4, 44) -> IoU 1
    ("cat", 1, 30, 64, 33),      # 64 x 4 px: no anchor reaches IoU 0.5 -> missed
    ("dog", 20, 20, 40, 40, 1),  # difficult: not counted in the recall
    ("cat", 50, 50, 50, 60),     # 1 px wide: listed (tiny_box), not trained on, not in the recall
]
CONFIG = dict(image_size=64, num_classes=3)


@pytest.fixture
def hand_made(tmp_path):
    return make_voc(tmp_path / "voc", [{"id": "a", "image": textured(64, 64), "objects": OBJECTS},
                                       {"id": "b", "image": textured(64, 64, seed=1), "objects": []}])


def test_the_hand_made_boxes_have_the_intended_ious():
    config = get_preset("mobilenetv2_lite_192", **CONFIG)
    from refinedet_tf.anchors import generate_anchors

    boxes = np.array([[18, 18, 38, 38], [4, 4, 44, 44], [29, 0, 33, 64]]) / 64.0
    np.testing.assert_allclose(max_iou_with_anchors(boxes, generate_anchors(config))[:2], 1.0, atol=1e-6)
    assert max_iou_with_anchors(boxes, generate_anchors(config))[2] < 0.5


def test_inspect_counts_and_recall_by_hand(hand_made, tmp_path):
    out = io.StringIO()
    code = inspect.run(["inspect", "--data", hand_made, "--config", "image_size=64",
                        "--output_dir", str(tmp_path / "out")], stdout=out, stderr=io.StringIO())
    assert code == 0
    result = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert result["num_images"] == 2 and result["num_boxes"] == 5  # evaluation keeps the empty image
    assert result["per_class"] == {"cat": 3, "dog": 2}
    assert [b["kind"] for b in result["bad"]] == ["tiny_box"] and "object 4 (cat)" in result["bad"][0]["reason"]
    fit = result["anchor_recall"]
    assert fit["num_boxes"] == 3 and fit["recall"] == pytest.approx(2 / 3)
    assert fit["per_class"] == {"cat": {"boxes": 2, "recall": 0.5}, "dog": {"boxes": 1, "recall": 1.0}}
    # Sizes: 20 and sqrt(64 * 4) = 16 px fall in the ~20 px bucket, 40 px in the ~40 px one.
    buckets = [name for name, _, _ in size_buckets((20, 40, 80, 160))]
    assert fit["per_size"][buckets[0]] == {"boxes": 2, "recall": 0.5}
    assert fit["per_size"][buckets[1]] == {"boxes": 1, "recall": 1.0}
    assert fit["per_size"][buckets[2]]["boxes"] == fit["per_size"][buckets[3]]["boxes"] == 0
    assert result["suggested_anchor_recall"] >= fit["recall"]
    assert len(result["suggested_anchor_sizes"]) == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["aspect_ratios.png", "box_sizes.png",
                                                                    "inspect.json"]
    printed = out.getvalue()
    assert "recall 0.667 of 3 trainable boxes" in printed and "suggested: --config anchor_sizes=" in printed


def test_suggestion_finds_anchors_for_small_objects(tmp_path):
    """Boxes of 10-12 px, half the smallest anchor: the preset misses them, the suggestion does not."""
    objects = [("cat", x, y, x + 11, y + 11) for x in (3, 19, 35) for y in (3, 19, 35)]
    voc = make_voc(tmp_path / "small", [{"id": "s", "image": textured(64, 64), "objects": objects}])
    config = get_preset("mobilenetv2_lite_192", **CONFIG)
    fit, suggested, recall = inspect.check_anchors(config, VocReader(voc).metadata, ["background", "cat", "dog"])
    assert fit.recall < 0.5 and recall > 0.9 and suggested[0] < 20
    warning = inspect.anchor_warning(fit, suggested, recall)
    assert warning.startswith(f"warning: only {fit.recall:.0%} of the 9 training boxes")
    assert "--config anchor_sizes=" + ",".join(f"{s:g}" for s in suggested) in warning
    fitted = get_preset("mobilenetv2_lite_192", **dict(CONFIG, anchor_sizes=suggested))
    assert inspect.anchor_warning(*inspect.check_anchors(fitted, VocReader(voc).metadata,
                                                         ["background", "cat", "dog"])) is None
    # train.py's check searches for other sizes only when the recall is low.
    fit, suggested, recall = inspect.check_anchors(fitted, VocReader(voc).metadata, ["background", "cat", "dog"],
                                                   only_when_low=True)
    assert fit.recall > 0.9 and suggested is None and recall is None
    # No better sizes to propose: the warning says so rather than proposing equal ones.
    no_better = inspect.anchor_warning(dataclasses.replace(fit, recall=0.8), (20, 40, 80, 160), 0.8)
    assert "no other anchor sizes" in no_better and "--config" not in no_better


def test_inspect_names_a_bad_example(hand_made, tmp_path):
    import os

    os.remove(os.path.join(hand_made, "JPEGImages", "b.jpg"))
    err = io.StringIO()
    assert inspect.run(["inspect", "--data", hand_made], stdout=io.StringIO(), stderr=err) == 1
    assert "b.jpg: image file not found" in err.getvalue()
    out = io.StringIO()
    assert inspect.run(["inspect", "--data", hand_made, "--on_bad_example", "skip", "--config", "image_size=64"],
                       stdout=out, stderr=io.StringIO()) == 0
    assert "skipped: 1" in out.getvalue()
    assert inspect.run(["inspect"], stdout=io.StringIO(), stderr=err) == 2
