"""OpenPhenom (Recursion; recursionpharma/maes_microscopy): a channel-agnostic MAE ViT-S/16 (CA-MAE) trained on
Cell Painting / JUMP-CP / RxRx3 crops of 256 px: every channel is patch-embedded on its own by ONE shared
1-channel projection, each channel's tokens get the same 2-D sin-cos position embedding plus their channel's
slot (the embedding table has room for `max_in_chans` channels), and the embedding is the mean of the patch
tokens of the last block (the release's `MAEModel.predict`: forward_features, whose final norm is Identity under
global_pool="avg", then X[:, 1:].mean(1); the fc_norm weights are in the file but unused). Any channel count up
to max_in_chans, fed in order; all slots hold the same grid, so the channels are a set (order-free).

Architecture as the repository builds it (maes_microscopy @b3e68bb vit.py `vit_small_patch16_256`,
`channel_agnostic_vit`, `ChannelAgnosticPatchEmbed`, `generate_2d_sincos_pos_embeddings`; mae_modules.py
`MAEEncoder.vit_backbone`): timm's VisionTransformer with ParallelScalingBlock, qkv_bias=False, qk_norm=True,
init_values=1e-4. Release: the Hugging Face model `recursionpharma/OpenPhenom` (`model.safetensors`, the whole MAE:
`encoder.vit_backbone.*` is the backbone; decoder and projection keys are dropped here). Read in a copy of the
model's huggingface_mae.py (`MAEModel`: max_in_chans 11, global_pool avg, input_norm, predict) found by code
search; the Hugging Face repository itself was not reachable from here. Input: /255 then per-image,
per-channel self-standardisation (LazyInstanceNorm2d, no affine) -> backbone.preprocess.intensity=instance_norm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dinoloc.backbones.families import unwrap

ANY_CHANNELS = True
_PREFIX = "encoder.vit_backbone."
_DROPPED = ("decoder.", "decoder_pred.", "encoder_decoder_proj.", "input_norm.", "fourier_loss.")  # the MAE around the backbone


def sincos_2d(embed_dim: int, side: int, n_channels: int, scale: float = 10000.0) -> torch.Tensor:
    """(1, 1 + n_channels * side**2, D): a zero row for the class token, then sin(h), cos(h), sin(w), cos(w) of
    each grid position (D/4 frequencies each), repeated for every channel slot (the paper's CA-MAE layout)."""
    pos = torch.arange(side, dtype=torch.float32)
    hh, ww = torch.meshgrid(pos, pos, indexing="ij")
    freqs = 1.0 / scale ** (torch.arange(embed_dim // 4, dtype=torch.float32) / (embed_dim // 4))
    h, w = torch.outer(hh.flatten(), freqs), torch.outer(ww.flatten(), freqs)
    grid = torch.cat([h.sin(), h.cos(), w.sin(), w.cos()], dim=1)[None].repeat(1, n_channels, 1)
    return torch.cat([torch.zeros(1, 1, embed_dim), grid], dim=1)


class ChannelAgnosticViT(nn.Module):
    any_channels = True

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 max_in_chans: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import ParallelScalingBlock, VisionTransformer

        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, in_chans=1, num_classes=0, global_pool="avg", fc_norm=None,
            class_token=True, embed_dim=embed_dim, depth=depth, num_heads=num_heads, init_values=1e-4,
            block_fn=ParallelScalingBlock, qkv_bias=False, qk_norm=True,
        )
        side = img_size // patch_size
        # a fixed (not learned) table, but a Parameter in the release's state dict as in the original
        self.vit.pos_embed = nn.Parameter(sincos_2d(embed_dim, side, max_in_chans), requires_grad=False)
        self.embed_dim, self.patch_size, self.in_chans, self.max_in_chans = embed_dim, patch_size, max_in_chans, max_in_chans
        self.img_size, self.grid = img_size, side

    def forward(self, x: torch.Tensor, channels: list[str] | None = None) -> torch.Tensor:
        from dinoloc.io import DinolocError

        b, c, h, w = x.shape
        if c > self.max_in_chans:
            raise DinolocError(f"OpenPhenom takes at most {self.max_in_chans} channels, got {c}")
        if (h // self.patch_size, w // self.patch_size) != (self.grid, self.grid):
            # its position table is one fixed grid per channel slot (the original slices it, which is only right
            # at that grid): other sizes are refused rather than given the wrong positions
            raise DinolocError(f"OpenPhenom takes {self.img_size} px crops (its position table), got {h} x {w}; "
                               f"set backbone.preprocess.img_size={self.img_size}")
        v = self.vit
        # one shared 1-channel projection per channel; tokens ordered channel-major (all of channel 0, then 1, ...)
        tokens = v.patch_embed.proj(x.reshape(b * c, 1, h, w)).flatten(2).transpose(1, 2)
        tokens = tokens.reshape(b, c * tokens.shape[1], -1)
        tokens = torch.cat([v.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = v.norm_pre(v.pos_drop(tokens + v.pos_embed[:, : tokens.shape[1]]))
        return v.norm(v.blocks(tokens))[:, 1:].mean(dim=1)  # MAEModel.predict: patch tokens' mean, no fc_norm


def create(arch: str, in_chans: int, img_size: int = 256, *, patch_size: int = 16, embed_dim: int = 384,
           depth: int = 12, num_heads: int = 6, max_in_chans: int = 11) -> nn.Module:
    """Defaults: vit_small_patch16_256 (ViT-S/16 at 256 px) with room for 11 channels."""
    return ChannelAgnosticViT(img_size, patch_size, embed_dim, depth, num_heads, max_in_chans)


def create_for_checkpoint(state: dict[str, torch.Tensor], arch: str, in_chans: int, img_size: int = 256,
                          **model_kwargs: Any) -> nn.Module:
    """Built for the checkpoint's position table (256 px crops for the release)."""
    from dinoloc.backbones.families import checkpoint_img_size

    slots = int(model_kwargs.get("max_in_chans", 11))
    size = checkpoint_img_size(state.get("vit.pos_embed"), model_kwargs.get("patch_size", 16), img_size, slots)
    return create(arch, in_chans, size, **model_kwargs)


def state_from_checkpoint(obj: Any, checkpoint_key: str, source: str) -> dict[str, torch.Tensor]:
    sd = unwrap(obj, source)
    out = {}
    for k, v in sd.items():
        if k.startswith(_PREFIX):
            out["vit." + k[len(_PREFIX):]] = v
        elif not k.startswith(_DROPPED):
            out[k] = v  # listed by the strict load as unexpected
    return out
