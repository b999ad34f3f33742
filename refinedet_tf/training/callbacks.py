"""Keras callbacks of a training run: progress, TensorBoard, checkpoints, NaN guard,
preemption, periodic evaluation with the best checkpoint kept apart.

All of them count steps with the optimizer's `iterations` (restored with the checkpoint), so a
resumed run continues its step numbers, schedules and logs where the killed run stopped.
"""

import contextlib
import json
import math
import os
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from refinedet_tf.evaluation.confusion import plot_confusion_matrix


class RunState:
    """What the callbacks tell each other: a poisoned (NaN) run must not be checkpointed."""

    def __init__(self):
        self.poisoned = False
        self.preempted = False
        self.message = None


def _step(model):
    return int(model.optimizer.iterations.numpy())


def _floats(logs):
    """Log values as floats (multi-worker runs log [1]-shaped tensors)."""
    return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in (logs or {}).items()}


def save_weights_atomically(model, path):
    """Writes `path` through a temporary file and a rename: a crash never leaves half a file."""
    tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)


class NaNGuard(keras.callbacks.Callback):
    """Stops at the first non-finite loss; the weights of that step are never checkpointed."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def on_train_batch_end(self, batch, logs=None):
        logs = _floats(logs)
        bad = [k for k in self.model.loss_names if k in logs and not math.isfinite(logs[k])]
        if bad:
            self.state.poisoned = True
            self.state.message = (
                f"non-finite loss at step {_step(self.model)} ({', '.join(f'{k}={logs[k]}' for k in bad)}): "
                "training stopped; the last checkpoint before it is kept as the latest. Lower --lr, "
                "add --warmup_steps, or check the data (prepare reports bad boxes).")
            self.model.stop_training = True


class CheckpointSaver(keras.callbacks.Callback):
    """tf.train.CheckpointManager every `every` steps and at the end (unless poisoned).

    TensorFlow writes a checkpoint's files first and then atomically replaces the `checkpoint`
    index file, so a run killed while saving still resumes from the previous checkpoint.
    """

    def __init__(self, manager, every, state):
        super().__init__()
        self.manager = manager
        self.every = max(int(every), 1)
        self.state = state
        self.last_saved = None

    def save(self):
        step = _step(self.model)
        if self.state.poisoned or step == self.last_saved:
            return
        self.manager.save(checkpoint_number=step)
        self.last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if not self.state.poisoned and _step(self.model) % self.every == 0:
            self.save()

    def on_train_end(self, logs=None):
        self.save()


class Preemption(keras.callbacks.Callback):
    """SIGTERM (a preempted VM, a cluster scheduler) -> save a checkpoint and stop cleanly."""

    def __init__(self, saver, state):
        super().__init__()
        self.saver = saver
        self.state = state
        self._previous = None

    def on_train_begin(self, logs=None):
        def handler(signum, frame):
            del frame
            self.state.preempted = True
            print(f"\nsignal {signum}: saving a checkpoint and stopping", file=sys.stderr, flush=True)
        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (e.g. inside some test runners)
            self._previous = None

    def on_train_batch_end(self, batch, logs=None):
        if self.state.preempted:
            self.saver.save()
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class ProgressLogger(keras.callbacks.Callback):
    """One line every `every` steps: step/total, the trainer's losses (smoothed), lr, images/s."""

    def __init__(self, total_steps, global_batch_size, every=10, stream=None):
        super().__init__()
        self.total_steps = total_steps
        self.batch = global_batch_size
        self.every = max(int(every), 1)
        self.stream = stream or sys.stdout
        self.smoothed = {}
        self.last = None
        self.history = []

    def on_train_begin(self, logs=None):
        self.last = (time.perf_counter(), _step(self.model))

    def on_train_batch_end(self, batch, logs=None):
        logs = _floats(logs)
        for k in self.model.loss_names:
            if k in logs and math.isfinite(logs[k]):
                prev = self.smoothed.get(k, logs[k])
                self.smoothed[k] = 0.9 * prev + 0.1 * logs[k]
        step = _step(self.model)
        if step % self.every and step != self.total_steps:
            return
        now = time.perf_counter()
        seconds, steps = now - self.last[0], step - self.last[1]
        self.last = (now, step)
        rate = steps * self.batch / seconds if seconds > 0 else 0.0
        width = 24
        done = int(width * step / max(self.total_steps, 1))
        bar = "#" * done + "." * (width - done)
        losses = " ".join(f"{k}={self.smoothed.get(k, float('nan')):.3f}" for k in self.model.loss_names)
        line = (f"[{bar}] step {step}/{self.total_steps} {losses} lr={logs.get('lr', 0.0):.2e} "
                f"{rate:.1f} img/s")
        print(line, file=self.stream, flush=True)
        self.history.append({"step": step, **self.smoothed, "lr": logs.get("lr"), "images_per_second": rate})


class StepLog(keras.callbacks.Callback):
    """Appends every step's raw losses and lr to `path` (JSON lines): exact, unsmoothed."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_batch_end(self, batch, logs=None):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": _step(self.model), **_floats(logs)}) + "\n")


class TensorBoardScalars(keras.callbacks.Callback):
    """Losses and lr every `every` steps into `log_dir/train` (tf.summary)."""

    def __init__(self, log_dir, every=10):
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
        self.every = max(int(every), 1)

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if step % self.every:
            return
        with self.writer.as_default(step=step):
            for k, v in _floats(logs).items():
                if math.isfinite(v):
                    tf.summary.scalar(f"loss/{k}" if k in self.model.loss_names else k, v)
        self.writer.flush()


class PeriodicEvaluation(keras.callbacks.Callback):
    """Every `every` steps and at the end: VOC07 mAP (through `evaluation.runner`), TensorBoard
    mAP / per-class AP / a few validation images with predicted (green) and true (red) boxes,
    and `best.weights.h5` replaced atomically whenever the mAP improves. With an
    `average` (--ema_decay) the averaged weights are evaluated and kept."""

    def __init__(self, every, evaluate_fn, model_dir, detector, state, metric="voc07", log_dir=None,
                 stream=None, average=None):
        super().__init__()
        # ema.WeightAverage or None. With one, the averaged weights are what is evaluated, kept
        # as best and reported; the trained weights are evaluated too, as `<metric>_raw`, so
        # every run with EMA measures what the average gains on the user's data.
        self.average = average
        self.every = int(every)
        self.evaluate_fn = evaluate_fn
        self.model_dir = model_dir
        self.detector = detector
        self.state = state
        self.metric = metric
        self.stream = stream or sys.stdout
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "val")) if log_dir else None
        self.best = None
        self.history = []
        self.last_step = None
        best_file = os.path.join(model_dir, "best.json")
        if os.path.exists(best_file):
            with open(best_file, encoding="utf-8") as f:
                self.best = json.load(f)

    def run(self):
        step = _step(self.model)
        if self.state.poisoned or step == self.last_step:
            return
        self.last_step = step
        metric = self.metric
        raw = None
        if self.average is not None:
            raw = self.evaluate_fn(diagnostics=False)[0].get(metric, {}).get("mAP")
        # The best weights are saved inside the swap: the averaged weights with their BatchNorm
        # statistics (evaluate_fn recomputes them), never the trained weights.
        with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
            result, speed, images = self.evaluate_fn()
            value = result.get(metric, {}).get("mAP")
            improved = value is not None and (self.best is None or value > self.best[metric])
            if improved:
                self.best = {"step": step, metric: value}
                save_weights_atomically(self.detector, os.path.join(self.model_dir, "best.weights.h5"))
                with open(os.path.join(self.model_dir, "best.json"), "w", encoding="utf-8") as f:
                    json.dump(self.best, f)
        record = {"step": step, metric: value, "per_class": result.get(metric, {}).get("per_class"),
                  "images": speed["images"], "seconds": round(speed["seconds"], 2)}
        if self.average is not None:
            record[f"{metric}_raw"] = raw
        self.history.append(record)
        shown = "n/a" if value is None else f"{value:.4f}"
        compared = ""
        if self.average is not None:
            compared = f" with the averaged weights (trained weights: {'n/a' if raw is None else f'{raw:.4f}'})"
        print(f"eval step {step}: {metric} mAP {shown}{compared} on {speed['images']} images "
              f"({speed['images'] / max(speed['seconds'], 1e-9):.1f} img/s)"
              f"{' (best so far, saved best.weights.h5)' if improved else ''}", file=self.stream, flush=True)
        if self.writer is not None:
            with self.writer.as_default(step=step):
                if value is not None:
                    tf.summary.scalar(f"mAP/{metric}", value)
                if raw is not None:
                    tf.summary.scalar(f"mAP/{metric}_trained_weights", raw)
                for name, ap in (record["per_class"] or {}).items():
                    if ap is not None:
                        tf.summary.scalar(f"AP/{name}", ap)
                if images is not None and len(images):
                    tf.summary.image("val/predicted_green_true_red", np.stack(images), max_outputs=len(images))
                # The same diagnostics as evaluate.py: AP by object size, the confusion matrix.
                for label, values in (result.get("by_size") or {}).items():
                    if values["AP50"] is not None:
                        tf.summary.scalar(f"AP50_by_size/{label}", values["AP50"])
                if result.get("confusion_matrix"):
                    picture = plot_confusion_matrix(result["confusion_matrix"])
                    if picture is not None:
                        tf.summary.image("val/confusion_matrix", picture[None].astype(np.float32) / 255.0)
            self.writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        if self.every > 0 and _step(self.model) % self.every == 0:
            self.run()

    def on_train_end(self, logs=None):
        if not self.state.preempted:
            self.run()
