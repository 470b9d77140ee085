"""DINO self-distillation from scratch (official DINO recipe, Dino4Cells augmentations), CPU / GPU / torchrun DDP.

Writes `out_dir/checkpoint.pth` in the official full DINO format after every epoch (so `backbone=opencell`
loads it like any other DINO checkpoint), `pretrain_images.csv` (what it trained on) and `log.csv` (one row
per epoch, with the collapse monitor). An existing unfinished checkpoint is resumed exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from dinoloc.backbones import create_vit, read_checkpoint
from dinoloc.device import Dist, setup
from dinoloc.io import DinolocError, atomic_path, text_sha256, write_csv
from dinoloc.preprocess import INTENSITY_MODES, scale_intensity
from dinoloc.pretrain.augment import ZSCORE_MODES, CropSpec, MultiCropAugment, sample_generator
from dinoloc.pretrain.head import DINOHead, MultiCropWrapper, from_official_keys, to_official_keys
from dinoloc.pretrain.loss import DINOLoss, collapse_stats, cosine_scheduler

CHECKPOINT_NAME = "checkpoint.pth"
IMAGES_NAME = "pretrain_images.csv"
LOG_NAME = "log.csv"
LOG_COLUMNS = [
    "epoch", "loss", "lr", "wd", "momentum", "teacher_temp", "teacher_entropy", "kl_teacher_student",
    "images_per_s", "seconds",
]
PRETRAIN_SPLITS = ("train", "unlabeled")  # the 90% side of the split; "test" never reaches pretraining
AMP_MODES = ("bf16", "fp16", "none")
_CONSUMED_ELSEWHERE = ("source", "image_dir")  # pretrain YAML keys the CLI uses to pick the data


# ----------------------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainParams(CropSpec):
    """The pretrain YAML's recipe keys: the crop recipe (inherited from CropSpec) and the training recipe.
    Defaults are official DINO's main_dino.py defaults."""

    epochs: int = 100
    batch_size_per_gpu: int = 64
    lr: float = 0.0005  # base lr for a total batch of 256 (scaled linearly)
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    clip_grad: float = 3.0  # 0 = no clipping
    freeze_last_layer: int = 1
    drop_path_rate: float = 0.1
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    amp: str = "bf16"  # CUDA only; CPU runs in float32
    num_workers: int = 4
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PretrainParams:
        """Build from the pretrain config; unknown keys and bad values raise DinolocError naming `pretrain.<key>`.
        `source` and `image_dir` (used by the CLI to choose the data) are accepted and ignored."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(k for k in d if k not in known and k not in _CONSUMED_ELSEWHERE)
        if unknown:
            raise DinolocError(
                f"pretrain.{unknown[0]} is not a pretrain setting (unknown keys: {unknown}); known keys: "
                f"{sorted(known)}. Fix the spelling in configs/pretrain/*.yaml or the override."
            )
        values = {k: _coerce(k, v, known[k].default) for k, v in d.items() if k in known}
        params = cls(**values)
        params.validate()
        return params

    def validate(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise DinolocError(f"pretrain.{key}={getattr(self, key)!r}: must be {rule}")

        for key in ("epochs", "batch_size_per_gpu", "out_dim", "hidden_dim", "bottleneck_dim", "nlayers",
                    "global_crop_size", "local_crop_size"):
            need(getattr(self, key) >= 1, key, ">= 1")
        for key in ("warmup_epochs", "warmup_teacher_temp_epochs", "freeze_last_layer", "local_crops_number",
                    "num_workers", "min_lr", "weight_decay", "weight_decay_end", "clip_grad", "brightness"):
            need(getattr(self, key) >= 0, key, ">= 0")
        for key in ("lr", "student_temp", "teacher_temp", "warmup_teacher_temp"):
            need(getattr(self, key) > 0, key, "> 0")
        for key in ("momentum_teacher", "center_momentum", "flip_prob", "warp_prob", "protein_rescale_prob",
                    "channel_drop_prob", "jitter_prob", "contrast"):
            need(0 <= getattr(self, key) <= 1, key, "in [0, 1]")
        need(0 <= self.drop_path_rate < 1, "drop_path_rate", "in [0, 1)")
        for key in ("global_crops_scale", "local_crops_scale"):
            lo, hi = getattr(self, key)
            need(0 < lo <= hi <= 1, key, "[low, high] with 0 < low <= high <= 1")
        need(self.amp in AMP_MODES, "amp", f"one of {AMP_MODES}")
        need(self.zscore in ZSCORE_MODES, "zscore", f"one of {ZSCORE_MODES}")

    def crop_spec(self) -> CropSpec:
        return CropSpec(**{f.name: getattr(self, f.name) for f in fields(CropSpec)})


def _coerce(key: str, value: Any, default: Any) -> Any:
    """YAML values to the field's type (ints for floats allowed, lists for pairs), else DinolocError."""
    bad = DinolocError(f"pretrain.{key}={value!r}: expected a {type(default).__name__} like {default!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise bad
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise bad
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise bad
        return tuple(_coerce(key, v, 0.0) for v in value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad
        return value
    raise AssertionError(key)


def select_pretrain_images(split_df: pd.DataFrame) -> list[str]:
    """Image ids allowed in pretraining: the 90% side of the split (train and unlabeled), never test."""
    missing = [c for c in ("image_id", "split") if c not in split_df.columns]
    if missing:
        raise DinolocError(f"split table lacks column(s) {missing}; rebuild it with dinoloc-data")
    known = set(PRETRAIN_SPLITS) | {"test"}
    odd = sorted(set(split_df["split"].astype(str)) - known)
    if odd:
        raise DinolocError(f"split table has unknown split value(s) {odd}; expected {sorted(known)}. Rebuild it")
    keep = split_df["split"].isin(PRETRAIN_SPLITS)
    return [str(i) for i in split_df.loc[keep, "image_id"]]


# ----------------------------------------------------------------------------------------------------------
# official DINO training utilities
# ----------------------------------------------------------------------------------------------------------
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
        backbone.num_features, params.out_dim, nlayers=params.nlayers, hidden_dim=params.hidden_dim,
        bottleneck_dim=params.bottleneck_dim, norm_last_layer=params.norm_last_layer,
    )
    return MultiCropWrapper(backbone, head)


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------
class PretrainDataset(Dataset):
    """Reads one image, scales its intensity per image (as extraction does), returns its multi-crop views.

    Sample `index` in epoch `epoch` is augmented with a generator seeded from (seed, epoch, index): the same
    crops whichever worker or process draws it, and after a resume. Set `.epoch` before each epoch.
    """

    def __init__(
        self,
        images: Sequence[tuple[str, str]],
        read_fn: Callable[[str], Any],
        n_channels: int,
        intensity: str,
        augment: MultiCropAugment,
        seed: int,
    ) -> None:
        self.images = list(images)
        self.read_fn = read_fn
        self.n_channels = n_channels
        self.intensity = intensity
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        image_id, path = self.images[index]
        x = torch.as_tensor(np.asarray(self.read_fn(path)), dtype=torch.float32)
        if x.ndim != 3 or x.shape[0] != self.n_channels:
            raise DinolocError(
                f"{path} (image {image_id}): read as shape {tuple(x.shape)}, expected ({self.n_channels}, H, W) "
                "in the backbone's channel order; check backbone.channels / in_chans and the data"
            )
        if not torch.isfinite(x).all():
            raise DinolocError(f"{path} (image {image_id}): contains NaN or inf values; fix or drop the image")
        x = scale_intensity(x[None], self.intensity)[0]
        return self.augment(x, sample_generator(self.seed, self.epoch, index))


# ----------------------------------------------------------------------------------------------------------
# distributed / device
# ----------------------------------------------------------------------------------------------------------
def _barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def _all_reduce_mean(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return (t / d.world).tolist()


# ----------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------
def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save under a temporary name in the same folder, then rename (never a half-written checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _images_hash(images: Sequence[tuple[str, str]]) -> str:
    return text_sha256("\n".join(i for i, _ in images))


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------
def train_dino(
    images: Sequence[tuple[str, str]],
    read_fn: Callable[[str], np.ndarray],
    channels: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    arch: str,
    model_kwargs: Mapping[str, Any],
    in_chans: int,
    intensity: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    params: PretrainParams,
    device: str = "auto",
) -> Path:
    """DINO-pretrain a ViT on `images` ((image_id, path), already restricted to allowed images); return the
    checkpoint path out_dir/checkpoint.pth. Resumes an unfinished checkpoint; a finished one returns at once."""
    images = [(str(i), str(p)) for i, p in images]
    if not images:
        raise DinolocError("pretraining got no images; check pretrain.source / pretrain.image_dir and the split")
    if len({i for i, _ in images}) != len(images):
        raise DinolocError("pretraining image ids are not unique; check the manifest / image folder")
    if len(channels) != in_chans:
        raise DinolocError(f"backbone.channels {list(channels)} has {len(channels)} names, in_chans={in_chans}")
    if intensity not in INTENSITY_MODES:
        raise DinolocError(f"backbone.preprocess.intensity={intensity!r}: use one of {INTENSITY_MODES}")
    params.validate()
    if params.zscore == "crop" and intensity != "zscore":
        raise DinolocError(
            f"pretrain.zscore=crop z-scores each crop, but backbone.preprocess.intensity={intensity!r}; use it with "
            "intensity: zscore (the z-scored backbones) or set pretrain.zscore=image"
        )
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    d = setup(device)
    try:
        return _train(images, read_fn, list(channels), out_dir, ckpt_path, arch, dict(model_kwargs), in_chans,
                      intensity, mean, std, params, d)
    finally:
        if d.owned:
            dist.destroy_process_group()


def _train(
    images: list[tuple[str, str]],
    read_fn: Callable[[str], np.ndarray],
    channels: list[str],
    out_dir: Path,
    ckpt_path: Path,
    arch: str,
    model_kwargs: dict[str, Any],
    in_chans: int,
    intensity: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    p: PretrainParams,
    d: Dist,
) -> Path:
    resume = read_checkpoint(ckpt_path) if ckpt_path.exists() else None
    start_epoch = int(resume["epoch"]) if resume is not None else 0
    if resume is not None and resume.get("pretrain_images_sha256") not in (None, _images_hash(images)):
        raise DinolocError(
            f"{ckpt_path} was trained on other images than this run's; delete {out_dir} to start again "
            "(or point backbone.weights elsewhere)"
        )
    if start_epoch >= p.epochs:
        if d.rank == 0:
            print(f"pretraining skipped: {ckpt_path} already holds {start_epoch} epoch(s) (pretrain.epochs={p.epochs})")
        return ckpt_path

    niter = len(images) // d.world // p.batch_size_per_gpu
    if niter < 1:
        raise DinolocError(
            f"{len(images)} images over {d.world} process(es) do not fill one batch of "
            f"pretrain.batch_size_per_gpu={p.batch_size_per_gpu}; lower it"
        )
    cuda = d.device.type == "cuda"

    # Models: identical initialisation on every rank; the teacher starts as a copy of the student.
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
    ).to(d.device)
    optimizer = torch.optim.AdamW(param_groups(student))
    scaler = torch.amp.GradScaler("cuda") if cuda and p.amp == "fp16" else None

    log_rows: list[dict[str, Any]] = []
    if resume is not None:
        try:
            # Either head key form: official DINO's weight_g/weight_v or torch's parametrization keys.
            student.load_state_dict(from_official_keys({k.removeprefix("module."): v for k, v in resume["student"].items()}))
            teacher.load_state_dict(from_official_keys(resume["teacher"]))
            optimizer.load_state_dict(resume["optimizer"])
            dino_loss.load_state_dict(resume["dino_loss"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise DinolocError(
                f"{ckpt_path} cannot be resumed with this backbone/pretrain config ({type(e).__name__}: "
                f"{str(e)[:300]}); restore the config it was started with, or delete {out_dir} to start again"
            ) from e
        if scaler is not None and resume.get("fp16_scaler"):
            scaler.load_state_dict(resume["fp16_scaler"])
        log_rows = [dict(r) for r in resume.get("log", [])]  # the epochs' rows travel with the checkpoint
        if d.rank == 0:
            print(f"resuming pretraining from {ckpt_path} at epoch {start_epoch}/{p.epochs}")
    model: nn.Module = student
    if d.world > 1:
        model = DistributedDataParallel(student, device_ids=[d.device.index] if cuda else None)

    # Per-iteration schedules (official DINO), the lr scaled by the total batch.
    total_batch = p.batch_size_per_gpu * d.world
    lr_s = cosine_scheduler(p.lr * total_batch / 256.0, p.min_lr, p.epochs, niter, p.warmup_epochs)
    wd_s = cosine_scheduler(p.weight_decay, p.weight_decay_end, p.epochs, niter)
    mom_s = cosine_scheduler(p.momentum_teacher, 1.0, p.epochs, niter)

    dataset = PretrainDataset(
        images, read_fn, in_chans, intensity, MultiCropAugment(p.crop_spec(), channels, mean, std), p.seed
    )
    # One code path for 1 and N processes: the sampler shuffles with seed + epoch, drops the ragged tail.
    sampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=p.seed,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=p.batch_size_per_gpu, sampler=sampler, num_workers=p.num_workers,
                        pin_memory=cuda, drop_last=True)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16 if p.amp == "bf16" else torch.float16))
        if cuda and p.amp != "none" else contextlib.nullcontext
    )

    if d.rank == 0:
        write_csv(out_dir / IMAGES_NAME, pd.DataFrame({"image_id": [i for i, _ in images]}))
    args = argparse.Namespace(
        **dataclasses.asdict(p), arch=arch, model_kwargs=model_kwargs, in_chans=in_chans, channels=channels,
        intensity=intensity, mean=None if mean is None else list(mean), std=None if std is None else list(std),
        world_size=d.world,
    )

    for epoch in range(start_epoch, p.epochs):
        # Reseeding per epoch (and rank) makes stochastic depth independent of where a run was resumed.
        torch.manual_seed(int(sample_generator(p.seed, epoch, d.rank).initial_seed()))
        sampler.set_epoch(epoch)
        dataset.epoch = epoch
        t0 = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64, device=d.device)  # loss, teacher entropy, KL
        temp = dino_loss.teacher_temp_schedule[epoch]
        bar = tqdm(loader, desc=f"DINO epoch {epoch + 1}/{p.epochs}", total=niter, disable=d.rank != 0,
                   dynamic_ncols=True)
        for i, crops in enumerate(bar):
            it = epoch * niter + i
            for k, group in enumerate(optimizer.param_groups):
                group["lr"] = float(lr_s[it])
                if k == 0:
                    group["weight_decay"] = float(wd_s[it])
            crops = [c.to(d.device, non_blocking=True) for c in crops]
            with autocast():
                teacher_output = teacher(crops[:2])  # only the 2 global crops reach the teacher
                student_output = model(crops)
            q = dino_loss.teacher_probs(teacher_output, epoch)
            entropy, kl = collapse_stats(student_output.detach(), q, p.student_temp)
            loss = dino_loss(student_output, teacher_output, epoch)
            if not math.isfinite(loss.item()):
                raise DinolocError(
                    f"DINO loss is {loss.item()} at epoch {epoch}, iteration {i}; lower pretrain.lr, raise "
                    "pretrain.warmup_epochs or use pretrain.amp=bf16"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                if p.clip_grad > 0:
                    clip_gradients(student, p.clip_grad)
                cancel_gradients_last_layer(epoch, student, p.freeze_last_layer)
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                if p.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    clip_gradients(student, p.clip_grad)
                cancel_gradients_last_layer(epoch, student, p.freeze_last_layer)
                scaler.step(optimizer)
                scaler.update()
            ema_update(teacher, student, float(mom_s[it]))
            sums += torch.stack([loss.detach().double(), entropy.double(), kl.double()])
            seen = (i + 1) * total_batch
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_s[it]:.2e}", temp=f"{temp:.3f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.1f}")
        seconds = time.perf_counter() - t0
        loss_m, ent_m, kl_m = _all_reduce_mean((sums / niter).tolist(), d)
        last = (epoch + 1) * niter - 1
        log_rows.append({
            "epoch": epoch + 1, "loss": loss_m, "lr": float(lr_s[last]), "wd": float(wd_s[last]),
            "momentum": float(mom_s[last]), "teacher_temp": temp, "teacher_entropy": ent_m,
            "kl_teacher_student": kl_m, "images_per_s": niter * total_batch / seconds, "seconds": seconds,
        })
        if d.rank == 0:
            _save_checkpoint(ckpt_path, {
                # always `module.`-prefixed, as official DDP runs write it
                # official DINO's head keys (last_layer.weight_g / weight_v), see head.to_official_keys
                "student": {f"module.{k}": v for k, v in to_official_keys(student.state_dict()).items()},
                "teacher": to_official_keys(teacher.state_dict()),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "args": args,
                "dino_loss": dino_loss.state_dict(),
                "fp16_scaler": scaler.state_dict() if scaler is not None else None,
                "pretrain_images_sha256": _images_hash(images),
                "log": log_rows,
            })
            write_csv(out_dir / LOG_NAME, pd.DataFrame(log_rows, columns=LOG_COLUMNS))
            print(f"epoch {epoch + 1}/{p.epochs}: loss {loss_m:.4f}, teacher entropy {ent_m:.3f}, "
                  f"KL(teacher||student) {kl_m:.4f}, {log_rows[-1]['images_per_s']:.1f} img/s")
        _barrier(d)
    return ckpt_path
