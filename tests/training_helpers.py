"""Small runs for the training tests: a tiny synthetic VOC set and a tiny model."""

import os

from refinedet_tf.data.synthetic import generate_voc_dataset
from refinedet_tf.training.options import TrainOptions

TINY = dict(image_size=64)  # mobilenetv2_lite_192 at 64 px: 8x8 .. 1x1 maps, 255 anchors


def tiny_dataset(root):
    path = os.path.join(str(root), "tiny_voc")
    if not os.path.exists(os.path.join(path, "synthetic.json")):
        generate_voc_dataset(path, num_train=16, num_val=4, image_size=64, seed=3)
    return path


def tiny_options(data, model_dir, **kwargs):
    defaults = dict(preset="mobilenetv2_lite_192", config_overrides=dict(TINY), data=data,
                    val_data=None, model_dir=str(model_dir), batch_size=4, steps=4, lr=0.01,
                    warmup_steps=0, lr_schedule="multistep", lr_boundaries=(), eval_every=0,
                    checkpoint_every=2, log_every=1, seed=1, num_parallel_calls=1, optimizer="sgd",
                    clip_grad_norm=0.0)
    defaults.update(kwargs)
    return TrainOptions(**defaults)
