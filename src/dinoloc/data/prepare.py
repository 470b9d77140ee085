"""The data stage: one typed spec in, the manifest and the split out (built once, then reused).

`run_data(spec)` generates the synthetic demo data when the embedded default is used, builds the manifest
(OpenCell download or a labels-CSV folder) and the 90/10 split with its folds, and stores both under
`spec.out_dir`; a stored split that no longer matches the data or the parameters is refused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from filelock import FileLock

from dinoloc.io import DinolocError

if TYPE_CHECKING:
    from dinoloc.synthetic.generate import GeneratorSpec

READERS = ("opencell", "folder")


@dataclass(frozen=True)
class DataSpec:
    """What `run_data` needs, as plain values (built from the `data` config group by dinoloc.config)."""

    name: str
    reader: str                      # opencell | folder
    root: str
    annotations: str
    out_dir: str                     # manifest.csv and split.csv go here
    synthetic: bool
    test_size: float
    n_folds: int
    group_by: str
    seed: int
    resplit: bool = False            # explicit opt-in: replace a stored split that no longer matches
    min_grade: int | None = None     # OpenCell: grades kept (None for a labels-CSV folder)
    classes: tuple[str, ...] | None = None   # OpenCell: the 17; a folder: data.classes (None = sorted union)
    ignore: tuple[str, ...] = ()     # OpenCell: annotation names dropped (data.labels.ignore)
    channels: tuple[str, ...] = ()   # a folder: its channel names in file order
    synthetic_dir: str | None = None  # the demo data's folder (synthetic only)
    generator: GeneratorSpec | None = None  # the synthetic generator's sizes (data.generator; synthetic only)
    display_percentiles: tuple[float, ...] = ()  # the contact sheet's stretch (report.display_percentiles)

    def __post_init__(self) -> None:
        if self.reader not in READERS:
            raise DinolocError(f"data.reader={self.reader!r} is unknown; use one of {', '.join(READERS)}")


def check_root(spec: DataSpec) -> None:
    """The real data's root must exist (the synthetic default is generated on demand)."""
    if spec.synthetic or Path(spec.root).is_dir():
        return
    if spec.reader == "folder":
        raise DinolocError(
            f"data.root={spec.root} does not exist. Point it at your image folder (with labels.csv: image, group, labels)"
        )
    raise DinolocError(
        f"data.root={spec.root} does not exist. Point it at the OpenCell download (per-target folders of "
        "OC-FOV_*_proj.tif), e.g. data.root=/data/opencell, or use data=synthetic for the demo."
    )


def ensure_synthetic(spec: DataSpec) -> None:
    """Generate the synthetic demo data (all parts) when it is missing; parallel jobs wait for one writer."""
    from dinoloc.synthetic.generate import generate_all

    if spec.generator is None or spec.synthetic_dir is None:
        raise DinolocError("data=synthetic needs data.generator and paths.synthetic_dir (configs/data/synthetic.yaml)")
    with FileLock(str(spec.synthetic_dir) + ".lock"):
        generate_all(spec.synthetic_dir, spec.generator, display_percentiles=spec.display_percentiles)


def run_data(spec: DataSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest and split for `spec` (built once, then reused; a stale split is refused)."""
    from dinoloc.data.split import prepare_dataset

    check_root(spec)
    if spec.synthetic:
        ensure_synthetic(spec)
    out_dir = Path(spec.out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    split_args = {"test_size": spec.test_size, "n_folds": spec.n_folds, "group_by": spec.group_by,
                  "seed": spec.seed, "resplit": spec.resplit}
    # Parallel sweep jobs share the data folder: one builds, the others wait and reuse.
    with FileLock(str(out_dir) + ".lock"):
        if spec.reader == "folder":
            from dinoloc.data.folder import build_folder_manifest

            builder = functools.partial(build_folder_manifest, spec.root, spec.annotations, list(spec.channels),
                                        None if spec.classes is None else list(spec.classes), group_by=spec.group_by)
            return prepare_dataset(spec.root, spec.annotations, out_dir, builder=builder, **split_args)
        return prepare_dataset(spec.root, spec.annotations, out_dir, min_grade=spec.min_grade,
                               classes=list(spec.classes or ()), ignore=list(spec.ignore), **split_args)
