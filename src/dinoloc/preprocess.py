"""Per-batch image preprocessing on tensors: intensity scaling, resizing, tiling, fixed normalisation.

Everything works on whole (B, C, H, W) float batches (on whatever device they live on) so extraction
never loops over samples in Python. Raw OpenCell images are 16-bit counts; the scaling mode decides how
they become network inputs (the backbone's config names it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dinoloc.backbones.spec import INTENSITY_MODES
from dinoloc.io import DinolocError

ZSCORE_EPS = 1e-7  # Dino4Cells' epsilon: an all-constant channel becomes 0, never NaN


def _check_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DinolocError(f"{what}: expected a (B, C, H, W) tensor, got {shape}")
    # Raw uint16 images arrive as integers; statistics need floating point (float32 at least).
    return x if x.is_floating_point() else x.float()


def scale_intensity(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Scale raw counts per image and per channel.

    - "zscore": (x - mean) / (std + 1e-7) over each image's channel (population std), as Dino4Cells;
    - "minmax": x / max over each image's channel; an all-zero channel stays all zero (no division by 0);
    - "minmax_image": (x - min) / (max - min + 1e-6) over each image's channels jointly (SubCell's
      min_max_standardize, CellProfiling/SubCellPortable inference.py);
    - "instance_norm": (x - mean) / sqrt(var + 1e-5) per image and channel (torch's InstanceNorm2d without affine,
      OpenPhenom's self-standardisation, recursionpharma/maes_microscopy mae_modules.py SelfStandardize);
    - "none": unchanged.
    """
    x = _check_batch(x, "scale_intensity")
    if mode == "zscore":
        std, mean = torch.std_mean(x, dim=(-2, -1), correction=0, keepdim=True)
        return (x - mean) / (std + ZSCORE_EPS)
    if mode == "minmax":
        peak = x.amax(dim=(-2, -1), keepdim=True)
        return x / torch.where(peak > 0, peak, torch.ones_like(peak))
    if mode == "minmax_image":
        lo, hi = x.amin(dim=(-3, -2, -1), keepdim=True), x.amax(dim=(-3, -2, -1), keepdim=True)
        return (x - lo) / (hi - lo + 1e-6)
    if mode == "instance_norm":
        var, mean = torch.var_mean(x, dim=(-2, -1), correction=0, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5)
    if mode == "none":
        return x
    raise DinolocError(
        f"backbone.preprocess.intensity={mode!r} is not a known mode; use one of {', '.join(INTENSITY_MODES)}"
    )


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize to (size, size); a batch already at that size is returned as is."""
    x = _check_batch(x, "resize")
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centred size x size square of each image (the paper's Table I speaks of 600 x 600 cropped FOVs).
    An image smaller than `size` on a side gives its largest centred square instead."""
    x = _check_batch(x, "center_crop")
    if size < 1:
        raise DinolocError(f"backbone.preprocess.crop_size must be a positive integer, got {size}")
    h, w = x.shape[-2:]
    side = min(size, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return x[..., top:top + side, left:left + side]


def tile(x: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
    """Cut each image into non-overlapping size x size tiles covering it entirely.

    The bottom/right border is padded by reflection up to a multiple of `size` (by replication instead when
    the image is smaller than the padding, where reflection is undefined). Returns (tiles, n_tiles) with
    tiles of shape (B * n_tiles, C, size, size); image b's tiles are rows b * n_tiles .. (b + 1) * n_tiles - 1,
    in row-major order over the tile grid.
    """
    x = _check_batch(x, "tile")
    if size < 1:
        raise DinolocError(f"tile size must be a positive integer, got {size}")
    b, c, h, w = x.shape
    nh, nw = math.ceil(h / size), math.ceil(w / size)
    pad_h, pad_w = nh * size - h, nw * size - w
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    tiles = x.unfold(2, size, size).unfold(3, size, size)  # (B, C, nh, nw, size, size)
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(b * nh * nw, c, size, size)
    return tiles, nh * nw


def normalize(
    x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """Fixed per-channel (x - mean) / std on the model input (e.g. ImageNet statistics); no-op if mean is None."""
    if mean is None:
        return x
    x = _check_batch(x, "normalize")
    if std is None or len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise DinolocError(
            f"backbone.preprocess.mean/std must each list one value per backbone input channel ({x.shape[1]}); "
            f"got mean={list(mean)}, std={None if std is None else list(std)}"
        )
    if any(s <= 0 for s in std):
        raise DinolocError(f"backbone.preprocess.std must be positive, got {list(std)}")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
