"""DINOv3 (facebookresearch/dinov3; Siméoni et al. 2025) through timm's implementation (`vit_*_patch16_dinov3`,
timm >= 1.0.20): RoPE ViTs with 4 storage (register) tokens; the embedding is the class token after the final norm.

Release layout (dinov3 @6876159 dinov3/models/vision_transformer.py, hub/backbones.py: a plain state dict
`dinov3_vits16_pretrain_lvd1689m-*.pth` loaded strictly): `cls_token`, `storage_tokens`, `mask_token`,
`patch_embed.proj.*`, `rope_embed.periods`, `blocks.<i>.{norm1, attn.qkv.{weight, bias, bias_mask}, attn.proj,
ls1.gamma, norm2, mlp.*, ls2.gamma}`, `norm.*`. timm's own converter (timm.models.eva.checkpoint_filter_fn) maps it
to timm's keys (storage_tokens -> reg_token; periods / bias_mask / mask_token dropped as buffers or training-only;
the masked qkv bias split into q_bias / v_bias for timm's `_qkvb` archs, which the presets use: Meta's ViT-S/16 has
qkv_bias=True with mask_k_bias, hub/backbones.py `dinov3_vits16`). The embedding: `x_norm_clstoken`.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from dinoloc.backbones.families import backbone_state
from dinoloc.io import DinolocError

ANY_CHANNELS = False


def _describe(model: nn.Module, in_chans: int) -> nn.Module:
    model.patch_size = int(model.patch_embed.patch_size[0])
    model.in_chans = int(in_chans)
    return model


def create(arch: str, in_chans: int, img_size: int = 224, **model_kwargs: Any) -> nn.Module:
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="token", in_chans=in_chans,
                                  img_size=img_size, dynamic_img_size=True, **model_kwargs)
    except RuntimeError as e:
        raise DinolocError(f"backbone.arch={arch!r}: {e}; use a timm DINOv3 name such as vit_small_patch16_dinov3") from e
    return _describe(model, in_chans)


def state_from_checkpoint(obj: Any, checkpoint_key: str, source: str) -> dict[str, torch.Tensor]:
    return backbone_state(obj, checkpoint_key, source)


def load(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    from timm.models.eva import checkpoint_filter_fn

    from dinoloc.backbones.families import load_strict

    if "storage_tokens" in state or "mask_token" in state:  # Meta's layout -> timm's (timm's own converter)
        own = model.state_dict()
        # timm's converter drops a masked qkv bias when the arch has none; refuse that unless the bias is zero
        dropped = [k for k, v in state.items() if k.endswith("attn.qkv.bias") and bool(v.abs().sum() > 0)
                   and k.replace("qkv.bias", "q_bias") not in own]
        if dropped:
            raise DinolocError(f"{source} has non-zero qkv biases ({dropped[:3]} ...) that backbone.arch has no place "
                               "for; use the _qkvb arch, e.g. vit_small_patch16_dinov3_qkvb")
        state = dict(checkpoint_filter_fn(state, model))
    load_strict(model, state, source)


def from_timm(name: str, arch: str, in_chans: int, img_size: int, model_kwargs: dict[str, Any]) -> nn.Module:
    from dinoloc.backbones.build import timm_pretrained

    return _describe(timm_pretrained(name, arch, in_chans, img_size, model_kwargs), in_chans)
