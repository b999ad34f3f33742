"""The runs tests/test_training_distributed.py compares, for its subprocesses: the same global
batches through `DetectorTrainer.fit`, on one device or under a strategy, in float64.

Why float64 (README.md, "Distributed training", and `python bench/replica_gradients.py`): in
float32 this from-scratch network's gradient is itself accurate to only ~1e-4 at 64 px, and at
128 px a ReLU input within float32 rounding of 0 switches it by 2%, whoever computes it, so a
float32 comparison could only be that loose. In float64 the runs agree to ~1e-12 of the update.
"""

import contextlib
import hashlib

import keras
import numpy as np
import tensorflow as tf

import refinedet_tf
from refinedet_tf.architectures import architecture_for
from refinedet_tf.training import run as run_lib
from training_helpers import TINY, tiny_options

# The shipped edge preset, TCB BatchNorm on, at tiny_options' 64 px: maps 8x8 down to 1x1, so the
# synchronized BatchNorm of the deepest maps sees 2 values per channel on each of 2 replicas.
PRESET = "mobilenetv2_lite_192"
GLOBAL_BATCH = 4
STEPS = 2
# The paper's 1e-3 x batch / 32. From scratch on noise the steps are chaotic: a difference made
# in one step grows x8-50 in the next at this rate (up to x4000 at 0.01), so the tests compare
# two steps, each with its own batch.
LR = 1e-3 * GLOBAL_BATCH / 32
# Objects per image, step by step. The two halves of every global batch (one per replica or
# worker) hold different numbers of objects, so only the global positive count as normalizer
# gives the single-device gradient; each step's images are new, so a skipped, repeated or
# reordered batch changes the losses the tests compare.
OBJECTS = ((2, 1, 1, 0), (0, 1, 2, 2))


def config():
    return refinedet_tf.get_preset(PRESET, **TINY)


@contextlib.contextmanager
def float64():
    """Layers built inside compute and keep their weights in float64 (the heads' outputs stay
    float32, as under any policy: the losses are float32)."""
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


def global_batches():
    """-> (images [STEPS * GLOBAL_BATCH, S, S, 3] float32, targets): step k is rows
    k * GLOBAL_BATCH .. (k + 1) * GLOBAL_BATCH - 1."""
    cfg = config()
    size, max_boxes = cfg.image_size, max(max(row) for row in OBJECTS)
    rng = np.random.default_rng(0)
    n = STEPS * GLOBAL_BATCH
    images = rng.uniform(-1.0, 1.0, (n, size, size, 3)).astype(np.float32)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    classes = np.zeros((n, max_boxes), np.int32)
    mask = np.zeros((n, max_boxes), np.float32)
    for i, count in enumerate(np.ravel(OBJECTS)):
        for j in range(count):
            y, x = rng.uniform(0.0, 0.5, 2)
            h, w = rng.uniform(0.2, 0.5, 2)
            boxes[i, j] = [y, x, y + h, x + w]
            classes[i, j] = rng.integers(1, cfg.num_classes)
            mask[i, j] = 1.0
    return images, {"boxes": boxes, "classes": classes, "mask": mask}


def initial_weights():
    keras.utils.set_random_seed(0)
    with float64():
        return architecture_for(config()).build_model().get_weights()


def single_device_data():
    images, targets = global_batches()
    return tf.data.Dataset.from_tensor_slices((images, targets)).batch(GLOBAL_BATCH)


def distributed_data(strategy):
    """As `data.pipeline.make_distributed_dataset` splits a run's input: each input pipeline
    (worker) keeps its shard of the per-replica batches, in order, so replica r of step k gets
    rows k * GLOBAL_BATCH + r * per_replica onwards."""
    images, targets = global_batches()

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
        data = tf.data.Dataset.from_tensor_slices((images, targets)).batch(per_replica)
        if context.num_input_pipelines > 1:
            data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
        return data

    return strategy.distribute_datasets_from_function(dataset_fn)


class RecordSteps(keras.callbacks.Callback):
    """Each step's logs and the weights after it."""

    def __init__(self, network):
        super().__init__()
        self.network, self.logs, self.weights = network, [], []
        self.trainable = [v.trainable for v in network.weights]  # the rest: BatchNorm's moving statistics

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(np.ravel(v)[0]) for k, v in logs.items()})
        self.weights.append(self.network.get_weights())


def train(strategy, initial, data, model_dir):
    """STEPS steps from `initial`, set up by training/run.py's own `build_for_training` (network
    and optimizer in the scope, the trainer outside it, BatchNorm synchronized over replicas)
    -> RecordSteps."""
    options = tiny_options(None, model_dir, preset=PRESET, lr=LR, steps=STEPS, batch_size=GLOBAL_BATCH)
    architecture = architecture_for(config())
    with float64():
        network, trainer, _, _, _ = run_lib.build_for_training(
            architecture, options, strategy, LR, model_dir)
    network.set_weights(initial)
    record = RecordSteps(network)
    with strategy.scope():
        trainer.fit(data, epochs=1, steps_per_epoch=STEPS, verbose=0, callbacks=[record])
    return record


def update_relative_errors(initial, reference, other):
    """-> {"trainable": [...], "moving_statistics": [...]}, per step: max |other - reference|
    over the weights of that kind, divided by the largest change max |reference - initial| of
    that kind so far."""
    errors = {}
    for kind, wanted in (("trainable", True), ("moving_statistics", False)):
        errors[kind] = []
        for ref, oth in zip(reference.weights, other.weights):
            picked = [(r, o, w) for r, o, w, t in zip(ref, oth, initial, reference.trainable) if t == wanted]
            diff = max(float(np.max(np.abs(r - o))) for r, o, _ in picked)
            update = max(float(np.max(np.abs(r - w))) for r, _, w in picked)
            errors[kind].append(diff / update)
    return errors


def digest(weights):
    return hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in weights)).hexdigest()
