"""What `evaluate.py` does: a model (checkpoint or SavedModel) or a detections file against a
dataset's ground truth; tables, metrics.json, detections.json, PR curves, speed.
"""

import dataclasses
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

from refinedet_tf import data as data_lib
from refinedet_tf.architectures import architecture_for
from refinedet_tf.checkpoints import config_for_checkpoint, load_model
from refinedet_tf.data.box_conventions import coco_xywh_to_normalized
from refinedet_tf.data.pipeline import make_dataset
from refinedet_tf.evaluation.confusion import plot_confusion_matrix
from refinedet_tf.evaluation.plots import plot_pr_curves
from refinedet_tf.evaluation.report import format_ap_table
from refinedet_tf.evaluation.results import coco_results_to_detections, read_coco_results, write_coco_results
from refinedet_tf.evaluation.runner import DetectionEvaluation, ground_truth_targets, summary_map


@dataclasses.dataclass
class EvalOptions:
    data: str
    checkpoint: str | None = None
    saved_model: str | None = None
    detections: str | None = None
    preset: str | None = None
    format: str | None = None
    split: str | None = None
    label_map: str | None = None
    on_bad_example: str = "error"  # data/policy.py
    metrics: tuple = ("voc07",)
    output_dir: str | None = None
    batch_size: int = 8
    max_images: int | None = None


def _device_name():
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "CPU"


def _ground_truth_batches(metadata):
    """Metadata entries -> per-image ground-truth records (no pixels needed)."""
    for meta in metadata:
        yield ground_truth_targets(meta)


def _empty_detections():
    return {"detection_boxes": np.zeros((1, 0, 4), np.float32), "detection_scores": np.zeros((1, 0), np.float32),
            "detection_classes": np.zeros((1, 0), np.int64), "num_detections": np.zeros((1,), np.int64)}


def _detections_from_file(options, reader, names, is_coco):
    """Scores a COCO results file: boxes are COCO-convention pixels of the original images."""
    dataset_ids = list(reader.label_map.dataset_ids)
    known_ids = {(int(m["image_id"]) if is_coco else m["image_id"]) for m in reader.metadata}
    entries = read_coco_results(options.detections, known_image_ids=known_ids,
                                known_category_ids=set(dataset_ids[1:]))
    by_image = coco_results_to_detections(entries, category_ids=dataset_ids)
    evaluation = DetectionEvaluation(names, options.metrics, category_ids=dataset_ids)
    for targets in _ground_truth_batches(reader.metadata):
        key = int(targets["image_id"][0]) if is_coco else targets["image_id"][0]
        if key in by_image:
            boxes_px, scores, classes = by_image[key]
            h, w = int(targets["height"][0]), int(targets["width"][0])
            # The reader's own converter takes COCO xywh; our arrays are yxyx pixels.
            y0, x0, y1, x1 = np.asarray(boxes_px, np.float64).reshape(-1, 4).T
            norm = coco_xywh_to_normalized(np.stack([x0, y0, x1 - x0, y1 - y0], -1), h, w)
            det = {"detection_boxes": norm[None], "detection_scores": np.asarray(scores)[None],
                   "detection_classes": np.asarray(classes)[None], "num_detections": np.array([len(scores)])}
        else:
            det = _empty_detections()
        evaluation.add_batch(targets, det)
    return evaluation, None, None


def _model_detections(options, reader, names):
    """Runs a checkpoint or SavedModel over the images; returns (evaluation, detections by image, speed)."""
    dataset_ids = list(reader.label_map.dataset_ids)
    evaluation = DetectionEvaluation(names, options.metrics, category_ids=dataset_ids)
    examples = reader.as_dataset()
    if options.max_images:
        examples = examples.take(options.max_images)
    max_boxes = max([len(m["classes"]) for m in reader.metadata] + [1])
    by_image = {}
    model_seconds, images_done = 0.0, 0
    start = time.perf_counter()
    if options.saved_model:
        serve = tf.saved_model.load(options.saved_model).signatures["serving_default"]
        # SavedModel classes are label-map (dataset) ids: back to contiguous ids.
        to_class_id = np.vectorize(dict((d, c) for c, d in enumerate(dataset_ids)).get, otypes=[np.int64])
        for example in examples:
            t0 = time.perf_counter()
            out = serve(input_tensor=tf.cast(example["image"], tf.uint8)[None])
            num = int(out["num_detections"][0])
            model_seconds += time.perf_counter() - t0
            det = {"detection_boxes": out["detection_boxes"].numpy(),
                   "detection_scores": out["detection_scores"].numpy(),
                   "detection_classes": out["detection_classes"].numpy().astype(np.int64),
                   "num_detections": np.array([num])}
            det["detection_classes"] = to_class_id(det["detection_classes"], 0)
            targets = next(_ground_truth_batches([_meta_of(example)]))
            evaluation.add_batch(targets, det)
            _keep(by_image, targets, det)
            images_done += 1
        mode = "SavedModel serving_default (resize + preprocess + model + NMS, batch 1)"
    else:
        model, config = load_model(options.checkpoint, preset=options.preset)
        architecture = architecture_for(config)
        forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        post = tf.function(architecture.detect, reduce_retracing=True)
        data = make_dataset(examples, config, options.batch_size, training=False, max_boxes=max_boxes)
        for images, targets in data:
            t0 = time.perf_counter()
            outputs = forward(images)
            tf.nest.map_structure(lambda t: t.numpy(), outputs)
            model_seconds += time.perf_counter() - t0
            det = {k: v.numpy() for k, v in post(outputs).items()}
            targets = {k: v.numpy() for k, v in targets.items()}
            evaluation.add_batch(targets, det)
            _keep(by_image, targets, det)
            images_done += len(targets["image_id"])
        mode = f"checkpoint, batch {options.batch_size}"
    total = time.perf_counter() - start
    speed = {"images": images_done, "mode": mode, "device": _device_name(),
             "model_images_per_second": images_done / max(model_seconds, 1e-9),
             "end_to_end_images_per_second": images_done / max(total, 1e-9)}
    return evaluation, by_image, speed


def _meta_of(example):
    return {k: (example[k].numpy().decode() if k == "image_id" else example[k].numpy())
            for k in ("image_id", "height", "width", "boxes", "classes", "difficult", "is_crowd")}


def _keep(by_image, targets, det):
    """Detections of a batch in original-image pixels (yxyx, COCO convention) for detections.json."""
    for i, image_id in enumerate(targets["image_id"]):
        image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
        n = int(det["num_detections"][i])
        h, w = float(targets["height"][i]), float(targets["width"][i])
        boxes = np.asarray(det["detection_boxes"][i][:n], np.float64) * [h, w, h, w]
        by_image[image_id] = (boxes, np.asarray(det["detection_scores"][i][:n]),
                              np.asarray(det["detection_classes"][i][:n]).astype(np.int64))


def print_data_report(reader, stream, max_issues=10):
    """The ground truth evaluated: images, boxes per class, and each skipped or suspicious
    example (file, object, why) as a warning, as `prepare` reports them."""
    report = reader.report
    print(f"ground truth ({reader.format}, {reader.policy.purpose} policy):", file=stream)
    print("  " + report.format(max_issues=max_issues).replace("\n", "\n  "), file=stream)


def format_diagnostics(result):
    """AP by object size and the most confused class pairs, as printed lines."""
    lines = []
    by_size = result.get("by_size") or {}
    if by_size:
        cells = [f"{label} ({v['boxes']} boxes) AP50 {'n/a' if v['AP50'] is None else format(v['AP50'], '.4f')}"
                 f", AP {'n/a' if v['AP'] is None else format(v['AP'], '.4f')}" for label, v in by_size.items()]
        lines.append("by object size (COCO areas: small < 32^2 px, large >= 96^2): " + "; ".join(cells))
    confusion = result.get("confusion_matrix")
    if confusion:
        matrix, names = np.asarray(confusion["matrix"]), confusion["classes"]
        pairs = [(matrix[t, p], names[t], names[p]) for t in range(1, len(names)) for p in range(1, len(names))
                 if t != p and matrix[t, p]]
        missed, false_alarms = int(matrix[1:, 0].sum()), int(matrix[0, 1:].sum())
        correct = int(np.trace(matrix[1:, 1:]))
        lines.append(f"confusion at score >= {confusion['score_threshold']:g}, IoU >= {confusion['iou_threshold']:g}: "
                     f"{correct} right, {int(sum(p[0] for p in pairs))} with the wrong class, {missed} missed, "
                     f"{false_alarms} false alarms on background")
        if pairs:
            lines.append("most confused (true -> predicted): " + ", ".join(
                f"{t} -> {p} {n}" for n, t, p in sorted(pairs, reverse=True)[:5]))
    return "\n".join(lines)


def _ap_table_rows(result):
    return format_ap_table({k: v for k, v in result.items() if k != "pr_curves"})


def run(options, stream=None):
    """Evaluates; prints the per-class table; writes outputs. Returns the metrics dict."""
    stream = stream or sys.stdout
    sources = [s for s in (options.checkpoint, options.saved_model, options.detections) if s]
    if len(sources) != 1:
        raise ValueError("pass exactly one of --checkpoint, --saved_model, --detections")
    fmt = options.format or data_lib.detect_format(options.data)
    # The evaluation policy: every box the protocol counts is ground truth (1-pixel VOC boxes,
    # zero-area COCO boxes), listed as warnings; images without objects count for false positives.
    reader = data_lib.open_reader(options.data, fmt, options.split if fmt == "voc" else None, options.label_map,
                                  on_bad_example=options.on_bad_example, purpose="evaluate")
    print_data_report(reader, stream)
    names = list(reader.label_map.names)
    if options.checkpoint:
        config = config_for_checkpoint(options.checkpoint, options.preset)
        if config.num_classes != len(names):
            raise ValueError(
                f"the checkpoint predicts {config.num_classes - 1} classes but the label map of "
                f"{options.data} has {len(names) - 1}: pass the label map the model was trained with")
    if options.detections:
        evaluation, by_image, speed = _detections_from_file(options, reader, names, fmt == "coco")
    else:
        evaluation, by_image, speed = _model_detections(options, reader, names)
    result = evaluation.result()
    print(_ap_table_rows(result), file=stream)
    print(format_diagnostics(result), file=stream)
    metrics = {k: v for k, v in result.items() if k not in ("pr_curves", "confusion_matrix")}
    if speed:
        metrics["speed"] = speed
        print(f"speed on {speed['device']} ({speed['mode']}): model {speed['model_images_per_second']:.1f} img/s, "
              f"end to end (decode + preprocess + model + NMS) {speed['end_to_end_images_per_second']:.1f} img/s "
              f"over {speed['images']} images", file=stream)
    if options.output_dir:
        os.makedirs(options.output_dir, exist_ok=True)
        with open(os.path.join(options.output_dir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, sort_keys=True, default=float)
        if by_image is not None:
            is_coco = fmt == "coco"
            keyed = {(int(k) if is_coco else k): v for k, v in by_image.items()}
            write_coco_results(os.path.join(options.output_dir, "detections.json"), keyed,
                               category_ids=list(reader.label_map.dataset_ids))
        with open(os.path.join(options.output_dir, "confusion_matrix.json"), "w", encoding="utf-8") as f:
            json.dump(result["confusion_matrix"], f, indent=2)
        plot_confusion_matrix(result["confusion_matrix"], os.path.join(options.output_dir, "confusion_matrix.png"))
        written = plot_pr_curves(result.get("pr_curves") or {}, os.path.join(options.output_dir, "pr_curves"))
        print(f"wrote {options.output_dir}/metrics.json, confusion_matrix.json/.png"
              + (", detections.json" if by_image is not None else "")
              + (f", {len(written)} PR curves" if written else ""), file=stream)
    headline = {m: summary_map(result, m) for m in options.metrics}
    print("summary: " + ", ".join(f"{m} {'n/a' if v is None else f'{v:.4f}'}" for m, v in headline.items()),
          file=stream)
    return metrics
