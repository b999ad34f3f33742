"""Resuming a run: a model_dir is only continued by a run of the same model and batch size."""

import json
import os

from refinedet_tf import checkpoints
from refinedet_tf.architectures import config_from_json

OPTIONS_FILE = "train_options.json"


def check_resume_compatible(model_dir, config, structural_fields, batch_size):
    """Refuses to resume a model_dir written with a config that differs on a structural field
    (`Architecture.structural_fields`) or with another global batch size."""
    path = os.path.join(model_dir, checkpoints.CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = config_from_json(f.read())
    diff = [f"{f}: saved {getattr(saved, f)} vs now {getattr(config, f)}"
            for f in structural_fields if getattr(saved, f) != getattr(config, f)]
    if diff:
        raise ValueError(
            f"{model_dir} holds a run of an incompatible model ({'; '.join(diff)}): choose another "
            "--model_dir or remove it")
    options_path = os.path.join(model_dir, OPTIONS_FILE)
    if os.path.exists(options_path):
        with open(options_path, encoding="utf-8") as f:
            saved_options = json.load(f)
        if saved_options.get("batch_size") != batch_size:
            raise ValueError(
                f"{model_dir} was trained with --batch_size {saved_options.get('batch_size')}; resuming "
                f"with {batch_size} would change the data position and schedule")
