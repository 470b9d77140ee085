"""Official DINO's schedules: per-iteration lr, weight decay and teacher momentum, per-epoch teacher temperature."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinoloc.pretrain.params import PretrainParams


def cosine_scheduler(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """One value per iteration, as official DINO's `utils.cosine_scheduler`: linear warm-up from
    start_warmup_value to base_value over warmup_epochs, then half a cosine from base_value to final_value.

    A warm-up longer than the run is cut to the run's length (a short override of `epochs` stays usable).
    """
    total = epochs * niter_per_ep
    warmup_iters = min(warmup_epochs, epochs) * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(total - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == total
    return schedule


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int, epochs: int) -> list[float]:
    """Per-epoch teacher temperature: linear warmup_teacher_temp -> teacher_temp over warmup_epochs, then constant
    (official DINO; a high initial temperature avoids early collapse)."""
    warm = min(warmup_epochs, epochs)
    ramp = np.linspace(warmup_teacher_temp, teacher_temp, warm) if warm > 0 else np.array([])
    return [float(t) for t in np.concatenate((ramp, np.full(epochs - warm, teacher_temp)))]


@dataclass(frozen=True)
class Schedules:
    """The per-iteration values of one run (index: epoch * niter + i)."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray


def build_schedules(p: PretrainParams, niter: int, total_batch: int) -> Schedules:
    """Official DINO: the lr scaled linearly by the total batch (lr * total / 256) with warm-up, cosine weight
    decay to weight_decay_end, teacher momentum cosine to 1."""
    return Schedules(
        lr=cosine_scheduler(p.lr * total_batch / 256.0, p.min_lr, p.epochs, niter, p.warmup_epochs),
        wd=cosine_scheduler(p.weight_decay, p.weight_decay_end, p.epochs, niter),
        momentum=cosine_scheduler(p.momentum_teacher, 1.0, p.epochs, niter),
    )
