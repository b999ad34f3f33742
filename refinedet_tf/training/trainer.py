"""A Keras model that owns RefineDet's loss, so `fit()` and every Keras callback work.

The loss math stays in `refinedet_tf.losses` (pure functions); this class only wires it into
`train_step`/`test_step` and makes the normalization global across replicas: each replica
divides its loss sums by the number of positives of the WHOLE global batch, and the optimizer
sums the replicas' gradients, so N replicas compute exactly the gradient one device would
compute on the same global batch.
"""

import keras
import tensorflow as tf

from refinedet_tf.anchors import generate_anchors
from refinedet_tf.losses import normalize_loss_terms, refinedet_loss_terms

LOSS_NAMES = ("arm_loc", "arm_conf", "odm_loc", "odm_conf", "total")
_ODM_PREFIXES = ("tcb_", "odm_")


def _sum_over_replicas(values):
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


class RefineDetTrainer(keras.Model):
    """Wraps the detector from `build_refinedet` for training.

    `arm_only = True` is an optional ARM warm-up stage (this library's; the paper trains both steps end to
    end): only the ARM losses are optimized and only the variables on the ARM path (backbone and ARM heads)
    are updated; TCB and ODM weights stay untouched (no weight decay, no momentum either).
    """

    def __init__(self, detector, config, **kwargs):
        super().__init__(**kwargs)
        self.detector = detector
        self.config = config
        self.anchors_yxyx = generate_anchors(config)
        self.arm_only = False
        self.built = True  # the detector is built; there is nothing else to create

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy Keras averages a first distributed batch over the replicas to build
        # the model symbolically; MultiWorkerMirroredStrategy's reduce fails on a dict of
        # tensors. Nothing is left to build once the optimizer is (training/run.py builds it), and the
        # loss and metrics are our own, so that pass is skipped.
        if self.built and getattr(self.optimizer, "built", False):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def call(self, images, training=False):
        return self.detector(images, training=training)

    def arm_path_variables(self):
        return [v for v in self.detector.trainable_variables
                if not v.path.split("/")[0].startswith(_ODM_PREFIXES)]

    def compute_losses(self, images, targets, training):
        """-> dict of the four losses and `total`, normalized by the global positives."""
        outputs = self.detector(images, training=training)
        # The mask may arrive as numbers: Keras' symbolic build averages a first distributed
        # batch over replicas, which bool (and string) tensors cannot go through.
        mask = tf.cast(targets["mask"], tf.bool)
        terms = refinedet_loss_terms(outputs, targets["boxes"], targets["classes"], mask,
                                     self.anchors_yxyx, self.config)
        counts = tf.cast(tf.stack([terms["arm"]["num_pos"], terms["odm"]["num_pos"]]), tf.float32)
        counts = _sum_over_replicas(counts)
        losses = normalize_loss_terms(terms, self.config, counts[0], counts[1])
        if self.arm_only:
            losses["total"] = losses["arm_loc"] + losses["arm_conf"]
        losses["num_pos"] = counts[1]
        return losses

    def train_step(self, data):
        images, targets = data
        variables = self.arm_path_variables() if self.arm_only else self.trainable_variables
        with tf.GradientTape() as tape:
            losses = self.compute_losses(images, targets, training=True)
            # Identity unless the optimizer is a LossScaleOptimizer (mixed_float16).
            scaled = self.optimizer.scale_loss(losses["total"])
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._report(losses)

    def test_step(self, data):
        images, targets = data
        return self._report(self.compute_losses(images, targets, training=False))

    def _report(self, losses):
        # Each replica's loss is its share of the global loss: the sum is the global value, the
        # same on every replica, so Keras' cross-replica "mean" of the logs reports it as is.
        report = _sum_over_replicas({k: losses[k] for k in LOSS_NAMES})
        report["num_pos"] = losses["num_pos"]
        report["lr"] = tf.cast(self.optimizer.learning_rate, tf.float32) if hasattr(
            self.optimizer, "learning_rate") else tf.constant(0.0)
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces logs across workers with reduce(MEAN, axis=0): give it an axis.
            report = {k: tf.reshape(v, [1]) for k, v in report.items()}
        return report
