"""Training recipes: what train.py's flags leave unset, per preset (each config's
`training_recipe()`), and the from-scratch recipe both architectures' CPU demos use."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """How a preset trains: what train.py's flags left unset take. A config's
    `training_recipe()` picks one.

    The length is in passes over the training set (`epochs`), at least `min_steps`, so the same
    recipe fits a 200-image set and VOC; `lr` None means the paper's 1e-3 x batch / 32.
    """

    name: str
    optimizer: str
    batch_size: int
    lr: float | None
    warmup_steps: int
    lr_schedule: str
    lr_boundaries: tuple[float, ...]  # fractions of the run (multistep)
    clip_grad_norm: float
    epochs: float
    min_steps: int
    evaluations: int  # validation passes spread over the run (0: at the end only)
    ema_decay: float = 0.0  # moving average of the weights (training/ema.py); 0: off

    def steps_for(self, num_images: int, batch_size: int | None = None) -> int:
        batch = batch_size or self.batch_size
        return max(math.ceil(self.epochs * num_images / batch), self.min_steps)

    def describe(self) -> str:
        lr = "1e-3 x batch/32" if self.lr is None else f"{self.lr:g}"
        schedule = (f"x0.1 at {', '.join(f'{b:g}' for b in self.lr_boundaries)} of the run"
                    if self.lr_schedule == "multistep" else self.lr_schedule)
        return (f"{self.name}: {self.optimizer} lr {lr}, batch {self.batch_size}, warm-up "
                f"{self.warmup_steps} steps, {schedule}, clip {self.clip_grad_norm:g}, "
                f"{self.epochs:g} epochs (at least {self.min_steps} steps)"
                + (f", weight average decay {self.ema_decay:g}" if self.ema_decay else ""))


# From scratch: the RefineDet demo's recipe, measured to work (README "Demo results"). AdamW converges
# several times faster than SGD from scratch; the warm-up and clipping tame the early loss
# spikes of a randomly initialized detector. 24 epochs of the 1000-image synthetic set are its
# 1500 steps; a smaller set still gets 1500 steps.
FROM_SCRATCH_RECIPE = TrainingRecipe(
    name="from scratch (the demo's)", optimizer="adamw", batch_size=16, lr=3e-3, warmup_steps=100,
    lr_schedule="cosine", lr_boundaries=(), clip_grad_norm=10.0, epochs=24.0, min_steps=1500,
    evaluations=2)
