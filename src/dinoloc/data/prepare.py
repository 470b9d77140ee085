"""The data stage: one typed spec in, the manifest and the split out (built once, then reused).

`run_data(spec)` generates the synthetic demo data when the embedded default is used, builds the manifest
(OpenCell download or a labels-CSV folder) and the 90/10 split with its folds, and stores both under
`spec.out_dir`; a stored split that no longer matches the data or the parameters is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from filelock import FileLock

from dinoloc.io import DinolocError

if TYPE_CHECKING:
    from dinoloc.synthetic.generate import GeneratorSpec


@dataclass(frozen=True)
class DataSpec:
    """What `run_data` needs, as plain values (built from the `data` config group by dinoloc.config)."""

    name: str
    reader: str                      # a module dinoloc.data.<reader> with a READER (dinoloc.data.reader)
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
    channels: tuple[str, ...] = ()   # named-channel readers: the channels wanted, in order (folder: file order)
    labels_column: str = ""          # loaddata: the CSV column holding the labels (';'-separated)
    group_column: str = ""           # loaddata: the CSV column whose value never crosses splits (e.g. a plate)
    unit: str = "image"              # image | cell (dinoloc.data.cells)
    masks: str | None = None         # unit=cell: the CSV column with each image's label-image path (None: segment)
    cell: dict[str, Any] = field(default_factory=dict)  # unit=cell: data.cell (crop_px, expand_px, segmenter, ...)
    synthetic_dir: str | None = None  # the demo data's folder (synthetic only)
    generator: GeneratorSpec | None = None  # the synthetic generator's sizes (data.generator; synthetic only)
    display_percentiles: tuple[float, ...] = ()  # the contact sheet's stretch (report.display_percentiles)

    def __post_init__(self) -> None:
        from dinoloc.data.reader import get_reader

        get_reader(self.reader)  # an unknown reader is named before any work
        if self.unit not in ("image", "cell"):
            raise DinolocError(f"data.unit={self.unit!r}: use image (whole fields of view) or cell")


def check_root(spec: DataSpec) -> None:
    """The real data's root must exist (the synthetic default is generated on demand)."""
    from dinoloc.data.reader import get_reader

    get_reader(spec.reader).check_root(spec)


def ensure_synthetic(spec: DataSpec) -> None:
    """Generate the synthetic demo data (all parts) when it is missing; parallel jobs wait for one writer."""
    from dinoloc.synthetic.generate import generate_all

    if spec.generator is None or spec.synthetic_dir is None:
        raise DinolocError("data=synthetic needs data.generator and paths.synthetic_dir (configs/data/synthetic.yaml)")
    with FileLock(str(spec.synthetic_dir) + ".lock"):
        generate_all(spec.synthetic_dir, spec.generator, display_percentiles=spec.display_percentiles)


def run_data(spec: DataSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest and split for `spec` (built once, then reused; a stale split is refused). With data.unit=cell the
    cells are listed once beside them (cells.csv, dinoloc.data.cells)."""
    from dinoloc.data.reader import get_reader
    from dinoloc.data.split import prepare_dataset

    reader = get_reader(spec.reader)
    reader.check_root(spec)
    if spec.synthetic:
        ensure_synthetic(spec)
    out_dir = Path(spec.out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Parallel sweep jobs share the data folder: one builds, the others wait and reuse.
    with FileLock(str(out_dir) + ".lock"):
        manifest = reader.manifest(spec)
        out = prepare_dataset(manifest, out_dir, min_grade=spec.min_grade or 1, test_size=spec.test_size,
                              n_folds=spec.n_folds, group_by=spec.group_by, seed=spec.seed, resplit=spec.resplit)
        if spec.unit == "cell":
            from dinoloc.data.cells import ensure_cells

            ensure_cells(spec, out[0])
        return out
