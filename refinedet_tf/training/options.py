"""What a training run is asked to do: `TrainOptions` (train.py's flags), the model config for the
data, and the training recipe that fills what the flags leave unset."""

import dataclasses
import math

from refinedet_tf.presets import get_preset

DEMO_PRESET = "mobilenetv2_lite_192"
# Options that a recipe (config.TrainingRecipe) sets when the command line leaves them None.
RECIPE_FIELDS = ("batch_size", "optimizer", "lr", "warmup_steps", "lr_schedule", "lr_boundaries", "clip_grad_norm",
                 "ema_decay")


@dataclasses.dataclass
class TrainOptions:
    """Everything a run needs besides the model config (see train.py's flags for the meaning)."""

    preset: str = DEMO_PRESET
    config_overrides: dict = dataclasses.field(default_factory=dict)
    data: str | None = None  # None: the embedded synthetic dataset (train split)
    val_data: str | None = None  # None with data None: the synthetic val split
    split: str = "train"
    val_split: str = "val"
    label_map: str | None = None
    on_bad_example: str = "error"  # data/policy.py
    model_dir: str = "runs/refinedet"
    # None: the preset's recipe (its config's training_recipe()), resolved by `resolve_recipe`.
    batch_size: int | None = None
    steps: int | None = None
    epochs: float | None = None
    lr: float | None = None  # None after resolving too: 1e-3 x batch/32 (the paper's)
    warmup_steps: int | None = None
    lr_schedule: str | None = None
    lr_boundaries: tuple | None = None
    weight_decay: float = 5e-4
    momentum: float = 0.9
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = None
    optimizer: str | None = None
    ema_decay: float | None = None  # moving average of the weights (training/ema.py); 0: off
    freeze_backbone: bool = False
    mixed_precision: bool = False
    jit_compile: bool = False
    strategy: str = "default"
    seed: int = 0
    deterministic: bool = False
    eval_every: int | None = None  # steps; 0: only at the end (when there is validation data)
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    arm_warmup_steps: int = 0
    max_boxes: int = 100
    truncate_boxes: bool = False
    log_every: int = 10
    num_parallel_calls: int | None = None  # None: AUTOTUNE
    cache: bool | None = None  # None: cache decoded examples when the dataset is small
    max_eval_images: int | None = None
    eval_images_to_draw: int = 4


def config_for_data(options, names):
    """The preset with the command line's overrides; num_classes follows the label map unless
    given, and must agree with it when given."""
    overrides = dict(options.config_overrides)
    given = overrides.get("num_classes")
    if given is not None and given != len(names):
        raise ValueError(
            f"the label map has {len(names) - 1} classes (+ background) but --num_classes is {given}: "
            f"leave --num_classes out (it follows the label map) or pass {len(names)}")
    overrides["num_classes"] = len(names)
    return get_preset(options.preset, **overrides)


def resolve_recipe(options, config, num_train_images):
    """-> (options with every recipe field set, the recipe, a line saying what was chosen).

    Fields left None take the preset's recipe (its config's `training_recipe()`: the paper's
    schedule when the backbone starts from weights, the demo's from scratch); the run's length is --steps,
    else --epochs, else the recipe's epochs over this training set.
    """
    recipe = config.training_recipe()
    chosen = {name: getattr(recipe, name) for name in RECIPE_FIELDS if getattr(options, name) is None}
    resolved = dataclasses.replace(options, **chosen)
    if options.steps is not None:
        steps, length = int(options.steps), f"{options.steps} steps (--steps)"
    elif options.epochs is not None:
        steps = max(math.ceil(options.epochs * num_train_images / resolved.batch_size), 1)
        length = f"{options.epochs:g} epochs (--epochs) = {steps} steps"
    else:
        steps = recipe.steps_for(num_train_images, resolved.batch_size)
        length = f"{recipe.epochs:g} epochs, at least {recipe.min_steps} steps = {steps} steps"
    eval_every = options.eval_every
    if eval_every is None:
        eval_every = steps // recipe.evaluations if recipe.evaluations else 0
    resolved = dataclasses.replace(resolved, steps=steps, eval_every=eval_every)
    overridden = sorted(name for name in (*RECIPE_FIELDS, "steps", "epochs", "eval_every")
                        if getattr(options, name) is not None)
    line = (f"recipe: {recipe.describe()}; this run: {length} over {num_train_images} images, batch "
            f"{resolved.batch_size}" + (f"; set by flags: {', '.join(overridden)}" if overridden else ""))
    return resolved, recipe, line
