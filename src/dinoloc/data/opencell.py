"""The OpenCell reader: file names, 2-channel 16-bit images and the localization annotation table.

On disk (as distributed): one folder per target `<gene>_<ensg>/` holding
`OC-FOV_<gene>_<ensg-id>_<cell-line-id>_<fov-id>_proj.tif` (2-D projection, 16-bit, channel 0 = Hoechst
nucleus, channel 1 = protein); `_stack.tif` z-stacks are ignored. Every array leaving this module is
ordered like `dinoloc.ontology.OPENCELL_CHANNELS` = (protein, nucleus), whatever the file's order.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from dinoloc.io import DinolocError
from dinoloc.ontology import CATEGORIES, GRADE_COLUMNS, grade_columns, label_columns

PROJ_SUFFIX = "_proj.tif"
ANNOTATION_COLUMNS = ("ensg_id", "target_name", *GRADE_COLUMNS.values())
EXPECTED_LAYOUT = (
    "expected one folder per target '<gene>_<ensg>/' holding "
    "'OC-FOV_<gene>_<ensg-id>_<cell-line-id>_<fov-id>_proj.tif' files "
    "(e.g. ATL3_ENSG00000184743/OC-FOV_ATL3_ENSG00000184743_CID000367_FID00030311_proj.tif)"
)
EXPECTED_IMAGE = "a 2-channel uint16 TIFF, channel-first (2, H, W) or channel-last (H, W, 2), nucleus first"

# Gene names may hold '-', '.', or even '_' (lazy match); the ENSG id anchors the split.
_FOV_RE = re.compile(
    r"^OC-FOV_(?P<gene>.+?)_(?P<ensg_id>ENSG\d+)_(?P<cell_line>[^_]+)_(?P<fov>[^_]+)_proj\.tif$"
)
# File channel order (nucleus first) -> pipeline order (protein, nucleus).
_FILE_TO_PIPELINE = [1, 0]


def parse_fov_name(filename: str | os.PathLike) -> dict[str, str]:
    """Split an OpenCell projection file name into gene, ensg_id, cell_line and fov."""
    name = Path(filename).name
    m = _FOV_RE.match(name)
    if m is None:
        raise DinolocError(
            f"{filename}: not an OpenCell projection file name; expected "
            "'OC-FOV_<gene>_<ensg-id>_<cell-line-id>_<fov-id>_proj.tif', "
            "e.g. OC-FOV_ATL3_ENSG00000184743_CID000367_FID00030311_proj.tif. Rename or remove the file."
        )
    return m.groupdict()


def _layout(path: str | os.PathLike, shape: tuple[int, ...], dtype: np.dtype, min_size: int) -> tuple[int, int, int]:
    """Validate a stored image shape/dtype; return (channel axis, H, W)."""
    shape = tuple(s for s in shape if s != 1) if len(shape) > 3 else tuple(shape)
    if np.dtype(dtype) != np.uint16:
        raise DinolocError(f"{path}: pixel type is {np.dtype(dtype)}, expected {EXPECTED_IMAGE}.")
    if len(shape) != 3:
        n = 1 if len(shape) == 2 else "?"
        raise DinolocError(
            f"{path}: image shape {shape} ({n} channel(s)), expected {EXPECTED_IMAGE}."
        )
    # The channel axis is the length-2 axis at the front or back; a 2x2 ambiguity resolves to the front.
    if shape[0] == 2:
        axis, (h, w) = 0, shape[1:]
    elif shape[2] == 2:
        axis, (h, w) = 2, shape[:2]
    else:
        raise DinolocError(
            f"{path}: image shape {shape} has no 2-channel axis first or last "
            f"(found {min(shape[0], shape[2])} channels?), expected {EXPECTED_IMAGE}."
        )
    if h < min_size or w < min_size:
        raise DinolocError(f"{path}: image is {h}x{w} px, smaller than the minimum {min_size} px per side; replace it with the full-size FOV or remove it.")
    return axis, int(h), int(w)


def _open_error(path: str | os.PathLike, err: Exception) -> DinolocError:
    return DinolocError(
        f"{path}: unreadable TIFF ({type(err).__name__}: {err}); the file is zero-byte, truncated or not a "
        f"TIFF. Expected {EXPECTED_IMAGE}; re-download or remove it."
    )


def _check_exists(path: str | os.PathLike) -> None:
    if not Path(path).is_file():
        raise DinolocError(f"{path}: image file not found; check data.root and that the download is complete.")


class _TiffErrors(logging.Handler):
    """Collects tifffile's logged errors: it logs (not raises) bad IFD/tag offsets and reads on."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_image_header(path: str | os.PathLike, *, min_size: int = 16) -> tuple[int, int]:
    """(H, W) from the TIFF header alone (no pixel decode): shape, dtype and on-disk length are checked.

    A download cut short can keep a valid first header but lose pixel bytes or later pages: every
    page's strip/tile offsets + byte counts (and a contiguous series' extent) must fit in the file,
    and tifffile must not have logged a broken page or tag offset.
    """
    _, _, h, w = _open_checked(path, min_size, decode=False)
    return h, w


def read_image(path: str | os.PathLike, *, min_size: int = 16) -> np.ndarray:
    """Read an OpenCell projection as float32 (2, H, W) in (protein, nucleus) order (16-bit values kept)."""
    arr, axis, h, w = _open_checked(path, min_size, decode=True)
    arr = arr.reshape(2, h, w) if axis == 0 and arr.ndim > 3 else arr
    if axis == 2:
        arr = np.moveaxis(arr.reshape(h, w, 2), 2, 0)
    out = np.empty((2, h, w), dtype=np.float32)
    for dst, src in enumerate(_FILE_TO_PIPELINE):  # reorder and convert in one pass per channel
        out[dst] = arr[src]
    return out


def _open_checked(
    path: str | os.PathLike, min_size: int, decode: bool
) -> tuple[np.ndarray | None, int, int, int]:
    """Open the TIFF once: check its header (layout, dtype, byte extents), then decode the pixels if asked.
    Returns (pixels or None, channel axis (0 or 2), H, W)."""
    _check_exists(path)
    size = os.path.getsize(path)
    logger, errors = logging.getLogger("tifffile"), _TiffErrors()
    logger.addHandler(errors)
    arr = None
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            axis, h, w = _layout(path, series.shape, series.dtype, min_size)
            end = 0
            if series.dataoffset is not None:  # contiguous data: one extent for all pages
                end = int(series.dataoffset) + int(series.nbytes)
            for page in tf.pages:
                for off, n in zip(page.dataoffsets, page.databytecounts, strict=False):
                    end = max(end, int(off) + int(n))
            if decode and end <= size and not errors.messages:
                arr = np.asarray(series.asarray())
    except DinolocError:
        raise
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error, ... on bad files
        raise _open_error(path, err) from err
    finally:
        logger.removeHandler(errors)
    if end > size or errors.messages:
        why = f"header promises {end} bytes, file has {size}" if end > size else errors.messages[0]
        raise DinolocError(f"{path}: truncated or corrupted TIFF ({why}); re-download the file.")
    return arr, axis, h, w


def find_images(root: str | os.PathLike) -> pd.DataFrame:
    """Every `*_proj.tif` under root: columns image_id, path (relative, posix), target, ensg_id; sorted by image_id."""
    root = Path(root)
    if not root.is_dir():
        raise DinolocError(f"{root}: data folder not found; set data.root to the OpenCell download ({EXPECTED_LAYOUT}).")
    rows: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for p in sorted(root.rglob(f"*{PROJ_SUFFIX}")):
        if p.name.startswith(".") or not p.is_file():  # hidden files: temp files, macOS '._' forks
            continue
        info = parse_fov_name(p)
        image_id = p.name[: -len(PROJ_SUFFIX)]
        rel = p.relative_to(root).as_posix()
        if image_id in seen:
            raise DinolocError(
                f"{root}: image id {image_id} appears twice: {seen[image_id]} and {rel}; remove one copy."
            )
        seen[image_id] = rel
        rows.append({"image_id": image_id, "path": rel, "target": info["gene"], "ensg_id": info["ensg_id"]})
    if not rows:
        raise DinolocError(f"{root}: no '*{PROJ_SUFFIX}' images found; {EXPECTED_LAYOUT}.")
    df = pd.DataFrame(rows, columns=["image_id", "path", "target", "ensg_id"])
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def _decode_csv(path: Path) -> str:
    if not path.is_file():
        raise DinolocError(
            f"{path}: annotation file not found; set data.annotations to opencell-localization-annotations.csv."
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DinolocError(
            f"{path}: line {line} (row {line - 1} after the header) is not valid UTF-8 "
            f"(byte offset {err.start}); re-save the file as UTF-8."
        ) from err
    if not text.strip():
        raise DinolocError(
            f"{path}: the annotation file is empty; expected a header {', '.join(ANNOTATION_COLUMNS)} and one row per target."
        )
    return text


def read_annotations(
    path: str | os.PathLike,
    min_grade: int = 1,
    *,
    classes: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per target (file order): ensg_id, target_name, 0/1 label and highest grade per category.

    A category is positive when its highest listed grade is >= min_grade (1 = any grade counts).
    `classes` are the categories kept (default: the paper's 17, `dinoloc.ontology.CATEGORIES`); names in
    `ignore` are OpenCell categories known to lie outside them (e.g. `small_aggregates`) and are dropped;
    any other name is refused, so a typo never passes silently. What was dropped is in
    `frame.attrs["label_notes"]`: {"ignored": {name: n_targets}, "only_ignored": [target_name, ...]}.
    """
    path = Path(path)
    if isinstance(min_grade, bool) or not isinstance(min_grade, (int, np.integer)) or not 1 <= min_grade <= 3:
        raise DinolocError(f"labels.min_grade must be 1, 2 or 3 (got {min_grade!r}).")
    classes, ignored_names = check_label_sets(classes, ignore)
    text = _decode_csv(path)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:
        raise DinolocError(f"{path}: not a readable CSV ({err}); expected columns {', '.join(ANNOTATION_COLUMNS)}.") from err
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ANNOTATION_COLUMNS if c not in table.columns]
    if missing:
        raise DinolocError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must hold {', '.join(ANNOTATION_COLUMNS)}."
        )
    if table.empty:
        raise DinolocError(f"{path}: header only, no annotation rows; expected one row per target.")

    n = len(table)
    grades = np.zeros((n, len(classes)), dtype=np.int64)
    index = {c: k for k, c in enumerate(classes)}
    ignored: dict[str, set[int]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for i, rec in enumerate(table.to_dict("records")):
        row = i + 1  # 1-based data row; the file line is row + 1
        where = f"{path}: row {row} (line {row + 1})"
        ensg, name = str(rec["ensg_id"]).strip(), str(rec["target_name"]).strip()
        if not ensg or not name:
            raise DinolocError(f"{where}: empty ensg_id or target_name; fill both in or delete the row.")
        for key, value in (("ensg_id", ensg), ("target_name", name)):
            if (key, value) in first_seen:
                raise DinolocError(
                    f"{where}: duplicated {key} {value} (also row {first_seen[key, value]}); keep one row per target."
                )
            first_seen[key, value] = row
        for grade, col in GRADE_COLUMNS.items():
            for item in str(rec[col]).split(";"):
                cat = item.strip().lower()
                if not cat:
                    continue
                if cat in ignored_names:
                    ignored.setdefault(cat, set()).add(i)
                    continue
                if cat not in index:
                    raise DinolocError(
                        f"{where}, column {col}: unknown category {item.strip()!r}; valid names: "
                        f"{', '.join(classes)} (ignored, outside the study: {', '.join(ignored_names) or 'none'}). "
                        "Fix the name, or add it to data.labels.ignore to drop it."
                    )
                grades[i, index[cat]] = max(grades[i, index[cat]], grade)

    out = pd.DataFrame({
        "ensg_id": table["ensg_id"].str.strip().to_numpy(),
        "target_name": table["target_name"].str.strip().to_numpy(),
    })
    labels = pd.DataFrame((grades >= min_grade).astype(np.int64), columns=label_columns())
    grade_df = pd.DataFrame(grades, columns=grade_columns())
    frame = pd.concat([out, labels, grade_df], axis=1)
    carried = sorted(set().union(*ignored.values())) if ignored else []
    frame.attrs["label_notes"] = {
        "ignored": {c: len(ignored[c]) for c in ignored_names if c in ignored},
        # Annotated, but with no name among the classes: kept as labelled with an all-zero row (see README).
        "only_ignored": [str(out["target_name"].iloc[i]) for i in carried if not grades[i].any()],
    }
    return frame


def check_label_sets(classes: Sequence[str] | None, ignore: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validate data.labels.classes / data.labels.ignore: lower-case names, no overlap, no repeats.

    The rest of the pipeline (manifest columns, classifier outputs, report) names classes in the paper's
    17-category order, so `classes` must be exactly that list.
    """
    classes = CATEGORIES if classes is None else tuple(str(c).strip().lower() for c in classes)
    ignore = tuple(str(c).strip().lower() for c in ignore)
    if classes != CATEGORIES:
        raise DinolocError(
            f"data.labels.classes must list the paper's 17 OpenCell categories in portal order "
            f"({', '.join(CATEGORIES)}); got {', '.join(classes)}. Move other names to data.labels.ignore."
        )
    repeated = sorted({c for c in ignore if ignore.count(c) > 1})
    both = sorted(set(classes) & set(ignore))
    if repeated or both:
        what = f"listed twice: {', '.join(repeated)}" if repeated else f"also in labels.classes: {', '.join(both)}"
        raise DinolocError(f"data.labels.ignore: {what}; list each category once, in one of the two lists.")
    return classes, ignore


# ----------------------------------------------------------------------------------------------------------
# the reader interface (dinoloc.data.reader)
# ----------------------------------------------------------------------------------------------------------
from dinoloc.data.reader import Reader, Source  # noqa: E402  (the interface imports nothing of this module)


class OpenCellReader(Reader):
    """OpenCell's download: channels (protein, nucleus) whatever the file order, the paper's 17 classes."""

    name = "opencell"
    KEYS = ("labels",)
    root_help = ("point it at the OpenCell download (per-target folders of OC-FOV_*_proj.tif), e.g. "
                 "data.root=/data/opencell, or use data=synthetic for the demo")

    def manifest(self, spec):
        from dinoloc.data.manifest import build_manifest

        labels = spec.labels
        if labels is None:
            raise DinolocError(f"data={spec.name} (reader opencell) needs data.labels: min_grade, classes and ignore "
                               "(see configs/data/opencell.yaml)")
        return build_manifest(spec.root, spec.annotations, min_grade=labels.min_grade,
                              classes=list(labels.classes) or None, ignore=list(labels.ignore))

    def channels(self, spec=None):
        from dinoloc.ontology import OPENCELL_CHANNELS

        return list(OPENCELL_CHANNELS)

    def classes(self, spec=None):
        return label_columns()

    def nucleus_channel(self, spec, roles=None) -> int:
        return self.channels().index("nucleus")

    def read_fn(self, spec, keep=None):
        return read_image

    def source(self, spec, roles, backbone_channels, channel_map, strategy):
        # backbone.channel_map as is and no extra cache-key fields: OpenCell's cache keys stay what they were.
        return Source(read_fn=read_image, source_channels=tuple(self.channels()), channel_map=dict(channel_map),
                      fields={})

    def display_pair(self, root, rel, channels=(), roles=None):
        return read_image(self.item(root, rel))


READER = OpenCellReader()
