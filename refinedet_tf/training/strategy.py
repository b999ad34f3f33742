"""Distribution strategies: TensorFlow's own, nothing home-made."""

import json
import os
import sys

import tensorflow as tf

from refinedet_tf.layers import batch_norm_layers

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name, stream=None):
    """"default" (one device), "mirrored" (every visible GPU; the CPU when there is none) or
    "multi_worker" (MultiWorkerMirroredStrategy from the TF_CONFIG environment variable)."""
    stream = stream or sys.stdout
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if not gpus:
            print("--strategy mirrored: no GPU visible, training on the CPU", file=stream)
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multi_worker needs the TF_CONFIG environment variable "
                             "(cluster: {worker: [host:port, ...]}, task: {type: worker, index: i})")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")


def synchronize_batch_norm(model):
    """Makes every BatchNormalization layer compute its batch statistics over all replicas
    (Keras' `synchronized=True`), as a detector's small per-replica batches need."""
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.synchronized = True
    return len(layers)
