"""Faster R-CNN trained through the shared trainer (`training/run.py`), as `train.py --preset
faster_rcnn_*` does: the keep-aspect input, its four losses logged, evaluation, checkpoints that
load as a Faster R-CNN, the evaluator on the run's weights; on a tiny synthetic set. (Resuming is
the shared trainer's, tested on RefineDet in test_training_runs.py; Faster R-CNN's draws follow
the optimizer's step, which a checkpoint restores.)"""

import io
import json

import numpy as np
import pytest

from refinedet_tf.architectures import FasterRCNN, architecture_for
from refinedet_tf.checkpoints import load_model
from refinedet_tf.evaluation.command import EvalOptions, run as evaluate
from refinedet_tf.faster_rcnn.config import FasterRCNNConfig
from refinedet_tf.training import run as run_lib
from training_helpers import tiny_dataset, tiny_options

PRESET = "faster_rcnn_mobilenetv2_lite_256"
SMALL = dict(image_size=64, min_side=64, max_side=64)
LOSSES = ("rpn_loc", "rpn_cls", "roi_loc", "roi_cls", "total")


def _options(data, model_dir, steps):
    return tiny_options(data, model_dir, preset=PRESET, config_overrides=dict(SMALL), val_data=data, steps=steps,
                        checkpoint_every=2, eval_every=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3 steps of 4 images, evaluated at the end on the 4 val images."""
    root = tmp_path_factory.mktemp("frcnn")
    data = tiny_dataset(root)
    model_dir = root / "run"
    summary = run_lib.train(_options(data, model_dir, 3), stream=io.StringIO())
    return data, model_dir, summary


def test_run_logs_the_four_losses_and_evaluates(trained):
    _, model_dir, summary = trained
    assert summary["finished"] and summary["steps"] == 3
    steps = [json.loads(line) for line in (model_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    for step in steps:
        assert all(np.isfinite(step[name]) and step[name] >= 0 for name in LOSSES), step
        np.testing.assert_allclose(step["total"], sum(step[name] for name in LOSSES[:-1]), rtol=1e-5)
        assert step["num_pos"] > 0  # foreground RoIs: the ground truths are always candidates
    assert set(summary["final_losses"]) == set(LOSSES)
    (evaluation,) = summary["evaluations"]
    assert evaluation["step"] == 3 and evaluation["images"] == 4 and 0.0 <= evaluation["voc07"] <= 1.0


def test_checkpoint_loads_as_faster_rcnn_and_evaluates_to_the_runs_map(trained):
    data, model_dir, summary = trained
    model, config = load_model(str(model_dir))
    assert isinstance(config, FasterRCNNConfig) and config.image_size == 64 and config.num_classes == 7
    assert isinstance(architecture_for(config), FasterRCNN)
    assert set(model.input) == {"images", "image_info"}
    result = evaluate(EvalOptions(data=data, checkpoint=str(model_dir), split="val", metrics=("voc07",)),
                      stream=io.StringIO())
    assert result["speed"]["images"] == 4
    np.testing.assert_allclose(result["voc07"]["mAP"], summary["best"]["voc07"], atol=1e-6)


def test_export_says_it_does_not_serve_faster_rcnn_yet(trained, tmp_path):
    from refinedet_tf.export import export_saved_model

    _, model_dir, _ = trained
    model, config = load_model(str(model_dir))
    with pytest.raises(NotImplementedError, match="faster_rcnn_mobilenetv2_lite_256 cannot be exported or served yet"):
        export_saved_model(model, config, str(tmp_path / "export"))
