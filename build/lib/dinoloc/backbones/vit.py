"""The ViT: a timm model whose forward pass returns DINO's embedding, with official DINO's position-embedding
interpolation."""

from __future__ import annotations

import math
import types
from typing import Any

import timm
import torch
import torch.nn.functional as F

from dinoloc.io import DinolocError


def create_vit(
    arch: str, in_chans: int, img_size: int = 224, drop_path_rate: float = 0.0, **model_kwargs: Any
) -> torch.nn.Module:
    """A randomly initialised timm ViT whose forward(x) is the CLS token after the final norm (DINO's embedding).

    dynamic_img_size lets the same model take other input sizes (position embeddings interpolated on the fly,
    as DINO does). model_kwargs override the architecture, e.g. a tiny ViT for tests and the demo.
    """
    try:
        return timm.create_model(
            arch, pretrained=False, num_classes=0, global_pool="token", in_chans=in_chans, img_size=img_size,
            dynamic_img_size=True, drop_path_rate=drop_path_rate, **model_kwargs,
        )
    except RuntimeError as e:  # timm's "Unknown model"
        raise DinolocError(f"backbone.arch={arch!r}: {e}; use a timm ViT name such as vit_base_patch8_224") from e


def dino_interpolate_pos_encoding(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Official DINO's `VisionTransformer.interpolate_pos_encoding` (facebookresearch/dino vision_transformer.py,
    which Dino4Cells copies) for a (grid_h x grid_w) patch grid: the class token's embedding kept, the square
    grid resampled bicubically with scale_factor (grid + 0.1) / sqrt(N) (the +0.1 avoids a floating-point
    off-by-one, dino issue #8), no antialiasing. timm's own resampling (size=, antialias=True) differs from it
    whenever the grid shrinks (CLS up to 0.019 apart at 96 px for ViT-B/8), so dinoloc uses this one."""
    n = pos_embed.shape[1] - 1
    if grid_h * grid_w == n and grid_h == grid_w:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    side = int(math.sqrt(n))
    h0, w0 = grid_h + 0.1, grid_w + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)),
        mode="bicubic",
    )
    if tuple(patch_pos_embed.shape[-2:]) != (grid_h, grid_w):  # the official code asserts this too
        raise DinolocError(f"position-embedding interpolation gave {tuple(patch_pos_embed.shape[-2:])}, "
                           f"expected {(grid_h, grid_w)}")
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def _official_pos_embed(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's `_pos_embed` for a (B, H, W, C) patch grid, with official DINO's interpolation."""
    b, h, w, c = x.shape
    pos = dino_interpolate_pos_encoding(self.pos_embed, h, w)
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
    return self.pos_drop(x + pos)


def use_official_pos_interpolation(model: torch.nn.Module) -> torch.nn.Module:
    """Make a timm ViT interpolate its position embeddings as official DINO does at every input size.

    Only for DINO's layout (one class token, no register tokens, embedding over the class token, square grid);
    any other model keeps timm's own resampling. Returns the model."""
    pos = getattr(model, "pos_embed", None)
    n_grid = None if pos is None else pos.shape[1] - 1
    if (
        pos is None or getattr(model, "cls_token", None) is None or getattr(model, "reg_token", None) is not None
        or getattr(model, "no_embed_class", False) or not getattr(model, "dynamic_img_size", False)
        or int(math.isqrt(n_grid)) ** 2 != n_grid
    ):
        return model
    model._pos_embed = types.MethodType(_official_pos_embed, model)
    return model


def checkpoint_img_size(state: dict[str, torch.Tensor], fallback: int) -> int:
    """The input size the checkpoint's position embeddings were trained for (square grid x patch size), so the
    model keeps them as trained and only the forward pass interpolates (once, the official way)."""
    pos, proj = state.get("pos_embed"), state.get("patch_embed.proj.weight")
    if not isinstance(pos, torch.Tensor) or not isinstance(proj, torch.Tensor) or pos.ndim != 3 or proj.ndim != 4:
        return fallback
    n = pos.shape[1] - 1
    side = math.isqrt(max(n, 0))
    if side * side != n or proj.shape[-1] != proj.shape[-2]:
        return fallback
    return side * int(proj.shape[-1])
