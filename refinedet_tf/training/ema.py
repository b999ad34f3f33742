"""Exponential moving average of the trainable weights (Polyak averaging), with the decay
warm-up of the TF Object Detection API and TF Model Garden (`dynamic_decay`).

After update t (t = 0, 1, ...):  average <- d_t * average + (1 - d_t) * weights,
d_t = min(decay, (1 + t) / (10 + t)). The warm-up matters for the short from-scratch runs this
library trains on a CPU: with a fixed decay of 0.999, a third of the average after 1500 steps
would still come from the first 500 steps' untrained weights (0.999^1000 = 0.37).

Why not Keras' or TensorFlow's own: Keras 3's optimizer `use_ema` has no decay warm-up (its
momentum is fixed from the first step), and `tf.train.ExponentialMovingAverage`, which has one
(`num_updates`), fails on MirroredStrategy variables in TF 2.21 (TypeError inside `apply`).
The update runs in cross-replica context from a callback, where assigning a mirrored variable
writes every replica, so one-device, mirrored and multi-worker runs share this code.

The averages go into the run's tf.train.Checkpoint (`checkpoint_items`): a resumed run
continues the same average. Evaluation, best-model selection and the saved weights use the
averaged weights through `swapped_in`, with BatchNorm statistics recomputed for them.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf


def decay_at(decay, t):
    """The decay of update t (0-based): min(decay, (1 + t) / (10 + t)).

    `t` is a number or a float tensor (the in-graph update); the result has its kind."""
    warm_up = (1.0 + t) / (10.0 + t)
    return tf.minimum(float(decay), warm_up) if isinstance(t, tf.Tensor) else min(float(decay), warm_up)


class WeightAverage:
    """The moving average of `model`'s trainable weights. Create it in the strategy's scope."""

    def __init__(self, model, decay):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.model = model
        self.decay = float(decay)
        self._variables = list(model.trainable_variables)
        self.averages = [tf.Variable(v.value, trainable=False, name=f"average_{i}")
                         for i, v in enumerate(self._variables)]
        self.num_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="num_updates")
        self._update_fn = tf.function(self._update)

    def checkpoint_items(self):
        """What the run's tf.train.Checkpoint saves: the averages and their update count."""
        return {"weight_average": tf.train.Checkpoint(averages=self.averages, num_updates=self.num_updates)}

    def reset(self):
        """Starts the average at the current weights (a run that was started without EMA)."""
        for average, variable in zip(self.averages, self._variables):
            average.assign(variable.value)
        self.num_updates.assign(0)

    def _update(self):
        d = decay_at(self.decay, tf.cast(self.num_updates, tf.float32))
        for average, variable in zip(self.averages, self._variables):
            value = tf.cast(variable.value, average.dtype)
            average.assign(d * average + (1.0 - d) * value)
        self.num_updates.assign_add(1)

    def update(self):
        self._update_fn()

    @contextlib.contextmanager
    def swapped_in(self):
        """Inside: the model holds the averaged weights. On exit every weight of the model
        (trainable and BatchNorm statistics, which evaluation recomputes for the averaged
        weights) is put back as it was, also when the body raises."""
        weights = list(self.model.weights)
        saved = [np.array(v.numpy()) for v in weights]
        try:
            for average, variable in zip(self.averages, self._variables):
                variable.assign(average)
            yield
        finally:
            for variable, value in zip(weights, saved):
                variable.assign(value)


class UpdateWeightAverage(keras.callbacks.Callback):
    """Updates the average after every optimizer step (place it after NaNGuard and before the
    checkpoint saver, so that checkpoint N holds the average of update N). Under gradient accumulation a step that
    only accumulates leaves the weights unchanged and is skipped, so the decay counts updates."""

    def __init__(self, average, state, grad_accum_steps=1):
        super().__init__()
        self.average = average
        self.state = state  # callbacks.RunState: a non-finite step must not enter the average
        self.grad_accum_steps = max(int(grad_accum_steps), 1)

    def on_train_batch_end(self, batch, logs=None):
        if self.state.poisoned:
            return
        if int(self.model.optimizer.iterations.numpy()) % self.grad_accum_steps == 0:
            self.average.update()
