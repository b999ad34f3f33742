"""Latency of one image through each deployment form, on this machine's CPU.

  python bench/export.py                          # mobilenetv2_320 and vgg16_320
  python bench/export.py --presets mobilenetv2_320 --threads 2 --min_runs 20

For each preset (random weights: latency does not depend on training), exports the model as
SavedModel, TFLite fp32 / fp16 / int8 and ONNX, then times one 480x640 uint8 RGB image, batch 1:
  keras        the Keras model + postprocess.detect in a tf.function, in process
  saved_model  the exported serving_default signature (resize, normalize, model, decode, NMS)
  tflite_*     LiteRT interpreter (--threads threads): the .tflite's preprocessed [1, S, S, 3]
               input (resize + normalize not timed), network + decode + built-in NMS
               (int8: the int8 network, then the float post-processing model)
  onnx         ONNX Runtime CPU, the whole pipeline (uint8 in, detections out)
Untrained weights make every anchor a candidate above the 0.01 score threshold, so the NMS
here sees its worst case (the full per-class top-k); a trained model is faster after the network.
Reports the median and 90th percentile in ms, and each form's size on disk in MB.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import describe  # noqa: E402


def time_it(fn, min_runs, min_seconds, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
        if time.perf_counter() - start > 10 * min_seconds and len(times) >= 3:
            break
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))], len(times)


def folder_mb(path):
    if os.path.isfile(path):
        return os.path.getsize(path) / 1e6
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 1e6


def bench_preset(name, args, workdir):
    import numpy as np
    import tensorflow as tf

    from refinedet_tf import build_refinedet, detect, generate_anchors, get_preset
    from refinedet_tf.export import (
        SavedModelDetector,
        TFLiteDetector,
        export_saved_model,
        export_tflite,
        resize_and_preprocess,
    )

    config = get_preset(name, num_classes=args.num_classes)
    model = build_refinedet(config)
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (480, 640, 3)).astype(np.uint8)
    folder = os.path.join(workdir, name)
    weights = os.path.join(folder, "model.weights.h5")
    os.makedirs(folder, exist_ok=True)
    model.save_weights(weights)
    rows = []
    anchors = generate_anchors(config)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    def keras_fn(images):
        return detect(model(resize_and_preprocess(images, config), training=False), anchors, config,
                      max_detections=args.max_detections)

    batch = tf.constant(image[None])
    rows.append(("keras", folder_mb(weights), time_it(lambda: keras_fn(batch), args.min_runs, args.min_seconds)))

    t0 = time.perf_counter()
    version_dir = export_saved_model(model, config, os.path.join(folder, "saved_model"),
                                     max_detections=args.max_detections)
    print(f"  [{name}] SavedModel exported in {time.perf_counter() - t0:.0f} s", flush=True)
    detector = SavedModelDetector(version_dir)
    rows.append(("saved_model", folder_mb(version_dir),
                 time_it(lambda d=detector: d(image[None]), args.min_runs, args.min_seconds)))
    del detector

    preprocessed = resize_and_preprocess(image[None], config).numpy()
    calibration = [resize_and_preprocess(rng.randint(0, 256, (1, 240, 320, 3)).astype(np.uint8), config).numpy()
                   for _ in range(args.num_calibration)]
    for quantization in ("fp32", "fp16", "int8"):
        t0 = time.perf_counter()
        paths = export_tflite(model, config, os.path.join(folder, "tflite"), quantization,
                              representative_images=calibration, max_detections=args.max_detections)
        print(f"  [{name}] TFLite {quantization} exported in {time.perf_counter() - t0:.0f} s", flush=True)
        lite = TFLiteDetector(paths[0], num_threads=args.threads)
        rows.append((f"tflite_{quantization}", sum(folder_mb(p) for p in paths),
                     time_it(lambda r=lite.run: r(preprocessed), args.min_runs, args.min_seconds)))
        del lite

    try:
        from refinedet_tf.export import OnnxDetector, export_onnx

        t0 = time.perf_counter()
        path = export_onnx(model, config, os.path.join(folder, "onnx"), max_detections=args.max_detections)
        print(f"  [{name}] ONNX exported in {time.perf_counter() - t0:.0f} s", flush=True)
        onnx_detector = OnnxDetector(path, num_threads=args.threads)
        rows.append(("onnx", folder_mb(path),
                     time_it(lambda: onnx_detector(image[None]), args.min_runs, args.min_seconds)))
    except ImportError as e:
        rows.append(("onnx", float("nan"), (float("nan"), float("nan"), 0)))
        print(f"  [{name}] ONNX skipped: {e}")
    return config, model.count_params(), rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="mobilenetv2_320,vgg16_320")
    parser.add_argument("--num_classes", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2, help="TF, LiteRT and ONNX Runtime threads")
    parser.add_argument("--max_detections", type=int, default=100)
    parser.add_argument("--min_runs", type=int, default=10)
    parser.add_argument("--min_seconds", type=float, default=5.0)
    parser.add_argument("--num_calibration", type=int, default=8, help="int8 calibration images")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    versions = [f"tensorflow {tf.__version__}"]
    for module, label in (("ai_edge_litert", "ai-edge-litert"), ("onnxruntime", "onnxruntime"),
                          ("tf2onnx", "tf2onnx")):
        try:
            versions.append(f"{label} {__import__(module).__version__}")
        except (ImportError, AttributeError):
            versions.append(f"{label} (not installed)")
    print(f"machine: {describe()}")
    print(f"python {platform.python_version()}; " + ", ".join(versions) + f"; {args.threads} threads")
    print("one 480x640 RGB image, batch 1, random weights (worst-case NMS load), "
          f"{args.num_classes} classes, {args.max_detections} detections\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="refinedet_bench_") as workdir:
        results = [bench_preset(name.strip(), args, workdir) for name in args.presets.split(",")]
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    print(f"\n{'preset':<17}{'form':<14}{'size MB':>9}{'median ms':>11}{'p90 ms':>9}{'runs':>6}")
    for config, params, rows in results:
        for form, size, (median, p90, runs) in rows:
            print(f"{config.name:<17}{form:<14}{size:>9.1f}{median:>11.1f}{p90:>9.1f}{runs:>6}")
        print(f"{'':<17}({params / 1e6:.1f}M parameters, input {config.image_size}x{config.image_size})")


if __name__ == "__main__":
    main()
