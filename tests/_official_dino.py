"""Reference code copied from facebookresearch/dino, for tests that compare dinoloc against the official code."""

import math

import torch
from torch import nn


def interpolate_pos_encoding(pos_embed: torch.Tensor, w: int, h: int, patch_size: int) -> torch.Tensor:
    """facebookresearch/dino vision_transformer.py VisionTransformer.interpolate_pos_encoding, verbatim but for
    `self` (the reference the test compares dinoloc's copy and the model's tokens against)."""
    N = pos_embed.shape[1] - 1
    npatch = (w // patch_size) * (h // patch_size)
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)
