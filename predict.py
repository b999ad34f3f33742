"""Runs RefineDet on images: draws the detections and writes them as JSON.

  python predict.py --checkpoint runs/refinedet --images photos/ --output_dir predictions
  python predict.py --saved_model exported/refinedet --images 'photos/*.jpg' --score_threshold 0.5
  python predict.py --tflite exported/refinedet/tflite/refinedet_int8.tflite --images a.jpg,b.png
  python predict.py --checkpoint runs/refinedet --images val/ --coco_results results.json

--images takes files, folders and globs (comma-separated, or as positional arguments). For
each image, --output_dir gets a copy with the boxes drawn (`<stem>.jpg`, class names from the
label map) and `<stem>.json`:
  {"image": path, "height": H, "width": W, "detections": [
     {"class_id": label-map id, "class_name": str, "score": float,
      "box_yxyx": [ymin, xmin, ymax, xmax] normalized, "box_xyxy_pixels": [x0, y0, x1, y1]}]}
--coco_results FILE writes every detection as one COCO results JSON instead (image_id = file
stem, as an int when it is all digits as in COCO's file names; category_id = label-map id;
pixel boxes [x, y, w, h]). Only detections with score >= --score_threshold are kept.
Images are decoded as the data pipeline does (EXIF orientation not applied).
"""

import glob
import json
import os
import sys

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags (only when run as a script, so that importing this module next to
    another script's flags cannot clash)."""
    flags.DEFINE_string("checkpoint", None, "a trained model_dir or weights file (see checkpoints.py)")
    flags.DEFINE_string("preset", None, "with --checkpoint: check it is this preset")
    flags.DEFINE_string("saved_model", None, "an exported SavedModel (base folder or <version>/)")
    flags.DEFINE_string("tflite", None, "an exported .tflite (config.json beside it)")
    flags.DEFINE_list("images", [], "image files, folders or globs")
    flags.DEFINE_string("output_dir", "predictions", "drawn images and per-image JSON go here")
    flags.DEFINE_string("coco_results", None, "write one COCO results JSON here instead")
    flags.DEFINE_float("score_threshold", 0.3, "keep detections with at least this score")
    flags.DEFINE_integer("max_detections", 100, "with --checkpoint: detections per image")
    flags.DEFINE_string("label_map", None, "class names (default: the model's own label map)")
    flags.DEFINE_integer("num_threads", 2, "TFLite interpreter threads")


def list_images(specs):
    """Files, folders (their images, sorted) and globs -> image paths in order, no repeats."""
    from refinedet_tf.data.image_io import IMAGE_EXTENSIONS  # after the TF log level is set

    paths = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, n) for n in os.listdir(spec)
                           if n.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(spec):
            found = [spec]
        else:
            found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"--images {spec!r}: no such file, folder or matching glob")
        paths += [p for p in found if p not in paths]
    if not paths:
        raise FileNotFoundError(f"no image found in --images {specs}")
    return paths


class Predictor:
    """One interface over the three model forms: __call__(uint8 [H, W, 3] RGB) -> dict of
    boxes [K, 4] normalized yxyx, scores [K], label ids [K] (valid rows only);
    `class_name(label_id)` gives the name."""

    def __init__(self, backend, run, names, label_ids):
        self.backend = backend
        self._run = run
        self._name_of = {int(i): n for i, n in zip(label_ids, names)}

    def __call__(self, image):
        out = self._run(image)
        n = int(out["num_detections"][0])
        return {"boxes": out["detection_boxes"][0, :n], "scores": out["detection_scores"][0, :n],
                "classes": out["detection_classes"][0, :n].astype(int)}

    def class_name(self, label_id):
        return self._name_of.get(int(label_id), f"class_{int(label_id)}")


def make_predictor(checkpoint=None, saved_model=None, tflite=None, preset=None,
                   max_detections=100, label_map_path=None, num_threads=2):
    """Loads whichever model form was given (exactly one)."""
    import tensorflow as tf

    given = [name for name, value in (("--checkpoint", checkpoint), ("--saved_model", saved_model),
                                      ("--tflite", tflite)) if value]
    if len(given) != 1:
        raise app.UsageError(f"give exactly one of --checkpoint, --saved_model, --tflite (got {given or 'none'})")
    label_map = None
    if label_map_path:
        from refinedet_tf.data.label_map import load_label_map
        label_map = load_label_map(label_map_path)
    if checkpoint:
        from refinedet_tf.checkpoints import label_map_for_checkpoint, load_model
        from refinedet_tf.export.contract import export_config, label_ids_table
        from refinedet_tf.export.model_files import class_names
        from refinedet_tf.export.saved_model import DetectionModule

        model, config = load_model(checkpoint, preset)
        label_map = label_map or label_map_for_checkpoint(checkpoint)
        module = DetectionModule(model, export_config(config, max_detections), label_map)

        def run(image):
            return {k: v.numpy() for k, v in module.serving_default(tf.constant(image[None])).items()}

        return Predictor("checkpoint", run, class_names(config, label_map), label_ids_table(config, label_map))
    if saved_model:
        from refinedet_tf.export.saved_model_client import SavedModelDetector

        detector = SavedModelDetector(saved_model)
        names, ids = detector.class_names, detector.label_ids

        def run(image):
            return detector(image[None])
    else:
        from refinedet_tf.export.tflite_detector import TFLiteDetector

        detector = TFLiteDetector(tflite, num_threads=num_threads)
        names, ids = detector.class_names, detector.label_ids
        run = detector
    if label_map is not None:  # names only: the ids are the ones the model was exported with
        if label_map.num_classes != len(names):
            raise ValueError(f"--label_map has {label_map.num_classes - 1} classes, the model {len(names) - 1}")
        names = list(label_map.names)
    return Predictor("saved_model" if saved_model else "tflite", run, names, ids)


def read_image(path):
    """uint8 [H, W, 3] RGB, decoded as the data pipeline does; ValueError when it is not one."""
    from refinedet_tf.data.image_io import decode_image

    with open(path, "rb") as f:
        return decode_image(f.read(), path)


def detections_json(path, image, detections, predictor):
    h, w = image.shape[:2]
    rows = []
    for box, score, label in zip(detections["boxes"], detections["scores"], detections["classes"]):
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        rows.append({
            "class_id": int(label), "class_name": predictor.class_name(label), "score": float(score),
            "box_yxyx": [ymin, xmin, ymax, xmax],
            "box_xyxy_pixels": [xmin * w, ymin * h, xmax * w, ymax * h],
        })
    return {"image": path, "height": int(h), "width": int(w), "detections": rows}


def draw(image, record):
    """A BGR copy of `image` (RGB) with each detection's box, name and score (for cv2.imwrite)."""
    from refinedet_tf.drawing import class_colour, draw_boxes

    detections = record["detections"]
    drawn = draw_boxes(image, [d["box_yxyx"] for d in detections], [class_colour(d["class_id"]) for d in detections],
                       [f"{d['class_name']} {d['score']:.2f}" for d in detections])
    return drawn[:, :, ::-1]


def coco_image_id(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return int(stem) if stem.isdigit() else stem


def predict(paths, predictor, output_dir=None, coco_results=None, score_threshold=0.3):
    """Runs `predictor` on every image; writes drawings + JSON, or the COCO results file.

    Returns (number of images done, list of (path, error) for images that could not be read).
    """
    import cv2
    import keras
    import numpy as np

    from refinedet_tf.evaluation.results import write_coco_results

    if output_dir and not coco_results:
        os.makedirs(output_dir, exist_ok=True)
    progress = keras.utils.Progbar(len(paths), unit_name="image")
    failed, coco, used = [], {}, set()
    for i, path in enumerate(paths):
        try:
            image = read_image(path)
        except ValueError as e:
            failed.append((path, str(e)))
            progress.update(i + 1)
            continue
        detections = predictor(image)
        keep = detections["scores"] >= score_threshold
        detections = {k: v[keep] for k, v in detections.items()}
        record = detections_json(path, image, detections, predictor)
        if coco_results:
            h, w = image.shape[:2]
            coco[coco_image_id(path)] = (
                np.asarray(detections["boxes"], np.float64) * [h, w, h, w],
                detections["scores"], detections["classes"])
        else:
            stem = _unique_stem(path, used)
            with open(os.path.join(output_dir, stem + ".json"), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1)
            cv2.imwrite(os.path.join(output_dir, stem + ".jpg"), draw(image, record))
        progress.update(i + 1)
    if coco_results:
        folder = os.path.dirname(os.path.abspath(coco_results))
        os.makedirs(folder, exist_ok=True)
        write_coco_results(coco_results, coco)
    return len(paths) - len(failed), failed


def _unique_stem(path, used):
    stem = os.path.splitext(os.path.basename(path))[0]
    candidate, k = stem, 1
    while candidate in used:
        candidate, k = f"{stem}_{k}", k + 1
    used.add(candidate)
    return candidate


def main(argv):
    specs = list(FLAGS.images) + list(argv[1:])
    if not specs:
        raise app.UsageError("give images: --images a.jpg,folder/,'glob/*.png' or as arguments")
    if not 0.0 <= FLAGS.score_threshold <= 1.0:
        raise app.UsageError(f"--score_threshold must be in [0, 1], got {FLAGS.score_threshold}")
    try:
        paths = list_images(specs)
        predictor = make_predictor(FLAGS.checkpoint, FLAGS.saved_model, FLAGS.tflite, FLAGS.preset,
                                   FLAGS.max_detections, FLAGS.label_map, FLAGS.num_threads)
        done, failed = predict(paths, predictor, FLAGS.output_dir, FLAGS.coco_results,
                               FLAGS.score_threshold)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, error in failed:
        print(f"skipped {path}: {error}", file=sys.stderr)
    target = FLAGS.coco_results or FLAGS.output_dir
    print(f"{done} image(s) -> {target}" + (f"; {len(failed)} skipped" if failed else ""))
    return 0 if done else 1


if __name__ == "__main__":
    define_flags()
    app.run(main)
