"""DINO loss (cross-entropy between the centred, sharpened teacher and the student) and the collapse monitor.

Two ways to centre the teacher (pretrain.centering): `softmax_center` = official DINO (subtract an EMA of the
teacher's batch mean, then a sharpening softmax); `sinkhorn_knopp` = DINOv2's alternative (three Sinkhorn-Knopp
iterations make the batch's assignment to the K prototypes balanced: every prototype gets 1/K of the batch's mass,
every sample sums to 1), which keeps many prototypes in use on small data."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from dinoloc.pretrain.params import CENTERING_MODES
from dinoloc.pretrain.schedules import teacher_temp_schedule

SINKHORN_ITERATIONS = 3  # DINOv2's n_iterations (dinov2/loss/dino_clstoken_loss.py)


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


@torch.no_grad()
def sinkhorn_knopp(teacher_output: torch.Tensor, temp: float, n_iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """DINOv2's `sinkhorn_knopp_teacher`: Q = exp(t / temp) as a K x B matrix, scaled to sum 1, then alternately
    each prototype's row to 1/K and each sample's column to 1/B; returned as (B, K) rows that sum to 1. Over
    several processes B and the sums span the global batch (all_reduce), as DINOv2's.

    Subtracting the global batch's largest logit before exp (not in DINOv2) scales Q by one constant, which the
    first normalisation removes: the same result, but exp stays finite at small temperatures."""
    distributed = dist.is_available() and dist.is_initialized()
    logits = teacher_output.float() / temp
    top = logits.max()
    if distributed:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp(logits - top).t()  # K x B
    world = dist.get_world_size() if distributed else 1
    k, b = q.shape[0], q.shape[1] * world
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


class DINOLoss(nn.Module):
    """Official DINO loss. Teacher output of the 2 global crops -> softmax((t - center) / T_teacher); every
    student crop v is compared with every teacher crop iq != v via sum(-q * log_softmax(s_v / T_student)),
    averaged over the batch and then over the pairs. The centre is an EMA of the teacher's batch mean
    (centering=softmax_center); centering=sinkhorn_knopp replaces centre + softmax by DINOv2's Sinkhorn-Knopp
    (the centre buffer is then kept but unused, so checkpoints have one format)."""

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        *,
        student_temp: float,
        center_momentum: float,
        centering: str,
        n_global_crops: int = 2,
    ) -> None:
        super().__init__()
        if centering not in CENTERING_MODES:
            raise ValueError(f"centering={centering!r}: use one of {CENTERING_MODES}")
        self.centering = centering
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
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_output, float(temp))
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
        if self.centering == "softmax_center":
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
