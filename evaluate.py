"""Evaluates a RefineDet model (or a detections file) with VOC07, VOC2010+ and COCO metrics.

  python evaluate.py --checkpoint runs/refinedet --data ~/.cache/refinedet_tf/synthetic-v2 --split val
  python evaluate.py --saved_model export/1 --data VOCdevkit/VOC2007 --split test \
      --label_map data/voc_labelmap.txt --metrics voc07,voc12 --output_dir eval/
  python evaluate.py --detections dets.json --data annotations/instances_val2017.json --metrics coco
  python evaluate.py --export_dir exported/refinedet --checkpoint runs/refinedet --data VAL --max_drop 0.01

Prints a per-class AP table, AP by object size, what the model confuses, and the headline; with
--output_dir writes metrics.json, confusion_matrix.json/.png, detections.json (COCO results
format, original-image pixels) and PR curves (PNG, needs the `plot` extra). Speed: model-only
and end-to-end images/s, with the batch size and device. --export_dir evaluates every exported
form (SavedModel, TFLite fp32/fp16/int8, ONNX) and the checkpoint on the same images: one table
of file size, mAP, ms/image and mAP drop against float32; --max_drop makes a larger drop exit 3.
"""

import json
import os
import sys

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from refinedet_tf.data.policy import ON_BAD_EXAMPLE, ON_BAD_EXAMPLE_HELP  # noqa: E402  (after the log level)

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "model_dir, .weights.h5 or checkpoint prefix")
flags.DEFINE_string("saved_model", None, "a SavedModel exported by export_saved_model.py (its version folder)")
flags.DEFINE_string("detections", None, "a COCO results JSON to score instead of running a model")
flags.DEFINE_string("export_dir", None, "evaluate every form export_saved_model.py wrote there (SavedModel, each "
                    "TFLite, ONNX; plus --checkpoint if given) on the same images: one table, mAP drop vs float32")
flags.DEFINE_float("max_drop", None, "with --export_dir: exit 3 when a form loses more mAP than this")
flags.DEFINE_string("preset", None, "check the checkpoint against this preset")
flags.DEFINE_string("data", None, "VOC folder, COCO JSON or TFRecord glob", required=True)
flags.DEFINE_enum("format", None, ["voc", "coco", "tfrecord"], "dataset format (default: detected)")
flags.DEFINE_string("split", "val", "VOC split (ImageSets/Main/<split>.txt)")
flags.DEFINE_string("label_map", None, "label map file")
flags.DEFINE_enum("on_bad_example", "error", list(ON_BAD_EXAMPLE), ON_BAD_EXAMPLE_HELP)
flags.DEFINE_list("metrics", ["voc07"], "any of voc07, voc12, coco")
flags.DEFINE_string("output_dir", None, "where metrics.json, detections.json and PR curves go")
flags.DEFINE_integer("batch_size", 8, "images per batch (checkpoints)")
flags.DEFINE_integer("max_images", None, "evaluate at most this many images")


def evaluate_exports():
    """--export_dir: every exported form on the same images, one table (refinedet_tf/export/verify.py)."""
    from refinedet_tf import data as data_lib
    from refinedet_tf.evaluation.command import print_data_report
    from refinedet_tf.export.verify import check_drops, evaluate_exports as run_all, format_table

    fmt = FLAGS.format or data_lib.detect_format(FLAGS.data)
    reader = data_lib.open_reader(FLAGS.data, fmt, FLAGS.split if fmt == "voc" else None, FLAGS.label_map,
                                  on_bad_example=FLAGS.on_bad_example, purpose="evaluate")
    print_data_report(reader, sys.stdout)
    metric = FLAGS.metrics[0]
    results = run_all(FLAGS.export_dir, reader, metric, checkpoint=FLAGS.checkpoint, preset=FLAGS.preset,
                      max_images=FLAGS.max_images, stream=sys.stdout)
    print(format_table(results, metric))
    if FLAGS.output_dir:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        with open(os.path.join(FLAGS.output_dir, "exports.json"), "w", encoding="utf-8") as f:
            json.dump([vars(r) for r in results], f, indent=2)
    if FLAGS.max_drop is not None:
        try:
            check_drops(results, FLAGS.max_drop)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 3
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if FLAGS.export_dir:
        if FLAGS.saved_model or FLAGS.detections:
            raise app.UsageError("--export_dir takes --checkpoint only (it finds the SavedModel itself)")
        try:
            return evaluate_exports()
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    from refinedet_tf.evaluation.command import EvalOptions, run

    options = EvalOptions(
        data=FLAGS.data, checkpoint=FLAGS.checkpoint, saved_model=FLAGS.saved_model, detections=FLAGS.detections,
        preset=FLAGS.preset, format=FLAGS.format, split=FLAGS.split, label_map=FLAGS.label_map,
        on_bad_example=FLAGS.on_bad_example,
        metrics=tuple(FLAGS.metrics), output_dir=FLAGS.output_dir, batch_size=FLAGS.batch_size,
        max_images=FLAGS.max_images)
    try:
        run(options)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
