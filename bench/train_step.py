"""Training-step speed on this machine, split into input, forward, targets+loss, backward+update.

  python bench/train_step.py [--presets vgg16_320 mobilenetv2_320] [--batch-size 8] [--repeats 3]

For each preset (at its own image size) and each of jit_compile False / True:
  * input:    seconds per batch of the full training pipeline, `make_dataset(training=True)`
              (Caffe SSD augmentation, padding, batching; AUTOTUNE parallel calls, shuffle
              buffer 64) on the built-in synthetic VOC train set, examples decoded once and
              cached in memory. It is tf.data, so it is measured once per preset, not per jit.
  * forward:  `detector(images, training=True)` in a tf.function;
  * loss:     targets + losses, `refinedet_loss` on fixed outputs of that forward, in a
              tf.function (matching of both stages, hard-negative mining, the four losses);
  * bwd+upd:  NOT measured on its own: the full step minus forward minus loss, i.e. the
              gradient through the network, the SGD update (momentum, weight decay) and
              whatever the step does beyond the two parts timed separately;
  * step:     `DetectorTrainer.train_step` (forward + loss + gradient + apply_gradients, the
              optimizer of `make_optimizer`) in a tf.function, on a fixed batch (no input).
Every function gets one warm-up call (tracing, XLA compilation: the step's is reported as
"1st step"), then `--repeats` rounds each time forward, loss and step of both jit settings in
turn (so load changes on a shared machine hit them alike); medians are reported, and bwd+upd
is the median over rounds of step - forward - loss (it can be off by the noise of three
timings when the parts are close). All numbers come from one run, side by
side, so ratios are meaningful on a shared machine; absolute times are only this machine's.
Models start from random weights (`backbone_weights="none"`): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import refinedet_tf  # noqa: E402
from bench.machine import describe  # noqa: E402
from refinedet_tf.architectures import RefineDet  # noqa: E402
from refinedet_tf.data import read_dataset  # noqa: E402
from refinedet_tf.data.pipeline import loss_targets, make_dataset  # noqa: E402
from refinedet_tf.data.synthetic import ensure_synthetic_dataset  # noqa: E402
from refinedet_tf.training.optimizer import WarmupSchedule, default_lr, make_optimizer  # noqa: E402
from refinedet_tf.training.trainer import DetectorTrainer  # noqa: E402

DEFAULT_PRESETS = ("vgg16_320", "mobilenetv2_320")
INPUT_BATCHES_PER_WINDOW = 5


def timed(fn, repeats, warmup=1):
    """-> (median seconds of `repeats` calls, seconds of the first warm-up call).

    Outputs are fetched (`.numpy()`) inside the timing, so asynchronous work is counted.
    """
    first = 0.0
    for i in range(warmup):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, fn())
        if i == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), first


def cached_synthetic_examples():
    """The synthetic VOC train split (made on first use), decoded once into memory."""
    examples = read_dataset(ensure_synthetic_dataset(), split="train").cache()
    for _ in examples:  # fill the cache
        pass
    return examples


def training_batches(examples, config, batch_size, num_parallel_calls=tf.data.AUTOTUNE):
    """An iterator over `make_dataset(training=True)` batches: (images, loss targets).

    The targets keep only what the trainer's loss reads (`loss_targets`, as `train.py` feeds it).
    """
    dataset = make_dataset(examples, config, batch_size, training=True, seed=0,
                           num_parallel_calls=num_parallel_calls, shuffle_buffer=64)
    yield from dataset.map(loss_targets)


def window_seconds(batches, num_batches, repeats):
    """Seconds per batch in each of `repeats` consecutive windows of `num_batches` batches drawn
    from the iterator `batches` of (images, targets); the last images of a window are fetched."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(num_batches):
            images, _ = next(batches)
        images.numpy()
        times.append((time.perf_counter() - start) / num_batches)
    return times


def input_seconds(examples, config, batch_size, repeats, num_parallel_calls=tf.data.AUTOTUNE):
    """Median seconds per batch over `repeats` windows of INPUT_BATCHES_PER_WINDOW batches,
    after 2 warm-up batches, and one batch (images, targets) to feed the model timings."""
    batches = training_batches(examples, config, batch_size, num_parallel_calls)
    batch = next(batches)
    next(batches)
    times = window_seconds(batches, INPUT_BATCHES_PER_WINDOW, repeats)
    batches.close()  # stop the pipeline's threads before the model is timed
    return float(np.median(times)), batch


def make_trainer(config, batch_size):
    """A DetectorTrainer with train.py's optimizer (SGD momentum 0.9, weight decay 5e-4)."""
    architecture = RefineDet(config)
    trainer = DetectorTrainer(architecture.build_model(), architecture)
    schedule = WarmupSchedule(default_lr(batch_size), total_steps=10_000)
    optimizer = make_optimizer(schedule)
    trainer.compile(optimizer=optimizer)  # builds the optimizer
    return trainer


def _seconds(fn):
    """Seconds of one call of `fn`, its outputs fetched."""
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, fn())
    return time.perf_counter() - start


def time_model(trainer, images, targets, repeats, jit_compiles=(False, True)):
    """Forward, loss and full step of one fixed batch, for each jit_compile setting.

    Every function gets one warm-up call (the forward's gives the fixed outputs the loss is
    timed on); then `repeats` rounds each time forward, loss and step of every setting one
    after the other, so a change of load on a shared machine hits all of them alike.
    Returns {jit_compile: dict forward, loss, step (median seconds), backward (median over
    rounds of step - forward - loss), step_min, step_max, step_first (the warm-up call:
    tracing, XLA compilation and one step)}.
    """
    config = trainer.architecture.config
    detector = trainer.detector
    mask = tf.cast(targets["mask"], tf.bool)
    fns, results, outputs = {}, {}, None
    for jit in jit_compiles:
        forward = tf.function(lambda x: detector(x, training=True), jit_compile=jit)
        loss = tf.function(
            lambda o, b, c, m: refinedet_tf.refinedet_loss(o, b, c, m, trainer.architecture.anchors_yxyx, config),
            jit_compile=jit)
        step = tf.function(trainer.train_step, jit_compile=jit)
        warm = forward(images)
        outputs = warm if outputs is None else outputs  # the same fixed outputs for every setting
        fns[jit] = {"forward": lambda f=forward: f(images),
                    "loss": lambda f=loss: f(outputs, targets["boxes"], targets["classes"], mask),
                    "step": lambda f=step: f((images, targets))}
        fns[jit]["loss"]()
        results[jit] = {"step_first": _seconds(fns[jit]["step"])}
    times = {jit: {part: [] for part in ("forward", "loss", "step")} for jit in jit_compiles}
    for _ in range(repeats):
        for jit in jit_compiles:
            for part in ("forward", "loss", "step"):
                times[jit][part].append(_seconds(fns[jit][part]))
    for jit in jit_compiles:
        t = {part: np.array(values) for part, values in times[jit].items()}
        results[jit].update({part: float(np.median(values)) for part, values in t.items()})
        results[jit]["backward"] = float(np.median(t["step"] - t["forward"] - t["loss"]))
        results[jit]["step_min"], results[jit]["step_max"] = float(t["step"].min()), float(t["step"].max())
    return results


def train_step_seconds(config, batch_size, repeats=3, jit_compile=False, examples=None):
    """Median seconds of one full training step (`DetectorTrainer.train_step` in a
    tf.function) at `batch_size`, on a batch of the training pipeline (input not included)."""
    examples = cached_synthetic_examples() if examples is None else examples
    batches = training_batches(examples, config, batch_size)
    batch = next(batches)
    batches.close()
    trainer = make_trainer(config, batch_size)
    step = tf.function(trainer.train_step, jit_compile=jit_compile)
    return timed(lambda: step(batch), repeats)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after 1 warm-up call")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"machine: {describe()}")
    print(f"batch {args.batch_size}; seconds per batch, median of {args.repeats} interleaved rounds after "
          "1 warm-up call each;\nbwd+upd = step - forward - loss (not measured on its own); input: "
          "make_dataset(training=True) on the cached synthetic\ntrain set, AUTOTUNE parallel calls, "
          "measured once per preset; 1st step: the step's warm-up call (trace, XLA compile, 1 step)\n")
    examples = cached_synthetic_examples()
    header = (f"{'preset':20s} {'xla':>5s} {'input':>7s} {'forward':>8s} {'loss':>7s} {'bwd+upd':>8s} "
              f"{'step':>7s} {'step min-max':>13s} {'in img/s':>9s} {'step img/s':>10s} {'fwd %':>6s} "
              f"{'loss %':>6s} {'bwd %':>6s} {'1st step':>8s}")
    print(header)
    print("-" * len(header))
    for name in args.presets:
        config = refinedet_tf.get_preset(name)
        input_s, (images, targets) = input_seconds(examples, config, args.batch_size, args.repeats)
        trainer = make_trainer(config, args.batch_size)
        results = time_model(trainer, images, targets, args.repeats)
        for jit, r in results.items():

            def share(part, r=r):
                return 100.0 * r[part] / r["step"]

            spread = f"{r['step_min']:.2f}-{r['step_max']:.2f}"
            print(f"{name:20s} {jit!s:>5s} {input_s:7.3f} {r['forward']:8.3f} {r['loss']:7.3f} "
                  f"{r['backward']:8.3f} {r['step']:7.3f} {spread:>13s} {args.batch_size / input_s:9.1f} "
                  f"{args.batch_size / r['step']:10.2f} {share('forward'):6.1f} {share('loss'):6.1f} "
                  f"{share('backward'):6.1f} {r['step_first']:8.1f}", flush=True)
        del trainer
    print(f"\nbench wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
