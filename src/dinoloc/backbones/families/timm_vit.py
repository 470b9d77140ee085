"""The timm ViT family (DINO, Dino4Cells' HPA model, our OpenCell model, DINOv2, any timm ViT): the default.

Release layouts read: official DINO backbone-only files (plain state dict), full DINO checkpoints
(`{student, teacher, ...}`, `module.`/`backbone.` prefixes, DINO head dropped), `{"state_dict"|"model": ...}`
wrappers, Meta's DINOv2 `*_pretrain.pth` (converted by timm's own filter), and `timm:<name>`.
"""

from __future__ import annotations

from typing import Any

import torch

from dinoloc.backbones import checkpoint as ckpt
from dinoloc.backbones import vit

ANY_CHANNELS = False


def _describe(model: torch.nn.Module, in_chans: int) -> torch.nn.Module:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    model.patch_size = int(patch[0]) if patch is not None else None
    model.in_chans = int(in_chans)
    return model


def create(arch: str, in_chans: int, img_size: int = 224, **model_kwargs: Any) -> torch.nn.Module:
    return _describe(vit.create_vit(arch, in_chans, img_size, **model_kwargs), in_chans)


def state_from_checkpoint(obj: Any, checkpoint_key: str, source: str) -> dict[str, torch.Tensor]:
    return ckpt.extract_state_dict(obj, checkpoint_key, source)


def create_for_checkpoint(state: dict[str, torch.Tensor], arch: str, in_chans: int, img_size: int,
                          **model_kwargs: Any) -> torch.nn.Module:
    if "mask_token" in state:  # Meta's DINOv2 release: converted to timm's keys (and grid) in load()
        return create(arch, in_chans, img_size, **model_kwargs)
    # Built at the checkpoint's own grid: other input sizes are then interpolated at forward time exactly as
    # official DINO does (resampling at load with timm's antialiased resize, then again, would differ).
    return create(arch, in_chans, vit.checkpoint_img_size(state, img_size), **model_kwargs)


def load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    if "mask_token" in state:
        state = ckpt.convert_dinov2_release(state, model, source)
    ckpt.load_backbone_state(model, state, source)


def from_timm(name: str, arch: str, in_chans: int, img_size: int, model_kwargs: dict[str, Any]) -> torch.nn.Module:
    from dinoloc.backbones.build import timm_pretrained

    return _describe(timm_pretrained(name, arch, in_chans, img_size, model_kwargs), in_chans)


def finalize(model: torch.nn.Module) -> torch.nn.Module:
    return vit.use_official_pos_interpolation(model)
