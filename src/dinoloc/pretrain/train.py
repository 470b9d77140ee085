"""DINO self-distillation from scratch (official DINO recipe, Dino4Cells augmentations), CPU / GPU / torchrun DDP.

Writes `out_dir/checkpoint.pth` in the official full DINO format after every epoch (so `backbone=opencell`
loads it like any other DINO checkpoint), `pretrain_images.csv` (what it trained on) and `log.csv` (one row
per epoch, with the collapse monitor). An existing unfinished checkpoint is resumed exactly.

The loop reads top to bottom: check the inputs, resume or start, build the schedules and the loader, then per
epoch: train_step over the batches, one log row, one checkpoint (step.py, schedules.py, checkpoint.py, data.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dinoloc.device import Dist, setup
from dinoloc.io import DinolocError
from dinoloc.preprocess import INTENSITY_MODES
from dinoloc.pretrain.augment import MultiCropAugment, sample_generator
from dinoloc.pretrain.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_state,
    read_resume,
    restore,
    save_checkpoint,
    weight_change,
    write_images_list,
    write_log,
)
from dinoloc.pretrain.data import PretrainDataset, build_loader
from dinoloc.pretrain.params import PretrainParams
from dinoloc.pretrain.schedules import Schedules, build_schedules
from dinoloc.pretrain.step import DinoTrainer, build_trainer, train_step, wrap_ddp
from dinoloc.pretrain.watch import CollapseWatch, count_used
from dinoloc.progress import progress


def check_inputs(images: Sequence[tuple[str, str]], channels: Sequence[str], in_chans: int, intensity: str,
                 params: PretrainParams) -> None:
    """Everything wrong with the inputs that needs no model or image read, as DinolocError naming the key."""
    if not images:
        raise DinolocError("pretraining got no images; check pretrain.source / pretrain.image_dir and the split")
    if len({i for i, _ in images}) != len(images):
        raise DinolocError("pretraining image ids are not unique; check the manifest / image folder")
    if len(channels) != in_chans:
        raise DinolocError(f"backbone.channels {list(channels)} has {len(channels)} names, in_chans={in_chans}")
    if intensity not in INTENSITY_MODES:
        raise DinolocError(f"backbone.preprocess.intensity={intensity!r}: use one of {INTENSITY_MODES}")
    if params.zscore == "crop" and intensity != "zscore":
        raise DinolocError(
            f"pretrain.zscore=crop z-scores each crop, but backbone.preprocess.intensity={intensity!r}; use it with "
            "intensity: zscore (the z-scored backbones) or set pretrain.zscore=image"
        )


@dataclasses.dataclass(frozen=True)
class PretrainModel:
    """The backbone pretraining trains, as configured (backbone.arch, model_kwargs, in_chans and its input
    scaling backbone.preprocess.intensity / mean / std)."""

    arch: str
    model_kwargs: Mapping[str, Any]
    in_chans: int
    intensity: str
    mean: Sequence[float] | None
    std: Sequence[float] | None


def train_dino(
    images: Sequence[tuple[str, str]],
    read_fn: Callable[[str], np.ndarray],
    channels: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    model: PretrainModel,
    params: PretrainParams,
    device: str,
) -> Path:
    """DINO-pretrain a ViT on `images` ((image_id, path), already restricted to allowed images); return the
    checkpoint path out_dir/checkpoint.pth. Resumes an unfinished checkpoint; a finished one returns at once."""
    images = [(str(i), str(p)) for i, p in images]
    check_inputs(images, channels, model.in_chans, model.intensity, params)
    d = setup(device)
    try:
        model = dataclasses.replace(model, model_kwargs=dict(model.model_kwargs),
                                    mean=None if model.mean is None else list(model.mean),
                                    std=None if model.std is None else list(model.std))
        run = _Run(images, read_fn, list(channels), Path(out_dir), model, params, d)
        return _train(run)
    finally:
        if d.owned:
            dist.destroy_process_group()


@dataclasses.dataclass
class _Run:
    """One call's inputs, so the steps below take one argument instead of eight."""

    images: list[tuple[str, str]]
    read_fn: Callable[[str], np.ndarray]
    channels: list[str]
    out_dir: Path
    model: PretrainModel
    p: PretrainParams
    d: Dist

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def args(self) -> argparse.Namespace:
        """The checkpoint's `args`, as official DINO stores its argparse namespace."""
        return argparse.Namespace(
            **dataclasses.asdict(self.p), arch=self.model.arch, model_kwargs=self.model.model_kwargs,
            in_chans=self.model.in_chans, channels=self.channels, intensity=self.model.intensity, mean=self.model.mean,
            std=self.model.std, world_size=self.d.world,
        )


def _train(r: _Run) -> Path:
    p, d = r.p, r.d
    resume = read_resume(r.ckpt_path, r.images)
    start_epoch = int(resume["epoch"]) if resume is not None else 0
    if start_epoch >= p.epochs:
        if d.rank == 0:
            print(f"pretraining skipped: {r.ckpt_path} already holds {start_epoch} epoch(s) (pretrain.epochs={p.epochs})")
        return r.ckpt_path
    niter = _iterations_per_epoch(len(r.images), p.batch_size_per_gpu, d)

    trainer = build_trainer(r.model.arch, r.model.model_kwargs, r.model.in_chans, p, d)
    # The seeded init (rebuilt identically on resume), so each checkpoint can say how far its weights moved.
    init_backbone = {k: v.detach().clone() for k, v in trainer.teacher.backbone.state_dict().items()}
    log_rows: list[dict[str, Any]] = []
    if resume is not None:
        log_rows = restore(resume, r.ckpt_path, trainer.student, trainer.teacher, trainer.optimizer,
                           trainer.dino_loss, trainer.scaler)
        if d.rank == 0:
            print(f"resuming pretraining from {r.ckpt_path} at epoch {start_epoch}/{p.epochs}")
    wrap_ddp(trainer, d)

    total_batch = p.batch_size_per_gpu * d.world
    schedules = build_schedules(p, niter, total_batch)
    augment = MultiCropAugment(p.crop_spec(), r.channels, r.model.mean, r.model.std)
    dataset = PretrainDataset(r.images, r.read_fn, r.model.in_chans, r.model.intensity, augment, p.seed)
    loader, sampler = build_loader(dataset, p.batch_size_per_gpu, p.num_workers, p.seed, d)
    if d.rank == 0:
        write_images_list(r.out_dir, r.images)
    args = r.args()
    watch = CollapseWatch(p.out_dim, p.epochs, after_epoch=p.warmup_epochs)  # warns while it runs

    for epoch in range(start_epoch, p.epochs):
        # Reseeding per epoch (and rank) makes stochastic depth independent of where a run was resumed.
        torch.manual_seed(int(sample_generator(p.seed, epoch, d.rank).initial_seed()))
        sampler.set_epoch(epoch)
        dataset.epoch = epoch
        log_rows.append(_train_epoch(trainer, loader, epoch, niter, schedules, total_batch, p, d))
        if d.rank == 0:
            state = checkpoint_state(
                epoch + 1, trainer.student, trainer.teacher, trainer.optimizer, trainer.dino_loss, trainer.scaler,
                args, r.images, log_rows,
            )
            state["dinoloc_info"] = {"init_seed": p.seed, "weight_change_from_init": weight_change(
                init_backbone, trainer.teacher.backbone.state_dict())}
            save_checkpoint(r.ckpt_path, state)
            write_log(r.out_dir, log_rows)
            row = log_rows[-1]
            print(f"epoch {epoch + 1}/{p.epochs}: loss {row['loss']:.4f}, teacher entropy "
                  f"{row['teacher_entropy']:.3f}, KL(teacher||student) {row['kl_teacher_student']:.4f}, "
                  f"{row['prototypes_used']} of {p.out_dim} prototypes used, {row['images_per_s']:.1f} img/s")
            watch.check(row)
        if d.world > 1:
            dist.barrier()
    return r.ckpt_path


def _iterations_per_epoch(n_images: int, batch: int, d: Dist) -> int:
    niter = n_images // d.world // batch
    if niter < 1:
        raise DinolocError(
            f"{n_images} images over {d.world} process(es) do not fill one batch of "
            f"pretrain.batch_size_per_gpu={batch}; lower it"
        )
    return niter


def _train_epoch(t: DinoTrainer, loader: Any, epoch: int, niter: int, s: Schedules, total_batch: int,
                 p: PretrainParams, d: Dist) -> dict[str, Any]:
    """One epoch of train_step; returns its log.csv row (means over iterations and processes)."""
    t0 = time.perf_counter()
    sums = torch.zeros(3, dtype=torch.float64, device=d.device)  # loss, teacher entropy, KL
    t.prototypes_seen = None
    temp = t.dino_loss.teacher_temp_schedule[epoch]
    bar = progress(loader, desc=f"DINO epoch {epoch + 1}/{p.epochs}", total=niter, disable=d.rank != 0)
    for i, crops in enumerate(bar):
        it = epoch * niter + i
        stats = train_step(t, [c.to(d.device, non_blocking=True) for c in crops], epoch, i, it, s, p)
        sums += stats
        seen = (i + 1) * total_batch
        bar.set_postfix(loss=f"{stats[0].item():.4f}", lr=f"{s.lr[it]:.2e}", temp=f"{temp:.3f}",
                        img_s=f"{seen / (time.perf_counter() - t0):.1f}")
    seconds = time.perf_counter() - t0
    loss_m, ent_m, kl_m = _all_reduce_mean((sums / niter).tolist(), d)
    last = (epoch + 1) * niter - 1
    return {
        "epoch": epoch + 1, "loss": loss_m, "lr": float(s.lr[last]), "wd": float(s.wd[last]),
        "momentum": float(s.momentum[last]), "teacher_temp": temp, "teacher_entropy": ent_m,
        "kl_teacher_student": kl_m, "images_per_s": niter * total_batch / seconds, "seconds": seconds,
        "prototypes_used": count_used(t.prototypes_seen, d.world),
    }


def _all_reduce_mean(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return (t / d.world).tolist()
