"""The SYNTHETIC pretraining stand-ins: `hpa_like/` (unlabelled 4-channel cell images, for the HPA data) and
`natural_like/` (unlabelled RGB scenes of shapes, gradients and textures, for ImageNet)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from dinoloc.io import write_json
from dinoloc.ontology import CATEGORIES
from dinoloc.synthetic.cells import make_cells, px, soft
from dinoloc.synthetic.files import check_size, write_readme, write_tiff
from dinoloc.synthetic.patterns import (
    GRADE_AMPLITUDE,
    NONSPECIFIC,
    NUCLEUS_PEAK,
    PROTEIN_PEAK,
    hoechst,
    microtubules,
    paint,
    to_counts,
)

HPA_CHANNELS = ("nucleus", "protein", "microtubules", "er")
NATURAL_CHANNELS = ("R", "G", "B")


def generate_hpa_like(out_dir: str | os.PathLike, *, n_images: int, image_size: int, seed: int) -> Path:
    """SYNTHETIC unlabelled 4-channel (nucleus, protein, microtubules, er) uint16 TIFFs; returns out_dir."""
    check_size(image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        rng = np.random.default_rng([seed, i])
        cells = make_cells(rng, image_size)
        cats = rng.choice(len(CATEGORIES), size=int(rng.integers(1, 3)), replace=False)
        protein = NONSPECIFIC * soft(cells.labels > 0, px(cells, 1.0))
        for c in cats:
            protein = protein + GRADE_AMPLITUDE[int(rng.integers(1, 4))] * paint(CATEGORIES[int(c)], cells, rng)
        er = paint("er", cells, rng) + 0.1 * soft(cells.cytoplasm, px(cells, 1.0))
        signals = [hoechst(cells, rng) * NUCLEUS_PEAK, protein * PROTEIN_PEAK, microtubules(cells, rng) * 1500.0,
                   er * 1500.0]
        image = np.stack([to_counts(rng, s * rng.uniform(0.85, 1.15)) for s in signals])
        write_tiff(out / f"HPALIKE_{i:05d}.tif", image)
    write_json(out / "channels.json", {"channels": list(HPA_CHANNELS), "synthetic": True})
    write_readme(out, f"HPA-like: {n_images} unlabelled 4-channel images of {image_size} px, seed {seed}; "
                       f"uint16 (4, H, W), channels {', '.join(HPA_CHANNELS)} (channels.json).")
    return out


def natural_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A SYNTHETIC RGB scene in [0, 1], (3, H, W): a colour gradient, a texture and 3-8 coloured shapes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ang = rng.uniform(0, 2 * math.pi)
    g = (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang)
    g = (g - g.min()) / (g.max() - g.min() + 1e-6)
    c0, c1 = rng.uniform(0, 1, (2, 3, 1, 1)).astype(np.float32)
    img = c0 * (1 - g) + c1 * g
    tex = ndimage.gaussian_filter(rng.standard_normal((3, size, size)).astype(np.float32), (0, size / 20, size / 20))
    img += 0.08 * tex / (tex.std() + 1e-6)  # soft low-frequency mottling
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, 1, 2)
        ry, rx = rng.uniform(0.06, 0.3, 2)
        t = rng.uniform(0, math.pi)
        u = ((xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)) / rx
        v = (-(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)) / ry
        kind = int(rng.integers(3))
        if kind == 0:
            mask = u**2 + v**2 < 1  # ellipse
        elif kind == 1:
            mask = (np.abs(u) < 1) & (np.abs(v) < 1)  # rotated rectangle
        else:
            mask = (v > -0.5) & (v < 1 - np.abs(u) * 1.5)  # triangle
        colour = rng.uniform(0, 1, (3, 1, 1)).astype(np.float32)
        if rng.random() < 0.4:  # striped fill
            colour = colour * (0.7 + 0.3 * np.sin(u * rng.uniform(6, 20)))[None]
        img = np.where(mask[None], colour, img)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)  # grain
    return np.clip(img, 0, 1)


def generate_natural_like(out_dir: str | os.PathLike, *, n_images: int, image_size: int, seed: int) -> Path:
    """SYNTHETIC unlabelled RGB scenes as uint16 TIFFs (3, H, W); returns out_dir."""
    check_size(image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        scene = natural_scene(np.random.default_rng([seed, i]), image_size)
        write_tiff(out / f"NATLIKE_{i:05d}.tif", np.rint(scene * 65535).astype(np.uint16))
    write_json(out / "channels.json", {"channels": list(NATURAL_CHANNELS), "synthetic": True})
    write_readme(out, f"natural-like: {n_images} unlabelled RGB scenes of {image_size} px (shapes, gradients, "
                       f"textures; not cells), seed {seed}; uint16 (3, H, W), channels R, G, B (channels.json).")
    return out
