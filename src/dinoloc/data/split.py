"""The leakage-free split: a fixed test share and cross-validation folds, stratified over the 17 labels.

Labels belong to the protein, so by default whole targets are assigned (no target in two sets or two
folds). The split is computed once per manifest and stored with the manifest's hash; a later call on a
changed dataset is refused rather than silently re-split, since results on different folds do not compare.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

from dinoloc.data.manifest import class_columns, manifest_hash, read_manifest_csv
from dinoloc.data.prepare import SplitSpec
from dinoloc.io import DinolocError, frame_sha256, read_json, write_csv, write_json
from dinoloc.rules import typed

SPLIT_COLUMNS = ["image_id", "target", "split", "fold"]
SPLIT_VERSION = 1


def _check_params(test_size: float, n_folds: int, group_by: str, seed: int) -> None:
    typed(SplitSpec, {"test_size": test_size, "n_folds": n_folds, "group_by": group_by, "seed": seed})


def _ensure_test_coverage(y: np.ndarray, test: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move units so every class with >= 2 positive units has one in test and one outside it.

    Iterative stratification rounds a rare class's 10% share (0.2 of 2 targets) down to zero, and a
    class absent from the test set silently drops out of its macro F1. For each such class, one unit
    carrying it moves to test, and a test unit whose classes stay covered without it moves back, so
    the test size is kept where possible.
    """
    test = test.copy()
    counts = y.sum(axis=0)
    for c in np.argsort(counts, kind="stable"):
        if counts[c] < 2 or y[test, c].any():
            continue
        train_cnt = y[~test].sum(axis=0)
        # A unit may leave train only if each of its classes keeps a train positive.
        movable = [i for i in np.flatnonzero(~test & (y[:, c] == 1)) if np.all(train_cnt[y[i] == 1] >= 2)]
        if not movable:
            continue
        mover = movable[int(rng.integers(len(movable)))]
        test[mover] = True
        test_cnt = y[test].sum(axis=0)
        # Swap back a test unit none of whose classes would lose their last test positive.
        back = [
            i
            for i in np.flatnonzero(test)
            if i != mover and np.all(test_cnt[(y[i] == 1) & (counts >= 2)] >= 2)
        ]
        if back:
            test[back[int(rng.integers(len(back)))]] = False
    return test


def choose_test_units(y: np.ndarray, test_size: float, seed: int) -> tuple[int, np.ndarray]:
    """The test set of units with label matrix y: iterative stratification at `test_size`, then every class
    with >= 2 units gets a test positive (_ensure_test_coverage). Returns (units stratification asked for,
    is_test). Also what the coverage simulation (dinoloc.simulation) draws its test sets with."""
    sss = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    _, test_idx = next(sss.split(np.zeros((len(y), 1)), y))
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_idx] = True
    return int(is_test.sum()), _ensure_test_coverage(y, is_test, np.random.default_rng(seed))


def _assign_units(
    y: np.ndarray, test_size: float, n_folds: int, seed: int, unit: str = "targets"
) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: is_test (bool) and fold (-1 for test)."""
    n = len(y)
    n_test = int(np.ceil(n * test_size))
    if n_test < 1 or n - n_test < n_folds:
        raise DinolocError(
            f"too few labeled units ({n}) for test_size={test_size} and n_folds={n_folds}: the test set needs "
            f">= 1 and the training set >= n_folds; add data, lower split.n_folds or change split.test_size."
        )
    x = np.zeros((n, 1))
    requested, is_test = choose_test_units(y, test_size, seed)
    actual = int(is_test.sum())
    if actual > requested:
        # On small datasets covering every class in test can take far more than test_size: say so.
        warnings.warn(
            f"test share grew: split.test_size={test_size:g} asked for {requested} of {n} {unit} "
            f"({requested / n:.0%}), but putting every class with >= 2 {unit} into the test set took "
            f"{actual} of {n} ({actual / n:.0%})",
            UserWarning,
            stacklevel=3,
        )

    fold = np.full(n, -1, dtype=np.int64)
    train_idx = np.flatnonzero(~is_test)
    kf = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for f, (_, val) in enumerate(kf.split(x[train_idx], y[train_idx])):
        fold[train_idx[val]] = f
    return is_test, fold


def make_split(
    manifest: pd.DataFrame,
    test_size: float = 0.1,
    n_folds: int = 5,
    group_by: str = "target",
    seed: int = 0,
) -> pd.DataFrame:
    """image_id, target, split (train/test/unlabeled), fold (0..n_folds-1 for train, NA otherwise), manifest order."""
    _check_params(test_size, n_folds, group_by, seed)
    classes = class_columns(manifest)
    need = ["image_id", "target", "labeled", *classes]
    missing = [c for c in need if c not in manifest.columns]
    if missing:
        raise DinolocError(f"manifest lacks column(s) {', '.join(missing)}; build it with build_manifest.")
    labeled = manifest["labeled"].astype(bool).to_numpy()
    y_img = manifest[classes].to_numpy(dtype=np.int64)

    if group_by == "target":
        # One unit per target with its label vector (images of a target share labels; union to be safe).
        lab = pd.DataFrame(y_img[labeled], columns=classes)
        lab["target"] = manifest["target"].to_numpy()[labeled]
        units = lab.groupby("target", sort=True).max()
        unit_of_image = manifest["target"].map(pd.Series(np.arange(len(units)), index=units.index))
        y = units.to_numpy(dtype=np.int64)
    else:
        unit_of_image = pd.Series(np.full(len(manifest), np.nan))
        unit_of_image[labeled] = np.arange(int(labeled.sum()))
        y = y_img[labeled]
    is_test, fold = _assign_units(y, test_size, n_folds, seed, unit="targets" if group_by == "target" else "images")

    split = np.full(len(manifest), "unlabeled", dtype=object)
    folds = pd.array([pd.NA] * len(manifest), dtype="Int64")
    u = unit_of_image.to_numpy()
    for i in np.flatnonzero(labeled):
        k = int(u[i])
        split[i] = "test" if is_test[k] else "train"
        if not is_test[k]:
            folds[i] = int(fold[k])
    return pd.DataFrame({
        "image_id": manifest["image_id"].to_numpy(),
        "target": manifest["target"].to_numpy(),
        "split": split.astype(str),
        "fold": folds,
    })


def _read_split_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DinolocError(f"{path}: split file not found; run dinoloc-data to build it.")
    df = pd.read_csv(
        path, dtype={"image_id": str, "target": str, "split": str}, keep_default_na=False, na_values={"fold": [""]}
    )
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise DinolocError(f"{path}: missing column(s) {', '.join(missing)}; rerun dinoloc-data with data.resplit=true.")
    df["fold"] = pd.to_numeric(df["fold"]).astype("Int64")
    return df[SPLIT_COLUMNS]


def _counts(split: pd.DataFrame) -> dict[str, Any]:
    counts: dict[str, Any] = {s: int((split["split"] == s).sum()) for s in ("train", "test", "unlabeled")}
    counts["targets"] = {s: int(split.loc[split["split"] == s, "target"].nunique()) for s in ("train", "test")}
    counts["folds"] = {str(f): int((split["fold"] == f).sum()) for f in sorted(split["fold"].dropna().unique())}
    return counts


def _describe_change(out_dir: Path, stored: dict[str, Any], params: dict[str, Any], manifest: pd.DataFrame) -> list[str]:
    changes = [f"{k}: {stored.get('params', {}).get(k)!r} -> {v!r}" for k, v in params.items()
               if stored.get("params", {}).get(k) != v]
    if stored.get("manifest_sha256") != manifest_hash(manifest):
        try:
            old = read_manifest_csv(out_dir / "manifest.csv", class_columns(manifest))
        except DinolocError:
            changes.append("the manifest differs (the stored manifest.csv is missing or unreadable)")
            return changes
        before, now = set(old["image_id"]), set(manifest["image_id"])
        added, removed = sorted(now - before), sorted(before - now)
        if added:
            changes.append(f"{len(added)} image(s) added (e.g. {', '.join(added[:3])})")
        if removed:
            changes.append(f"{len(removed)} image(s) removed (e.g. {', '.join(removed[:3])})")
        common = sorted(before & now)
        cols = ["labeled", *class_columns(manifest), "path", "target"]
        a = old.set_index("image_id").loc[common, cols]
        b = manifest.set_index("image_id").loc[common, cols]
        n_diff = int((a != b).any(axis=1).sum())
        if n_diff:
            changes.append(f"{n_diff} image(s) with changed labels, path or target")
        if not (added or removed or n_diff):
            changes.append("the manifest content differs (grades or column layout)")
    return changes


def prepare_dataset(
    manifest: pd.DataFrame,
    out_dir: str | os.PathLike,
    split_spec: SplitSpec,
    *,
    min_grade: int = 1,
    resplit: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split `manifest` (any reader's, dinoloc.data.reader) once as `split_spec` says; reuse the stored split while
    the data and parameters match. `min_grade` is recorded with the parameters (OpenCell's label cut-off).

    Writes out_dir/manifest.csv, split.csv and split.json (last: its presence marks a complete set).
    """
    test_size, n_folds, group_by, seed = (split_spec.test_size, split_spec.n_folds, split_spec.group_by,
                                          split_spec.seed)
    out_dir = Path(out_dir)
    m_hash = manifest_hash(manifest)
    params = {"min_grade": int(min_grade), "test_size": float(test_size), "n_folds": int(n_folds),
              "group_by": group_by, "seed": int(seed)}
    meta_path, split_path, manifest_path = out_dir / "split.json", out_dir / "split.csv", out_dir / "manifest.csv"

    if meta_path.is_file() and not resplit:
        stored = read_json(meta_path)
        changes = _describe_change(out_dir, stored, params, manifest)
        if changes:
            raise DinolocError(
                f"{split_path}: the stored split belongs to another manifest or other split parameters "
                f"(changed: {'; '.join(changes)}). Fix: restore the data/parameters it was made with, or rerun "
                "with data.resplit=true to make new folds (earlier results are then not comparable)."
            )
        if split_path.is_file():
            split = _read_split_csv(split_path)
            if frame_sha256(split) != stored.get("split_sha256"):
                raise DinolocError(
                    f"{split_path}: edited after it was written (hash differs from {meta_path}); restore it or "
                    "rerun with data.resplit=true."
                )
            if not manifest_path.is_file():
                write_csv(manifest_path, manifest)
            return manifest, split
        # split.csv deleted but parameters and data unchanged: the deterministic split is rebuilt identically.

    split = make_split(manifest, test_size=test_size, n_folds=n_folds, group_by=group_by, seed=seed)
    # Drop the completion marker first so a crash midway never pairs a new split with old metadata.
    meta_path.unlink(missing_ok=True)
    write_csv(manifest_path, manifest)
    write_csv(split_path, split)
    write_json(meta_path, {
        "version": SPLIT_VERSION,
        "manifest_sha256": m_hash,
        "split_sha256": frame_sha256(split),
        "classes": class_columns(manifest),
        "params": params,
        "counts": _counts(split),
    })
    return manifest, split


def load_dataset(out_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a prepared manifest and split; refuse a pair whose hashes do not match split.json."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "split.json"
    if not meta_path.is_file():
        raise DinolocError(f"{meta_path}: not found; run dinoloc-data to prepare the dataset in {out_dir}.")
    stored = read_json(meta_path)
    manifest = read_manifest_csv(out_dir / "manifest.csv", stored.get("classes"))
    split = _read_split_csv(out_dir / "split.csv")
    if manifest_hash(manifest) != stored.get("manifest_sha256"):
        raise DinolocError(
            f"{out_dir / 'manifest.csv'}: does not match the manifest the split was made for ({meta_path}); "
            "rerun dinoloc-data (with data.resplit=true if the data changed on purpose)."
        )
    if frame_sha256(split) != stored.get("split_sha256"):
        raise DinolocError(f"{out_dir / 'split.csv'}: edited after it was written; rerun dinoloc-data.")
    if list(split["image_id"]) != list(manifest["image_id"]):
        raise DinolocError(f"{out_dir / 'split.csv'}: image ids differ from manifest.csv; rerun dinoloc-data.")
    return manifest, split


def summarize(manifest: pd.DataFrame, split: pd.DataFrame) -> str:
    """A human summary: images, targets, labeled images, per-split counts, positives per class per split."""
    lines = [
        f"images: {len(manifest)}   targets: {manifest['target'].nunique()}   "
        f"labeled images: {int(manifest['labeled'].astype(bool).sum())}",
    ]
    for s in ("train", "test", "unlabeled"):
        sel = split["split"] == s
        lines.append(f"  {s:<9} images: {int(sel.sum()):>6}   targets: {split.loc[sel, 'target'].nunique():>5}")
    folds = split["fold"].dropna()
    if len(folds):
        per = ", ".join(f"{int(f)}: {int((folds == f).sum())}" for f in sorted(folds.unique()))
        lines.append(f"  train images per fold: {per}")
    classes = class_columns(manifest)
    merged = manifest[["image_id", *classes]].merge(split[["image_id", "split"]], on="image_id")
    width = max(len(c) for c in classes)
    lines.append(f"positives per class (images):\n  {'class':<{width}}  {'train':>6}  {'test':>6}")
    for c in classes:
        tr = int(merged.loc[merged["split"] == "train", c].sum())
        te = int(merged.loc[merged["split"] == "test", c].sum())
        lines.append(f"  {c:<{width}}  {tr:>6}  {te:>6}")
    lines += label_notes_lines(manifest.attrs.get("label_notes"))
    return "\n".join(lines)


def label_notes_lines(notes: dict[str, Any] | None) -> list[str]:
    """The summary's lines on annotation names outside the classes (data.labels.ignore) that were dropped."""
    if not notes or not (notes.get("ignored") or notes.get("only_ignored")):
        return []
    lines = ["ignored categories (outside the classes; dropped), targets carrying each:"]
    lines += [f"  {c:<28}  {n:>6}" for c, n in notes.get("ignored", {}).items()]
    only = notes.get("only_ignored") or []
    if only:
        shown = ", ".join(only[:10]) + (f", ... ({len(only) - 10} more)" if len(only) > 10 else "")
        lines.append(
            f"  {len(only)} target(s) carry only ignored categories and stay labelled with no positive class "
            f"(the paper allows zero labels per image): {shown}"
        )
    return lines
