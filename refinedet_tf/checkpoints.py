"""Finding a trained model on disk and rebuilding it for inference.

A trained model is a config plus weights:
  model_dir/config.json              the config the run used (train.py writes it)
  model_dir/best.weights.h5          best validation mAP (Keras weights)
  model_dir/final.weights.h5         end of training
  model_dir/checkpoints/ckpt-N.*     tf.train.Checkpoint (model + optimizer + step, and the weight
                                     average with --ema_decay) for resuming; its model weights are
                                     the trained ones, not the average the .weights.h5 files hold
A standalone weights file `X.weights.h5` carries its config as `X.config.json` beside it (the
PyTorch converter writes that pair).
"""

import dataclasses
import os

import tensorflow as tf

from refinedet_tf.architectures import architecture_for, config_from_json
from refinedet_tf.data.label_map import default_label_map_path, load_label_map
from refinedet_tf.presets import get_preset

CONFIG_FILE = "config.json"
BEST_WEIGHTS = "best.weights.h5"
FINAL_WEIGHTS = "final.weights.h5"
CHECKPOINT_DIR = "checkpoints"


def _read_config(path):
    with open(path, encoding="utf-8") as f:
        return config_from_json(f.read())


def resolve_checkpoint(checkpoint):
    """-> (weights path or tf checkpoint prefix, config path or None)."""
    if os.path.isdir(checkpoint):
        for name in (BEST_WEIGHTS, FINAL_WEIGHTS):
            if os.path.exists(os.path.join(checkpoint, name)):
                return os.path.join(checkpoint, name), _existing(os.path.join(checkpoint, CONFIG_FILE))
        latest = tf.train.latest_checkpoint(os.path.join(checkpoint, CHECKPOINT_DIR))
        if latest:
            return latest, _existing(os.path.join(checkpoint, CONFIG_FILE))
        raise FileNotFoundError(
            f"no weights in {checkpoint}: expected {BEST_WEIGHTS}, {FINAL_WEIGHTS} or "
            f"{CHECKPOINT_DIR}/ckpt-N")
    if checkpoint.endswith(".weights.h5"):
        if not os.path.exists(checkpoint):
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        sibling = checkpoint[: -len(".weights.h5")] + ".config.json"
        return checkpoint, _existing(sibling) or _existing(
            os.path.join(os.path.dirname(checkpoint), CONFIG_FILE))
    if tf.io.gfile.exists(checkpoint + ".index"):
        model_dir = os.path.dirname(os.path.dirname(checkpoint))
        return checkpoint, _existing(os.path.join(model_dir, CONFIG_FILE))
    raise FileNotFoundError(f"checkpoint not found: {checkpoint}")


def _existing(path):
    return path if os.path.exists(path) else None


def config_for_checkpoint(checkpoint, preset=None, **overrides):
    """The config a checkpoint was trained with, checked against `preset` when one is given.

    Raises ValueError when the checkpoint's config and the preset disagree on a field that
    changes the network (size, backbone, classes, anchors), naming the fields.
    """
    _, config_path = resolve_checkpoint(checkpoint)
    if config_path is None:
        if preset is None:
            raise ValueError(f"{checkpoint} has no config.json beside it: pass --preset")
        return get_preset(preset, **overrides)
    saved = _read_config(config_path)
    if preset is not None:
        wanted = get_preset(preset, **{k: v for k, v in overrides.items() if k == "num_classes"})
        # The preset's own num_classes is VOC's: compared only when the caller names one.
        structural = [f for f in architecture_for(saved).structural_fields
                      if f != "num_classes" or "num_classes" in overrides]
        diff = [f"{f}: checkpoint {getattr(saved, f)} vs preset {getattr(wanted, f)}"
                for f in structural if getattr(saved, f) != getattr(wanted, f)]
        if diff:
            raise ValueError(
                f"checkpoint {checkpoint} was trained as {saved.name!r}, which does not match "
                f"--preset {preset}: " + "; ".join(diff))
    return dataclasses.replace(saved, **overrides) if overrides else saved


def load_model(checkpoint, preset=None, **overrides):
    """Builds the model a checkpoint was trained as and loads its weights.

    Args:
      checkpoint: a model_dir, a `.weights.h5` file or a tf checkpoint prefix.
      preset: optional preset name to check the checkpoint against.
      overrides: config fields to change (post-processing thresholds, say).
    Returns:
      (keras.Model, its config).
    """
    weights, _ = resolve_checkpoint(checkpoint)
    config = config_for_checkpoint(checkpoint, preset, **overrides)
    # Weights come from the checkpoint: never download backbone weights to throw them away.
    config = dataclasses.replace(config, backbone_weights="none")
    model = architecture_for(config).build_model()
    if weights.endswith(".weights.h5"):
        model.load_weights(weights)
    else:
        tf.train.Checkpoint(model=model).restore(weights).expect_partial().assert_existing_objects_matched()
    return model, config


def label_map_for_checkpoint(checkpoint, label_map_path=None):
    """The LabelMap of `label_map_path` when given, else the one stored beside the checkpoint
    (train.py writes labelmap.txt into model_dir), else None."""
    if label_map_path:
        return load_label_map(label_map_path)
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    found = default_label_map_path(folder or ".")
    return load_label_map(found) if found else None
