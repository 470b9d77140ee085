"""Cell geometry of a SYNTHETIC field of view and the vectorised drawing primitives the painters share.

Every length is given at 160 px and scaled to the image (`px`), so a pattern looks the same at any size.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class Cells:
    """The geometry of one field of view; points are (y, x) in pixels, cell i has label i + 1."""

    size: int
    scale: float  # image_size / 160: every length below is given at 160 px and scaled by it
    labels: np.ndarray  # (H, W) int32, 0 = background
    cell_dist: np.ndarray  # (H, W) distance to the own cell's centre, 1 = cell edge
    nuc_dist: np.ndarray  # (H, W) elliptical distance to the own cell's nucleus centre, 1 = nuclear rim
    nucleus: np.ndarray  # (H, W) bool
    cytoplasm: np.ndarray  # (H, W) bool: in a cell, outside its nucleus
    edges: np.ndarray  # (H, W) bool: cell outline (against background or another cell)
    contacts: np.ndarray  # (H, W) bool: outline shared with another cell only
    centers: np.ndarray  # (n, 2)
    radii: np.ndarray  # (n,)
    nuc_centers: np.ndarray  # (n, 2)
    nuc_axes: np.ndarray  # (n, 2) semi-axes (a, b)
    nuc_angle: np.ndarray  # (n,)
    nucleoli: np.ndarray  # (m, 2) nucleolus centres
    nucleolar: np.ndarray  # (H, W) soft nucleolus map in [0, 1]
    texture: np.ndarray  # (H, W) z-scored fine texture (chromatin)
    centrosomes: np.ndarray  # (n, 2) one per cell, beside the nucleus

    @property
    def n_cells(self) -> int:
        return len(self.centers)


def px(cells: Cells, length: float) -> float:
    """A length given at 160 px, scaled to this image (never below half a pixel)."""
    return max(0.5, length * cells.scale)


def _place_cells(rng: np.random.Generator, size: int, radii: np.ndarray) -> np.ndarray:
    """Cell centres: mostly next to an already placed cell so that cells touch (cell_contact needs it)."""
    centers: list[np.ndarray] = []
    for r in radii:
        for _ in range(200):
            if centers and rng.random() < 0.75:
                j = int(rng.integers(len(centers)))
                ang = rng.uniform(0, 2 * math.pi)
                dist = rng.uniform(0.72, 0.9) * (r + radii[j])
                c = centers[j] + dist * np.array([math.sin(ang), math.cos(ang)])
            else:
                c = rng.uniform(0.12, 0.88, 2) * size
            if np.any(c < 0.08 * size) or np.any(c > 0.92 * size):
                continue
            if all(np.hypot(*(c - o)) >= 0.72 * (r + radii[k]) for k, o in enumerate(centers)):
                centers.append(c)
                break
    return np.array(centers, dtype=np.float64).reshape(-1, 2)


def _outline(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edges, contacts): cell pixels with a 4-neighbour of another label / of another *cell*."""
    pad = np.pad(labels, 1, mode="edge")  # edge padding: the image border is not a cell outline
    h, w = labels.shape
    edges = np.zeros(labels.shape, dtype=bool)
    contacts = np.zeros(labels.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        nb = pad[dy : dy + h, dx : dx + w]
        diff = (nb != labels) & (labels > 0)
        edges |= diff
        contacts |= diff & (nb > 0)
    return edges, contacts


def from_ellipse(cells: Cells, cell_idx: np.ndarray, rho: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Image points (y, x) at elliptical radius `rho` (1 = rim) and angle `phi` of the cells' nuclei."""
    a, b = cells.nuc_axes[cell_idx, 0], cells.nuc_axes[cell_idx, 1]
    u, v = rho * np.cos(phi) * a, rho * np.sin(phi) * b
    t = cells.nuc_angle[cell_idx]
    x = cells.nuc_centers[cell_idx, 1] + u * np.cos(t) - v * np.sin(t)
    y = cells.nuc_centers[cell_idx, 0] + u * np.sin(t) + v * np.cos(t)
    return np.stack([y, x], axis=1)


def make_cells(rng: np.random.Generator, size: int) -> Cells:
    """3-8 touching cells, each an irregular body with an elliptical nucleus, nucleoli and a centrosome."""
    s = size / 160.0
    n = int(rng.integers(3, 9))
    radii = rng.uniform(19, 27, n) * s
    centers = _place_cells(rng, size, radii)
    n = len(centers)
    radii = radii[:n]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy = yy[None] - centers[:, 0, None, None].astype(np.float32)
    dx = xx[None] - centers[:, 1, None, None].astype(np.float32)
    theta = np.arctan2(dy, dx)
    # Irregular outlines: two low harmonics of the radius per cell.
    amp = rng.uniform(0.0, 0.1, (n, 2)).astype(np.float32)
    pha = rng.uniform(0, 2 * math.pi, (n, 2)).astype(np.float32)
    rad = radii[:, None, None].astype(np.float32) * (
        1
        + amp[:, 0, None, None] * np.cos(2 * theta - pha[:, 0, None, None])
        + amp[:, 1, None, None] * np.cos(3 * theta - pha[:, 1, None, None])
    )
    d = np.hypot(dy, dx) / rad
    owner = np.argmin(d, axis=0)  # a Voronoi-like split where neighbouring cells overlap
    cell_dist = np.take_along_axis(d, owner[None], axis=0)[0]
    labels = np.where(cell_dist < 1, owner + 1, 0).astype(np.int32)

    off_ang = rng.uniform(0, 2 * math.pi, n)
    off = rng.uniform(0, 0.12, n) * radii
    nuc_centers = centers + off[:, None] * np.stack([np.sin(off_ang), np.cos(off_ang)], axis=1)
    a = 0.46 * radii * rng.uniform(0.9, 1.1, n)
    nuc_axes = np.stack([a, a * rng.uniform(0.7, 0.95, n)], axis=1)
    nuc_angle = rng.uniform(0, math.pi, n)
    ndy = yy[None] - nuc_centers[:, 0, None, None].astype(np.float32)
    ndx = xx[None] - nuc_centers[:, 1, None, None].astype(np.float32)
    ct = np.cos(nuc_angle)[:, None, None].astype(np.float32)
    st = np.sin(nuc_angle)[:, None, None].astype(np.float32)
    u = (ndx * ct + ndy * st) / nuc_axes[:, 0, None, None].astype(np.float32)
    v = (-ndx * st + ndy * ct) / nuc_axes[:, 1, None, None].astype(np.float32)
    nuc_dist = np.take_along_axis(np.hypot(u, v), owner[None], axis=0)[0]
    nucleus = (labels > 0) & (nuc_dist < 1)
    edges, contacts = _outline(labels)

    noise = rng.standard_normal((size, size)).astype(np.float32)
    texture = ndimage.gaussian_filter(noise, max(0.5, 1.0 * s))
    texture /= texture.std() + 1e-6

    partial = Cells(
        size=size, scale=s, labels=labels, cell_dist=cell_dist, nuc_dist=nuc_dist, nucleus=nucleus,
        cytoplasm=(labels > 0) & ~nucleus, edges=edges, contacts=contacts, centers=centers, radii=radii,
        nuc_centers=nuc_centers, nuc_axes=nuc_axes, nuc_angle=nuc_angle, nucleoli=np.zeros((0, 2)),
        nucleolar=np.zeros_like(cell_dist), texture=texture, centrosomes=np.zeros((0, 2)),
    )
    # Nucleoli: 1-3 per nucleus, inside its inner half.
    k = rng.integers(1, 4, n)
    idx = np.repeat(np.arange(n), k)
    nucleoli = from_ellipse(partial, idx, np.sqrt(rng.uniform(0, 1, len(idx))) * 0.5,
                            rng.uniform(0, 2 * math.pi, len(idx)))
    nucleolar = unit(splat(nucleoli, size, max(0.5, 0.15 * float(a.mean())))) * nucleus
    # Centrosome: just outside the nuclear rim, on a random side.
    centrosomes = from_ellipse(partial, np.arange(n), rng.uniform(1.15, 1.35, n), rng.uniform(0, 2 * math.pi, n))
    return dataclasses.replace(partial, nucleoli=nucleoli, nucleolar=nucleolar.astype(np.float32),
                               centrosomes=centrosomes)


# --------------------------------------------------------------------------------------------------
# drawing primitives (vectorised: points are deposited at once, then blurred)


def unit(img: np.ndarray) -> np.ndarray:
    """Scale to a peak of 1 (an empty pattern stays zero)."""
    peak = float(img.max()) if img.size else 0.0
    return (img / peak).astype(np.float32) if peak > 0 else np.zeros_like(img, dtype=np.float32)


def splat(points: np.ndarray, size: int, sigma: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Gaussian spots of width sigma at the given (y, x) points."""
    img = np.zeros(size * size, dtype=np.float64)
    if len(points):
        iy, ix = np.rint(points[:, 0]).astype(np.int64), np.rint(points[:, 1]).astype(np.int64)
        ok = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
        w = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
        img = np.bincount(iy[ok] * size + ix[ok], weights=w[ok], minlength=size * size).astype(np.float64)
    return ndimage.gaussian_filter(img.reshape(size, size).astype(np.float32), sigma, mode="constant")


def curves(p0: np.ndarray, direction: np.ndarray, length: np.ndarray, bend: np.ndarray | float = 0.0,
            step: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Points along (slightly bent) segments from p0 along unit `direction`; returns (points, segment id)."""
    if len(p0) == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    t = np.arange(int(np.ceil(float(np.max(length)) / step)) + 1) * step
    perp = np.stack([direction[:, 1], -direction[:, 0]], axis=1)
    bend = np.broadcast_to(np.asarray(bend, dtype=np.float64), (len(p0),))
    pts = (p0[:, None] + t[None, :, None] * direction[:, None]
           + (bend[:, None] * t[None, :] ** 2)[:, :, None] * perp[:, None])
    keep = t[None, :] <= np.asarray(length)[:, None]
    seg = np.broadcast_to(np.arange(len(p0))[:, None], keep.shape)
    return pts[keep], seg[keep]


def inside(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Boolean per point: its pixel lies in `mask` (out of the image = False)."""
    size = mask.shape[0]
    iy, ix = np.rint(points[:, 0]).astype(np.int64), np.rint(points[:, 1]).astype(np.int64)
    ok = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
    out = np.zeros(len(points), dtype=bool)
    out[ok] = mask[iy[ok], ix[ok]]
    return out


def sample_pixels(rng: np.random.Generator, mask: np.ndarray, k: int, p: np.ndarray | None = None) -> np.ndarray:
    """k random points (y, x) inside mask, jittered within their pixel."""
    flat = np.flatnonzero(mask)
    if len(flat) == 0 or k <= 0:
        return np.zeros((0, 2))
    if p is not None:
        p = p.ravel()[flat].astype(np.float64)
        p = p / p.sum() if p.sum() > 0 else None
    pick = rng.choice(flat, size=k, p=p)
    pts = np.stack([pick // mask.shape[1], pick % mask.shape[1]], axis=1).astype(np.float64)
    return pts + rng.uniform(-0.5, 0.5, pts.shape)


def per_cell(rng: np.random.Generator, cells: Cells, lo: int, hi: int) -> np.ndarray:
    """A random count in [lo, hi] for every cell."""
    return rng.integers(lo, hi + 1, cells.n_cells)


def soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma)


def rim(cells: Cells, width: float = 0.12) -> np.ndarray:
    """The nuclear envelope: a thin ring at elliptical radius 1."""
    return np.exp(-(((cells.nuc_dist - 1) / width) ** 2)) * (cells.labels > 0)


def reticulum(rng: np.random.Generator, cells: Cells) -> np.ndarray:
    """A network of thin lines: the zero crossings of band-pass noise."""
    noise = rng.standard_normal((cells.size, cells.size)).astype(np.float32)
    bp = ndimage.gaussian_filter(noise, px(cells, 1.2)) - ndimage.gaussian_filter(noise, px(cells, 2.5))
    return np.exp(-((bp / (0.3 * bp.std() + 1e-6)) ** 2))

