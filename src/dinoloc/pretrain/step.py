"""The models and one training iteration of official DINO: student and EMA teacher, AdamW with the scheduled
lr and weight decay, per-parameter gradient clipping, the frozen last layer, mixed precision."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from dinoloc.backbones.vit import create_vit
from dinoloc.device import Dist
from dinoloc.io import DinolocError
from dinoloc.pretrain.head import DINOHead, MultiCropWrapper
from dinoloc.pretrain.loss import DINOLoss, collapse_stats
from dinoloc.pretrain.params import PretrainParams
from dinoloc.pretrain.schedules import Schedules
from dinoloc.pretrain.watch import prototypes_hit


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """[decayed params, not decayed (biases and 1-D params such as norms, tokens' scale)] as official DINO;
    the scheduled weight decay is set on group 0 only."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> None:
    """Official DINO's per-parameter clipping: each gradient rescaled to norm <= clip on its own."""
    for p in model.parameters():
        if p.grad is not None:
            clip_coef = clip / (p.grad.detach().norm(2) + 1e-6)
            p.grad.detach().mul_(clip_coef.clamp(max=1.0))


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Drop the head's last-layer gradients during the first freeze_last_layer epochs (official DINO: it helps
    the run start); AdamW skips parameters without gradients, so they do not move at all."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_teacher <- m * theta_teacher + (1 - m) * theta_student, parameter by parameter."""
    t_params = dict(teacher.named_parameters())
    for name, ps in student.named_parameters():
        pt = t_params[name.removeprefix("module.")]
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def build_dino_model(
    arch: str, model_kwargs: Mapping[str, Any], in_chans: int, params: PretrainParams, drop_path_rate: float
) -> MultiCropWrapper:
    backbone = create_vit(
        arch, in_chans, img_size=params.global_crop_size, drop_path_rate=drop_path_rate, **dict(model_kwargs)
    )
    head = DINOHead(
        backbone.num_features, params.out_dim, params.nlayers, params.hidden_dim, params.bottleneck_dim,
        norm_last_layer=params.norm_last_layer,
    )
    return MultiCropWrapper(backbone, head)


@dataclass
class DinoTrainer:
    """Everything one iteration updates. `model` is the student, wrapped in DDP when several processes run."""

    student: MultiCropWrapper
    teacher: MultiCropWrapper
    model: nn.Module
    dino_loss: DINOLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable[[], Any]
    # the prototypes some global crop's teacher argmax hit this epoch (pretrain.watch; reset per epoch)
    prototypes_seen: torch.Tensor | None = None


def build_trainer(arch: str, model_kwargs: Mapping[str, Any], in_chans: int, p: PretrainParams, d: Dist) -> DinoTrainer:
    """Student and teacher with identical initialisation on every rank (the teacher starts as a copy and is
    never trained by gradients), the DINO loss, AdamW, the fp16 loss scaler (CUDA + amp=fp16 only).
    The student is not yet wrapped for DDP (wrap_ddp, after a resume has loaded its weights)."""
    cuda = d.device.type == "cuda"
    torch.manual_seed(p.seed)
    student = build_dino_model(arch, model_kwargs, in_chans, p, p.drop_path_rate).to(d.device)
    teacher = build_dino_model(arch, model_kwargs, in_chans, p, 0.0).to(d.device)
    teacher.load_state_dict(student.state_dict())
    for param in teacher.parameters():
        param.requires_grad = False
    teacher.eval()
    student.train()
    dino_loss = DINOLoss(
        p.out_dim, 2 + p.local_crops_number, p.warmup_teacher_temp, p.teacher_temp,
        p.warmup_teacher_temp_epochs, p.epochs, student_temp=p.student_temp, center_momentum=p.center_momentum,
        centering=p.centering,
    ).to(d.device)
    optimizer = torch.optim.AdamW(param_groups(student))
    scaler = torch.amp.GradScaler("cuda") if cuda and p.amp == "fp16" else None
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16 if p.amp == "bf16" else torch.float16))
        if cuda and p.amp != "none" else contextlib.nullcontext
    )
    return DinoTrainer(student, teacher, student, dino_loss, optimizer, scaler, autocast)


def wrap_ddp(t: DinoTrainer, d: Dist) -> None:
    """Several processes: the student's gradients are averaged by DDP (one process: the student itself)."""
    if d.world > 1:
        t.model = DistributedDataParallel(t.student, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def train_step(t: DinoTrainer, crops: list[torch.Tensor], epoch: int, i: int, it: int, s: Schedules,
               p: PretrainParams) -> torch.Tensor:
    """One iteration (global index `it`) on a batch of crops already on the device; returns the 0-d tensors
    (loss, teacher entropy, KL(teacher || student)) stacked, left on the device (no sync besides the
    finite-loss check)."""
    for k, group in enumerate(t.optimizer.param_groups):
        group["lr"] = float(s.lr[it])
        if k == 0:
            group["weight_decay"] = float(s.wd[it])
    with t.autocast():
        teacher_output = t.teacher(crops[:2])  # only the 2 global crops reach the teacher
        student_output = t.model(crops)
    q = t.dino_loss.teacher_probs(teacher_output, epoch)
    entropy, kl = collapse_stats(student_output.detach(), q, p.student_temp)
    t.prototypes_seen = prototypes_hit(q.detach(), t.prototypes_seen)
    loss = t.dino_loss(student_output, teacher_output, epoch)
    if not math.isfinite(loss.item()):
        raise DinolocError(
            f"DINO loss is {loss.item()} at epoch {epoch}, iteration {i}; lower pretrain.lr, raise "
            "pretrain.warmup_epochs or use pretrain.amp=bf16"
        )
    t.optimizer.zero_grad(set_to_none=True)
    if t.scaler is None:
        loss.backward()
        if p.clip_grad > 0:
            clip_gradients(t.student, p.clip_grad)
        cancel_gradients_last_layer(epoch, t.student, p.freeze_last_layer)
        t.optimizer.step()
    else:
        t.scaler.scale(loss).backward()
        if p.clip_grad > 0:
            t.scaler.unscale_(t.optimizer)
            clip_gradients(t.student, p.clip_grad)
        cancel_gradients_last_layer(epoch, t.student, p.freeze_last_layer)
        t.scaler.step(t.optimizer)
        t.scaler.update()
    ema_update(t.teacher, t.student, float(s.momentum[it]))
    return torch.stack([loss.detach().double(), entropy.double(), kl.double()])
