"""Images/s of the full training input pipeline (Caffe SSD augmentation + batching).

    python bench/input_pipeline.py [--image-size 320] [--batch-size 16] [--batches 20] [--repeats 3]

For each dataset it times `make_dataset(training=True)` at 1 and 2 parallel calls, twice:
  * "pipeline":        examples decoded once and cached in memory, so only the augmentation,
                       padding and batching are timed (what the model step competes with);
  * "read+pipeline":   JPEG reading and decoding included (the readers' own cost).
Datasets (train splits, read by `refinedet_tf.data.read_dataset`): the built-in synthetic VOC
set (`refinedet_tf.data.synthetic.ensure_synthetic_dataset()`, made on first use) and
/work/shared/datasets/raccoon.
Then, side by side in the same run, the training step (`bench/train_step.py`'s
`train_step_seconds`: forward + loss + gradient + SGD update, no XLA as train.py's default) of
`--step-presets` at their own image sizes, against the pipeline on the cached synthetic set
with that preset's config and batch: the input is the bottleneck when its images/s (median)
is below the step's. Each is timed alone with every core to itself; in training both share
the cores, so a pipeline close to the step's rate slows the step down too.
First it times the synthetic set's generation itself (100 train images into a temporary
folder; the demo generates 1200 on first use).
Numbers on a shared machine are noisy: run it on an idle one to compare changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from refinedet_tf.config import get_preset
from refinedet_tf.data import read_dataset
from refinedet_tf.data.pipeline import make_dataset
from refinedet_tf.data.synthetic import ensure_synthetic_dataset, generate_voc_dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.machine import describe  # noqa: E402
from bench.train_step import train_step_seconds, window_seconds  # noqa: E402

RACCOON = "/work/shared/datasets/raccoon"


def open_datasets():
    """[(name, examples dataset)]: the built-in synthetic set and raccoon, train splits."""
    path = ensure_synthetic_dataset()
    datasets = [(f"synthetic VOC ({path}, train)", read_dataset(path, split="train"))]
    if os.path.isdir(RACCOON):
        datasets.append((f"raccoon ({RACCOON}, train)", read_dataset(RACCOON, split="train")))
    return datasets


def images_per_second(examples, config, batch_size, batches, parallel_calls, repeats, warmup=2):
    """Images/s over `repeats` consecutive windows of `batches` batches, after a warm-up.

    Returns (best, median): on a shared machine the best window is the least disturbed one.
    """
    dataset = make_dataset(examples, config, batch_size, training=True, seed=0,
                           num_parallel_calls=parallel_calls, shuffle_buffer=64)
    iterator = iter(dataset)
    for _ in range(warmup):  # tracing, shuffle buffer fill
        next(iterator)
    rates = [batch_size / seconds for seconds in window_seconds(iterator, batches, repeats)]
    return max(rates), float(np.median(rates))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per measurement")
    parser.add_argument("--parallel-calls", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--step-presets", nargs="+", default=["vgg16_320", "mobilenetv2_lite_192"],
                        help="presets whose training step is compared with the pipeline")
    parser.add_argument("--step-batch-size", type=int, default=8)
    parser.add_argument("--step-repeats", type=int, default=3, help="timed steps after 1 warm-up")
    args = parser.parse_args()
    config = get_preset("vgg16_320", image_size=args.image_size)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {describe()}; {usable} cores usable by this process")
    print(f"image size {args.image_size}, batch {args.batch_size}, training augmentation on; "
          f"{args.repeats} windows of {args.batches} batches after 2 warm-up batches: "
          "best (median) images/s")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        generate_voc_dataset(folder, num_train=100, num_val=0)
        seconds = time.perf_counter() - start
    print(f"synthetic set generation: 100 images in {seconds:.1f} s ({100 / seconds:.0f} images/s, "
          "one process)")
    synthetic = None
    for name, examples in open_datasets():
        cached = examples.cache()
        count = sum(1 for _ in cached)  # decode once into memory
        synthetic = cached if synthetic is None else synthetic  # the first one
        print(f"\n{name}: {count} images")
        for parallel in args.parallel_calls:
            timing = (config, args.batch_size, args.batches, parallel, args.repeats)
            piped = images_per_second(cached, *timing)
            read = images_per_second(examples, *timing)
            print(f"  num_parallel_calls={parallel}: pipeline {piped[0]:6.1f} ({piped[1]:6.1f})   "
                  f"read+pipeline {read[0]:6.1f} ({read[1]:6.1f})")

    compare_with_step(synthetic, args)


def compare_with_step(examples, args):
    """Prints, per step preset, step images/s next to the pipeline's, and which is slower."""
    batch = args.step_batch_size
    print(f"\ntraining step vs input pipeline: synthetic VOC train set (cached), each preset at "
          f"its own image size, batch {batch}, step without XLA (median of {args.step_repeats} "
          f"after 1 warm-up); input: pipeline best (median) images/s of {args.repeats} windows of "
          f"{args.batches} batches; bottleneck: INPUT where the input's median images/s < step images/s")
    header = f"{'preset':20s} {'size':>4s} {'step s':>7s} {'step img/s':>10s}"
    for parallel in args.parallel_calls:
        header += f" {f'input p={parallel}':>17s} {'bottleneck':>10s}"
    print(header)
    for name in args.step_presets:
        config = get_preset(name)
        step = train_step_seconds(config, batch, repeats=args.step_repeats, examples=examples)
        step_rate = batch / step
        line = f"{name:20s} {config.image_size:4d} {step:7.3f} {step_rate:10.2f}"
        for parallel in args.parallel_calls:
            best, median = images_per_second(examples, config, batch, args.batches, parallel, args.repeats)
            verdict = "INPUT" if median < step_rate else "no"
            line += f" {best:7.1f} ({median:6.1f}) {verdict:>10s}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
