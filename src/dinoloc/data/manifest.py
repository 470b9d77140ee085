"""The manifest: one row per OpenCell image with its target's labels; every later stage reads it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dinoloc.data.opencell import check_image_header, find_images, read_annotations
from dinoloc.io import DinolocError, frame_sha256
from dinoloc.ontology import grade_columns, label_columns
from dinoloc.progress import progress

MANIFEST_COLUMNS = ["image_id", "path", "target", "ensg_id", "labeled", *label_columns(), *grade_columns()]
_PROGRESS_MIN = 200  # below this a progress bar is noise


def build_manifest(
    root: str | os.PathLike,
    annotations_path: str | os.PathLike,
    min_grade: int = 1,
    validate_images: bool = True,
    *,
    classes: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per `_proj.tif` under root, joined to the annotation table by ensg_id.

    Images of unannotated targets stay (labeled False, all labels 0) so they can still be embedded or
    used for pretraining; an annotated target without any image means a partial download and is refused.
    Annotation names in `ignore` are dropped; what was dropped is in `manifest.attrs["label_notes"]`.
    """
    images = find_images(root)
    ann = read_annotations(annotations_path, min_grade=min_grade, classes=classes, ignore=ignore)

    have = set(images["ensg_id"])
    for i, (ensg, name) in enumerate(zip(ann["ensg_id"], ann["target_name"], strict=True)):
        if ensg not in have:
            raise DinolocError(
                f"{annotations_path}: row {i + 1} (line {i + 2}) annotates target {name} ({ensg}) but {root} holds "
                f"no image of it; complete the download or delete that row."
            )

    if validate_images:
        paths = images["path"].tolist()
        for rel in progress(paths, desc="checking images", disable=len(paths) <= _PROGRESS_MIN):
            check_image_header(Path(root) / rel)

    ann_cols = ["ensg_id", *label_columns(), *grade_columns()]
    m = images.merge(ann[ann_cols], on="ensg_id", how="left", indicator=True, validate="many_to_one")
    m["labeled"] = (m.pop("_merge") == "both").to_numpy()
    for col in (*label_columns(), *grade_columns()):
        m[col] = m[col].fillna(0).astype(np.int64)
    m["labeled"] = m["labeled"].astype(bool)
    out = m[MANIFEST_COLUMNS].sort_values("image_id", kind="stable").reset_index(drop=True)
    out.attrs["label_notes"] = ann.attrs["label_notes"]
    out.attrs["classes"] = label_columns()
    return out


def manifest_hash(manifest: pd.DataFrame) -> str:
    """Content hash of the manifest; the split file stores it to detect a changed dataset."""
    return frame_sha256(manifest)


def class_columns(manifest: pd.DataFrame) -> list[str]:
    """The manifest's class columns in order: what its builder recorded (a folder dataset's data.classes),
    else OpenCell's 17."""
    return list(manifest.attrs.get("classes") or label_columns())


def read_manifest_csv(path: str | os.PathLike, classes: list[str] | None = None) -> pd.DataFrame:
    """Read manifest.csv back with the dtypes build_manifest gives (so manifest_hash round-trips). `classes`:
    a folder dataset's class list (its manifest has image_id, path, target, labeled and one column per class)."""
    if classes is not None and list(classes) != label_columns():
        return _read_folder_manifest_csv(Path(path), list(classes))
    path = Path(path)
    if not path.is_file():
        raise DinolocError(f"{path}: manifest not found; run dinoloc-data to build it.")
    text_cols = {c: str for c in ("image_id", "path", "target", "ensg_id")}
    # keep_default_na=False: gene names such as 'NA' must stay strings.
    df = pd.read_csv(path, dtype=text_cols, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DinolocError(f"{path}: missing column(s) {', '.join(missing)}; rebuild it with dinoloc-data.")
    df["labeled"] = df["labeled"].map({"True": True, "False": False, True: True, False: False})
    if df["labeled"].isna().any():
        raise DinolocError(f"{path}: column 'labeled' must hold True/False; rebuild it with dinoloc-data.")
    df["labeled"] = df["labeled"].astype(bool)
    for col in (*label_columns(), *grade_columns()):
        df[col] = df[col].astype(np.int64)
    return df[MANIFEST_COLUMNS]


def _read_folder_manifest_csv(path: Path, classes: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DinolocError(f"{path}: manifest not found; run dinoloc-data to build it.")
    cols = ["image_id", "path", "target", "labeled", *classes]
    head = pd.read_csv(path, nrows=0).columns
    text = {c: str for c in head if c not in ("labeled", *classes)}
    df = pd.read_csv(path, dtype=text, keep_default_na=False)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DinolocError(f"{path}: missing column(s) {', '.join(missing)}; rebuild it with dinoloc-data.")
    df["labeled"] = df["labeled"].map({"True": True, "False": False, True: True, False: False}).astype(bool)
    for col in classes:
        df[col] = df[col].astype(np.int64)
    # a reader's own text columns (mask, LoadData's Metadata_*) stay, in file order, as strings
    # (file order kept: it is the order the reader built them in, so manifest_hash round-trips)
    df.attrs["classes"] = list(classes)
    return df
