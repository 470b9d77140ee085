"""Image display helpers shared by the synthetic contact sheet and the report's Figure 2."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dinoloc.io import DinolocError, atomic_path


def check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    """(low, high) with 0 <= low < high <= 100, else DinolocError naming report.display_percentiles."""
    values = tuple(percentiles)
    ok = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok or not 0 <= values[0] < values[1] <= 100:
        raise DinolocError(
            f"report.display_percentiles={list(values)}: use [low, high] with 0 <= low < high <= 100"
        )
    return float(values[0]), float(values[1])


def stretch(channel: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """One channel for display: its low / high `percentiles` (config report.display_percentiles) mapped to
    0 / 1 and clipped. 16-bit microscopy is mostly dark with a few bright pixels, so a min/max
    stretch would show almost nothing; a flat channel (nothing to show) stays black."""
    lo, hi = np.percentile(channel, check_percentiles(percentiles))
    if not hi > lo:
        return np.zeros(channel.shape, dtype=np.float32)
    return np.clip((channel.astype(np.float32) - lo) / (hi - lo), 0, 1)


COMPOSITE_SCHEMES = ("red_green", "magenta_green")


def composite(
    protein: np.ndarray, nucleus: np.ndarray, scheme: str = "red_green", *, percentiles: Sequence[float]
) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: protein red (scheme red_green) or magenta = red + blue (magenta_green,
    readable with red-green colour blindness), nucleus green; each channel `stretch`ed by `percentiles`."""
    if scheme not in COMPOSITE_SCHEMES:
        raise DinolocError(f"composite colours {scheme!r}: use one of {', '.join(COMPOSITE_SCHEMES)}")
    protein, nucleus = np.asarray(protein), np.asarray(nucleus)
    if protein.ndim != 2 or protein.shape != nucleus.shape:
        raise DinolocError(
            f"composite needs two 2-D channels of the same shape; got protein {protein.shape}, "
            f"nucleus {nucleus.shape}"
        )
    rgb = np.zeros((*protein.shape, 3), dtype=np.float32)
    rgb[..., 0] = stretch(protein, percentiles)
    rgb[..., 1] = stretch(nucleus, percentiles)
    if scheme == "magenta_green":
        rgb[..., 2] = rgb[..., 0]
    return rgb


def _panel(image: np.ndarray, name: str, percentiles: Sequence[float]) -> np.ndarray:
    """What a contact-sheet panel shows: RGB as is, (protein, nucleus) as a composite, 2-D as grey."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 3:
        return np.clip(a.astype(np.float32), 0, 1)
    if a.ndim == 3 and a.shape[0] == 2:
        return composite(a[0], a[1], percentiles=percentiles)
    if a.ndim == 2:
        return np.repeat(stretch(a, percentiles)[..., None], 3, axis=-1)
    raise DinolocError(
        f"contact sheet panel {name!r}: image shape {a.shape}; pass (H, W, 3) RGB in [0, 1], "
        "(2, H, W) in (protein, nucleus) order, or a 2-D channel"
    )


def contact_sheet(
    images: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike, title: str, *, percentiles: Sequence[float]
) -> None:
    """A grid of panels with their titles, saved atomically as PNG (title also in the PNG metadata).

    Each image is an (H, W, 3) RGB array in [0, 1], a (2, H, W) array in (protein, nucleus) order
    (drawn as `composite`), or a single 2-D channel (stretched); `percentiles` as in `stretch`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not images:
        raise DinolocError(f"{path}: no images for the contact sheet")
    panels = [(name, _panel(img, name, percentiles)) for name, img in images]
    ncols = min(len(panels), math.ceil(math.sqrt(len(panels))) + 1)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.6 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, rgb) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=8)
    fig.suptitle(title, color="red" if "SYNTHETIC" in title.upper() else "black")
    fig.tight_layout()
    try:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=100, metadata={"Title": title})
    finally:
        plt.close(fig)
