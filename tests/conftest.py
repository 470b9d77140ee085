"""Shared fixtures."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinoloc.ontology import CATEGORIES, GRADE_COLUMNS

ANNOTATIONS_NAME = "opencell-localization-annotations.csv"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker (and every command it starts) gets an equal share of the cores, so the
    workers do not oversubscribe them (the suite runs `-n auto --dist loadfile`; see pyproject.toml)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads


def make_opencell_tree(
    root: Path,
    n_targets: int = 20,
    images_per_target: int = 2,
    size: int = 32,
    seed: int = 0,
    unannotated: int = 0,
) -> tuple[Path, Path]:
    """Write a tiny OpenCell download in the real layout; return (root, annotations_csv).

    - Targets `GENE000`.. with ensg `ENSG00000000000`..: folder `<gene>_<ensg>/` holding
      `OC-FOV_<gene>_<ensg>_CID<nnnnnn>_FID<nnnnnnnn>_proj.tif`, uint16, channel-first (2, size, size),
      channel 0 = nucleus (values < 1000), channel 1 = protein (values >= 30000), so a reader's channel
      order is checkable.
    - `root/opencell-localization-annotations.csv` annotates the first n_targets targets: target i has
      category i % 17 at grade 3, and one or two other random categories at grade 2 / grade 1; with
      n_targets >= 34 every class has >= 2 targets. The `unannotated` extra targets (listed after) have
      images but no CSV row.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    fov = 0
    for t in range(n_targets + unannotated):
        gene, ensg = f"GENE{t:03d}", f"ENSG{t:011d}"
        folder = root / f"{gene}_{ensg}"
        folder.mkdir(exist_ok=True)
        for _ in range(images_per_target):
            fov += 1
            nucleus = rng.integers(0, 1000, size=(size, size), dtype=np.uint16)
            protein = rng.integers(30000, 65535, size=(size, size), dtype=np.uint16)
            name = f"OC-FOV_{gene}_{ensg}_CID{t:06d}_FID{fov:08d}_proj.tif"
            tifffile.imwrite(folder / name, np.stack([nucleus, protein]))
        if t < n_targets:
            grades = {3: [CATEGORIES[t % len(CATEGORIES)]], 2: [], 1: []}
            others = [c for c in CATEGORIES if c != grades[3][0]]
            extra = rng.choice(len(others), size=2, replace=False)
            grades[2].append(others[extra[0]])
            if rng.random() < 0.5:
                grades[1].append(others[extra[1]])
            rows.append({
                "ensg_id": ensg,
                "target_name": gene,
                **{col: ";".join(grades[g]) for g, col in GRADE_COLUMNS.items()},
            })
    csv_path = root / ANNOTATIONS_NAME
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["ensg_id", "target_name", *GRADE_COLUMNS.values()])
        w.writeheader()
        w.writerows(rows)
    return root, csv_path


@pytest.fixture
def write_opencell_tree(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Factory fixture: `write_opencell_tree(n_targets=20, images_per_target=2, size=32, seed=0,
    unannotated=0, root=None)` writes a tiny OpenCell tree (see make_opencell_tree) under
    `root` (default tmp_path / "opencell") and returns (root, annotations_csv)."""

    def factory(root: Path | None = None, **kwargs) -> tuple[Path, Path]:
        return make_opencell_tree(root if root is not None else tmp_path / "opencell", **kwargs)

    return factory
