"""The SYNTHETIC OpenCell-like dataset: one FOV, the targets' labels, the distributed layout, a contact sheet.

Layout as the real download: per-target folders `<gene>_<ensg>/` of
`OC-FOV_<gene>_<ensg>_<cell-line>_<fov>_proj.tif`, uint16, (2, H, W), channel 0 = nucleus, channel 1 =
protein, plus `opencell-localization-annotations.csv`. A target's grades set each pattern's strength
(grade 1 weak), so the task is learnable, not trivial.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from dinoloc.io import DinolocError, write_csv
from dinoloc.ontology import CATEGORIES, GRADE_COLUMNS
from dinoloc.synthetic.cells import Cells, make_cells, px, soft
from dinoloc.synthetic.files import check_size, write_readme, write_tiff
from dinoloc.synthetic.patterns import (
    GRADE_AMPLITUDE,
    NONSPECIFIC,
    NUCLEUS_PEAK,
    PROTEIN_PEAK,
    hoechst,
    paint,
    to_counts,
)

ANNOTATIONS_NAME = "opencell-localization-annotations.csv"

# How often a category is drawn beyond the guaranteed quota: nucleoplasm and cytoplasmic dominate, as in
# OpenCell; the rest are rare. Weights are relative.
CATEGORY_WEIGHTS: dict[str, float] = {c: 1.0 for c in CATEGORIES} | {
    "nucleoplasm": 14.0,
    "cytoplasmic": 14.0,
    "vesicles": 4.0,
    "er": 3.0,
    "membrane": 3.0,
    "chromatin": 2.0,
    "mitochondria": 2.0,
    "golgi": 2.0,
    "nucleolus_gc": 2.0,
    "nuclear_punctae": 2.0,
}


def render_fov(
    rng: np.random.Generator, image_size: int, grades: Mapping[str, int], expression: float = 1.0
) -> tuple[np.ndarray, Cells]:
    """One OpenCell-like FOV: uint16 (2, H, W) in *file* order (nucleus, protein), and its geometry.

    Each category in `grades` (grade 1-3) adds its pattern scaled by GRADE_AMPLITUDE[grade]; `expression`
    scales the whole protein channel (the target's expression level).
    """
    cells = make_cells(rng, image_size)
    protein = NONSPECIFIC * soft(cells.labels > 0, px(cells, 1.0))
    for cat, grade in grades.items():
        if grade not in GRADE_AMPLITUDE:
            raise DinolocError(f"grade {grade!r} of {cat!r} must be 1, 2 or 3")
        protein = protein + GRADE_AMPLITUDE[grade] * paint(cat, cells, rng)
    gain = expression * rng.uniform(0.85, 1.15)  # image-to-image variation (illumination, focus)
    nucleus = hoechst(cells, rng) * NUCLEUS_PEAK * rng.uniform(0.85, 1.15)
    image = np.stack([to_counts(rng, nucleus), to_counts(rng, protein * PROTEIN_PEAK * gain)])
    return image, cells


# --------------------------------------------------------------------------------------------------
# labels


def assign_categories(
    rng: np.random.Generator, n_targets: int, annotated: np.ndarray
) -> list[dict[str, int]]:
    """Per target {category: grade}: 1-3 categories, realistic imbalance, every class on a few targets.

    Every category first gets a quota of annotated targets (3 when there are enough targets, at most two
    quota categories per target), then targets are filled up to their 1-3 categories by CATEGORY_WEIGHTS,
    so nucleoplasm and cytoplasmic dominate. One category per target is primary (grade 3, sometimes 2).
    """
    ann_idx = np.flatnonzero(annotated)
    quota = 3 if 2 * len(ann_idx) >= 3 * len(CATEGORIES) else max(1, 2 * len(ann_idx) // len(CATEGORIES))
    cats: list[list[str]] = [[] for _ in range(n_targets)]
    for c in rng.permutation(CATEGORIES):
        for _ in range(quota):
            free = [t for t in ann_idx if len(cats[t]) < 2 and c not in cats[t]]
            if not free:
                break
            cats[int(rng.choice(free))].append(str(c))
    weights = np.array([CATEGORY_WEIGHTS[c] for c in CATEGORIES])
    want = rng.choice([1, 2, 3], size=n_targets, p=[0.45, 0.35, 0.2])
    for t in range(n_targets):
        while len(cats[t]) < want[t]:
            w = weights * np.array([c not in cats[t] for c in CATEGORIES])
            cats[t].append(CATEGORIES[int(rng.choice(len(CATEGORIES), p=w / w.sum()))])
    out = []
    for t in range(n_targets):
        primary = int(rng.integers(len(cats[t])))
        grades = {}
        for i, c in enumerate(cats[t]):
            if i == primary:
                grades[c] = 3 if rng.random() < 0.75 else 2
            else:
                grades[c] = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
        out.append(grades)
    return out


# OpenCell categories outside the paper's 17 that the real table carries (configs/data/opencell.yaml
# labels.ignore): a few synthetic targets get them too, so the demo goes through the ignore path.
EXTRA_CATEGORIES = ("small_aggregates", "nucleolus")
EXTRA_SHARE = 0.08  # of the annotated targets


def assign_extra_categories(seed: int, annotated: np.ndarray) -> dict[int, dict[str, int]]:
    """{target: {extra category: grade}} for a few annotated targets, graded like secondary labels.

    Drawn from its own random stream, so the 17-class labels and the images are the same as without it.
    """
    rng = np.random.default_rng([seed, 2_000_003])
    ann_idx = np.flatnonzero(annotated)
    n = max(1, round(EXTRA_SHARE * len(ann_idx))) if len(ann_idx) else 0
    chosen = sorted(int(t) for t in rng.choice(ann_idx, size=n, replace=False)) if n else []
    return {t: {str(rng.choice(EXTRA_CATEGORIES)): int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))} for t in chosen}


def _annotation_row(
    ensg: str, gene: str, grades: Mapping[str, int], extra: Mapping[str, int] | None = None
) -> dict[str, str]:
    row = {"ensg_id": ensg, "target_name": gene}
    extra = extra or {}
    for g, col in GRADE_COLUMNS.items():
        names = [c for c in CATEGORIES if grades.get(c) == g]  # ontology order, stable text
        row[col] = ";".join(names + [c for c in EXTRA_CATEGORIES if extra.get(c) == g])
    return row


def generate_opencell(
    out_dir: str | os.PathLike,
    *,
    n_targets: int,
    image_size: int,
    seed: int,
    images_per_target: Sequence[int],
    n_unannotated: int,
) -> Path:
    """Write a SYNTHETIC OpenCell-like dataset into out_dir; return the annotation CSV path.

    Target t is gene `SYN<t:03d>`, ensg `ENSG9<t:010d>`, cell line `CID<t+1:06d>`; FOV ids count up over
    the dataset. `n_unannotated` randomly chosen targets have images but no annotation row. A few annotated
    targets also carry `small_aggregates` or `nucleolus` (outside the 17, ignored when read; the images
    show only their 17-class patterns).
    """
    check_size(image_size)
    lo, hi = (int(v) for v in images_per_target)
    if n_targets < 1 or not 0 <= n_unannotated < n_targets:
        raise DinolocError(f"n_targets={n_targets}, n_unannotated={n_unannotated}: need 0 <= n_unannotated < n_targets")
    if not 1 <= lo <= hi:
        raise DinolocError(f"images_per_target={images_per_target}: need 1 <= low <= high")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label_rng = np.random.default_rng([seed, 1_000_003])
    annotated = np.ones(n_targets, dtype=bool)
    annotated[label_rng.choice(n_targets, size=n_unannotated, replace=False)] = False
    assignment = assign_categories(label_rng, n_targets, annotated)
    extra = assign_extra_categories(seed, annotated)
    rows, fov = [], 0
    for t, grades in enumerate(assignment):
        gene, ensg = f"SYN{t:03d}", f"ENSG9{t:010d}"
        t_rng = np.random.default_rng([seed, t])
        expression = float(np.exp(t_rng.normal(0, 0.3)))  # per-protein expression level
        for k in range(int(t_rng.integers(lo, hi + 1))):
            fov += 1
            image, _ = render_fov(np.random.default_rng([seed, t, k]), image_size, grades, expression)
            name = f"OC-FOV_{gene}_{ensg}_CID{t + 1:06d}_FID{fov:08d}_proj.tif"
            write_tiff(out / f"{gene}_{ensg}" / name, image)
        if annotated[t]:
            rows.append(_annotation_row(ensg, gene, grades, extra.get(t)))
    csv_path = out / ANNOTATIONS_NAME
    write_csv(csv_path, pd.DataFrame(rows, columns=["ensg_id", "target_name", *GRADE_COLUMNS.values()]))
    write_readme(out, f"OpenCell-like: {n_targets} targets, {fov} images of {image_size} px, seed {seed}; "
                       f"{n_targets - n_unannotated} targets annotated in {ANNOTATIONS_NAME}.\n"
                       "Layout as the real download: <gene>_<ensg>/OC-FOV_<gene>_<ensg>_<cell-line>_<fov>_proj.tif, "
                       "uint16 (2, H, W), channel 0 = nucleus, channel 1 = protein.")
    return csv_path


def opencell_contact_sheet(
    root: str | os.PathLike, path: str | os.PathLike, display_percentiles: Sequence[float]
) -> None:
    """One example image per category (a target carrying it at the highest grade), titled SYNTHETIC;
    each channel stretched by `display_percentiles` (config report.display_percentiles)."""
    from dinoloc.viz import contact_sheet

    root = Path(root)
    table = pd.read_csv(root / ANNOTATIONS_NAME, dtype=str, keep_default_na=False)
    panels: list[tuple[str, np.ndarray]] = []
    for cat in CATEGORIES:
        best: tuple[int, str, str] | None = None
        for rec in table.to_dict("records"):
            for g, col in GRADE_COLUMNS.items():
                if cat in rec[col].split(";") and (best is None or g > best[0]):
                    best = (g, rec["target_name"], rec["ensg_id"])
        if best is None:
            continue
        g, gene, ensg = best
        first = sorted((root / f"{gene}_{ensg}").glob("*_proj.tif"))[0]
        arr = tifffile.imread(first).astype(np.float32)
        panels.append((f"{cat}\n{gene} (grade {g})", np.stack([arr[1], arr[0]])))  # -> (protein, nucleus)
    contact_sheet(panels, path, "SYNTHETIC OpenCell-like data: one example per category "
                                "(protein red, nucleus green)", percentiles=display_percentiles)
