"""Faster R-CNN speed on this machine: the forward pass, detect, and one training step, with
their FLOPs and share of the float32 matmul peak, side by side in one run.

  python bench/faster_rcnn.py [--presets faster_rcnn_vgg16 faster_rcnn_mobilenetv2_lite_256]
                              [--repeats 3] [--canvas 608x800] [--quick]

What is measured, per preset (random weights, `backbone_weights="none"`: speed does not depend
on them):
  * canvas: the paper's test image, 600 x 800 (a 375 x 500 VOC image at scale 1.6), on a
    608 x 800 canvas (multiples of 16), image_info (600, 800, 1.6); the lite preset uses its own
    256 x 256 canvas, image_info (256, 256, 1.0), unless --canvas is given (then image_info is
    (H, W, 1.0) except for 608x800).
  * forward: `model(inputs, training=False)` in a tf.function (no XLA), batch 1, i.e. the
    inference proposal counts (test_post_nms_top_n RoIs: 300 for VGG16, 100 for the lite preset)
    and the head on all of them.
  * detect: `FasterRCNN.detect` (decode, clip, per-class score > 0.05, NMS, best 100) in a
    tf.function on fixed outputs of that forward whose roi_logits are replaced by N(0, 2^2)
    draws: an untrained head gives every class ~1/C (1/21 < 0.05 for VOC: no candidate at all
    reaches the NMS), which would time an NMS with nothing to do. The candidate counts of both
    are printed. forward + detect is the sum of the two medians.
  * step: `DetectorTrainer.train_step` (forward in training mode, anchor and RoI targets, the
    four losses, gradient, SGD update of `make_optimizer`: momentum 0.9, weight decay 5e-4) in a
    tf.function with jit_compile False and True, on a fixed batch with 3 random ground-truth
    boxes per image (normalized yxyx, classes in 1..C-1, one padding row in the mask). Batch 1
    (the references' one image per step) and, for the lite preset, also its recipe's batch 16
    (skipped with a line if it does not fit in memory). The lite recipe trains with AdamW; SGD
    is used here for every preset (AdamW's update does a few more operations per weight). If XLA fails
    to compile a step, one line says what failed and the run goes on.
FLOPs (multiply-adds x 2; everything else, RoI pooling, NMS, the losses, is not counted):
  * forward: the convolutions (`bench.core.conv_flops`, which walks the Conv2D layers of the
    nested "rpn" and "roi_head" sub-models too: the count of each part is printed) plus the
    head's dense layers (fc6, fc7, cls_score, bbox_pred) on the R RoIs of the mode, per image.
  * step: an ESTIMATE, 3 x the forward's training-mode FLOPs (backward ~ 2 x forward), where the
    training-mode forward is the convolutions plus the head on roi_samples_per_image RoIs (128
    for VGG16, 64 for the lite preset): the step runs the head only on the sampled RoIs (the model's own head
    output on the 2000 / 512 training proposals is unused and pruned inside the tf.function).
    (Checked once on a 64 x 64 canvas with a 1024-unit head: a step with 2000 training
    proposals took no longer than one with 128, with jit_compile False and True.) The 3x counts
    a backward for the frozen VGG16 blocks conv1-conv2 (about 30% of VGG16's conv FLOPs), which
    get none (no trainable layer below them): "% pk nf" is the share of the peak with those
    2 x their forward FLOPs left out.
Timing: every function gets one warm-up call (tracing, XLA compilation: reported as "1st"), then
`--repeats` rounds each time every function of the preset once, in turn (so load changes on a
shared machine hit them alike); medians are reported. Outputs are fetched (`.numpy()`) inside
each timing. The matmul peak (`bench.core.matmul_peak`, float32 2048^3) is measured at the start
and at the end of the run; both are printed and their mean is the peak of every "% peak".
All numbers come from one run, side by side, so ratios are meaningful on a shared machine;
absolute times are only this machine's.

--quick: a 160 x 192 canvas, head_units 64, rpn_channels 64, 1 repeat, batch 1 only: checks
that the script runs; its numbers are not a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.core import conv_flops, matmul_peak  # noqa: E402
from bench.machine import describe  # noqa: E402
from refinedet_tf.architectures import FasterRCNN  # noqa: E402
from refinedet_tf.faster_rcnn.config import faster_rcnn_preset  # noqa: E402
from refinedet_tf.faster_rcnn.model import build_faster_rcnn  # noqa: E402
from refinedet_tf.layers import find_layers  # noqa: E402
from refinedet_tf.training.optimizer import WarmupSchedule, default_lr, make_optimizer  # noqa: E402
from refinedet_tf.training.trainer import DetectorTrainer  # noqa: E402

DEFAULT_PRESETS = ("faster_rcnn_vgg16", "faster_rcnn_mobilenetv2_lite_256")
PAPER_CANVAS = (608, 800)
PAPER_IMAGE_INFO = (600.0, 800.0, 1.6)  # a 375 x 500 VOC image, shorter side scaled to 600
QUICK_CANVAS = (160, 192)
LITE_RECIPE_BATCH = 16
NUM_BOXES = 3  # real ground-truth boxes per image (+ 1 padding row)
DETECT_LOGIT_STD = 2.0
CONV_KINDS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Conv2DTranspose)


def parse_hw(text):
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def canvas_and_info(config, canvas):
    """(canvas (H, W), image_info (height, width, scale)) of a preset."""
    if canvas is None:
        canvas = PAPER_CANVAS if config.backbone == "vgg16" else (config.image_size, config.image_size)
    info = PAPER_IMAGE_INFO if tuple(canvas) == PAPER_CANVAS else (float(canvas[0]), float(canvas[1]), 1.0)
    return tuple(canvas), info


def head_flops(model, num_rois):
    """Multiply-adds x 2 of the head's dense layers (fc6, fc7, cls_score, bbox_pred) on num_rois RoIs."""
    dense = find_layers(model.get_layer("roi_head"), keras.layers.Dense)
    return sum(2 * num_rois * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1]) for layer in dense), dense


class _Layers:
    """A stand-in with `.layers`: `conv_flops` (through `find_layers`) only walks `model.layers`."""

    def __init__(self, layers):
        self.layers = layers


def frozen_conv_flops(model):
    """Conv FLOPs of the layers that are not trainable (VGG16 conv1-conv2)."""
    return conv_flops(_Layers([layer for layer in find_layers(model, CONV_KINDS) if not layer.trainable]))


def random_targets(config, batch, rng):
    """Targets of `batch` images: NUM_BOXES random boxes (normalized yxyx) + 1 padding row."""
    rows = NUM_BOXES + 1
    lo = rng.uniform(0.0, 0.6, (batch, rows, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, (batch, rows, 2))], -1)
    return {"boxes": tf.constant(boxes, tf.float32),
            "classes": tf.constant(rng.integers(1, config.num_classes, (batch, rows)), tf.int32),
            "mask": tf.constant(np.broadcast_to(np.arange(rows) < NUM_BOXES, (batch, rows)))}


def model_inputs(canvas, info, batch, rng):
    return {"images": tf.constant(rng.standard_normal((batch, *canvas, 3)), tf.float32),
            "image_info": tf.constant(np.tile(np.array(info, np.float32), (batch, 1)))}


def fetch(out):
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)


def seconds(fn):
    start = time.perf_counter()
    fetch(fn())
    return time.perf_counter() - start


def candidates(outputs, config):
    """Number of (RoI, object class) pairs whose probability passes the score threshold."""
    scores = tf.nn.softmax(outputs["roi_logits"], axis=-1)[..., 1:]
    scores = tf.where(outputs["rois_valid"][..., None], scores, 0.0)
    return int(tf.reduce_sum(tf.cast(scores > config.score_threshold, tf.int32)))


def bench_preset(name, args, rng):
    """Builds, warms up and times one preset. Returns (info lines, rows, which hold seconds)."""
    overrides = {"backbone_weights": "none"}
    if args.quick:
        overrides.update(head_units=64, rpn_channels=64)
    config = faster_rcnn_preset(name, **overrides)
    canvas, info = canvas_and_info(config, QUICK_CANVAS if args.quick else args.canvas)
    architecture = FasterRCNN(config)
    model = build_faster_rcnn(config, canvas)
    lines = [f"{name}: canvas {canvas[0]}x{canvas[1]}, image_info {info}, head_units {config.head_units}, "
             f"rpn_channels {config.rpn_channels}"]

    # FLOPs per image.
    convs = find_layers(model, CONV_KINDS)
    in_rpn = len(find_layers(model.get_layer("rpn"), CONV_KINDS))
    in_head = len(find_layers(model.get_layer("roi_head"), CONV_KINDS))
    conv = conv_flops(model)
    rpn_conv = conv_flops(model.get_layer("rpn"))
    test_rois = config.test_post_nms_top_n
    train_rois = config.roi_samples_per_image
    if config.mining != "sample":
        train_rois = config.train_post_nms_top_n + NUM_BOXES + 1  # OHEM: the head on every candidate
    head_test, dense = head_flops(model, test_rois)
    head_train, _ = head_flops(model, train_rois)
    frozen = frozen_conv_flops(model)
    forward_flops = conv + head_test
    step_flops = 3 * (conv + head_train)
    step_flops_unfrozen = step_flops - 2 * frozen
    lines.append(f"  conv layers counted: {len(convs)} ({in_rpn} in the 'rpn' sub-model, {in_head} in 'roi_head'); "
                 f"dense layers of the head: {', '.join(layer.name for layer in dense)}")
    lines.append(f"  forward FLOPs/image: conv {conv / 1e9:.2f} G (rpn {rpn_conv / 1e9:.3f} G) + head on "
                 f"{test_rois} RoIs {head_test / 1e9:.2f} G = {forward_flops / 1e9:.2f} G")
    lines.append(f"  step FLOPs/image (estimate): 3 x (conv {conv / 1e9:.2f} G + head on {train_rois} RoIs "
                 f"{head_train / 1e9:.2f} G) = {step_flops / 1e9:.2f} G; frozen convs "
                 f"{100 * frozen / conv:.1f}% of the conv FLOPs (without their backward: "
                 f"{step_flops_unfrozen / 1e9:.2f} G)")

    # The functions, each warmed up once (the 1st call: trace, XLA compile, one run).
    fns, firsts, flops, flops_unfrozen = {}, {}, {}, {}
    inputs = model_inputs(canvas, info, 1, rng)
    forward = tf.function(lambda x: model(x, training=False))
    start = time.perf_counter()
    outputs = forward(inputs)
    fetch(outputs)
    firsts["forward"] = time.perf_counter() - start
    fns["forward"], flops["forward"] = (lambda: forward(inputs)), forward_flops
    shape = outputs["roi_logits"].shape
    fixed = dict(outputs)
    fixed["roi_logits"] = tf.constant(rng.normal(0.0, DETECT_LOGIT_STD, shape), tf.float32)
    lines.append(f"  detect input: {shape[1]} RoIs x {shape[2] - 1} classes; candidates > "
                 f"{config.score_threshold}: {candidates(fixed, config)} with N(0, {DETECT_LOGIT_STD:g}^2) logits "
                 f"(timed), {candidates(outputs, config)} with the untrained head's")
    detect = tf.function(architecture.detect)
    firsts["detect"] = seconds(lambda: detect(fixed))
    fns["detect"], flops["detect"] = (lambda: detect(fixed)), 0

    trainer = DetectorTrainer(model, architecture)
    trainer.compile(optimizer=make_optimizer(WarmupSchedule(default_lr(1), total_steps=10_000)))
    batches = [1] if args.quick or config.backbone == "vgg16" else [1, LITE_RECIPE_BATCH]
    for batch in batches:
        data = (model_inputs(canvas, info, batch, rng), random_targets(config, batch, rng))
        for jit in (False, True):
            key = f"step b{batch} xla={jit}"
            step = tf.function(trainer.train_step, jit_compile=jit)
            try:
                firsts[key] = seconds(lambda s=step, d=data: s(d))
            except tf.errors.ResourceExhaustedError as error:
                lines.append(f"  {key}: does not fit in memory ({type(error).__name__}), skipped")
                continue
            except Exception as error:  # whatever XLA (or tracing) fails with: one line, and go on
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                lines.append(f"  {key}: FAILED ({type(error).__name__}: {first_line}), skipped")
                continue
            fns[key] = lambda s=step, d=data: s(d)
            flops[key] = step_flops * batch
            flops_unfrozen[key] = step_flops_unfrozen * batch

    times = {key: [] for key in fns}
    for _ in range(args.repeats):
        for key, fn in fns.items():
            times[key].append(seconds(fn))
    median = {key: float(np.median(values)) for key, values in times.items()}
    rows = []
    for key in fns:
        batch = int(key.split()[1][1:]) if key.startswith("step") else 1
        rows.append((name, key, batch, median[key], flops[key], flops_unfrozen.get(key), firsts[key]))
    rows.insert(2, (name, "forward+detect", 1, median["forward"] + median["detect"], forward_flops, None, None))
    return lines, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after 1 warm-up call")
    parser.add_argument("--canvas", type=parse_hw, default=None,
                        help="HxW, multiples of 16 (default 608x800 for VGG16, the preset's own for the lite one)")
    parser.add_argument("--quick", action="store_true", help="tiny canvas and head, 1 repeat: not a measurement")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    start = time.perf_counter()
    print(f"machine: {describe()}")
    if args.quick:
        print("\n*** (quick mode: not a measurement) ***\n")
    rng = np.random.default_rng(0)
    peak_start = matmul_peak(max(args.repeats, 3))
    print(f"float32 matmul 2048^3 peak at the start: {peak_start:.1f} GFLOP/s", flush=True)
    all_lines, all_rows = [], []
    for name in args.presets:
        lines, rows = bench_preset(name, args, rng)
        print("\n".join(lines), flush=True)
        all_lines += lines
        all_rows += rows
    peak_end = matmul_peak(max(args.repeats, 3))
    peak = (peak_start + peak_end) / 2
    print(f"float32 matmul 2048^3 peak at the end: {peak_end:.1f} GFLOP/s; mean {peak:.1f} GFLOP/s "
          "(the peak of every % below)\n")
    print(f"median of {args.repeats} interleaved round(s) after 1 warm-up call each; GFLOP: per batch; "
          "step GFLOP = 3 x training-mode forward (estimate);\n% pk nf: the step's share of the peak with no "
          "backward for the frozen convs; 1st: the warm-up call (trace, XLA compile, 1 run)")
    header = (f"{'preset':34s} {'what':20s} {'batch':>5s} {'ms':>9s} {'ms/img':>9s} {'GFLOP':>8s} "
              f"{'GFLOP/s':>8s} {'% peak':>7s} {'% pk nf':>7s} {'1st s':>7s}")
    print(header)
    print("-" * len(header))
    for name, key, batch, t, flop, flop_unfrozen, first in all_rows:
        rate = flop / t / 1e9 if flop else None
        rate_text = f"{rate:8.1f}" if rate else f"{'-':>8s}"
        share = f"{100 * rate / peak:6.1f}%" if rate else f"{'-':>7s}"
        first_text = f"{first:7.1f}" if first is not None else f"{'-':>7s}"
        share_unfrozen = f"{100 * flop_unfrozen / t / 1e9 / peak:6.1f}%" if flop_unfrozen else f"{'-':>7s}"
        gflop = f"{flop / 1e9:8.2f}" if flop else f"{'-':>8s}"
        print(f"{name:34s} {key:20s} {batch:5d} {t * 1e3:9.1f} {t * 1e3 / batch:9.1f} {gflop} {rate_text} "
              f"{share} {share_unfrozen} {first_text}")
    if args.quick:
        print("\n*** (quick mode: not a measurement) ***")
    print(f"\nbench wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
