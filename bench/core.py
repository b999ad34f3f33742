"""Core speed on this machine: forward latency, achieved GFLOP/s, targets+losses, detect.

  python bench/core.py [--repeats 5]

Every figure comes from the same run, side by side, so ratios (achieved / peak) are meaningful
on a shared, noisy machine; absolute times are only this machine's.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import refinedet_tf  # noqa: E402
from bench.machine import describe  # noqa: E402
from refinedet_tf.layers import find_layers  # noqa: E402


def conv_flops(model):
    """Multiply-adds x 2 of the convolutions (everything else is noise for these networks)."""
    total = 0
    for layer in find_layers(model, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Conv2DTranspose)):
        out_shape = layer.output.shape
        in_shape = layer.input.shape
        kh, kw = layer.kernel_size
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            total += 2 * out_shape[1] * out_shape[2] * kh * kw * in_shape[-1]
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            total += 2 * in_shape[1] * in_shape[2] * kh * kw * in_shape[-1] * out_shape[-1]
        else:
            total += 2 * out_shape[1] * out_shape[2] * kh * kw * in_shape[-1] * out_shape[-1] // layer.groups
    return total


def timed(fn, repeats):
    fn()  # trace / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_peak(repeats):
    n = 2048
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda: tf.linalg.matmul(a, b))
    t = timed(f, repeats)
    return 2 * n ** 3 / t / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    peak = matmul_peak(args.repeats)
    print(f"float32 matmul 2048^3 peak: {peak:.1f} GFLOP/s\n")
    print(f"{'model':18s} {'batch':>5s} {'ms/batch':>9s} {'ms/image':>9s} {'GFLOP/img':>9s} {'GFLOP/s':>8s} "
          f"{'% peak':>7s}")
    for name in ("vgg16_320", "mobilenetv2_320"):
        config = refinedet_tf.get_preset(name)
        model = refinedet_tf.build_refinedet(config)
        flops = conv_flops(model)
        forward = tf.function(lambda x, m=model: m(x, training=False))
        for batch in (1, 8):
            x = tf.random.normal([batch, config.image_size, config.image_size, 3])
            t = timed(lambda: forward(x), args.repeats)
            rate = flops * batch / t / 1e9
            print(f"{name:18s} {batch:5d} {t * 1e3:9.1f} {t * 1e3 / batch:9.1f} {flops / 1e9:9.2f} "
                  f"{rate:8.1f} {100 * rate / peak:6.1f}%")

    config = refinedet_tf.get_preset("vgg16_320")
    anchors = refinedet_tf.generate_anchors(config)
    rng = np.random.default_rng(0)
    a = anchors.shape[0]

    def outputs(batch):
        return {"arm_loc": tf.constant(rng.standard_normal((batch, a, 4)), tf.float32),
                "arm_conf": tf.constant(rng.standard_normal((batch, a, 2)), tf.float32),
                "odm_loc": tf.constant(rng.standard_normal((batch, a, 4)), tf.float32),
                "odm_conf": tf.constant(rng.standard_normal((batch, a, 21)), tf.float32)}

    out32 = outputs(32)
    lo = rng.uniform(0, 0.7, (32, 20, 2))
    boxes = tf.constant(np.concatenate([lo, lo + rng.uniform(0.05, 0.3, (32, 20, 2))], -1), tf.float32)
    classes = tf.constant(rng.integers(1, 21, (32, 20)), tf.int32)
    mask = tf.constant(np.arange(20)[None] < rng.integers(1, 20, (32, 1)))
    print()
    for jit in (False, True):
        loss_fn = tf.function(lambda o, b, c, m: refinedet_tf.refinedet_loss(o, b, c, m, anchors, config),
                              jit_compile=jit)
        t = timed(lambda: loss_fn(out32, boxes, classes, mask), args.repeats)
        print(f"targets + losses, batch 32, 20 boxes/image, jit_compile={jit!s:5s}: {t * 1e3:8.1f} ms")
    out8 = outputs(8)
    detect = tf.function(lambda o: refinedet_tf.detect(o, anchors, config))
    t = timed(lambda: detect(out8), args.repeats)
    print(f"detect (decode + top-1000/class + NMS + keep 500), batch 8:        {t * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
