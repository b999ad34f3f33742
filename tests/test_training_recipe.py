"""One experiment definition: each preset's recipe (config.recipe_for), its length in epochs over
the user's data, flags overriding any part, and `--config field=value` for the model."""

import os
import subprocess
import sys

import pytest

from refinedet_tf.config import FINE_TUNE_RECIPE, FROM_SCRATCH_RECIPE, get_preset, parse_overrides, recipe_for
from refinedet_tf.training.options import TrainOptions, resolve_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_recipe_follows_where_the_backbone_starts():
    assert recipe_for(get_preset("mobilenetv2_lite_192")) is FROM_SCRATCH_RECIPE
    assert recipe_for(get_preset("vgg16_320", backbone_weights="imagenet")) is FINE_TUNE_RECIPE
    assert recipe_for(get_preset("vgg16_320", backbone_weights="weights/vgg.h5")) is FINE_TUNE_RECIPE


def test_demo_recipe_is_the_measured_demo():
    """1000 synthetic images: 1500 steps of 16, AdamW 3e-3, cosine, evaluated at 750 and 1500."""
    options, _, line = resolve_recipe(TrainOptions(), get_preset("mobilenetv2_lite_192"), 1000)
    assert (options.steps, options.batch_size, options.optimizer, options.lr) == (1500, 16, "adamw", 3e-3)
    assert (options.lr_schedule, options.warmup_steps, options.clip_grad_norm, options.eval_every) == (
        "cosine", 100, 10.0, 750)
    assert "from scratch" in line and "1500 steps over 1000 images" in line


def test_length_scales_with_the_data_set():
    scratch = get_preset("mobilenetv2_lite_192")
    assert resolve_recipe(TrainOptions(), scratch, 160)[0].steps == 1500  # the minimum
    assert resolve_recipe(TrainOptions(), scratch, 4000)[0].steps == 6000  # 24 epochs of 4000 / 16
    paper = get_preset("vgg16_320", backbone_weights="imagenet")
    options, _, line = resolve_recipe(TrainOptions(), paper, 16551)  # VOC07+12 trainval
    assert options.steps == 119_995 and options.optimizer == "sgd" and options.lr is None  # 1e-3 x 32/32
    assert options.lr_boundaries == (0.667, 0.833) and options.eval_every == 0
    assert "fine-tune" in line


def test_flags_override_any_part_and_are_named():
    scratch = get_preset("mobilenetv2_lite_192")
    options, _, line = resolve_recipe(TrainOptions(batch_size=8, epochs=2, optimizer="sgd"), scratch, 100)
    assert (options.steps, options.batch_size, options.optimizer, options.lr) == (25, 8, "sgd", 3e-3)
    assert "set by flags: batch_size, epochs, optimizer" in line
    assert resolve_recipe(TrainOptions(steps=7, epochs=2), scratch, 100)[0].steps == 7


def test_config_overrides_are_parsed_by_field_type_and_validated():
    overrides = parse_overrides(["anchor_sizes=16,32,64,128", "match_iou=0.4", "tcb_batch_norm=false"])
    config = get_preset("mobilenetv2_lite_192", **overrides)
    assert config.anchor_sizes == (16.0, 32.0, 64.0, 128.0) and config.match_iou == 0.4
    assert config.tcb_batch_norm is False
    for bad, message in [(["anchor_size=1,2,3,4"], "unknown RefineDetConfig field 'anchor_size'"),
                         (["match_iou=high"], "match_iou takes a number"),
                         (["image_size=19.5"], "image_size takes an integer"),
                         (["tcb_batch_norm=maybe"], "tcb_batch_norm takes true or false"),
                         (["match_iou"], "takes field=value"),
                         (["nms_iou=0.5", "nms_iou=0.4"], "sets nms_iou twice")]:
        with pytest.raises(ValueError, match=message):
            parse_overrides(bad)
    with pytest.raises(ValueError, match=r"match_iou must be in \[0, 1\], got 1.5"):
        get_preset("vgg16_320", **parse_overrides(["match_iou=1.5"]))
    with pytest.raises(ValueError, match="anchor_strides .* and anchor_sizes .* must have one entry per level"):
        get_preset("vgg16_320", **parse_overrides(["anchor_sizes=16,32"]))


def test_train_command_rejects_a_bad_config_with_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--config", "anchor_sizes=1,2", "--model_dir",
         str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "REFINEDET_TF_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert "error: anchor_strides (8, 16, 32, 64) and anchor_sizes (1.0, 2.0) must have one entry" in result.stderr
    assert not os.path.exists(tmp_path / "cache")  # refused before any data is generated
