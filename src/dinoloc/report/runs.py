"""The report's view of the run folders: which runs finished (read through dinoloc.results), their order in the
paper's table, and the labels a row shows (weights, head, DINO epochs)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from dinoloc.io import DinolocError
from dinoloc.results import DEFAULT_HEAD, RESULT_FILE, read_result, result_role, result_run_name

NATIVE_APPROACH = "–"  # the paper's Table III writes a dash for the 2-channel native model
_PAPER_ORDER = ("imagenet", "hpa", "opencell")  # the paper's row order, by pretraining data


def collect_runs(runs_dir: str | os.PathLike) -> list[dict]:
    """Every `<runs_dir>/*/result.json` (checked by dinoloc.results.read_result), each dict with "run_dir"
    added. Folders without one are incomplete runs (still running or crashed): reported, not fatal."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    results, incomplete = [], []
    for sub in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (sub / RESULT_FILE).is_file():
            incomplete.append(sub.name)
            continue
        results.append(read_result(sub))
    if incomplete:
        warn(f"incomplete run folder(s) in {runs_dir} (no result.json): {', '.join(incomplete)}")
    return results


def warn(message: str) -> None:
    """A report warning (printed by the CLI as one line)."""
    warnings.warn(message, UserWarning, stacklevel=3)


def head(result: dict) -> str:
    return str(result.get("head") or DEFAULT_HEAD)


def run_name(result: dict) -> str:
    return result_run_name(result)


def is_floor(result: dict) -> bool:
    """The random-weights floor row."""
    return result_role(result) == "floor"


def role(result: dict) -> str:
    """pretrained | floor | trivial | classical (docs/references.md)."""
    return result_role(result)


def weights_label(result: dict) -> str:
    """The Weights column: the preset's name, or the user's file when backbone.weights is not the preset's."""
    display = str(result.get("backbone_display", result["backbone"]))
    if role(result) == "trivial":
        return "trivial (best constant per class)"
    if role(result) == "classical":
        return f"{display} (CellProfiler-style)"
    if is_floor(result):
        return f"random init (seed {(result.get('provenance') or {}).get('random_seed', 0)})"
    prov = result.get("provenance") or {}
    if prov.get("weights_default") is False:
        return f"user's weights ({Path(str(prov.get('weights_path', '?'))).name}) [{display} preset]"
    return display


def epochs_source(result: dict) -> str:
    if ((result.get("provenance") or {}).get("checkpoint") or {}).get("epoch") is not None:
        return "checkpoint"
    return "config" if result.get("dino_epochs_config", result.get("dino_epochs")) is not None else ""


def checkpoint_epochs(result: dict) -> Any:
    """DINO epochs as the checkpoint records them; the config's value only when the file has none."""
    ckpt = ((result.get("provenance") or {}).get("checkpoint") or {}).get("epoch")
    if ckpt is not None:
        return ckpt
    return result.get("dino_epochs_config", result.get("dino_epochs"))


def strategy_order(strategy: str) -> int:
    """A strategy module's own ORDER (mapping, replication, native); one that cannot be imported sorts last."""
    from dinoloc.channel_strategies import strategy_module

    try:
        return int(getattr(strategy_module(strategy), "ORDER", 99))
    except DinolocError:
        return 99


def row_order(result: dict) -> tuple:
    """Sort key putting runs in the paper's order (ImageNet, HPA, OpenCell; mapping, replication, native),
    demo stand-ins (`hpa_demo`, ...) like their real counterparts, then the other backbones grouped by family
    (result["family"]: timm_vit, subcell, openphenom, ...)."""
    backbone, strategy = str(result["backbone"]), str(result["strategy"])
    paper = next((i for i, f in enumerate(_PAPER_ORDER) if backbone.startswith(f)), len(_PAPER_ORDER))
    family = "" if paper < len(_PAPER_ORDER) else str(result.get("family") or "timm_vit")
    if role(result) != "pretrained":  # the references after every pretrained row: floor, classical, trivial
        paper, family = len(_PAPER_ORDER) + 1 + ("floor", "classical", "trivial").index(role(result)), ""
    from dinoloc.heads import head_order

    h = head_order(head(result))
    return (paper, family, backbone, strategy_order(strategy), strategy, h, result.get("run_dir", ""))


def threshold(result: dict) -> float:
    """The run's decision threshold on the probabilities."""
    try:
        return float(result["classifier"]["threshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise DinolocError(
            f"{Path(result.get('run_dir', '?')) / RESULT_FILE}: classifier.threshold missing or not a number; "
            "rerun the row with dinoloc-run force=true"
        ) from e


def select_test(pred: pd.DataFrame, run_dir: str) -> pd.DataFrame:
    """predictions.csv's split=test rows (an error naming the file when there are none)."""
    test = pred[pred["split"] == "test"]
    if test.empty:
        raise DinolocError(f"{Path(run_dir) / 'predictions.csv'} has no split=test rows; rerun the row")
    return test
