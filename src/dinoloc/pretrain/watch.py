"""Collapse warnings while DINO pretraining runs (after each epoch, not after the run), naming the knob to turn.

The DINO paper tells its two collapses apart by the teacher's output distribution over the K prototypes:
- uniform collapse: centring outweighs sharpening, every image gets the same flat distribution, entropy -> log K;
- one-hot collapse: sharpening outweighs centring, entropy -> 0;
and a third failure the small-data demo showed (issue 24): the teacher argmax lands on only a handful of the K
prototypes (7 of 1,024 for 160 images), so the student learns a few-way split that carries little information.

`prototypes_hit` marks, per iteration, which prototypes were some global crop's teacher argmax (on the device, no
sync); the epoch's count is log.csv's `prototypes_used`. `CollapseWatch.check` turns an epoch's log row into
warnings: each kind is raised the first epoch it shows and again at the last epoch if it is still there.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

# Diagnostic thresholds (not recipe values): share of log K above which the teacher counts as near uniform and
# below which as near one-hot, and the number of distinct argmax prototypes per epoch below which it uses only
# "a handful". Measured on the old demo recipe: uniform collapses sat at 0.95-1.0 x log K, the one-hot one at
# 0.12 x, the 7-of-1,024-prototypes run was the one whose embeddings collapsed relative to its init.
NEAR_UNIFORM = 0.9
NEAR_ONE_HOT = 0.1
HANDFUL = 10

_KNOBS = {
    "uniform": "lower pretrain.teacher_temp (a sharper teacher) or pretrain.out_dim, or weaken the augmentations",
    "one_hot": "raise pretrain.teacher_temp, lower pretrain.center_momentum (faster centring), lower pretrain.lr, "
               "or use pretrain.centering=sinkhorn_knopp (a balanced teacher)",
    "handful": "lower pretrain.out_dim towards the number of images, raise pretrain.teacher_temp, lower "
               "pretrain.center_momentum (faster centring), or use pretrain.centering=sinkhorn_knopp",
}


def prototypes_hit(teacher_probs: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
    """`seen` (K bools) or-ed with the prototypes that are some row's argmax in `teacher_probs` (rows, K)."""
    hit = torch.zeros(teacher_probs.shape[-1], dtype=torch.bool, device=teacher_probs.device)
    hit[teacher_probs.argmax(dim=-1)] = True
    return hit if seen is None else seen | hit


def count_used(seen: torch.Tensor | None, world: int) -> int:
    """Distinct prototypes hit in the epoch over every process (max over ranks of the 0/1 marks)."""
    if seen is None:
        return 0
    marks = seen.to(torch.int32)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(marks, op=dist.ReduceOp.MAX)
    return int(marks.sum().item())


class CollapseWatch:
    """Per-run state: which warnings were already raised."""

    def __init__(self, out_dim: int, epochs: int, after_epoch: int) -> None:
        self.out_dim, self.epochs, self.after_epoch = int(out_dim), int(epochs), int(after_epoch)
        self.raised: set[str] = set()

    def problems(self, row: dict[str, Any]) -> dict[str, str]:
        """{kind: message} for an epoch's log row (keys teacher_entropy, prototypes_used, epoch)."""
        log_k = math.log(self.out_dim)
        entropy, used = float(row["teacher_entropy"]), row.get("prototypes_used")
        out = {}
        if entropy > NEAR_UNIFORM * log_k:
            out["uniform"] = (f"the teacher is near uniform (entropy {entropy:.2f}, log K = {log_k:.2f} for "
                              f"K = pretrain.out_dim = {self.out_dim}): uniform collapse")
        elif entropy < NEAR_ONE_HOT * log_k:
            out["one_hot"] = f"the teacher is near one-hot (entropy {entropy:.2f} of log K = {log_k:.2f}): one-hot collapse"
        if used is not None and not (isinstance(used, float) and math.isnan(used)) and int(used) < min(HANDFUL, self.out_dim):
            out["handful"] = (f"the teacher uses only {int(used)} of K = {self.out_dim} prototypes (distinct argmax "
                              "over the epoch's global crops)")
        return out

    def check(self, row: dict[str, Any]) -> list[str]:
        """Warn (UserWarning, printed as one `warning:` line by the CLI) about this epoch; returns the messages."""
        epoch = int(row["epoch"])
        if epoch <= self.after_epoch and epoch < self.epochs:  # the lr warmup: nothing has moved yet
            return []
        last = epoch >= self.epochs
        out = []
        for kind, text in self.problems(row).items():
            if kind in self.raised and not last:
                continue
            again = "still " if kind in self.raised else ""
            msg = f"pretraining epoch {epoch}/{self.epochs}: {again}{text}; {_KNOBS[kind]}"
            warnings.warn(msg, UserWarning, stacklevel=2)
            self.raised.add(kind)
            out.append(msg)
        return out
