"""HPA's own layout (`data=hpa_kaggle`): the Kaggle "Human Protein Atlas Image Classification" release that
Dino4Cells' HPA backbone was trained on.

`<data.root>/train.csv` has `Id,Target` (Target: space-separated class numbers 0-27, indices into data.classes,
HPA's 28 names in HPA's order); each Id is four single-channel files `<data.root>/train/<Id>_<colour>.png` (or
`.tif`). HPA names the files by colour: red = microtubules, green = protein, blue = nucleus, yellow = ER, which is
the naming fact this module holds (`COLOURS`); data.channels selects and orders them by name. The release has
no grouping column, so every Id is its own group.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dinoloc.data.folder import _read_csv_text, finish_manifest
from dinoloc.data.loaddata import check_same_shape, read_channel_files
from dinoloc.data.reader import Reader, join_files
from dinoloc.io import DinolocError

# HPA's file naming: channel name -> the colour in `<Id>_<colour>.png`
COLOURS = {"microtubules": "red", "protein": "green", "nucleus": "blue", "er": "yellow"}
SUFFIXES = (".png", ".tif", ".tiff")
CSV_HELP = "HPA's train.csv: columns Id, Target (space-separated class numbers)"


def _file(root: Path, image_dir: str, image_id: str, colour: str) -> str | None:
    for suffix in SUFFIXES:
        rel = f"{image_dir}/{image_id}_{colour}{suffix}"
        if (root / rel).is_file():
            return rel
    return None


def build_hpa_manifest(root: str | os.PathLike, annotations: str | os.PathLike, channels: Sequence[str],
                       classes: Sequence[str], *, image_dir: str = "train", validate_images: bool = True,
                       masks: str | None = None) -> pd.DataFrame:
    """The manifest of HPA's layout (module doc); every error names the CSV line and the fix."""
    root, path = Path(root), Path(annotations)
    names = [str(c) for c in channels]
    unknown = [c for c in names if c not in COLOURS]
    if unknown or not names or len(set(names)) != len(names):
        raise DinolocError(f"data.channels={names}: HPA's channels are {list(COLOURS)} (files "
                           f"{', '.join(f'<Id>_{c}' for c in COLOURS.values())}); list each wanted one once")
    classes = [str(c) for c in classes]
    table = _read_csv_text(path, CSV_HELP)
    missing = [c for c in ("Id", "Target") if c not in table.columns]
    if missing:
        raise DinolocError(f"{path}: missing column(s) {missing}; expected {CSV_HELP}")
    if masks and masks not in table.columns:
        raise DinolocError(f"{path}: data.masks={masks} is not a column (columns: {list(table.columns)})")
    rows, labels, lines, seen = [], [], [], {}
    for i, rec in enumerate(table.to_dict("records")):
        line = i + 2
        where = f"{path}: line {line}"
        image_id = str(rec["Id"]).strip()
        if not image_id:
            raise DinolocError(f"{where}: empty Id; fill it in or delete the row")
        if image_id in seen:
            raise DinolocError(f"{where}: Id {image_id} is listed twice (also line {seen[image_id]}); keep one row")
        seen[image_id] = line
        found = []
        for tok in str(rec["Target"]).split():
            if not tok.isdigit() or int(tok) >= len(classes):
                raise DinolocError(f"{where}: Target {tok!r} of Id {image_id} is outside 0-{len(classes) - 1} "
                                   f"(HPA's {len(classes)} classes, data.classes); fix the row")
            found.append(classes[int(tok)])
        rels = []
        for ch in names:
            rel = _file(root, image_dir, image_id, COLOURS[ch])
            if rel is None:
                raise DinolocError(f"{where}: Id {image_id} has no {root / image_dir}/{image_id}_{COLOURS[ch]}.png "
                                   f"(or .tif); each Id needs its {', '.join(COLOURS.values())} files. Add it or "
                                   "delete the row")
            rels.append(rel)
        if validate_images:
            check_same_shape([root / r for r in rels], where)
        row = {"image_id": image_id, "path": join_files(rels), "target": image_id, "labeled": bool(found)}
        if masks:
            from dinoloc.data.folder import mask_path

            row["mask"] = mask_path(root, rec[masks], where)
        rows.append(row)
        labels.append(sorted(set(found), key=classes.index))
        lines.append(line)
    return finish_manifest(rows, labels, classes, path, "none", lines)


class HpaKaggleReader(Reader):
    """HPA's Kaggle layout (module doc)."""

    name = "hpa_kaggle"
    root_help = "point it at the folder holding train.csv and train/"

    def manifest(self, spec):
        if not spec.classes:
            raise DinolocError("data=hpa_kaggle needs data.classes: HPA's 28 names in HPA's order")
        return build_hpa_manifest(spec.root, spec.annotations, self.channels(spec), list(spec.classes),
                                  masks=spec.masks if spec.unit == "cell" else None)

    def channels(self, spec):
        return [str(c) for c in spec.channels or ()] or list(COLOURS)

    def read_fn(self, spec, keep=None):
        return functools.partial(read_channel_files, keep=keep)

    def read_names(self, channels):
        return read_channel_files


READER = HpaKaggleReader()
