"""DINO loss (cross-entropy between the centred, sharpened teacher and the student) and the schedules."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


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


class DINOLoss(nn.Module):
    """Official DINO loss. Teacher output of the 2 global crops -> softmax((t - center) / T_teacher); every
    student crop v is compared with every teacher crop iq != v via sum(-q * log_softmax(s_v / T_student)),
    averaged over the batch and then over the pairs. The centre is an EMA of the teacher's batch mean."""

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        n_global_crops: int = 2,
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.n_global_crops = n_global_crops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
        )

    def teacher_probs(self, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        temp = self.teacher_temp_schedule[epoch]
        return F.softmax((teacher_output.float() - self.center) / temp, dim=-1)

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        student_out = (student_output.float() / self.student_temp).chunk(self.ncrops)
        teacher_out = self.teacher_probs(teacher_output, epoch).detach().chunk(self.n_global_crops)
        total, n_terms = student_output.new_zeros((), dtype=torch.float32), 0
        for iq, q in enumerate(teacher_out):
            for v, s in enumerate(student_out):
                if v == iq:  # the same view: nothing to predict
                    continue
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                n_terms += 1
        self.update_center(teacher_output)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher's raw output over the global batch (all ranks)."""
        batch_center = torch.sum(teacher_output.float(), dim=0, keepdim=True)
        n = len(teacher_output)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            n *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center / n, alpha=1 - self.center_momentum)


@torch.no_grad()
def collapse_stats(
    student_output: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean entropy of the teacher's distribution, mean KL(teacher || student)) on the global crops, the two
    numbers the DINO paper tracks to tell collapse apart: uniform collapse = entropy at log(K), KL -> 0;
    one-hot collapse = entropy -> 0, KL -> 0."""
    n = len(teacher_probs)
    q = teacher_probs.float()
    log_q = torch.log(q.clamp_min(1e-12))
    log_p = F.log_softmax(student_output[:n].float() / student_temp, dim=-1)
    entropy = -(q * log_q).sum(-1).mean()
    kl = (q * (log_q - log_p)).sum(-1).mean()
    return entropy, kl  # 0-d tensors: no device sync per iteration
