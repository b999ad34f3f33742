"""Trains a detector: RefineDet, or Faster R-CNN with a faster_rcnn_* preset.

  python train.py                                   # the demo: synthetic data, CPU-sized model
  python train.py --preset faster_rcnn_mobilenetv2_lite_256    # Faster R-CNN's CPU demo
  python train.py --preset vgg16_320 --data VOCdevkit/VOC2007 --split trainval \
      --val_data VOCdevkit/VOC2007 --val_split test --label_map data/voc_labelmap.txt \
      --backbone_weights imagenet --batch_size 32 --steps 120000 --strategy mirrored

Flags left unset take the preset's training recipe (its config's training_recipe(), printed at the
start): the paper's SGD schedule when the backbone starts from weights, the demo's AdamW from
scratch, its length in epochs over --data. `--num_classes` follows the label map.
Run `python train.py --helpfull` for every flag. A run writes config.json, train_options.json,
checkpoints/, best.weights.h5 (best validation mAP), final.weights.h5, logs/ (TensorBoard) and
metrics.json into --model_dir; started again on the same --model_dir it resumes.
"""

import os
import sys

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from refinedet_tf.data.policy import ON_BAD_EXAMPLE, ON_BAD_EXAMPLE_HELP  # noqa: E402  (after the log level)

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", None, "model preset (default: the demo preset mobilenetv2_lite_192)")
flags.DEFINE_string("data", None, "training data: VOC folder, COCO JSON or TFRecord glob "
                    "(default: the embedded synthetic dataset, generated on first use)")
flags.DEFINE_string("split", "train", "VOC split of --data (ImageSets/Main/<split>.txt)")
flags.DEFINE_string("val_data", None, "validation data (default with the synthetic set: its val split)")
flags.DEFINE_string("val_split", "val", "VOC split of --val_data")
flags.DEFINE_string("label_map", None, "label map file (names, one per line, or .pbtxt)")
flags.DEFINE_enum("on_bad_example", "error", list(ON_BAD_EXAMPLE), ON_BAD_EXAMPLE_HELP)
flags.DEFINE_string("model_dir", "runs/refinedet", "where checkpoints, logs and metrics go")
flags.DEFINE_integer("batch_size", None, "global batch size (all replicas)")
flags.DEFINE_integer("steps", None, "training steps (default: --epochs, else the recipe's epochs over --data)")
flags.DEFINE_float("epochs", None, "training length in passes over --data (default: the recipe's)")
flags.DEFINE_float("lr", None, "base learning rate (default: 1e-3 x batch/32, the paper's)")
flags.DEFINE_integer("warmup_steps", None, "linear warm-up steps")
flags.DEFINE_enum("lr_schedule", None, ["multistep", "cosine"], "learning-rate decay")
flags.DEFINE_list("lr_boundaries", None, "multistep boundaries: fractions of the run (< 1) or steps")
flags.DEFINE_float("weight_decay", 5e-4, "decoupled weight decay on kernels (not biases/BN/L2Norm)")
flags.DEFINE_float("momentum", 0.9, "SGD momentum (AdamW: beta_1)")
flags.DEFINE_enum("optimizer", None, ["sgd", "adamw"], "sgd (the paper's) or adamw (the demo's); default: the recipe's")
flags.DEFINE_float("ema_decay", None, "keep a moving average of the weights with this decay (e.g. 0.999; "
                   "0: off; default: the recipe's): evaluation, best.weights.h5, final.weights.h5 and "
                   "so every export use it, and each evaluation also reports the trained weights")
flags.DEFINE_float("clip_grad_norm", None, "clip the global gradient norm (0: off)")
flags.DEFINE_integer("grad_accum_steps", 1, "batches accumulated per update (Caffe's iter_size)")
flags.DEFINE_string("backbone_weights", None, "none, imagenet, or a local weights file")
flags.DEFINE_bool("freeze_backbone", False, "train the heads only")
flags.DEFINE_bool("mixed_precision", False, "mixed_float16 on GPU, mixed_bfloat16 elsewhere")
flags.DEFINE_bool("jit_compile", False, "compile the train step with XLA")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy (multi_worker reads TF_CONFIG)")
flags.DEFINE_integer("seed", 0, "seed of initialization, shuffling and augmentation")
flags.DEFINE_bool("deterministic", False, "deterministic ops and data order (slower)")
flags.DEFINE_integer("eval_every", None, "evaluate VOC07 mAP every N steps (0: at the end only)")
flags.DEFINE_integer("checkpoint_every", 200, "save a checkpoint every N steps")
flags.DEFINE_integer("keep_checkpoints", 3, "checkpoints kept")
flags.DEFINE_integer("arm_warmup_steps", 0, "optional ARM-only stage before joint training")
flags.DEFINE_integer("max_boxes", 100, "boxes per image after padding")
flags.DEFINE_bool("truncate_boxes", False, "drop (and count) boxes beyond --max_boxes instead of failing")
flags.DEFINE_multi_string("config", [], "field=value overriding a field of the preset's config (repeatable), "
                          "e.g. --config anchor_sizes=16,32,64,128 --config match_iou=0.4")
flags.DEFINE_integer("num_classes", None, "classes with background (default: the label map's; must agree with it)")
flags.DEFINE_integer("image_size", None, "override the preset's input size")
flags.DEFINE_enum("mining", None, ["hard_negative", "ohem", "focal", "sample"],
                  "sample selection of the losses: RefineDet hard_negative, ohem or focal; Faster R-CNN sample "
                  "(the references' random RoIs) or ohem")
flags.DEFINE_enum("negative_filtering", None, ["caffe", "pytorch"], "theta filter of the ODM")
flags.DEFINE_integer("max_eval_images", None, "evaluate on at most this many validation images")


def options_from_flags():
    from refinedet_tf.presets import parse_overrides
    from refinedet_tf.training.options import DEMO_PRESET, TrainOptions

    preset = FLAGS.preset or DEMO_PRESET
    overrides = parse_overrides(FLAGS.config, preset)
    for name in ("num_classes", "image_size", "mining", "negative_filtering", "backbone_weights"):
        if getattr(FLAGS, name) is not None:
            if name in overrides:
                raise ValueError(f"--{name} and --config {name}=... both given")
            overrides[name] = getattr(FLAGS, name)
    boundaries = FLAGS.lr_boundaries
    # Flags left unset (None) take the preset's training recipe (its config's training_recipe()):
    # the paper's with pretrained weights, the demo's from scratch.
    return TrainOptions(
        preset=preset, config_overrides=overrides, data=FLAGS.data,
        val_data=FLAGS.val_data, split=FLAGS.split, val_split=FLAGS.val_split, label_map=FLAGS.label_map,
        on_bad_example=FLAGS.on_bad_example, model_dir=FLAGS.model_dir, batch_size=FLAGS.batch_size,
        steps=FLAGS.steps, epochs=FLAGS.epochs, lr=FLAGS.lr, warmup_steps=FLAGS.warmup_steps,
        lr_schedule=FLAGS.lr_schedule,
        lr_boundaries=None if boundaries is None else tuple(float(v) for v in boundaries),
        weight_decay=FLAGS.weight_decay, momentum=FLAGS.momentum, grad_accum_steps=FLAGS.grad_accum_steps,
        clip_grad_norm=FLAGS.clip_grad_norm, optimizer=FLAGS.optimizer, ema_decay=FLAGS.ema_decay,
        freeze_backbone=FLAGS.freeze_backbone,
        mixed_precision=FLAGS.mixed_precision, jit_compile=FLAGS.jit_compile, strategy=FLAGS.strategy,
        seed=FLAGS.seed, deterministic=FLAGS.deterministic, eval_every=FLAGS.eval_every,
        checkpoint_every=FLAGS.checkpoint_every, keep_checkpoints=FLAGS.keep_checkpoints,
        arm_warmup_steps=FLAGS.arm_warmup_steps, max_boxes=FLAGS.max_boxes, truncate_boxes=FLAGS.truncate_boxes,
        max_eval_images=FLAGS.max_eval_images)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from refinedet_tf.training.run import train
    from refinedet_tf.training.summary import print_summary

    try:
        options = options_from_flags()
        summary = train(options)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError:
        return 3
    print_summary(summary)
    return 0


if __name__ == "__main__":
    app.run(main)
