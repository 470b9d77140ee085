"""ChannelViT (insitro/ChannelViT; Bao et al., ICLR 2024): a token per channel and patch; one shared patch
projection (a Conv3d with a 1-channel kernel), plus a learned embedding per channel, the same position embedding
for every channel's patches, DINO's class token and blocks. It takes any subset of its channels, matched by name.

Release layout (ChannelViT @1077a10 channelvit/backbone/channel_vit.py `ChannelVisionTransformer`,
`PatchEmbedPerChannel`; hubconf.py `imagenet_channelvit_small_p16_DINO`: a plain state dict loaded strictly):
`cls_token`, `pos_embed` (1, 1 + grid, D), `patch_embed.proj.{weight (D, 1, 1, p, p), bias}`,
`patch_embed.channel_embed` (1, D, C, 1, 1), `blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*`,
`norm.*`. The embedding is the class token after the final norm. Position embeddings are interpolated for other
grids as official DINO does (the repository's `interpolate_pos_encoding`, the same +0.1 bicubic resampling).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from dinoloc.backbones.families import backbone_state
from dinoloc.io import DinolocError

ANY_CHANNELS = True
NAMED_CHANNELS = True


class PatchEmbedPerChannel(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(1, embed_dim, kernel_size=(1, patch_size, patch_size), stride=(1, patch_size, patch_size))
        self.channel_embed = nn.Parameter(torch.zeros(1, embed_dim, in_chans, 1, 1))
        nn.init.trunc_normal_(self.channel_embed, std=0.02)

    def forward(self, x: torch.Tensor, index: list[int]) -> torch.Tensor:
        x = self.proj(x.unsqueeze(1)) + self.channel_embed[:, :, index]  # B, D, C, h, w
        return x.flatten(2).transpose(1, 2)  # B, C*h*w, D (channel-major)


class ChannelViT(nn.Module):
    any_channels = True

    def __init__(self, channels: list[str], img_size: int, patch_size: int, embed_dim: int, depth: int,
                 num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.channel_names = list(channels)
        self.patch_embed = PatchEmbedPerChannel(patch_size, len(channels), embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch_size) ** 2, embed_dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, 4.0, qkv_bias=qkv_bias, norm_layer=norm)
                                     for _ in range(depth)])
        self.norm = norm(embed_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.embed_dim, self.patch_size, self.in_chans = embed_dim, patch_size, len(channels)

    def forward(self, x: torch.Tensor, channels: list[str] | None = None) -> torch.Tensor:
        from dinoloc.backbones.vit import dino_interpolate_pos_encoding

        names = list(channels) if channels is not None else self.channel_names[: x.shape[1]]
        unknown = [c for c in names if c not in self.channel_names]
        if unknown or len(names) != x.shape[1]:
            raise DinolocError(f"ChannelViT knows channels {self.channel_names}; got {names} for {x.shape[1]} planes")
        b, c, h, w = x.shape
        tokens = self.patch_embed(x, [self.channel_names.index(n) for n in names])
        gh, gw = h // self.patch_size, w // self.patch_size
        pos = dino_interpolate_pos_encoding(self.pos_embed, gh, gw)
        pos = torch.cat([pos[:, :1], pos[:, 1:].repeat(1, c, 1)], dim=1)  # the same grid for every channel
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


def create(arch: str, in_chans: int, img_size: int = 224, *, channels: list[str] | None = None, patch_size: int = 16,
           embed_dim: int = 384, depth: int = 12, num_heads: int = 6, qkv_bias: bool = True) -> nn.Module:
    """Defaults: channelvit_small (ViT-S, qkv_bias); `channels` names the channel embeddings in order."""
    names = list(channels) if channels else [str(i) for i in range(in_chans)]
    if len(names) != in_chans:
        raise DinolocError(f"backbone.model_kwargs.channels has {len(names)} names, backbone.in_chans={in_chans}")
    return ChannelViT(names, img_size, patch_size, embed_dim, depth, num_heads, qkv_bias)


def create_for_checkpoint(state: dict[str, torch.Tensor], arch: str, in_chans: int, img_size: int = 224,
                          **model_kwargs: Any) -> nn.Module:
    """Built at the checkpoint's grid; other sizes are interpolated at forward time (the official way)."""
    from dinoloc.backbones.families import checkpoint_img_size

    size = checkpoint_img_size(state.get("pos_embed"), model_kwargs.get("patch_size", 16), img_size)
    return create(arch, in_chans, size, **model_kwargs)


def state_from_checkpoint(obj: Any, checkpoint_key: str, source: str) -> dict[str, torch.Tensor]:
    """The hub release is a bare state dict; a DINO training checkpoint of it ({teacher: {backbone.*}}) too."""
    return {k: v for k, v in backbone_state(obj, checkpoint_key, source).items() if not k.startswith("head.")}
