"""CellProfiler LoadData CSVs (`data=loaddata`): one single-channel file per channel and site (Cell Painting:
JUMP-CP, BBBC021/022, RxRx).

`data.annotations` has one row per site with a `FileName_<Ch>` + `PathName_<Ch>` pair per channel (PathName
absolute or relative to data.root; an `Orig` prefix is dropped, so `FileName_OrigDNA` is channel `DNA`), the
labels in `data.labels_column` (class names separated by ';'; empty = unlabelled) and the group that never
crosses splits in `data.group_column` (e.g. Metadata_Plate). `data.channels` selects and orders channels by
name (null: every channel, in the CSV's order). Every channel of a site must have the same shape. The manifest's
`path` lists a site's files in channel order separated by ';'; its `Metadata_*` columns are kept.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import tifffile

from dinoloc.data.folder import (
    PIL_SUFFIXES,
    TIFF_SUFFIXES,
    _read_csv_text,
    finish_manifest,
    image_shape,
    mask_path,
)
from dinoloc.data.reader import Reader, join_files
from dinoloc.io import DinolocError

CSV_HELP = ("a CellProfiler LoadData CSV: FileName_<Channel> and PathName_<Channel> per channel, the labels column "
            "(data.labels_column) and the group column (data.group_column)")


# ----------------------------------------------------------------------------------------------------------
# one file per channel -> (C, H, W)
# ----------------------------------------------------------------------------------------------------------
def read_plane(path: Path) -> np.ndarray:
    """One single-channel file (TIFF, PNG, JPEG) as a 2-D array."""
    if not path.is_file():
        raise DinolocError(f"{path}: image file not found; check data.root and the CSV's PathName / FileName")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            arr = np.asarray(tifffile.imread(path))
        elif suffix in PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
        else:
            raise DinolocError(f"{path}: unsupported file type {suffix!r}; use TIFF or PNG / JPEG")
    except DinolocError:
        raise
    except Exception as err:  # tifffile / PIL raise many types on damaged files
        raise DinolocError(f"{path}: unreadable image ({type(err).__name__}: {err}); replace or remove it") from err
    arr = arr.reshape([s for s in arr.shape if s != 1]) if arr.ndim > 2 else arr
    if arr.ndim != 2:
        raise DinolocError(f"{path}: shape {arr.shape} is not one channel (H, W); a site's channels are one file "
                           "each here")
    return arr


def read_channel_files(files: Sequence[Path], keep: Sequence[int] | None = None) -> np.ndarray:
    """A site's channel files (in channel order) as float32 (C, H, W); `keep` selects channels."""
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    chosen = files if keep is None else [files[i] for i in keep]
    planes = [read_plane(Path(f)) for f in chosen]
    for f, p in zip(chosen[1:], planes[1:], strict=True):
        if p.shape != planes[0].shape:
            raise DinolocError(f"{f}: shape {p.shape} differs from {chosen[0]} {planes[0].shape}, a channel of the "
                               "same site; every channel of a site must have the same shape")
    return np.ascontiguousarray(np.stack(planes), dtype=np.float32)


def check_same_shape(files: Sequence[Path], where: str) -> None:
    """Every channel file exists and has the shape of the first (headers only)."""
    shapes = [image_shape(f) for f in files]
    for f, s in zip(files[1:], shapes[1:], strict=True):
        if s != shapes[0]:
            raise DinolocError(f"{where}: {f} has shape {s} but {files[0]} has {shapes[0]}; every channel of a "
                               "site must have the same shape (re-export the site or delete the row)")


# ----------------------------------------------------------------------------------------------------------
# the CSV
# ----------------------------------------------------------------------------------------------------------
def csv_channels(columns: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Channel name -> (FileName_ column, PathName_ column), in the CSV's order; `Orig` prefixes dropped."""
    out: dict[str, tuple[str, str]] = {}
    for c in columns:
        if c.startswith("FileName_"):
            raw = c[len("FileName_"):]
            name = raw[4:] if raw.startswith("Orig") and len(raw) > 4 else raw
            out[name] = (c, f"PathName_{raw}")
    return out


def read_table(path: Path) -> tuple[pd.DataFrame, dict[str, tuple[str, str]]]:
    table = _read_csv_text(path, CSV_HELP)
    chans = csv_channels(list(table.columns))
    if not chans:
        raise DinolocError(f"{path}: no FileName_<Channel> column; expected {CSV_HELP}")
    missing = [p for _, p in chans.values() if p not in table.columns]
    if missing:
        raise DinolocError(f"{path}: missing column(s) {missing}; each FileName_<Channel> needs its PathName_<Channel>")
    return table, chans


def selected(spec_channels: Sequence[str], chans: dict[str, tuple[str, str]], path: Path) -> list[str]:
    """data.channels (by name), or every channel of the CSV in its order."""
    names = [str(c) for c in spec_channels] or list(chans)
    unknown = [c for c in names if c not in chans]
    if unknown or len(set(names)) != len(names):
        raise DinolocError(f"data.channels={names}: {path} has channels {list(chans)} (FileName_<Channel>, 'Orig' "
                           "dropped); list each wanted one once")
    return names


def _rel(root: Path, folder: str, name: str) -> str:
    folder = str(folder).strip().replace("\\", "/")
    p = PurePosixPath(folder) / str(name).strip() if folder else PurePosixPath(str(name).strip())
    if p.is_absolute():
        try:
            return p.relative_to(PurePosixPath(root.resolve().as_posix())).as_posix()
        except ValueError:
            return p.as_posix()  # outside data.root: kept absolute (root / abs = abs)
    return p.as_posix()


@dataclass(frozen=True)
class Columns:
    """The LoadData CSV's columns dinoloc reads besides the channels' (data.labels_column, data.group_column and,
    under data.unit=cell, data.masks)."""

    labels: str             # class names separated by ';'
    group: str = ""         # never crosses splits (e.g. Metadata_Plate); "": each site its own group
    masks: str | None = None  # each site's label image


def build_loaddata_manifest(root: str | os.PathLike, annotations: str | os.PathLike, channels: Sequence[str],
                            columns: Columns, classes: Sequence[str] | None = None, *, group_by: str = "target",
                            validate_images: bool = True) -> pd.DataFrame:
    """The manifest of a LoadData CSV (see the module doc); every error names the CSV line and the fix."""
    root, path = Path(root), Path(annotations)
    labels_column, group_column, masks = columns.labels, columns.group, columns.masks
    table, chans = read_table(path)
    names = selected(channels, chans, path)
    for key, col in (("data.labels_column", labels_column), ("data.group_column", group_column),
                     ("data.masks", masks)):
        if col and col not in table.columns:
            raise DinolocError(f"{path}: {key}={col} is not a column (columns: {list(table.columns)})")
    if not labels_column:
        raise DinolocError("data=loaddata needs data.labels_column: the CSV column with the class names")
    given = None if classes is None else [str(c).strip() for c in classes]
    meta = [c for c in table.columns if c.startswith("Metadata_")]
    rows, labels, lines, seen = [], [], [], {}
    for i, rec in enumerate(table.to_dict("records")):
        line = i + 2
        where = f"{path}: line {line}"
        rels = []
        for ch in names:
            fcol, pcol = chans[ch]
            if not str(rec[fcol]).strip():
                raise DinolocError(f"{where}: empty {fcol}; fill it in or delete the row")
            rel = _rel(root, rec[pcol], rec[fcol])
            if not (root / rel).is_file():
                raise DinolocError(f"{where}: {fcol} file {root / rel} not found (PathName_ is absolute or relative "
                                   "to data.root); fix data.root, the path, or delete the row")
            rels.append(rel)
        if validate_images:
            check_same_shape([root / r for r in rels], where)
        site = "/".join(str(rec[c]).strip() for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
                        if c in table.columns) or rels[0]
        if site in seen:
            raise DinolocError(f"{where}: site {site} is listed twice (also line {seen[site]}); keep one row per site")
        seen[site] = line
        found = [n.strip() for n in str(rec[labels_column]).split(";") if n.strip()]
        if given is not None and (bad := [n for n in found if n not in given]):
            raise DinolocError(f"{where}: class(es) {bad} not in data.classes={given}; fix the name or add it to "
                               "data.classes")
        group = str(rec[group_column]).strip() if group_column else ""
        row = {"image_id": site, "path": join_files(rels), "target": group or site, "labeled": bool(found)}
        if masks:
            row["mask"] = mask_path(root, rec[masks], where)
        row.update({c: str(rec[c]) for c in meta})
        rows.append(row)
        labels.append(found)
        lines.append(line)
    return finish_manifest(rows, labels, given, path, group_by, lines)


class LoadDataReader(Reader):
    """A CellProfiler LoadData CSV (module doc)."""

    name = "loaddata"
    KEYS = ("channels", "channel_roles", "classes", "labels_column", "group_column")
    root_help = "point it at the folder the LoadData CSV's relative PathName_ columns start from"

    def manifest(self, spec):
        columns = Columns(labels=spec.labels_column or "", group=spec.group_column or "",
                          masks=spec.masks if spec.unit == "cell" else None)
        return build_loaddata_manifest(spec.root, spec.annotations, spec.channels or (), columns, self.classes(spec),
                                       group_by=spec.split.group_by)

    def channels(self, spec):
        if spec.channels:
            return [str(c) for c in spec.channels]
        path = Path(spec.annotations)
        return selected((), read_table(path)[1], path)

    def read_fn(self, spec, keep=None):
        return functools.partial(read_channel_files, keep=keep)

    def read_names(self, channels):
        return read_channel_files


READER = LoadDataReader()
