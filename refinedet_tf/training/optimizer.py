"""SGD with momentum, decoupled weight decay on kernels only, warm-up and lr decay.

Keras 3's own SGD does everything tensorflow-addons used to be needed for: `weight_decay`
(decoupled: w -= lr * wd * w, applied outside momentum; Caffe adds wd * w to the gradient
instead, so its decay is ~1/(1 - momentum) = 10x stronger at the same number), gradient
accumulation (`gradient_accumulation_steps`), and loss scaling through LossScaleOptimizer.
"""

import math

import keras
from keras import ops

# Variable names that weight decay skips: biases, BatchNorm gamma/beta, L2Norm scales.
NO_DECAY = ("bias", "gamma", "beta", "scale")


@keras.saving.register_keras_serializable(package="refinedet_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `warmup_start * base_lr`, then multistep (x0.1 at each boundary) or
    cosine decay to 0 at `total_steps`."""

    def __init__(self, base_lr, total_steps, warmup_steps=0, schedule="multistep",
                 boundaries=(), gamma=0.1, warmup_start=0.1):
        if schedule not in ("multistep", "cosine"):
            raise ValueError(f"lr schedule must be 'multistep' or 'cosine', got {schedule!r}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.boundaries = tuple(int(b) for b in boundaries)
        self.gamma = float(gamma)
        self.warmup_start = float(warmup_start)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.schedule == "multistep":
            decays = sum(ops.cast(step >= b, "float32") for b in self.boundaries) if self.boundaries else 0.0
            lr = self.base_lr * ops.power(self.gamma, decays)
        else:
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = self.base_lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            ramp = self.warmup_start + (1.0 - self.warmup_start) * ops.minimum(step / self.warmup_steps, 1.0)
            lr = lr * ramp
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "schedule": self.schedule,
                "boundaries": self.boundaries, "gamma": self.gamma, "warmup_start": self.warmup_start}


def resolve_boundaries(boundaries, total_steps):
    """Boundaries given as fractions (< 1) of the run or as step numbers -> step numbers."""
    return tuple(int(round(b * total_steps)) if b < 1 else int(b) for b in boundaries)


def default_lr(global_batch_size):
    """The paper's 1e-3 at batch 32, scaled linearly with the global batch."""
    return 1e-3 * global_batch_size / 32


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(schedule, momentum=0.9, weight_decay=5e-4, grad_accum_steps=1, clip_grad_norm=0.0,
                   name="sgd"):
    """SGD with momentum (the paper's), or AdamW (`name="adamw"`, beta_1 = `momentum`), which
    trains a network from scratch several times faster: the CPU demo uses it.

    `clip_grad_norm` > 0 clips the global gradient norm (keeps from-scratch training stable).
    """
    common = dict(learning_rate=schedule, weight_decay=weight_decay or None,
                  global_clipnorm=clip_grad_norm or None,
                  gradient_accumulation_steps=grad_accum_steps if grad_accum_steps > 1 else None)
    if name == "sgd":
        optimizer = keras.optimizers.SGD(momentum=momentum, **common)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(beta_1=momentum, **common)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer
