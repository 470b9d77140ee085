"""The results contract: what the classify stage leaves in a run folder, with the one writer and the one reader.

A run folder `<runs_dir>/<run name>/` holds

- `predictions.csv`: one row per (classifier seed, fold, val/test image): `PREDICTION_KEY_COLUMNS`, then
  `y_<class>` (0/1 label) and `p_<class>` (probability) for each class of result.json `classes`
  (`label_columns` / `prob_columns` build those lists; nothing else should).
  `path` is the image file relative to result.json `data.root`, so the run folder can move (`image_file`).
- `per_class.csv`: `PER_CLASS_COLUMNS`, one row per (seed, fold, split, class).
- `result.json`: `REQUIRED_RESULT_KEYS` at least (the classifier summary of `dinoloc.classify.cross_validate_seeds`
  plus the run's identity, provenance and data), stamped with `result_version` = RESULT_VERSION by the writer.
  `data.root` is the absolute data folder the image paths are relative to.

`write_run` writes the CSVs first and result.json last, each atomically: result.json marks a finished run.
Version history: 1 (no `result_version` key): image paths only through data.manifest; 2: `path` column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc.io import DinolocError, read_json, write_csv, write_json

RESULT_VERSION = 2
RESULT_FILE, PREDICTIONS_FILE, PER_CLASS_FILE = "result.json", "predictions.csv", "per_class.csv"
REQUIRED_RESULT_KEYS = (
    "result_version",
    "backbone",
    "strategy",
    "classes",  # the class order of the y_/p_ columns (from the data config)
    "test_macro_f1_mean",
    "test_macro_f1_std",
    "train_macro_f1_mean",
    "val_macro_f1_mean",
    "n_folds",
    "folds",  # per (seed, fold): fold, seed, {train,val,test}_macro_f1, n_{train,val,test}, excluded_classes
    "classifier",  # the head's parameters (threshold at least)
    "data",  # root (absolute; image paths are relative to it), manifest, split, name, ...
)
# `seed` is optional in the files (a single cross_validate run has none; readers treat it as seed 0).
PREDICTION_KEY_COLUMNS = ("image_id", "fold", "split", "target", "path")
PREDICTION_SPLITS = ("val", "test")
PER_CLASS_COLUMNS = ("fold", "split", "class", "f1", "precision", "recall", "support")
_RERUN = "rerun the row with dinoloc-run force=true"
DEFAULT_HEAD = "mlp"  # the paper's head (every head is a module of dinoloc.heads)


def run_dir_name(backbone: str, strategy: str, head: str, variant: str = "baseline") -> str:
    """A run folder's name: `<backbone>__<strategy>` for the paper's MLP, plus `__<head>` for a probe head and
    `__<variant>` for a sensitivity variant other than the baseline."""
    name = f"{backbone}__{strategy}" if head == DEFAULT_HEAD else f"{backbone}__{strategy}__{head}"
    return name if variant == "baseline" else f"{name}__{variant}"


# A row's role in a table (docs/references.md): a pretrained backbone, or one of the three references every table
# carries: the random-weights floor (the same architecture, its own seed), the trivial best constant per class
# (classifier=constant), the classical CellProfiler-style features (backbone=classical).
ROLES = ("pretrained", "floor", "trivial", "classical")


def row_role(head: str, arch: str, random_weights: bool) -> str:
    """The role a run plays, from what it is (so no config can mislabel it): the constant head is trivial
    whatever it sits on, then classical features, then random weights (the floor), else pretrained."""
    if head == "constant":
        return "trivial"
    if arch == "classical":
        return "classical"
    return "floor" if random_weights else "pretrained"


def result_role(result: dict[str, Any]) -> str:
    """A finished run's role: result.json `role`, or (older runs without one) derived as row_role does."""
    role = result.get("role")
    if role in ROLES:
        return str(role)
    return row_role(str(result.get("head") or DEFAULT_HEAD), str(result.get("arch") or ""),
                    bool(result.get("random_weights", False)))


def result_run_name(result: dict[str, Any]) -> str:
    """run_dir_name of a finished run's result.json."""
    return run_dir_name(str(result.get("backbone")), str(result.get("strategy")),
                        str(result.get("head") or DEFAULT_HEAD), str(result.get("variant") or "baseline"))


def label_columns(classes: Sequence[str]) -> list[str]:
    """predictions.csv's 0/1 label columns, in class order."""
    return [f"y_{c}" for c in classes]


def prob_columns(classes: Sequence[str]) -> list[str]:
    """predictions.csv's probability columns, in class order."""
    return [f"p_{c}" for c in classes]


def prediction_columns(classes: Sequence[str]) -> list[str]:
    """Every column predictions.csv must have for these classes."""
    return [*PREDICTION_KEY_COLUMNS, *label_columns(classes), *prob_columns(classes)]


def result_classes(result: dict[str, Any]) -> list[str]:
    """The run's class list (result.json `classes`)."""
    return [str(c) for c in result["classes"]]


@dataclass(frozen=True)
class Run:
    """One finished run folder, read and checked."""

    result: dict[str, Any]  # result.json, with "run_dir" added
    predictions: pd.DataFrame
    per_class: pd.DataFrame


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------
def add_image_paths(predictions: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """predictions with the manifest's `path` (relative to the data root) after `target`, matched by image_id."""
    paths = manifest.assign(image_id=manifest["image_id"].astype(str)).drop_duplicates("image_id") \
        .set_index("image_id")["path"]
    ids = predictions["image_id"].astype(str)
    missing = sorted(set(ids) - set(paths.index))
    if missing:
        raise DinolocError(f"predictions name image(s) not in the manifest, e.g. {missing[:3]}; rebuild the split")
    out = predictions.drop(columns=["path"], errors="ignore")
    out.insert(int(out.columns.get_loc("target")) + 1, "path", paths.loc[ids].astype(str).to_numpy())
    return out


def write_run(run_dir: str | os.PathLike, result: dict[str, Any], predictions: pd.DataFrame,
              per_class: pd.DataFrame) -> None:
    """The run folder's three files, checked against the contract: predictions.csv, per_class.csv, then
    result.json (stamped with RESULT_VERSION) last, each atomically, so result.json marks completion."""
    run_dir = Path(run_dir)
    result = {**result, "result_version": RESULT_VERSION}
    _check_result(result, run_dir / RESULT_FILE)
    _check_columns(predictions, prediction_columns(result_classes(result)), run_dir / PREDICTIONS_FILE)
    _check_columns(per_class, PER_CLASS_COLUMNS, run_dir / PER_CLASS_FILE)
    stale = run_dir / RESULT_FILE
    if stale.exists():  # a re-run: the old marker must not vouch for the new, half-written files
        stale.unlink()
    write_csv(run_dir / PREDICTIONS_FILE, predictions)
    write_csv(run_dir / PER_CLASS_FILE, per_class)
    write_json(run_dir / RESULT_FILE, result)


# ----------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------
def load_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """result.json for the reuse check of dinoloc-run and dry_run: None when the run is absent, incomplete or
    written under another RESULT_VERSION (it cannot be reused: the row is recomputed)."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    result = _read_json(path)
    return result if result.get("result_version") == RESULT_VERSION else None


def read_result(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A finished run's result.json, checked (version, required keys), with "run_dir" added."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise DinolocError(f"{path} is missing; the run is absent or incomplete. Make it with dinoloc-run")
    result = _read_json(path)
    _check_result(result, path)
    result["run_dir"] = str(run_dir)
    return result


def read_predictions(run_dir: str | os.PathLike, classes: Sequence[str]) -> pd.DataFrame:
    """predictions.csv of one run, checked for the contract's columns and splits."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise DinolocError(f"{path} is missing; the run is incomplete. Rerun it with dinoloc-run force=true")
    df = pd.read_csv(path, float_precision="round_trip", dtype={"image_id": str, "target": str, "split": str, "path": str})
    _check_columns(df, prediction_columns(classes), path)
    bad = ~df["split"].isin(PREDICTION_SPLITS)
    if bad.any():
        raise DinolocError(
            f"{path} row {int(np.flatnonzero(bad)[0])}: split={df['split'][bad].iloc[0]!r}, expected 'val' or 'test'"
        )
    return df


def read_per_class(run_dir: str | os.PathLike) -> pd.DataFrame:
    """per_class.csv of one run, checked for the contract's columns."""
    path = Path(run_dir) / PER_CLASS_FILE
    if not path.is_file():
        raise DinolocError(f"{path} is missing; the run is incomplete. Rerun it with dinoloc-run force=true")
    df = pd.read_csv(path, float_precision="round_trip")
    _check_columns(df, PER_CLASS_COLUMNS, path)
    return df


def read_run(run_dir: str | os.PathLike) -> Run:
    """All three files of a finished run, checked."""
    result = read_result(run_dir)
    return Run(result, read_predictions(run_dir, result_classes(result)), read_per_class(run_dir))


def image_file(result: dict[str, Any], rel_path: str) -> Path:
    """An image of predictions.csv `path`, resolved against the run's recorded data root; a missing file is an
    error naming it (the data folder moved or was deleted, not the run folder)."""
    root = Path(str(result["data"]["root"]))
    path = root / str(rel_path)
    # a one-file-per-channel image's path lists its files separated by ';' (dinoloc.data.reader)
    if not all((root / p).is_file() for p in str(rel_path).split(";")):
        run = Path(str(result.get("run_dir", "?"))) / RESULT_FILE
        raise DinolocError(
            f"image {path} not found (predictions.csv path {rel_path!r} under data.root={root} of {run}); "
            "restore the data folder there, or rerun the row with data.root pointing at its new place"
        )
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return read_json(path)
    except ValueError as e:
        raise DinolocError(f"{path} is not valid JSON ({e}); delete {path.parent} and {_RERUN}") from e


def _check_result(result: dict[str, Any], path: Path) -> None:
    version = result.get("result_version")
    if version != RESULT_VERSION:
        found = "no result_version (an older dinoloc)" if version is None else f"result_version {version!r}"
        raise DinolocError(f"{path} has {found}; this dinoloc reads result_version {RESULT_VERSION}. {_RERUN}")
    missing = [k for k in REQUIRED_RESULT_KEYS if k not in result]
    if missing:
        raise DinolocError(f"{path} lacks key(s) {missing}; it was not written by dinoloc-run. {_RERUN}")
    if not isinstance(result["data"], dict) or "root" not in result["data"]:
        raise DinolocError(f"{path} lacks data.root (the folder image paths are relative to). {_RERUN}")


def _check_columns(df: pd.DataFrame, needed: Sequence[str], path: Path) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DinolocError(
            f"{path} lacks column(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; the contract "
            f"(dinoloc.results) expects {', '.join(needed[:5])}, ... for the run's classes (result.json). {_RERUN}"
        )
