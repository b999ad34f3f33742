"""Exports a trained RefineDet for deployment: SavedModel (TF Serving), TFLite, ONNX.

  python export_saved_model.py --checkpoint runs/refinedet --output_dir exported/refinedet
  python export_saved_model.py --checkpoint runs/refinedet --output_dir exported/refinedet \
      --version 2 --label_map data/voc_labelmap.txt --tflite fp32,fp16,int8 \
      --calibration_data VOCdevkit/VOC2007 --calibration_split trainval --onnx

Writes, under --output_dir:
  <version>/saved_model.pb, variables/, assets/{labelmap.txt,labelmap.pbtxt,config.json}
      signatures serving_default (uint8 [N, H, W, 3]), encoded_image (string [N] JPEG/PNG),
      tf_example (string [N] serialized tf.train.Example); outputs detection_boxes,
      detection_scores, detection_classes, num_detections (TF Object Detection API names).
      Point TF Serving at --output_dir (`--model_base_path`); it loads the highest version.
  tflite/refinedet_<fp32|fp16|int8>.tflite (+ refinedet_postprocess.tflite for int8,
      config.json, labelmap files): built-in ops only; input float32 [1, S, S, 3] already
      resized and preprocessed (see refinedet_tf/export/tflite.py).
  onnx/refinedet.onnx (+ config.json, labelmap files): uint8 [N, H, W, 3] in, as serving_default.
Without --label_map, a labelmap.txt/.pbtxt beside the checkpoint is used when there is one.
"""

import os
import sys

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags (only when run as a script, so that importing this module next to
    another script's flags cannot clash)."""
    from refinedet_tf.data.policy import ON_BAD_EXAMPLE, ON_BAD_EXAMPLE_HELP
    flags.DEFINE_string("checkpoint", None, "model_dir (config.json + best/final.weights.h5), a "
                        "X.weights.h5 with X.config.json beside it, or a tf checkpoint prefix")
    flags.DEFINE_string("preset", None, "optional: check that the checkpoint is this preset")
    flags.DEFINE_string("output_dir", None, "model base folder: <version>/, tflite/ and onnx/ go here")
    flags.DEFINE_integer("version", 1, "SavedModel version folder (TF Serving serves the highest)")
    flags.DEFINE_bool("overwrite", False, "replace an existing <version> folder")
    flags.DEFINE_list("tflite", [], "TFLite models to write: any of fp32, fp16, int8")
    flags.DEFINE_string("calibration_data", None, "int8 calibration images: VOC folder, COCO .json, "
                        "TFRecord files, or a folder/glob of images")
    flags.DEFINE_string("calibration_split", None, "VOC split of --calibration_data (default: all)")
    flags.DEFINE_integer("num_calibration", 100, "calibration images for int8")
    flags.DEFINE_enum("on_bad_example", "error", list(ON_BAD_EXAMPLE), "of --calibration_data: " + ON_BAD_EXAMPLE_HELP)
    flags.DEFINE_bool("onnx", False, "also write onnx/refinedet.onnx (needs tf2onnx)")
    flags.DEFINE_integer("max_detections", 100, "detections per image (output rows)")
    flags.DEFINE_float("score_threshold", None, "minimum score (default: the config's, 0.01)")
    flags.DEFINE_float("nms_iou", None, "NMS IoU threshold (default: the config's, 0.45)")
    flags.DEFINE_string("label_map", None, "label map (names file or .pbtxt): names and the ids "
                        "that detection_classes carries")
    flags.DEFINE_bool("raw_scores", False, "also output raw_detection_scores [N, A, C]")
    flags.mark_flags_as_required(["checkpoint", "output_dir"])



def export(argv_flags):
    """Runs the export described by the parsed flags; returns the written paths."""
    from refinedet_tf.checkpoints import label_map_for_checkpoint, load_model
    from refinedet_tf.export import QUANTIZATIONS, calibration_images, export_onnx, export_saved_model, export_tflite

    f = argv_flags
    unknown = [q for q in f.tflite if q not in QUANTIZATIONS]
    if unknown:
        raise app.UsageError(f"--tflite takes {','.join(QUANTIZATIONS)}, got {unknown}")
    if "int8" in f.tflite and not f.calibration_data:
        raise app.UsageError("--tflite int8 needs --calibration_data (representative images)")
    if f.max_detections < 1:
        raise app.UsageError(f"--max_detections must be >= 1, got {f.max_detections}")
    model, config = load_model(f.checkpoint, f.preset)
    label_map = label_map_for_checkpoint(f.checkpoint, f.label_map)
    post = dict(max_detections=f.max_detections, score_threshold=f.score_threshold,
                nms_iou=f.nms_iou, label_map=label_map)
    written = [export_saved_model(model, config, f.output_dir, version=f.version,
                                  raw_scores=f.raw_scores, overwrite=f.overwrite, **post)]
    print(f"SavedModel: {written[-1]}")
    if f.tflite:
        calibration = None
        if "int8" in f.tflite:
            calibration = calibration_images(f.calibration_data, config, f.num_calibration,
                                             split=f.calibration_split, label_map=label_map,
                                             on_bad_example=f.on_bad_example, report_stream=sys.stdout)
            print(f"int8 calibration: {len(calibration)} images from {f.calibration_data}")
        for quantization in f.tflite:
            paths = export_tflite(model, config, os.path.join(f.output_dir, "tflite"), quantization,
                                  representative_images=calibration, **post)
            for path in paths:
                print(f"TFLite {quantization}: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
            written += paths
    if f.onnx:
        written.append(export_onnx(model, config, os.path.join(f.output_dir, "onnx"), **post))
        print(f"ONNX: {written[-1]}")
    return written


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        export(FLAGS)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
