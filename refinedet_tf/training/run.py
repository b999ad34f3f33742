"""One training run, end to end: data, config, strategy, model, optimizer, callbacks, stages.

`train.py` maps its flags onto `TrainOptions` (training/options.py) and calls `train`; tests call
`train` directly. The architecture (`architectures.architecture_for(config)`) supplies the
network, the losses and the stages; nothing here names one.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time

import keras
import tensorflow as tf

from refinedet_tf import checkpoints, data as data_lib
from refinedet_tf.architectures import architecture_for
from refinedet_tf.data.pipeline import loss_targets, make_dataset, make_distributed_dataset
from refinedet_tf.data.synthetic import ensure_synthetic_dataset
from refinedet_tf.drawing import draw_ground_truth_and_detections
from refinedet_tf.evaluation.runner import evaluate_dataset, make_predict_fn
from refinedet_tf.presets import get_preset
from refinedet_tf.training import callbacks as cb
from refinedet_tf.training.ema import UpdateWeightAverage, WeightAverage
from refinedet_tf.training.optimizer import WarmupSchedule, default_lr, make_optimizer, resolve_boundaries
from refinedet_tf.training.options import DEMO_PRESET, TrainOptions, config_for_data, resolve_recipe
from refinedet_tf.training.precise_bn import recompute_batch_norm_statistics
from refinedet_tf.training.resume import OPTIONS_FILE, check_resume_compatible
from refinedet_tf.training.strategy import make_strategy, synchronize_batch_norm
from refinedet_tf.training.summary import print_summary
from refinedet_tf.training.trainer import DetectorTrainer

__all__ = ["DEMO_PRESET", "TrainOptions", "print_summary", "train"]

ANCHOR_CHECK_SAMPLE = 20_000  # boxes the start-of-run anchor check scores (COCO has 860k)
PRECISE_BN_BATCHES = 20


def _print(*args):
    print(*args, flush=True)


def data_sources(options):
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
    train_reader, val_reader, class_names, _ = data_sources(options)
    config = config_for_data(options, class_names)
    architecture = architecture_for(config)
    is_chief, worker_index = _worker_role() if options.strategy == "multi_worker" else (True, 0)
    model_dir = options.model_dir if is_chief else os.path.join(options.model_dir, f".worker{worker_index}")
    num_train = len(train_reader)
    if num_train == 0:
        raise ValueError(f"no training images in {options.data or 'the synthetic dataset'}")
    options, _, recipe_line = resolve_recipe(options, config, num_train)
    _print(recipe_line)
    stages = architecture.training_stages(options.steps, options.arm_warmup_steps)
    warning = architecture.anchor_warning(train_reader.metadata, class_names, sample=ANCHOR_CHECK_SAMPLE)
    if warning:
        _print(warning)
    os.makedirs(model_dir, exist_ok=True)
    check_resume_compatible(model_dir, config, architecture.structural_fields, options.batch_size)

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
    cache = options.cache if options.cache is not None else num_train <= 5000
    _write_run_files(model_dir, config, options, lr, replicas, class_names)

    model, trainer, optimizer, manager, average = build_for_training(architecture, options, strategy, lr, model_dir)
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
        evaluate_fn = _evaluate_fn(model, architecture, val_reader, bn_images, class_names, options, replicas)
        evaluation = cb.PeriodicEvaluation(options.eval_every, evaluate_fn, model_dir, model, state,
                                           log_dir=log_dir, stream=stream, average=average)
        callbacks.append(evaluation)

    _print(f"training {config.name} ({model.count_params():,} parameters) on {num_train} images, "
           f"{total_steps - start_step} steps of {options.batch_size} images, lr {lr:g}, {replicas} replica(s), "
           f"model_dir {model_dir}")
    stage_start = 0
    for stage in stages:
        steps = stage.end_step - max(start_step, stage_start)
        stage_start = stage.end_step
        if steps <= 0 or state.poisoned or state.preempted:
            continue
        if len(stages) > 1 or stage.losses is not None or stage.frozen_layers:
            _print(f"stage: {stage.name}, {steps} steps")
        _enter_stage(trainer, architecture, stage, options.freeze_backbone)
        train_data = train_data_from(int(optimizer.iterations.numpy()))
        # Inside the scope: the trainer was created outside it (training/trainer.py says why).
        # shuffle=False: the dataset shuffles itself (seeded, resumable); Keras would only warn.
        with strategy.scope():
            trainer.fit(train_data, epochs=1, steps_per_epoch=steps, callbacks=callbacks, verbose=0, shuffle=False)
        start_step = int(optimizer.iterations.numpy())

    if state.poisoned:
        _print(state.message)
        raise FloatingPointError(state.message)
    finished = int(optimizer.iterations.numpy()) >= total_steps
    if finished:
        # With --ema_decay the averaged weights are saved, with their own BatchNorm statistics.
        with average.swapped_in() if average is not None else contextlib.nullcontext():
            if average is not None:
                recompute_batch_norm_statistics(model, bn_images, PRECISE_BN_BATCHES)
            cb.save_weights_atomically(model, os.path.join(model_dir, checkpoints.FINAL_WEIGHTS))
    summary = {
        "preset": config.name, "model_dir": os.path.abspath(model_dir),
        "steps": int(optimizer.iterations.numpy()), "total_steps": total_steps, "finished": finished,
        "preempted": state.preempted, "global_batch_size": options.batch_size, "replicas": replicas,
        "ema_decay": options.ema_decay or None,
        "final_losses": {k: progress.smoothed.get(k) for k in architecture.loss_names},
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


def _write_run_files(model_dir, config, options, lr, replicas, class_names):
    """config.json, train_options.json (with what the run resolved) and labelmap.txt."""
    _write_json(os.path.join(model_dir, checkpoints.CONFIG_FILE), dataclasses.asdict(config))
    _write_json(os.path.join(model_dir, OPTIONS_FILE),
                {**dataclasses.asdict(options), "resolved_lr": lr, "total_steps": options.steps,
                 "lr_boundaries_steps": resolve_boundaries(options.lr_boundaries, options.steps),
                 "replicas": replicas})
    with open(os.path.join(model_dir, "labelmap.txt"), "w", encoding="utf-8") as f:
        f.write("".join(n + "\n" for n in class_names[1:]))


def build_for_training(architecture, options, strategy, lr, model_dir):
    """-> (network, trainer, optimizer, checkpoint manager, weight average or None), restored
    from the latest checkpoint of `model_dir` when there is one."""
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        model = architecture.build_model()
        if options.freeze_backbone:
            _set_trainable(model, architecture, frozen_layers=(), freeze_backbone=True)
        if replicas > 1:
            synced = synchronize_batch_norm(model)
            if synced:
                _print(f"synchronized BatchNorm over {replicas} replicas ({synced} layers)")
    trainer = DetectorTrainer(model, architecture)  # outside the scope: training/trainer.py says why
    trainer.build()
    with strategy.scope():
        schedule = WarmupSchedule(lr, options.steps, options.warmup_steps, options.lr_schedule,
                                  resolve_boundaries(options.lr_boundaries, options.steps))
        optimizer = make_optimizer(schedule, options.momentum, options.weight_decay, options.grad_accum_steps,
                                   options.clip_grad_norm, options.optimizer)
        # Builds the optimizer for every weight a stage may train, before any stage freezes some.
        trainer.compile(optimizer=optimizer, jit_compile=options.jit_compile)
        average = WeightAverage(model, options.ema_decay) if options.ema_decay else None
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                         **(average.checkpoint_items() if average else {}))
        manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(model_dir, checkpoints.CHECKPOINT_DIR), max_to_keep=options.keep_checkpoints)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if average is not None and int(average.num_updates.numpy()) == 0:
            average.reset()  # from the restored weights when a run started without EMA resumes with it
    return model, trainer, optimizer, manager, average


def _set_trainable(model, architecture, frozen_layers, freeze_backbone):
    """Layers with weights are trainable unless a stage freezes them (`frozen_layers`, name
    prefixes), the architecture always does (`fixed_frozen_layers`) or they are backbone layers
    under --freeze_backbone."""
    heads = architecture.head_layer_prefixes
    frozen = (*frozen_layers, *architecture.fixed_frozen_layers())
    for layer in model.layers:
        if layer.weights:
            backbone = not layer.name.startswith(heads)
            layer.trainable = not ((freeze_backbone and backbone) or layer.name.startswith(frozen))


def _enter_stage(trainer, architecture, stage, freeze_backbone):
    _set_trainable(trainer.detector, architecture, stage.frozen_layers, freeze_backbone)
    trainer.optimized_losses = stage.losses
    trainer.make_train_function(force=True)  # retraced: what is trained and optimized changed


def _evaluate_fn(model, architecture, val_reader, bn_images, class_names, options, replicas):
    """evaluate_fn(diagnostics) for `PeriodicEvaluation`: precise BatchNorm statistics, then VOC07
    on the validation set -> (result, speed, drawn images). Without `diagnostics` (the trained
    weights' extra pass under --ema_decay) no confusion matrix, sizes or pictures."""
    config = architecture.config
    predict = make_predict_fn(model, architecture)
    val_examples = val_reader.as_dataset()
    if options.max_eval_images:
        val_examples = val_examples.take(options.max_eval_images)
    val_data = make_dataset(val_examples.cache(), config, max(options.batch_size // replicas, 1), training=False,
                            max_boxes=options.max_boxes, truncate_boxes=True)

    def evaluate_fn(diagnostics=True):
        recompute_batch_norm_statistics(model, bn_images, PRECISE_BN_BATCHES)
        drawn = []
        limit = options.eval_images_to_draw if diagnostics else 0

        def draw(images, targets, detections):
            if len(drawn) < limit:
                drawn.extend(draw_ground_truth_and_detections(images, targets, detections, config, class_names,
                                                              limit - len(drawn)))
        result, speed = evaluate_dataset(predict, val_data, class_names, ("voc07",), on_batch=draw,
                                         diagnostics=diagnostics)
        return result, speed, drawn

    return evaluate_fn
