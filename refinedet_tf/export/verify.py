"""Per-format accuracy on the user's own data: every exported form of a model on the same images.

`python evaluate.py --export_dir exported/refinedet --data VAL [--checkpoint RUN] [--max_drop 0.01]`
finds every form `export_saved_model.py` wrote there — the SavedModel (highest version), each
TFLite model (fp32, fp16, int8 with its float post-processing), the ONNX model — plus the
checkpoint when given, runs each over the same images one at a time (batch 1, as deployed), and
prints one table: form, file size, mAP, ms/image, and the mAP drop against the float32
reference (the checkpoint if given, else the SavedModel). With `max_drop`, a form that loses
more is an error: int8 accuracy collapse is the commonest complaint about TFLite detectors, and
this makes it a failed command instead of a surprise on the device.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time

import numpy as np
import tensorflow as tf

from refinedet_tf.architectures import architecture_for
from refinedet_tf.checkpoints import load_model
from refinedet_tf.evaluation.runner import DetectionEvaluation, ground_truth_targets, summary_map
from refinedet_tf.export.contract import resize_and_preprocess
from refinedet_tf.export.model_files import read_model_files
from refinedet_tf.export.onnx import OnnxDetector
from refinedet_tf.export.tflite import POSTPROCESS_FILE
from refinedet_tf.export.tflite_detector import TFLiteDetector


@dataclasses.dataclass
class FormResult:
    form: str
    path: str
    size_mb: float
    map: float | None
    ms_per_image: float
    drop: float | None = None


def _size_mb(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(path) for name in names) / 1e6
    return os.path.getsize(path) / 1e6


def find_forms(export_dir):
    """[(form name, path)] of what export_saved_model.py wrote under `export_dir`."""
    forms = []
    versions = sorted((int(name), name) for name in os.listdir(export_dir)
                      if name.isdigit() and os.path.isfile(os.path.join(export_dir, name, "saved_model.pb")))
    if versions:
        forms.append(("saved_model", os.path.join(export_dir, versions[-1][1])))
    for path in sorted(glob.glob(os.path.join(export_dir, "tflite", "*.tflite"))):
        name = os.path.basename(path)
        if name != POSTPROCESS_FILE:  # the int8 model's second half, run by TFLiteDetector
            forms.append((f"tflite {name[:-len('.tflite')].replace('refinedet_', '')}", path))
    for path in sorted(glob.glob(os.path.join(export_dir, "onnx", "*.onnx"))):
        forms.append(("onnx", path))
    if not forms:
        raise FileNotFoundError(f"{export_dir} holds no exported model (<version>/saved_model.pb, tflite/, onnx/)")
    return forms


def _detector(form, path):
    """-> (callable uint8 [H, W, 3] -> outputs with detection_* keys, label ids by class id)."""
    if form == "saved_model":
        serve = tf.saved_model.load(path).signatures["serving_default"]
        _, _, label_ids = read_model_files(os.path.join(path, "assets"))
        return (lambda image: {k: v.numpy() for k, v in serve(input_tensor=tf.constant(image[None])).items()},
                label_ids)
    if form == "onnx":
        detector = OnnxDetector(path)
        return detector, detector.label_ids
    detector = TFLiteDetector(path)
    return detector, detector.label_ids


def _checkpoint_detector(checkpoint, max_detections, preset=None):
    model, config = load_model(checkpoint, preset=preset)
    architecture = architecture_for(config)

    @tf.function(reduce_retracing=True)
    def run(image):
        outputs = model(resize_and_preprocess(image[None], config), training=False)
        return architecture.detect(outputs, max_detections=max_detections)

    return (lambda image: {k: v.numpy() for k, v in run(tf.constant(image)).items()},
            list(range(config.num_classes)))


def evaluate_detector(detector, label_ids, reader, metric, max_images=None):
    """(mAP of `metric`, median ms per image) of one form over the reader's images."""
    names = list(reader.label_map.names)
    to_class = {int(d): c for c, d in enumerate(label_ids)}
    evaluation = DetectionEvaluation(names, (metric,), category_ids=list(reader.label_map.dataset_ids),
                                     diagnostics=False)
    examples = reader.as_dataset()
    if max_images:
        examples = examples.take(max_images)
    times = []
    for example in examples:
        image = example["image"].numpy()
        start = time.perf_counter()
        out = detector(image)
        times.append(time.perf_counter() - start)
        n = int(np.asarray(out["num_detections"]).reshape(-1)[0])
        classes = np.asarray(out["detection_classes"]).reshape(1, -1)[:, :n]
        det = {"detection_boxes": np.asarray(out["detection_boxes"]).reshape(1, -1, 4)[:, :n],
               "detection_scores": np.asarray(out["detection_scores"]).reshape(1, -1)[:, :n],
               "detection_classes": np.vectorize(lambda v: to_class.get(int(round(v)), 0), otypes=[np.int64])(classes)
               if classes.size else classes.astype(np.int64),
               "num_detections": np.array([n])}
        meta = {k: (example[k].numpy().decode() if k == "image_id" else example[k].numpy())
                for k in ("image_id", "height", "width", "boxes", "classes", "difficult", "is_crowd")}
        evaluation.add_batch(ground_truth_targets(meta), det)
    # The first call of each form builds or traces it: leave it out of the timing.
    steady = times[1:] if len(times) > 1 else times
    return summary_map(evaluation.result(), metric), 1000 * float(np.median(steady))


def evaluate_exports(export_dir, reader, metric="voc07", checkpoint=None, preset=None, max_images=None,
                     stream=None):
    """Evaluates every form (and the checkpoint) -> list of FormResult, drops filled in."""
    results, rows = [], None
    for form, path in find_forms(export_dir):
        detector, label_ids = _detector(form, path)
        value, ms = evaluate_detector(detector, label_ids, reader, metric, max_images)
        results.append(FormResult(form, path, _size_mb(path), value, ms))
        if rows is None:  # detections per image of the export, for the checkpoint's detect
            rows = int(np.asarray(detector(np.zeros((8, 8, 3), np.uint8))["detection_scores"]).shape[-1])
        if stream is not None:
            print(f"  {form}: {metric} {value if value is None else round(value, 4)}", file=stream, flush=True)
    if checkpoint:
        detector, label_ids = _checkpoint_detector(checkpoint, rows, preset)
        value, ms = evaluate_detector(detector, label_ids, reader, metric, max_images)
        weights = checkpoint
        for name in ("best.weights.h5", "final.weights.h5"):
            if os.path.isdir(checkpoint) and os.path.isfile(os.path.join(checkpoint, name)):
                weights = os.path.join(checkpoint, name)
                break
        results.insert(0, FormResult("checkpoint (keras)", weights, _size_mb(weights), value, ms))
    reference = results[0]
    for result in results:
        if reference.map is not None and result.map is not None:
            result.drop = reference.map - result.map
    return results


def format_table(results, metric):
    header = f"{'form':<20} {'size MB':>8} {metric + ' mAP':>11} {'ms/image':>9} {'drop vs float32':>16}  file"
    lines = [header]
    for k, r in enumerate(results):
        value = "n/a" if r.map is None else f"{r.map:.4f}"
        drop = "(reference)" if k == 0 else ("n/a" if r.drop is None else f"{r.drop:+.4f}")
        lines.append(f"{r.form:<20} {r.size_mb:>8.1f} {value:>11} {r.ms_per_image:>9.1f} {drop:>16}  {r.path}")
    return "\n".join(lines)


def check_drops(results, max_drop):
    """Raises ValueError naming each form that lost more than `max_drop` mAP."""
    bad = [f"{r.form} loses {r.drop:.4f} (> {max_drop:g})" for r in results[1:]
           if r.drop is not None and r.drop > max_drop]
    if bad:
        raise ValueError(f"mAP drop against {results[0].form}: " + "; ".join(bad))
