"""One training run, end to end: config, data, strategy, model, optimizer, callbacks, fit.

`train.py` maps its flags onto `TrainOptions` and calls `train`; tests call `train` directly.
"""

import dataclasses
import json
import math
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from refinedet_tf import checkpoints, data as data_lib
from refinedet_tf.anchors import generate_anchors
from refinedet_tf.config import STRUCTURAL_FIELDS, RefineDetConfig, get_preset, recipe_for
from refinedet_tf.data.inspect import anchor_warning, check_anchors
from refinedet_tf.data.pipeline import loss_targets, make_dataset, make_distributed_dataset
from refinedet_tf.data.synthetic import ensure_synthetic_dataset
from refinedet_tf.drawing import draw_boxes
from refinedet_tf.evaluation.runner import evaluate_dataset, make_predict_fn
from refinedet_tf.model import build_refinedet
from refinedet_tf.preprocessing import unpreprocess_images
from refinedet_tf.training import callbacks as cb
from refinedet_tf.training.ema import UpdateWeightAverage, WeightAverage
from refinedet_tf.training.optimizer import WarmupSchedule, default_lr, make_optimizer, resolve_boundaries
from refinedet_tf.training.precise_bn import recompute_batch_norm_statistics
from refinedet_tf.training.strategy import make_strategy, synchronize_batch_norm
from refinedet_tf.training.trainer import LOSS_NAMES, RefineDetTrainer

DEMO_PRESET = "mobilenetv2_lite_192"
ANCHOR_CHECK_SAMPLE = 20_000  # boxes the start-of-run anchor check scores (COCO has 860k)
PRECISE_BN_BATCHES = 20


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
    # None: the preset's recipe (config.recipe_for), resolved by `resolve_recipe`.
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


def _print(*args):
    print(*args, flush=True)


def check_resume_compatible(model_dir, config, options):
    """Refuses to resume a model_dir written with an incompatible config."""
    path = os.path.join(model_dir, checkpoints.CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = RefineDetConfig.from_json(f.read())
    diff = [f"{f}: saved {getattr(saved, f)} vs now {getattr(config, f)}"
            for f in STRUCTURAL_FIELDS if getattr(saved, f) != getattr(config, f)]
    if diff:
        raise ValueError(
            f"{model_dir} holds a run of an incompatible model ({'; '.join(diff)}): choose another "
            "--model_dir or remove it")
    options_path = os.path.join(model_dir, "train_options.json")
    if os.path.exists(options_path):
        with open(options_path, encoding="utf-8") as f:
            saved_options = json.load(f)
        if saved_options.get("batch_size") != options.batch_size:
            raise ValueError(
                f"{model_dir} was trained with --batch_size {saved_options.get('batch_size')}; resuming "
                f"with {options.batch_size} would change the data position and schedule")


def _data_sources(options):
    """-> (train reader, val reader or None, class names, label map).

    The training set is read with the training policy (boxes under 2 pixels dropped, empty
    images skipped), the validation set with the evaluation one (every box the protocol counts),
    both with `options.on_bad_example` (data/policy.py); each reader's report is printed.
    """
    train_path, val_path = options.data, options.val_data
    split, val_split = options.split, options.val_split
    if train_path is None:
        train_path = ensure_synthetic_dataset()
        _print(f"data: the embedded synthetic dataset at {train_path}")
        if val_path is None:
            val_path = train_path
    train_reader = data_lib.open_reader(
        train_path, split=split if data_lib.detect_format(train_path) == "voc" else None,
        label_map=options.label_map, on_bad_example=options.on_bad_example, purpose="train")
    label_map = train_reader.label_map
    if label_map is None:
        raise ValueError(f"{train_path} has no label map: pass --label_map")
    val_reader = None
    if val_path is not None:
        val_reader = data_lib.open_reader(
            val_path, split=val_split if data_lib.detect_format(val_path) == "voc" else None, label_map=label_map,
            on_bad_example=options.on_bad_example, purpose="evaluate")
    for name, reader in (("train", train_reader), ("val", val_reader)):
        if reader is not None:
            _print(f"data ({name}, {reader.policy.purpose} policy):\n  "
                   + reader.report.format(max_issues=10).replace("\n", "\n  "))
    return train_reader, val_reader, list(label_map.names), label_map


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

    Fields left None take the preset's recipe (`config.recipe_for`: the paper's schedule when
    the backbone starts from weights, the demo's from scratch); the run's length is --steps,
    else --epochs, else the recipe's epochs over this training set.
    """
    recipe = recipe_for(config)
    chosen = {name: getattr(recipe, name) for name in (
        "batch_size", "optimizer", "lr", "warmup_steps", "lr_schedule", "lr_boundaries", "clip_grad_norm",
        "ema_decay") if getattr(options, name) is None}
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
    overridden = sorted(name for name in ("batch_size", "optimizer", "lr", "warmup_steps", "lr_schedule",
                                          "lr_boundaries", "clip_grad_norm", "steps", "epochs", "eval_every",
                                          "ema_decay")
                        if getattr(options, name) is not None)
    line = (f"recipe: {recipe.describe()}; this run: {length} over {num_train_images} images, batch "
            f"{resolved.batch_size}" + (f"; set by flags: {', '.join(overridden)}" if overridden else ""))
    return resolved, recipe, line


def _write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _worker_role():
    """(is_chief, task index) from TF_CONFIG; a single machine is the chief."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {})), index


def train(options, stream=None, extra_callbacks=()):
    """Runs (or resumes) a training run. Returns the summary dict also written to metrics.json.

    Under multi_worker every worker runs this; the chief writes model_dir, the others write
    their (identical) checkpoints to a scratch folder, as MultiWorkerMirroredStrategy requires
    every worker to take part in saving.
    """
    stream = stream or sys.stdout
    start_time = time.time()
    get_preset(options.preset, **options.config_overrides)  # a bad --config fails before any data is read
    train_reader, val_reader, class_names, label_map = _data_sources(options)
    config = config_for_data(options, class_names)
    is_chief, worker_index = _worker_role() if options.strategy == "multi_worker" else (True, 0)
    model_dir = options.model_dir if is_chief else os.path.join(options.model_dir, f".worker{worker_index}")
    num_train = len(train_reader)
    if num_train == 0:
        raise ValueError(f"no training images in {options.data or 'the synthetic dataset'}")
    options, _, recipe_line = resolve_recipe(options, config, num_train)
    _print(recipe_line)
    warning = anchor_warning(*check_anchors(config, train_reader.metadata, class_names,
                                                sample=ANCHOR_CHECK_SAMPLE, only_when_low=True))
    if warning:
        _print(warning)
    os.makedirs(model_dir, exist_ok=True)
    check_resume_compatible(model_dir, config, options)

    keras.utils.set_random_seed(options.seed)
    if options.deterministic:
        tf.config.experimental.enable_op_determinism()
    if options.mixed_precision:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
        _print(f"mixed precision: {policy} (losses and decoding stay float32)")

    strategy = make_strategy(options.strategy, stream)
    replicas = strategy.num_replicas_in_sync
    if options.batch_size % replicas:
        raise ValueError(f"--batch_size {options.batch_size} must be a multiple of the {replicas} replicas")

    total_steps = options.steps
    lr = options.lr if options.lr is not None else default_lr(options.batch_size)
    boundaries = resolve_boundaries(options.lr_boundaries, total_steps)
    cache = options.cache if options.cache is not None else num_train <= 5000

    _write_json(os.path.join(model_dir, checkpoints.CONFIG_FILE), dataclasses.asdict(config))
    _write_json(os.path.join(model_dir, "train_options.json"),
                {**dataclasses.asdict(options), "resolved_lr": lr, "total_steps": total_steps,
                 "lr_boundaries_steps": boundaries, "replicas": replicas})
    with open(os.path.join(model_dir, "labelmap.txt"), "w", encoding="utf-8") as f:
        f.write("".join(n + "\n" for n in class_names[1:]))

    with strategy.scope():
        detector = build_refinedet(config)
        if options.freeze_backbone:
            _freeze_backbone(detector)
        if replicas > 1:
            synced = synchronize_batch_norm(detector)
            if synced:
                _print(f"synchronized BatchNorm over {replicas} replicas ({synced} layers)")
        trainer = RefineDetTrainer(detector, config)
        schedule = WarmupSchedule(lr, total_steps, options.warmup_steps, options.lr_schedule, boundaries)
        optimizer = make_optimizer(schedule, options.momentum, options.weight_decay, options.grad_accum_steps,
                                   options.clip_grad_norm, options.optimizer)
        trainer.compile(optimizer=optimizer, jit_compile=options.jit_compile)
        optimizer.build(trainer.trainable_variables)
        average = WeightAverage(detector, options.ema_decay) if options.ema_decay else None
        checkpoint = tf.train.Checkpoint(model=detector, optimizer=optimizer,
                                         **(average.checkpoint_items() if average else {}))
        manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(model_dir, checkpoints.CHECKPOINT_DIR), max_to_keep=options.keep_checkpoints)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if average is not None and int(average.num_updates.numpy()) == 0:
            average.reset()  # from the restored weights when a run started without EMA resumes with it
    start_step = int(optimizer.iterations.numpy())
    if start_step:
        _print(f"resuming {model_dir} from {manager.latest_checkpoint} at step {start_step}")
    if start_step >= total_steps:
        _print(f"{model_dir} already finished {total_steps} steps")

    def examples_fn():
        examples = train_reader.as_dataset()
        return examples.cache() if cache else examples

    pipeline_kwargs = dict(seed=options.seed, max_boxes=options.max_boxes, truncate_boxes=options.truncate_boxes,
                           deterministic=options.deterministic or options.seed is not None,
                           num_parallel_calls=options.num_parallel_calls or tf.data.AUTOTUNE)

    def train_data_from(step):
        """The training stream positioned at `step`: a resumed run continues exactly where the
        killed run stopped (same shuffle order, same per-example augmentation seeds)."""
        if replicas > 1:
            return make_distributed_dataset(strategy, examples_fn, config, options.batch_size, training=True,
                                            skip_steps=step, map_fn=loss_targets, **pipeline_kwargs)
        return make_dataset(examples_fn(), config, options.batch_size, training=True, skip_batches=step,
                            **pipeline_kwargs).map(loss_targets)

    state = cb.RunState()
    log_dir = os.path.join(model_dir, "logs")
    saver = cb.CheckpointSaver(manager, options.checkpoint_every, state)
    progress = cb.ProgressLogger(total_steps, options.batch_size, options.log_every, stream)
    # The average is updated before the saver runs: checkpoint N holds the average of step N.
    averaging = [UpdateWeightAverage(average, state, options.grad_accum_steps)] if average else []
    callbacks = [cb.NaNGuard(state), *averaging, saver, cb.Preemption(saver, state), progress,
                 cb.TensorBoardScalars(log_dir, options.log_every),
                 cb.StepLog(os.path.join(model_dir, "steps.jsonl")), *extra_callbacks]
    # Un-augmented training images for precise BatchNorm statistics (before each evaluation, and
    # for the averaged weights before they are saved).
    bn_images = make_dataset(train_reader.as_dataset().take(PRECISE_BN_BATCHES * options.batch_size),
                             config, options.batch_size, training=False, max_boxes=options.max_boxes,
                             truncate_boxes=True).map(lambda images, targets: images).cache()
    evaluation = None
    if val_reader is not None and len(val_reader) and is_chief:
        anchors = generate_anchors(config)
        predict = make_predict_fn(detector, anchors, config)
        val_examples = val_reader.as_dataset()
        if options.max_eval_images:
            val_examples = val_examples.take(options.max_eval_images)
        val_examples = val_examples.cache()
        val_data = make_dataset(val_examples, config, max(options.batch_size // replicas, 1), training=False,
                                max_boxes=options.max_boxes, truncate_boxes=True)

        def evaluate_fn():
            recompute_batch_norm_statistics(detector, bn_images, PRECISE_BN_BATCHES)
            drawn = []

            def draw(images, targets, detections):
                if len(drawn) >= options.eval_images_to_draw:
                    return
                drawn.extend(_draw_examples(images, targets, detections, config, class_names,
                                            options.eval_images_to_draw - len(drawn)))
            result, speed = evaluate_dataset(predict, val_data, class_names, ("voc07",), on_batch=draw)
            return result, speed, drawn

        evaluation = cb.PeriodicEvaluation(options.eval_every, evaluate_fn, model_dir, detector, state,
                                           log_dir=log_dir, stream=stream, average=average)
        callbacks.append(evaluation)

    remaining = total_steps - start_step
    stages = []
    if start_step < options.arm_warmup_steps:
        stages.append(("ARM warm-up", True, options.arm_warmup_steps - start_step))
    if total_steps > max(start_step, options.arm_warmup_steps):
        stages.append(("joint", False, total_steps - max(start_step, options.arm_warmup_steps)))
    _print(f"training {config.name} ({detector.count_params():,} parameters) on {num_train} images, "
           f"{remaining} steps of {options.batch_size} images, lr {lr:g}, {replicas} replica(s), "
           f"model_dir {model_dir}")
    for name, arm_only, steps in stages:
        if state.poisoned or state.preempted:
            break
        if len(stages) > 1 or arm_only:
            _print(f"stage: {name}, {steps} steps")
        trainer.arm_only = arm_only
        trainer.train_function = None  # retrace for the stage
        trainer.make_train_function(force=True)
        train_data = train_data_from(int(optimizer.iterations.numpy()))
        # shuffle=False: the dataset shuffles itself (seeded, resumable); Keras would only warn.
        trainer.fit(train_data, epochs=1, steps_per_epoch=steps, callbacks=callbacks, verbose=0, shuffle=False)

    if state.poisoned:
        _print(state.message)
        raise FloatingPointError(state.message)
    finished = int(optimizer.iterations.numpy()) >= total_steps
    if finished and average is not None:
        with average.swapped_in():
            recompute_batch_norm_statistics(detector, bn_images, PRECISE_BN_BATCHES)
            cb.save_weights_atomically(detector, os.path.join(model_dir, checkpoints.FINAL_WEIGHTS))
    elif finished:
        cb.save_weights_atomically(detector, os.path.join(model_dir, checkpoints.FINAL_WEIGHTS))
    summary = {
        "preset": config.name, "model_dir": os.path.abspath(model_dir),
        "steps": int(optimizer.iterations.numpy()), "total_steps": total_steps, "finished": finished,
        "preempted": state.preempted, "global_batch_size": options.batch_size, "replicas": replicas,
        "ema_decay": options.ema_decay or None,
        "final_losses": {k: progress.smoothed.get(k) for k in LOSS_NAMES},
        "images_per_second": progress.history[-1]["images_per_second"] if progress.history else None,
        "wall_seconds": round(time.time() - start_time, 1),
        "evaluations": evaluation.history if evaluation else [],
        "best": evaluation.best if evaluation else None,
        "checkpoint": manager.latest_checkpoint and os.path.abspath(manager.latest_checkpoint),
        "tensorboard": os.path.abspath(log_dir),
    }
    _write_json(os.path.join(model_dir, "metrics.json"), summary)
    if not is_chief:
        shutil.rmtree(model_dir, ignore_errors=True)  # a worker's scratch copy of the chief's files
    return summary


def _freeze_backbone(detector):
    heads = ("arm_", "tcb_", "odm_")
    for layer in detector.layers:
        if not layer.name.startswith(heads) and layer.weights:
            layer.trainable = False


def _draw_examples(images, targets, detections, config, class_names, limit):
    """Validation images with true (red) and predicted (green, score >= 0.3) boxes, uint8 RGB."""
    pixels = np.asarray(unpreprocess_images(images[:limit], config))
    out = []
    for i in range(pixels.shape[0]):
        rgb = np.clip(pixels[i], 0, 255).astype(np.uint8)
        valid = np.asarray(targets["mask"][i])
        rgb = draw_boxes(rgb, np.asarray(targets["boxes"][i])[valid], (255, 0, 0))
        n = int(detections["num_detections"][i])
        scores = np.asarray(detections["detection_scores"][i][:n])
        keep = scores >= 0.3
        labels = [f"{class_names[c]} {s:.2f}" for c, s in zip(
            np.asarray(detections["detection_classes"][i][:n])[keep], scores[keep])]
        rgb = draw_boxes(rgb, np.asarray(detections["detection_boxes"][i][:n])[keep], (0, 255, 0), labels)
        out.append(rgb.astype(np.float32) / 255.0)
    return out


def print_summary(summary, stream=None):
    stream = stream or sys.stdout
    rows = [
        ("preset", summary["preset"]),
        ("steps", f"{summary['steps']} / {summary['total_steps']}" + (" (preempted)" if summary["preempted"] else "")),
        ("global batch", f"{summary['global_batch_size']} on {summary['replicas']} replica(s)"),
        ("final total loss", f"{summary['final_losses'].get('total') or float('nan'):.4f}"),
        ("images/s (last)", f"{summary['images_per_second'] or 0:.1f}"),
        ("wall time", f"{summary['wall_seconds']:.0f} s"),
    ]
    for record in summary["evaluations"]:
        value, raw = record.get("voc07"), record.get("voc07_raw")
        shown = "n/a" if value is None else f"{value:.4f}"
        if "voc07_raw" in record:
            shown += f" averaged weights, {'n/a' if raw is None else f'{raw:.4f}'} trained weights"
        rows.append((f"VOC07 mAP @ step {record['step']}", shown))
    if summary["best"]:
        rows.append(("best", f"{summary['best']['voc07']:.4f} at step {summary['best']['step']}"))
    model_dir = summary["model_dir"]
    rows += [
        ("checkpoint", summary["checkpoint"]),
        ("best weights", os.path.join(model_dir, checkpoints.BEST_WEIGHTS)),
        ("final weights", os.path.join(model_dir, checkpoints.FINAL_WEIGHTS)),
        ("TensorBoard", f"tensorboard --logdir {summary['tensorboard']}"),
        ("metrics", os.path.join(model_dir, "metrics.json")),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 50), file=stream)
    for k, v in rows:
        print(f"{k:<{width}}  {v}", file=stream)
    print("-" * (width + 50), file=stream, flush=True)
