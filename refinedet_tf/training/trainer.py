"""A Keras model that owns an architecture's losses, so `fit()` and every Keras callback work.

The loss math stays with the architecture (`architectures/`); this class only wires it into a
documented `train_step`/`test_step` and makes the normalization global across replicas: each
replica divides its loss sums by the count of the WHOLE global batch (the architecture's
`losses` receives `sum_over_replicas` for that), and the optimizer sums the replicas' gradients,
so N replicas compute exactly the gradient one device would compute on the same global batch.

Under a tf.distribute strategy, create the trainer OUTSIDE `strategy.scope()` (the wrapped
network and `compile`, which builds the optimizer, inside it) and call `fit` inside the scope. A Keras model
created inside a scope builds itself symbolically at the start of every `fit` by taking the first
batch of the iterator that training then continues: each `fit` (each stage, each resumed run)
would skip one batch, and MultiWorkerMirroredStrategy cannot average a dict batch to do it. The
wrapped network is built already, so that pass has nothing to do.
"""

import keras
import tensorflow as tf

from refinedet_tf.architectures import sum_over_replicas


class DetectorTrainer(keras.Model):
    """Wraps an architecture's network (`architecture.build_model()`) for training.

    `optimized_losses`: the names summed into the optimized total (a `TrainingStage`'s
    `losses`); None optimizes `total`. Which weights a stage trains is set with the layers'
    `trainable` flags, so frozen layers get no gradient, no weight decay and no momentum.
    """

    def __init__(self, model, architecture, **kwargs):
        super().__init__(**kwargs)
        self.detector = model
        self.architecture = architecture
        self.loss_names = tuple(architecture.loss_names)
        self.optimized_losses = None

    def compile(self, optimizer, **kwargs):
        """Keras' compile, then builds the optimizer for the weights trainable now: under a
        strategy its slots must exist before the first step (creating them inside the traced
        step fails), and stages that freeze layers later still find theirs."""
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.trainable_variables)

    def build(self, input_shape=None):
        """Nothing to create: the wrapped network is built, the trainer has no weights of its own."""
        del input_shape

    def call(self, images, training=False):
        return self.detector(images, training=training)

    def compute_losses(self, images, targets, training):
        """-> the architecture's loss dict (normalized by the global counts) and `num_pos`."""
        losses = self.architecture.losses(self.detector, images, targets, sum_over_replicas, training=training,
                                          step=self.optimizer.iterations)
        if self.optimized_losses is not None:
            losses["total"] = tf.add_n([losses[name] for name in self.optimized_losses])
        return losses

    def train_step(self, data):
        images, targets = data
        with tf.GradientTape() as tape:
            losses = self.compute_losses(images, targets, training=True)
            # Identity unless the optimizer is a LossScaleOptimizer (mixed_float16).
            scaled = self.optimizer.scale_loss(losses["total"])
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._report(losses)

    def test_step(self, data):
        images, targets = data
        return self._report(self.compute_losses(images, targets, training=False))

    def _report(self, losses):
        # Each replica's loss is its share of the global loss: the sum is the global value, the
        # same on every replica, so Keras' cross-replica "mean" of the logs reports it as is.
        report = sum_over_replicas({k: losses[k] for k in self.loss_names})
        report["num_pos"] = losses["num_pos"]
        report["lr"] = tf.cast(self.optimizer.learning_rate, tf.float32) if hasattr(
            self.optimizer, "learning_rate") else tf.constant(0.0)
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces logs across workers with reduce(MEAN, axis=0): give it an axis.
            report = {k: tf.reshape(v, [1]) for k, v in report.items()}
        return report
