"""Images/s of the full training input pipeline (Caffe SSD augmentation + batching).

    python bench/input_pipeline.py [--image-size 320] [--batch-size 16] [--batches 20] [--repeats 3]

For each dataset it times `make_dataset(training=True)` at 1 and 2 parallel calls, twice:
  * "pipeline":        examples decoded once and cached in memory, so only the augmentation,
                       padding and batching are timed (what the model step competes with);
  * "read+pipeline":   JPEG reading and decoding included (the readers' own cost).
Datasets (train splits, read by `refinedet_tf.data.read_dataset`): the built-in synthetic VOC
set (`refinedet_tf.data.synthetic.ensure_synthetic_dataset()`, made on first use) and
/work/shared/datasets/raccoon.
Numbers on a shared machine are noisy: run it on an idle one to compare changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import tensorflow as tf

from refinedet_tf.config import get_preset
from refinedet_tf.data import read_dataset
from refinedet_tf.data.pipeline import make_dataset
from refinedet_tf.data.synthetic import ensure_synthetic_dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.machine import describe  # noqa: E402


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
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            images, _ = next(iterator)
        images.numpy()
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return max(rates), float(np.median(rates))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per measurement")
    parser.add_argument("--parallel-calls", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    config = get_preset("vgg16_320", image_size=args.image_size)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {describe()}; {usable} cores usable by this process")
    print(f"image size {args.image_size}, batch {args.batch_size}, training augmentation on; "
          f"{args.repeats} windows of {args.batches} batches after 2 warm-up batches: "
          "best (median) images/s")
    for name, examples in open_datasets():
        cached = examples.cache()
        count = sum(1 for _ in cached)  # decode once into memory
        print(f"\n{name}: {count} images")
        for parallel in args.parallel_calls:
            timing = (config, args.batch_size, args.batches, parallel, args.repeats)
            piped = images_per_second(cached, *timing)
            read = images_per_second(examples, *timing)
            print(f"  num_parallel_calls={parallel}: pipeline {piped[0]:6.1f} ({piped[1]:6.1f})   "
                  f"read+pipeline {read[0]:6.1f} ({read[1]:6.1f})")


if __name__ == "__main__":
    main()
