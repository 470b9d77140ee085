"""Channel-aware multi-crop augmentation for DINO on microscopy images (official DINO crops + Dino4Cells' ops).

Works on float tensors (C, H, W) with any number of channels: no RGB colour jitter or grayscale. Every random
draw comes from the torch.Generator passed in, so a sample's crops depend only on how that generator was
seeded (seed, epoch, sample index), not on worker processes or on resuming.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from dinoloc.preprocess import normalize, scale_intensity
from dinoloc.pretrain.params import CropSpec


def sample_generator(*keys: int) -> torch.Generator:
    """A generator seeded from a tuple of integers (e.g. seed, epoch, index) by hashing, so nearby tuples
    give unrelated streams (seed + epoch + index would collide)."""
    digest = hashlib.sha256(":".join(str(int(k)) for k in keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _coin(g: torch.Generator, p: float) -> bool:
    # Draw even when p is 0 or 1, so changing one probability does not shift every later draw.
    return float(torch.rand((), generator=g)) < p


def _randint(g: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(0, high, (), generator=g))


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    g: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """torchvision's RandomResizedCrop (same parameter sampling, 10 tries then a centre crop), bicubic as DINO."""
    h, w = x.shape[-2:]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, *log_ratio))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = _randint(g, h - ch + 1), _randint(g, w - cw + 1)
            break
    else:  # fallback: centre crop at the nearest allowed aspect ratio
        in_ratio = w / h
        if in_ratio < ratio[0]:
            cw, ch = w, int(round(w / ratio[0]))
        elif in_ratio > ratio[1]:
            ch, cw = h, int(round(h * ratio[1]))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    return TF.resized_crop(
        x, top, left, ch, cw, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True
    )


def cell_warp(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Dino4Cells' cell warping: a perspective warp moving one random corner inward by up to min(H, W)/4 on
    both axes; same output size; pixels mapped from outside the image (and any NaN) become 0."""
    h, w = x.shape[-2:]
    corners = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]  # (x, y): TL, TR, BR, BL
    inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    k = _randint(g, 4)
    limit = min(h, w) / 4
    dx, dy = _uniform(g, 0, limit), _uniform(g, 0, limit)
    end = [list(c) for c in corners]
    end[k] = [round(corners[k][0] + inward[k][0] * dx), round(corners[k][1] + inward[k][1] * dy)]
    out = TF.perspective(x, corners, end, interpolation=InterpolationMode.BILINEAR, fill=0.0)
    return torch.nan_to_num(out, nan=0.0)


def rescale_protein(x: torch.Tensor, protein: int, g: torch.Generator) -> torch.Tensor:
    """Dino4Cells' protein rescaling: the protein signal above the channel's minimum (background) is multiplied
    by U(0, 2) (skipped if the channel is flat).

    Dino4Cells writes protein <- protein * U(0, 2) / max(protein) on images already scaled to [0, 1], i.e. a
    random contrast factor around 1 (half the views dimmer, half brighter). Here the image arrives z-scored per
    image (backbone.preprocess.intensity), where max(protein) is 5-15 on OpenCell-like images: dividing by it
    dimmed the protein 2.5x to 100x in every rescaled view (never brighter) and shifted its background. Measuring
    from the channel minimum keeps Dino4Cells' intent (min-max scaled input: identical) for any intensity mode.
    """
    factor = _uniform(g, 0.0, 2.0)
    lo = x[protein].min()
    if x[protein].max() <= lo:
        return x
    x = x.clone()
    x[protein] = lo + (x[protein] - lo) * factor
    return x


def remove_channel(x: torch.Tensor, protein: int | None, g: torch.Generator) -> torch.Tensor:
    """Zero one random channel other than the protein (Dino4Cells' channel removal); no-op with < 2 candidates
    so an image never loses its only signal."""
    candidates = [c for c in range(x.shape[0]) if c != protein]
    k = _randint(g, max(len(candidates), 1))
    if len(candidates) < 1 or x.shape[0] < 2:
        return x
    x = x.clone()
    x[candidates[k]] = 0.0
    return x


def jitter_channels(x: torch.Tensor, brightness: float, contrast: float, g: torch.Generator) -> torch.Tensor:
    """Per-channel contrast (scale about the channel mean by U(1-c, 1+c)) and brightness (shift by U(-b, b)
    channel standard deviations). Additive brightness in std units because after z-scoring a multiplicative
    brightness would merely duplicate contrast."""
    c = x.shape[0]
    factors = torch.tensor([_uniform(g, 1 - contrast, 1 + contrast) for _ in range(c)], dtype=x.dtype)
    shifts = torch.tensor([_uniform(g, -brightness, brightness) for _ in range(c)], dtype=x.dtype)
    std, mean = torch.std_mean(x, dim=(-2, -1), correction=0, keepdim=True)
    return (x - mean) * factors.view(c, 1, 1) + mean + shifts.view(c, 1, 1) * std


class MultiCropAugment:
    """image (C, H, W), already intensity-scaled -> [2 global crops, local_crops_number local crops], each
    flipped / warped / jittered independently and finally normalised with the backbone's fixed mean/std."""

    def __init__(
        self,
        spec: CropSpec,
        channels: Sequence[str],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.spec = spec
        self.channels = list(channels)
        self.protein = self.channels.index("protein") if "protein" in self.channels else None
        self.mean, self.std = mean, std

    def _view(self, x: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
        s = self.spec
        x = random_resized_crop(x, size, scale, g)
        if _coin(g, s.flip_prob):
            x = TF.horizontal_flip(x)
        if _coin(g, s.flip_prob):
            x = TF.vertical_flip(x)
        if _coin(g, s.warp_prob):
            x = cell_warp(x, g)
        if _coin(g, s.protein_rescale_prob) and self.protein is not None:
            x = rescale_protein(x, self.protein, g)
        if _coin(g, s.jitter_prob):
            x = jitter_channels(x, s.brightness, s.contrast, g)
        if _coin(g, s.channel_drop_prob):
            x = remove_channel(x, self.protein, g)
        if s.zscore == "crop":
            x = scale_intensity(x[None], "zscore")[0]
        return normalize(x[None], self.mean, self.std)[0].contiguous()

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        s = self.spec
        crops = [self._view(x, s.global_crop_size, s.global_crops_scale, g) for _ in range(2)]
        crops += [self._view(x, s.local_crop_size, s.local_crops_scale, g) for _ in range(s.local_crops_number)]
        return crops
