"""The data stage: one typed spec in, the manifest and the split out (built once, then reused).

`run_data(spec)` generates the synthetic demo data when the embedded default is used, builds the manifest
(OpenCell download or a labels-CSV folder) and the 90/10 split with its folds, and stores both under
`spec.out_dir`; a stored split that no longer matches the data or the parameters is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
from filelock import FileLock

from dinoloc.io import DinolocError
from dinoloc.rules import Checked, key, yaml_keys
from dinoloc.synthetic.generate import GeneratorSpec

GROUP_BY = ("target", "none")
SEGMENTERS = ("skimage", "cellpose")
AGGREGATES = ("mean",)


@dataclass(frozen=True)
class SplitSpec(Checked):
    """data.split: the untouched test share and the cross-validation folds over the rest (dinoloc.data.split)."""

    SECTION: ClassVar[str] = "data.split"
    WHERE: ClassVar[str] = "configs/data/<name>.yaml (split:)"

    test_size: float = key(gt=0, lt=1)     # the test share of the labelled units
    n_folds: int = key(ge=2)
    group_by: str = key(choices=GROUP_BY)  # target: no group in two sets; none: an image-level split
    seed: int = key()


@dataclass(frozen=True)
class LabelSpec(Checked):
    """data.labels (OpenCell): which annotations count as labels (dinoloc.data.opencell)."""

    SECTION: ClassVar[str] = "data.labels"
    WHERE: ClassVar[str] = "configs/data/opencell.yaml (labels:)"

    min_grade: int = key(ge=1, le=3)       # OpenCell's annotation grades 1-3: those >= this count
    classes: tuple[str, ...] = key()       # the class list and order (the classifier's outputs)
    ignore: tuple[str, ...] = key()        # annotation names dropped (counted in the summary)


@dataclass(frozen=True)
class CellSpec(Checked):
    """data.cell (data.unit=cell): how cells are found, cropped and aggregated (dinoloc.data.cells)."""

    SECTION: ClassVar[str] = "data.cell"
    WHERE: ClassVar[str] = "configs/data/cell/default.yaml"

    segmenter: str = key(choices=SEGMENTERS)
    expand_px: int = key(ge=0)             # nuclei grown by this many px into the cytoplasm
    min_area_px: int = key(ge=0)           # smaller segmented objects are noise
    crop_px: int = key(ge=1)               # the square crop centred on each cell
    mask_others: bool = key()              # zero the other cells' pixels in a crop
    aggregate: str = key(choices=AGGREGATES)  # a cell's embeddings -> the image's


@dataclass(frozen=True)
class DataSpec(Checked):
    """The `data` config group (a YAML of configs/data/) as typed values, plus where its outputs go. Keys only
    some readers read are None where a YAML has none; a reader refuses one it does not read (Reader.KEYS)."""

    SECTION: ClassVar[str] = "data"
    WHERE: ClassVar[str] = "configs/data/<name>.yaml"
    NOT_IN_YAML: ClassVar[tuple[str, ...]] = ("out_dir", "synthetic_dir", "display_percentiles")

    name: str
    reader: str                      # a module dinoloc.data.<reader> with a READER (dinoloc.data.reader)
    root: str
    annotations: str
    synthetic: bool
    split: SplitSpec
    resplit: bool                    # explicit opt-in: replace a stored split that no longer matches
    unit: str = key(choices=("image", "cell"))  # image: whole fields of view | cell (dinoloc.data.cells)
    masks: str | None = key()        # unit=cell: the CSV column with each image's label-image path (None: segment)
    cell: CellSpec = key()
    out_dir: str = key()             # not a data key: paths.data_dir (manifest.csv and split.csv go here)
    # keys only some readers read (see each reader's KEYS)
    labels: LabelSpec | None = None  # OpenCell: grades, the 17 classes, the names dropped
    channels: tuple[str, ...] | None = None  # named-channel readers: the channels, in order (folder: file order)
    channel_roles: dict[str, str | None] | None = None  # data channel -> the backbones' name (None: left out)
    classes: tuple[str, ...] | None = None  # a named-channel reader's class list (None: the labels' sorted union)
    labels_column: str | None = None  # loaddata: the CSV column holding the labels (';'-separated)
    group_column: str | None = None  # loaddata: the CSV column whose value never crosses splits (e.g. a plate)
    generator: GeneratorSpec | None = None  # synthetic: what dinoloc-synth writes (data.generator)
    # not data keys: the demo data's folder (paths.synthetic_dir) and the contact sheet's stretch
    # (report.display_percentiles), synthetic only
    synthetic_dir: str | None = None
    display_percentiles: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        from dinoloc.data.reader import get_reader

        super().__post_init__()
        reader = get_reader(self.reader)  # an unknown reader is named before any work
        foreign = [k for k in READER_KEYS if getattr(self, k) is not None and k not in reader.KEYS]
        if foreign:
            raise DinolocError(f"data.{foreign[0]} is not read by data.reader={self.reader} (of the keys only some "
                               f"readers read, it reads {list(reader.KEYS)}); remove it from the config")


# The keys only some readers read (a reader lists those it reads in its KEYS).
READER_KEYS = ("labels", "channels", "channel_roles", "classes", "labels_column", "group_column")
# The data YAML's keys and those a YAML may lack.
YAML_KEYS = yaml_keys(DataSpec)
OPTIONAL_KEYS = (*READER_KEYS, "generator")


def check_root(spec: DataSpec) -> None:
    """The real data's root must exist; data.root given under the synthetic default (generated on demand) is
    refused."""
    from dinoloc.data.reader import get_reader

    if spec.synthetic:
        expected = Path(str(spec.synthetic_dir)) / "opencell"
        if Path(spec.root).resolve() != expected.resolve():
            # Reading a user's real-format folder under the synthetic config would label it SYNTHETIC.
            raise DinolocError(
                f"data.root={spec.root} is set but data=synthetic (the default) is selected; add data=opencell "
                f"to read your OpenCell-format folder, e.g. data=opencell data.root={spec.root}"
            )
        return
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
        out = prepare_dataset(manifest, out_dir, spec.split, min_grade=spec.labels.min_grade if spec.labels else 1,
                              resplit=spec.resplit)
        if spec.unit == "cell":
            from dinoloc.data.cells import ensure_cells

            ensure_cells(spec, out[0])
        return out
