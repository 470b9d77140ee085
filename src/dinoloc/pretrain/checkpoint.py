"""The pretraining checkpoint: official DINO's full format (student, teacher, optimizer, epoch, args, dino_loss),
written atomically after every epoch, read back to resume exactly; plus log.csv and pretrain_images.csv.

The head's last layer is stored under official DINO's keys (`last_layer.weight_g/weight_v`, the deprecated
nn.utils.weight_norm), so official DINO and Dino4Cells code can load and resume dinoloc checkpoints.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dinoloc.backbones.checkpoint import read_checkpoint
from dinoloc.io import DinolocError, atomic_path, text_sha256, write_csv

CHECKPOINT_NAME = "checkpoint.pth"
IMAGES_NAME = "pretrain_images.csv"
LOG_NAME = "log.csv"
LOG_COLUMNS = [
    "epoch", "loss", "lr", "wd", "momentum", "teacher_temp", "teacher_entropy", "kl_teacher_student",
    "images_per_s", "seconds", "prototypes_used",
]

# torch's parametrization names for the weight-normalised last layer vs official DINO's. Same tensors and shapes
# (g: (out_dim, 1), v: (out_dim, bottleneck)).
_PARAM_TO_OFFICIAL = {
    "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
    "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
}


def _rename(state: dict[str, torch.Tensor], mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for old, new in mapping.items():
            if key == old or key.endswith("." + old):
                key = key[: len(key) - len(old)] + new
                break
        out[key] = value
    return out


def to_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with the head's last layer under official DINO's keys (`last_layer.weight_g/weight_v`)."""
    return _rename(state, _PARAM_TO_OFFICIAL)


def from_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of to_official_keys (either form in, torch's parametrization keys out)."""
    return _rename(state, {v: k for k, v in _PARAM_TO_OFFICIAL.items()})


def images_hash(images: Sequence[tuple[str, str]]) -> str:
    """The image ids' hash: a resumed run must train on the same images."""
    return text_sha256("\n".join(i for i, _ in images))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save under a temporary name in the same folder, then rename (never a half-written checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_resume(ckpt_path: Path, images: Sequence[tuple[str, str]]) -> dict[str, Any] | None:
    """The checkpoint to resume from (None when there is none); one trained on other images is refused."""
    if not ckpt_path.exists():
        return None
    state = read_checkpoint(ckpt_path)
    if state.get("pretrain_images_sha256") not in (None, images_hash(images)):
        raise DinolocError(
            f"{ckpt_path} was trained on other images than this run's; delete {ckpt_path.parent} to start again "
            "(or point backbone.weights elsewhere)"
        )
    return state


def restore(state: dict[str, Any], ckpt_path: Path, student: torch.nn.Module, teacher: torch.nn.Module,
            optimizer: torch.optim.Optimizer, dino_loss: torch.nn.Module,
            scaler: torch.amp.GradScaler | None) -> list[dict[str, Any]]:
    """Load a checkpoint's states into the run's objects; returns its epochs' log rows."""
    try:
        # Either head key form: official DINO's weight_g/weight_v or torch's parametrization keys.
        student.load_state_dict(from_official_keys({k.removeprefix("module."): v for k, v in state["student"].items()}))
        teacher.load_state_dict(from_official_keys(state["teacher"]))
        optimizer.load_state_dict(state["optimizer"])
        dino_loss.load_state_dict(state["dino_loss"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise DinolocError(
            f"{ckpt_path} cannot be resumed with this backbone/pretrain config ({type(e).__name__}: "
            f"{str(e)[:300]}); restore the config it was started with, or delete {ckpt_path.parent} to start again"
        ) from e
    if scaler is not None and state.get("fp16_scaler"):
        scaler.load_state_dict(state["fp16_scaler"])
    return [dict(r) for r in state.get("log", [])]  # the epochs' rows travel with the checkpoint


def checkpoint_state(epoch: int, student: torch.nn.Module, teacher: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, dino_loss: torch.nn.Module,
                     scaler: torch.amp.GradScaler | None, args: argparse.Namespace,
                     images: Sequence[tuple[str, str]], log_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The full official DINO checkpoint after `epoch` epochs, plus dinoloc's image hash and log rows."""
    return {
        # always `module.`-prefixed, as official DDP runs write it; the head under official keys
        "student": {f"module.{k}": v for k, v in to_official_keys(student.state_dict()).items()},
        "teacher": to_official_keys(teacher.state_dict()),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "args": args,
        "dino_loss": dino_loss.state_dict(),
        "fp16_scaler": scaler.state_dict() if scaler is not None else None,
        "pretrain_images_sha256": images_hash(images),
        "log": log_rows,
    }


def weight_change(init: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> float:
    """Median over the backbone's weight tensors (more than one element) of ||now - init|| / ||init||: how far
    pretraining moved the network from its random start (0 = never trained; the health notes read it)."""
    rel = [float((now[k].float() - v.float()).norm() / v.float().norm().clamp_min(1e-12))
           for k, v in init.items() if v.is_floating_point() and v.numel() > 1]
    return float(torch.tensor(rel).median()) if rel else 0.0


def write_log(out_dir: Path, log_rows: list[dict[str, Any]]) -> None:
    write_csv(out_dir / LOG_NAME, pd.DataFrame(log_rows, columns=LOG_COLUMNS))


def write_images_list(out_dir: Path, images: Sequence[tuple[str, str]]) -> None:
    """pretrain_images.csv: what the run trained on."""
    write_csv(out_dir / IMAGES_NAME, pd.DataFrame({"image_id": [i for i, _ in images]}))
