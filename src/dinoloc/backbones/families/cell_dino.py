"""Cell-DINO / channel-adaptive DINO (facebookresearch/dinov2 docs/README_CHANNEL_ADAPTIVE_DINO.md; De Lorenci
et al., TMLR 2025): DINOv2 ViTs trained on cell microscopy. The channel-adaptive model is a bag of channels:
a 1-channel ViT-L/16 that embeds every channel on its own; the image's embedding is the channels' class tokens
concatenated in channel order (any channel count): as the authors' code does, read in the public fork
LeeYi-user/dinov2 @18640df (facebookresearch/dinov2 @b8931f7 holds only the README): models/vision_transformer.py
`get_intermediate_layers` with bag_of_channels puts channels into the batch and reshapes the class tokens to
(B, C * D); eval/cell_dino/utils.py `BagOfChannelsModelWithNormalize` (k-NN) takes the last block's.

Release layout: a plain DINOv2 state dict loaded strictly (hub/cell_dino/backbones.py `_make_cell_dino_model`:
`model.load_state_dict(torch.load(path), strict=True)`, no URL in the code): `cls_token`, `pos_embed`, `mask_token`, `patch_embed.proj.*`, `blocks.<chunk>.<i>.{norm1, attn.qkv,
attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}.*` (block_chunks=4: every block under its chunk index),
`norm.*`. Unchunked and `mask_token` (training only) dropped, these are timm's DINOv2 keys. Position embeddings
interpolated as DINOv2 (interpolate_offset 0.1, no antialias) = official DINO's, which dinoloc applies.
Set `model_kwargs.bag_of_channels=false` (and in_chans) for the fixed-channel Cell-DINO models (cell_dino_hpa_vitl16:
4 channels; cell_dino_cp_vits8: 5).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from dinoloc.backbones.families import backbone_state

ANY_CHANNELS = True


class BagOfChannels(nn.Module):
    """Every channel through the same 1-channel ViT; class tokens concatenated in channel order."""

    any_channels = True

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.embed_dim, self.patch_size, self.in_chans = vit.embed_dim, vit.patch_size, 1

    def forward(self, x: torch.Tensor, channels: list[str] | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        return self.vit(x.reshape(b * c, 1, h, w)).reshape(b, -1)


class Unwrapped(nn.Module):
    """The fixed-channel model under the same key prefix (`vit.`) as the bag of channels."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.embed_dim, self.patch_size, self.in_chans = vit.embed_dim, vit.patch_size, vit.in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)


def create(arch: str, in_chans: int, img_size: int = 224, *, bag_of_channels: bool = True, patch_size: int = 16,
           embed_dim: int = 1024, depth: int = 24, num_heads: int = 16) -> nn.Module:
    """Defaults: channel_adaptive_dino_vitl16 (ViT-L/16, 224 px, layer scale 1.0, no registers)."""
    from timm.models.vision_transformer import VisionTransformer

    from dinoloc.backbones.vit import use_official_pos_interpolation

    vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=1 if bag_of_channels else in_chans,
                            num_classes=0, global_pool="token", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                            init_values=1.0, qkv_bias=True, dynamic_img_size=True)
    vit.patch_size, vit.in_chans = patch_size, 1 if bag_of_channels else in_chans
    use_official_pos_interpolation(vit)
    return BagOfChannels(vit) if bag_of_channels else Unwrapped(vit)


def create_for_checkpoint(state: dict[str, torch.Tensor], arch: str, in_chans: int, img_size: int = 224,
                          **model_kwargs: Any) -> nn.Module:
    """Built at the checkpoint's grid; other sizes are interpolated at forward time as DINOv2 does."""
    from dinoloc.backbones.families import checkpoint_img_size

    size = checkpoint_img_size(state.get("vit.pos_embed"), model_kwargs.get("patch_size", 16), img_size)
    return create(arch, in_chans, size, **model_kwargs)


def state_from_checkpoint(obj: Any, checkpoint_key: str, source: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in backbone_state(obj, checkpoint_key, source).items():
        if k == "mask_token" or k.startswith(("head.", "dino_head.", "ibot_head.")):
            continue
        out["vit." + re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)] = v
    return out
