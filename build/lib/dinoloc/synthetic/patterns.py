"""The protein painters of the 17 categories, the Hoechst stain, HPA's microtubules and the camera model.

Each painter places signal where its compartment sits relative to nucleus and cell, peak 1; `paint` is
the one entry point. Signal levels and camera constants are fixed demo constants, not paper values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from dinoloc.io import DinolocError
from dinoloc.ontology import CATEGORIES
from dinoloc.synthetic.cells import (
    Cells,
    curves,
    from_ellipse,
    inside,
    per_cell,
    px,
    reticulum,
    rim,
    sample_pixels,
    soft,
    splat,
    unit,
)

CAMERA_OFFSET = 100.0  # counts of a dark pixel, like a real sCMOS offset
READ_NOISE = 3.0  # Gaussian read noise (counts) on top of Poisson shot noise
PROTEIN_PEAK = 1800.0  # counts of a grade-3 pattern's brightest pixel at expression 1
NUCLEUS_PEAK = 3000.0  # Hoechst counts of a nucleus
GRADE_AMPLITUDE = {1: 0.2, 2: 0.5, 3: 1.0}  # grade 1 = weak or barely detectable
NONSPECIFIC = 0.05  # diffuse background every tagged protein shows in its cells


# --------------------------------------------------------------------------------------------------
# one painter per category: protein signal relative to nucleus and cell, peak 1


def _nucleoplasm(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    return soft(cells.nucleus, px(cells, 0.6)) * (1 - 0.75 * cells.nucleolar)


def _nucleolus_gc(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    return cells.nucleolar


def _nucleolus_fc_dfc(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    # Small dots clustered inside each nucleolus (fibrillar centres).
    k = rng.integers(3, 7, len(cells.nucleoli))
    centre = np.repeat(cells.nucleoli, k, axis=0)
    spread = 0.07 * float(cells.nuc_axes[:, 0].mean())
    return splat(centre + rng.normal(0, spread, centre.shape), cells.size, px(cells, 0.5)) * cells.nucleus


def _nuclear_membrane(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    return rim(cells)


def _chromatin(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    # Bright foci that follow the Hoechst texture (the DNA itself).
    return soft(cells.nucleus, px(cells, 0.5)) * np.clip(cells.texture - 0.3, 0, None) ** 1.3


def _nuclear_punctae(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    k = per_cell(rng, cells, 10, 25)
    idx = np.repeat(np.arange(cells.n_cells), k)
    pts = from_ellipse(cells, idx, np.sqrt(rng.uniform(0, 1, len(idx))) * 0.85, rng.uniform(0, 2 * math.pi, len(idx)))
    return splat(pts, cells.size, px(cells, 0.6), rng.uniform(0.5, 1, len(pts))) * cells.nucleus


def _cytoplasmic(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    return soft(cells.cytoplasm, px(cells, 0.8)) * np.clip(1.15 - 0.4 * cells.cell_dist, 0, None)


def _mitochondria(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    # Short bent tubules, denser near the nucleus.
    k = int(per_cell(rng, cells, 20, 35).sum())
    p0 = sample_pixels(rng, cells.cytoplasm, k, p=np.clip(1.3 - cells.cell_dist, 0.05, None))
    ang = rng.uniform(0, 2 * math.pi, len(p0))
    direction = np.stack([np.sin(ang), np.cos(ang)], axis=1)
    pts, _ = curves(p0, direction, rng.uniform(3, 8, len(p0)) * cells.scale,
                     rng.normal(0, 0.05 / max(cells.scale, 0.25), len(p0)))
    return splat(pts[inside(pts, cells.cytoplasm)], cells.size, px(cells, 0.7))


def _er(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    perinuclear = np.clip(1.3 - cells.cell_dist, 0, None)
    net = reticulum(rng, cells) * soft(cells.cytoplasm, px(cells, 0.6)) * perinuclear
    return ndimage.gaussian_filter(net, px(cells, 0.5)) + 0.3 * rim(cells)  # the ER continues into the envelope


def _golgi(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    # A crescent of blobs on one side of the nucleus.
    k = per_cell(rng, cells, 12, 20)
    idx = np.repeat(np.arange(cells.n_cells), k)
    side = np.repeat(rng.uniform(0, 2 * math.pi, cells.n_cells), k)
    pts = from_ellipse(cells, idx, rng.uniform(1.1, 1.6, len(idx)), side + rng.normal(0, 0.35, len(idx)))
    pts = pts[inside(pts, cells.cytoplasm)]
    return splat(pts, cells.size, px(cells, 0.9), rng.uniform(0.5, 1, len(pts)))


def _vesicles(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    pts = sample_pixels(rng, cells.cytoplasm, int(per_cell(rng, cells, 15, 40).sum()))
    return splat(pts, cells.size, px(cells, 0.8), rng.uniform(0.4, 1, len(pts)))


def _centrosome(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    # One or two dots (the centriole pair) right beside the nucleus.
    two = rng.random(cells.n_cells) < 0.5
    ang = rng.uniform(0, 2 * math.pi, cells.n_cells)
    second = cells.centrosomes[two] + 1.5 * cells.scale * np.stack([np.sin(ang[two]), np.cos(ang[two])], axis=1)
    pts = np.concatenate([cells.centrosomes, second])
    return splat(pts[inside(pts, cells.labels > 0)], cells.size, px(cells, 0.7))


def _membrane(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    return soft(cells.edges, px(cells, 0.6))


def _cell_contact(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    return soft(cells.contacts, px(cells, 0.6))


def _focal_adhesions(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    # Short radial streaks ending at the cell edge.
    band = cells.cytoplasm & (cells.cell_dist > 0.7) & (cells.cell_dist < 0.9)
    p0 = sample_pixels(rng, band, int(per_cell(rng, cells, 6, 12).sum()))
    if len(p0) == 0:
        return np.zeros((cells.size, cells.size), dtype=np.float32)
    owner = cells.labels[np.clip(np.rint(p0[:, 0]).astype(int), 0, cells.size - 1),
                         np.clip(np.rint(p0[:, 1]).astype(int), 0, cells.size - 1)] - 1
    radial = p0 - cells.centers[np.maximum(owner, 0)]
    radial /= np.linalg.norm(radial, axis=1, keepdims=True) + 1e-9
    pts, _ = curves(p0, radial, rng.uniform(3, 6, len(p0)) * cells.scale)
    return splat(pts[inside(pts, cells.labels > 0)], cells.size, px(cells, 0.6))


def _cytoskeleton(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    # Stress fibres: near-parallel straight lines across each cell, with a per-cell orientation.
    k = per_cell(rng, cells, 6, 10)
    idx = np.repeat(np.arange(cells.n_cells), k)
    ori = np.repeat(rng.uniform(0, math.pi, cells.n_cells), k) + rng.normal(0, 0.08, len(idx))
    direction = np.stack([np.sin(ori), np.cos(ori)], axis=1)
    perp = np.stack([direction[:, 1], -direction[:, 0]], axis=1)
    r = cells.radii[idx]
    mid = cells.centers[idx] + (rng.uniform(-0.9, 0.9, len(idx)) * r)[:, None] * perp
    pts, seg = curves(mid - 1.1 * r[:, None] * direction, direction, 2.2 * r)
    own = inside(pts, cells.labels > 0)
    iy = np.clip(np.rint(pts[:, 0]).astype(int), 0, cells.size - 1)
    ix = np.clip(np.rint(pts[:, 1]).astype(int), 0, cells.size - 1)
    own &= cells.labels[iy, ix] == idx[seg] + 1  # a fibre stays in its own cell
    weight = rng.uniform(0.5, 1, len(idx))[seg]
    return splat(pts[own], cells.size, px(cells, 0.5), weight[own])


def _big_aggregates(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    pts = sample_pixels(rng, cells.cytoplasm, int(rng.integers(1, 4)))
    return splat(pts, cells.size, px(cells, 2.5))


def microtubules(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    """HPA's microtubule channel: bent fibres radiating from each centrosome, over a faint cytoplasm."""
    k = per_cell(rng, cells, 18, 28)
    idx = np.repeat(np.arange(cells.n_cells), k)
    ang = rng.uniform(0, 2 * math.pi, len(idx))
    direction = np.stack([np.sin(ang), np.cos(ang)], axis=1)
    pts, _ = curves(cells.centrosomes[idx], direction, rng.uniform(0.8, 1.4, len(idx)) * cells.radii[idx],
                     rng.normal(0, 0.01 / max(cells.scale, 0.25), len(idx)))
    fib = unit(splat(pts[inside(pts, cells.labels > 0)], cells.size, px(cells, 0.6)))
    return fib + 0.15 * soft(cells.cytoplasm, px(cells, 1.0))


PAINTERS: dict[str, Callable[[Cells, np.random.Generator], np.ndarray]] = {
    "membrane": _membrane,
    "vesicles": _vesicles,
    "er": _er,
    "golgi": _golgi,
    "mitochondria": _mitochondria,
    "centrosome": _centrosome,
    "cytoskeleton": _cytoskeleton,
    "chromatin": _chromatin,
    "nucleoplasm": _nucleoplasm,
    "nuclear_membrane": _nuclear_membrane,
    "nucleolus_gc": _nucleolus_gc,
    "nucleolus_fc_dfc": _nucleolus_fc_dfc,
    "nuclear_punctae": _nuclear_punctae,
    "big_aggregates": _big_aggregates,
    "cell_contact": _cell_contact,
    "focal_adhesions": _focal_adhesions,
    "cytoplasmic": _cytoplasmic,
}
assert tuple(PAINTERS) == CATEGORIES, "one painter per ontology category, in its order"


def paint(category: str, cells: Cells, rng: np.random.Generator) -> np.ndarray:
    """The protein pattern of one category on these cells, float32 (H, W) with peak 1."""
    if category not in PAINTERS:
        raise DinolocError(f"unknown category {category!r}; valid names: {', '.join(CATEGORIES)}")
    return unit(PAINTERS[category](cells, rng))


def hoechst(cells: Cells, rng: np.random.Generator) -> np.ndarray:
    """The nucleus (DNA) stain, peak about 1: textured nuclei, dimmer nucleoli, per-cell brightness."""
    bright = np.concatenate([[0.0], rng.uniform(0.8, 1.2, cells.n_cells)])[cells.labels]
    dna = soft(cells.nucleus, px(cells, 0.7)) * (0.8 + 0.2 * np.tanh(cells.texture)) * (1 - 0.5 * cells.nucleolar)
    return (dna * bright + 0.02 * soft(cells.labels > 0, px(cells, 1.0))).astype(np.float32)


def to_counts(rng: np.random.Generator, signal: np.ndarray) -> np.ndarray:
    """Expected counts -> uint16 camera image: offset + Poisson shot noise + Gaussian read noise."""
    lam = np.clip(signal, 0, None).astype(np.float64)
    counts = CAMERA_OFFSET + rng.poisson(lam) + rng.normal(0, READ_NOISE, lam.shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)

