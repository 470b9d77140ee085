"""The report stage: run folders -> Table III (CSV + Markdown), per-class F1, Figures 1 and 2.

It reads only what the classify stage left in `<runs_dir>/<backbone>__<strategy>/` (result.json,
predictions.csv, per_class.csv) and never re-runs anything. Statistics beyond mean ± std (bootstrap CI,
paired comparison against the best row) resample test *targets* (proteins), not images: every image of a
target shares its labels, so images are not independent draws and an image bootstrap would be too narrow.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc import stats
from dinoloc.classify import macro_f1
from dinoloc.figures import (  # noqa: F401 (re-exported: the figures moved to dinoloc.figures)
    SYNTHETIC_MARKER,
    _compositor,
    _image_reader,
    plot_figure1,
    plot_figure2,
    plot_per_class,
)
from dinoloc.io import DinolocError, read_json, write_csv, write_text
from dinoloc.ontology import CATEGORIES
from dinoloc.probes import DEFAULT_HEAD, HEADS, ranking_notes, result_run_name

NATIVE_APPROACH = "–"  # the paper's Table III writes a dash for the 2-channel native model
_FAMILY_ORDER = ("imagenet", "hpa", "opencell")  # the paper's row order, by pretraining data
_STRATEGY_ORDER = ("mapping", "replication", "native")
_REQUIRED_RESULT_KEYS = (
    "backbone",
    "strategy",
    "test_macro_f1_mean",
    "test_macro_f1_std",
    "train_macro_f1_mean",
    "val_macro_f1_mean",
    "n_folds",
    "folds",
    "classifier",
)
TABLE_COLUMNS = [
    "weights",
    "model",
    "approach",
    "head",
    "dino_epochs",  # from the checkpoint when it records one, else backbone.dino_epochs
    "dino_epochs_source",  # checkpoint | config
    "test_f1_mean",
    "test_f1_std",  # fold std (mean over classifier seeds of each seed's fold std)
    "test_f1_seed_std",  # std over classifier seeds of the seed's fold-mean (NaN with one seed)
    "n_seeds",
    "train_f1_mean",
    "val_f1_mean",
    "n_folds",
    "ci_low",
    "ci_high",
    "ci_bias",  # bootstrap replicate mean - estimate
    "ci_widened",
    "ws_f1",  # macro F1 over the well-supported classes (>= 3 positive test targets)
    "ws_ci_low",
    "ws_ci_high",
    "thin_classes",  # scored classes with fewer than 3 positive test targets
    "delta_vs_best",
    "p_vs_best",  # raw paired bootstrap p
    "p_vs_best_holm",  # Holm-adjusted over every comparison in the table
    "delta_vs_floor",
    "p_vs_floor",
    "p_vs_floor_holm",
    "random_weights",  # the random-weights floor row
    "synthetic",
    "backbone",
    "strategy",
    "variant",
    "weights_file",
    "weights_sha256",
    "dino_epochs_config",
    "run_dir",
    "run",
    "std_ddof",
    "notes",
]


# ----------------------------------------------------------------------------------------------------------
# macro F1 (the classifier's definition)
# ----------------------------------------------------------------------------------------------------------
def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str] | None = None) -> float:
    """The classify stage's macro F1, imported so the report can never drift from it."""
    return float(macro_f1(y_true, y_pred, classes)[0])


def result_classes(result: dict) -> list[str]:
    """The run's class list (result.json `classes`, from the data config); OpenCell's 17 for older runs."""
    return list(result.get("classes") or CATEGORIES)


# ----------------------------------------------------------------------------------------------------------
# reading run folders
# ----------------------------------------------------------------------------------------------------------
def collect_runs(runs_dir: str | os.PathLike) -> list[dict]:
    """Every `<runs_dir>/*/result.json`, each dict with "run_dir" added. Folders without one are
    incomplete runs (still running or crashed): they are reported on stderr, not fatal."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    results, incomplete = [], []
    for sub in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = sub / "result.json"
        if not path.is_file():
            incomplete.append(sub.name)
            continue
        try:
            result = read_json(path)
        except ValueError as e:
            raise DinolocError(f"{path} is not valid JSON ({e}); delete the run folder and rerun dinoloc-run") from e
        missing = [k for k in _REQUIRED_RESULT_KEYS if k not in result]
        if missing:
            raise DinolocError(
                f"{path} lacks key(s) {missing}; it was not written by this version of dinoloc-run. "
                "Rerun that row with force=true."
            )
        result["run_dir"] = str(sub)
        results.append(result)
    if incomplete:
        _warn(f"incomplete run folder(s) in {runs_dir} (no result.json): {', '.join(incomplete)}")
    return results


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _head(result: dict) -> str:
    return str(result.get("head") or DEFAULT_HEAD)  # runs written before the probes existed are MLP runs


def _run_name(result: dict) -> str:
    return result_run_name(result)


def _weights_label(result: dict) -> str:
    """The Weights column: the preset's name, or the user's file when backbone.weights is not the preset's."""
    display = str(result.get("backbone_display", result["backbone"]))
    if _is_floor(result):
        return f"random init (seed {(result.get('provenance') or {}).get('random_seed', 0)})"
    prov = result.get("provenance") or {}
    if prov.get("weights_default") is False:
        return f"user's weights ({Path(str(prov.get('weights_path', '?'))).name}) [{display} preset]"
    return display


def _epochs_source(result: dict) -> str:
    if ((result.get("provenance") or {}).get("checkpoint") or {}).get("epoch") is not None:
        return "checkpoint"
    return "config" if result.get("dino_epochs_config", result.get("dino_epochs")) is not None else ""


def _checkpoint_epochs(result: dict) -> Any:
    """DINO epochs as the checkpoint records them; the config's value only when the file has none."""
    ckpt = ((result.get("provenance") or {}).get("checkpoint") or {}).get("epoch")
    if ckpt is not None:
        return ckpt
    return result.get("dino_epochs_config", result.get("dino_epochs"))


def _row_order(result: dict) -> tuple:
    """Sort key putting runs in the paper's order (ImageNet, HPA, OpenCell; mapping, replication, native),
    demo stand-ins (`hpa_demo`, ...) like their real counterparts, anything else after."""
    backbone, strategy = str(result["backbone"]), str(result["strategy"])
    family = next((i for i, f in enumerate(_FAMILY_ORDER) if backbone.startswith(f)), len(_FAMILY_ORDER))
    strat = _STRATEGY_ORDER.index(strategy) if strategy in _STRATEGY_ORDER else len(_STRATEGY_ORDER)
    head = HEADS.index(_head(result)) if _head(result) in HEADS else len(HEADS)
    return (family, strat, backbone, strategy, head, result.get("run_dir", ""))


def _threshold(result: dict) -> float:
    try:
        return float(result["classifier"]["threshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise DinolocError(
            f"{Path(result.get('run_dir', '?')) / 'result.json'}: classifier.threshold missing or not a number; "
            "rerun the row with dinoloc-run force=true"
        ) from e


def read_predictions(run_dir: str | os.PathLike, classes: Sequence[str] = CATEGORIES) -> pd.DataFrame:
    """predictions.csv of one run, checked for the columns the report needs."""
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        raise DinolocError(f"{path} is missing; the run is incomplete. Rerun it with dinoloc-run force=true")
    df = pd.read_csv(path, dtype={"image_id": str, "target": str, "split": str})
    needed = ["image_id", "fold", "split", "target"]
    needed += [f"y_{c}" for c in classes] + [f"p_{c}" for c in classes]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DinolocError(
            f"{path} lacks column(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; expected image_id, fold, "
            "split, target, y_<class>, p_<class> for the run's classes (result.json). Rerun the row."
        )
    bad = ~df["split"].isin(["val", "test"])
    if bad.any():
        raise DinolocError(
            f"{path} row {int(np.flatnonzero(bad)[0])}: split={df['split'][bad].iloc[0]!r}, expected 'val' or 'test'"
        )
    return df


def _test_rows(pred: pd.DataFrame, run_dir: str) -> pd.DataFrame:
    test = pred[pred["split"] == "test"]
    if test.empty:
        raise DinolocError(f"{Path(run_dir) / 'predictions.csv'} has no split=test rows; rerun the row")
    return test


# ----------------------------------------------------------------------------------------------------------
# target-level bootstrap (the statistics live in dinoloc.stats)
# ----------------------------------------------------------------------------------------------------------
def _target_counts(test: pd.DataFrame, threshold: float,
                   classes: Sequence[str] = CATEGORIES) -> tuple[np.ndarray, list, list[str]]:
    """Per (classifier seed, fold), target and class: the counts (tp, fp, fn, pos) macro F1 is a function of.

    Returns counts of shape (4, n_seed_folds, n_targets, n_classes), the (seed, fold) pairs and the sorted
    targets. Summing the counts of a multiset of targets gives exactly sklearn's F1 on the images."""
    test = test.assign(seed=test["seed"] if "seed" in test.columns else 0)
    folds = sorted({(int(a), int(b)) for a, b in zip(test["seed"], test["fold"], strict=True)})
    targets = sorted(test["target"].astype(str).unique().tolist())
    t_index = {t: i for i, t in enumerate(targets)}
    y_cols = [f"y_{c}" for c in classes]
    p_cols = [f"p_{c}" for c in classes]
    counts = np.zeros((4, len(folds), len(targets), len(classes)), dtype=np.float64)
    for fi, (seed, fold) in enumerate(folds):
        rows = test[(test["seed"] == seed) & (test["fold"] == fold)]
        y = rows[y_cols].to_numpy(dtype=np.int64) > 0
        p = rows[p_cols].to_numpy(dtype=np.float64) > threshold
        ti = rows["target"].astype(str).map(t_index).to_numpy()
        for k, v in enumerate((y & p, ~y & p, y & ~p, y)):
            np.add.at(counts[k, fi], ti, v.astype(np.float64))
    return counts, folds, targets


def _run_stats(result: dict, n_boot: int, seed: int, level: float = 0.95, method: str = "percentile") -> dict[str, Any]:
    """Recompute the test macro F1 from predictions.csv, check it against result.json, bootstrap a CI over
    the fixed class set (classes with a positive in the full test set) and one over the well-supported
    classes (>= stats.WELL_SUPPORTED positive test targets)."""
    run_dir = result["run_dir"]
    threshold = _threshold(result)
    names = result_classes(result)
    test = _test_rows(read_predictions(run_dir, names), run_dir)
    counts, folds, targets = _target_counts(test, threshold, names)
    notes = []

    # The check uses the classifier's own macro F1 on each fold's full test set (images, not counts).
    y_cols = [f"y_{c}" for c in names]
    p_cols = [f"p_{c}" for c in names]
    test = test.assign(seed=test["seed"] if "seed" in test.columns else 0)
    per_fold = {}
    for seed_fold in folds:
        rows = test[(test["seed"] == seed_fold[0]) & (test["fold"] == seed_fold[1])]
        y = rows[y_cols].to_numpy(dtype=np.int64)
        p = (rows[p_cols].to_numpy(dtype=np.float64) > threshold).astype(np.int64)
        per_fold[seed_fold] = _macro_f1(y, p, names)
    recomputed = float(np.mean(list(per_fold.values())))
    reported = float(result["test_macro_f1_mean"])
    if not math.isclose(recomputed, reported, rel_tol=0.0, abs_tol=1e-9):
        msg = (
            f"{Path(run_dir) / 'predictions.csv'}: test macro F1 recomputed from the predictions "
            f"({recomputed:.10f}) differs from result.json's test_macro_f1_mean ({reported:.10f})"
        )
        _warn(msg)
        notes.append("recomputed test F1 differs from result.json")
    for f in result["folds"]:
        key = (int(f.get("seed", 0)), f.get("fold"))
        if key in per_fold and not math.isclose(per_fold[key], float(f["test_macro_f1"]), abs_tol=1e-9):
            _warn(f"{Path(run_dir) / 'result.json'}: fold {key[1]} test_macro_f1 differs from predictions.csv")

    classes = stats.scored_classes(counts)
    n_pos = stats.positive_targets(counts)
    well = n_pos >= stats.WELL_SUPPORTED
    weights = stats.bootstrap_weights(len(targets), n_boot, seed) if n_boot > 0 else None
    nan_interval = stats.Interval(float("nan"), float("nan"), float("nan"), float("nan"), method)
    ci = stats.bootstrap_interval(counts, classes, weights, level, method) if n_boot > 0 else nan_interval
    ws = stats.bootstrap_interval(counts, well, weights, level, method) if n_boot > 0 and well.any() else nan_interval
    if ci.widened:
        notes.append(f"the {method} interval missed the estimate and was widened to it")
    return {
        "recomputed": recomputed,
        "counts": counts,
        "folds": folds,
        "targets": targets,
        # Paired tests need the same test images AND labels (min_grade changes labels, not images).
        "image_set": frozenset(zip(test["image_id"].astype(str), test["target"].astype(str),
                                   map(tuple, test[y_cols].to_numpy(dtype=np.int64).tolist()), strict=True)),
        "ci": ci,
        "ws": ws if well.any() else stats.Interval(
            float("nan"), float("nan"), float("nan"), float("nan"), method),
        "ws_estimate": stats.estimate(counts, well) if well.any() else float("nan"),
        "thin_classes": [c for c, k, s in zip(names, n_pos, classes, strict=True) if s and k < stats.WELL_SUPPORTED],
        "n_positive_targets": dict(zip(names, n_pos.tolist(), strict=True)),
        "classes": classes,
        "weights": weights,
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------------------------
# Table III
# ----------------------------------------------------------------------------------------------------------
def _is_floor(result: dict) -> bool:
    return bool(result.get("random_weights", False))


def build_table(
    results: Sequence[dict], expected: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0,
    level: float = 0.95, method: str = "percentile",
) -> tuple[pd.DataFrame, list[str]]:
    """One row per run in the paper's order, with mean ± std from result.json and, from predictions.csv,
    a target-bootstrap CI, its bias, and paired comparisons against the best row and against the
    random-weights floor (raw and Holm-adjusted over all the table's comparisons). Returns (table,
    missing), `missing` being the `expected` run names without a finished run."""
    results = sorted(results, key=_row_order)
    names = [_run_name(r) for r in results]
    dirs = [Path(r["run_dir"]).name for r in results]
    missing = [e for e in (expected or []) if e not in names and e not in dirs]
    if missing:
        _warn(f"Table III is missing expected row(s): {', '.join(missing)} (no finished run folder)")
    if not results:
        return pd.DataFrame(columns=TABLE_COLUMNS), missing

    st = [_run_stats(r, n_boot, seed, level, method) for r in results]
    means = np.array([float(r["test_macro_f1_mean"]) for r in results])
    floors = [i for i, r in enumerate(results) if _is_floor(r)]
    floor = floors[0] if floors else None
    candidates = [i for i in range(len(results)) if i not in floors] or list(range(len(results)))
    # In a sensitivity sweep "best" and the floor are the baseline's: variants are compared in their own table.
    baseline = [i for i in candidates if (results[i].get("variant") or "baseline") == "baseline"]
    candidates = baseline or candidates
    best = max(candidates, key=lambda i: means[i])

    def compare(i: int, j: int | None, notes: list[str], what: str) -> float:
        if j is None or i == j or n_boot <= 0:
            return float("nan")
        if st[i]["image_set"] != st[j]["image_set"]:
            notes.append(f"different test images than the {what} row: no paired test")
            return float("nan")
        return stats.paired_p_value(st[i]["counts"], st[j]["counts"], st[j]["classes"], st[j]["weights"])[1]

    all_notes = [list(s["notes"]) for s in st]
    p_best = np.array([compare(i, best, all_notes[i], "best") for i in range(len(results))])
    p_floor = np.array([compare(i, floor, all_notes[i], "random-weights") for i in range(len(results))])
    p_best_holm, p_floor_holm = _holm_over_pairs(p_best, p_floor, best, floor)
    rows = []
    for i, (r, s) in enumerate(zip(results, st, strict=True)):
        strategy = str(r["strategy"])
        prov = r.get("provenance") or {}
        rows.append(
            {
                "weights": _weights_label(r),
                "model": r.get("model_label", r.get("arch", "")),
                "approach": NATIVE_APPROACH if strategy == "native" else strategy,
                "head": _head(r),
                "dino_epochs": _checkpoint_epochs(r),
                "dino_epochs_source": _epochs_source(r),
                "test_f1_mean": float(r["test_macro_f1_mean"]),
                "test_f1_std": float(r["test_macro_f1_std"]),
                "test_f1_seed_std": r.get("test_macro_f1_seed_std", float("nan")),
                "n_seeds": int(r.get("n_seeds", 1)),
                "train_f1_mean": float(r["train_macro_f1_mean"]),
                "val_f1_mean": float(r["val_macro_f1_mean"]),
                "n_folds": int(r["n_folds"]),
                "ci_low": s["ci"].low,
                "ci_high": s["ci"].high,
                "ci_bias": s["ci"].bias,
                "ci_widened": s["ci"].widened,
                "ws_f1": s["ws_estimate"],
                "ws_ci_low": s["ws"].low,
                "ws_ci_high": s["ws"].high,
                "thin_classes": ", ".join(s["thin_classes"]),
                "delta_vs_best": float(means[i] - means[best]),
                "p_vs_best": p_best[i],
                "p_vs_best_holm": p_best_holm[i],
                "delta_vs_floor": float(means[i] - means[floor]) if floor is not None else float("nan"),
                "p_vs_floor": p_floor[i],
                "p_vs_floor_holm": p_floor_holm[i],
                "random_weights": _is_floor(r),
                "synthetic": bool(r.get("synthetic", False)),
                "backbone": r["backbone"],
                "strategy": strategy,
                "variant": r.get("variant") or "baseline",
                "weights_file": prov.get("weights_path", ""),
                "weights_sha256": prov.get("weights_sha256", ""),
                "dino_epochs_config": r.get("dino_epochs_config"),
                "run_dir": r["run_dir"],
                "run": names[i],
                "std_ddof": r.get("std_ddof"),
                "notes": "; ".join(all_notes[i]),
            }
        )
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for col in ("dino_epochs", "dino_epochs_config"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("Int64")
    table.attrs["ci"] = {"n_boot": n_boot, "seed": seed, "level": level, "method": method}
    table.attrs["best"] = best
    # records, not a DataFrame: pandas compares attrs when it propagates them
    table.attrs["sensitivity"] = _sensitivity(table, st, compare).to_dict("records")
    return table, missing


def _holm_over_pairs(
    p_best: np.ndarray, p_floor: np.ndarray, best: int, floor: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Holm over the table's distinct comparisons: every row vs the best and vs the floor, the pair
    (best, floor) counted once although it appears in both columns."""
    family = list(p_best) + [p for i, p in enumerate(p_floor) if i != best]
    adjusted = stats.holm(family)
    n = len(p_best)
    p_best_holm = adjusted[:n]
    rest = iter(adjusted[n:])
    p_floor_holm = np.array([np.nan if i == best else next(rest) for i in range(n)])
    if floor is not None and np.isfinite(p_floor[best]):
        p_floor_holm[best] = p_best_holm[floor]  # the same comparison as the floor row's p vs best
    return p_best_holm, p_floor_holm


SENSITIVITY_COLUMNS = [
    "backbone", "strategy", "variant", "baseline_f1", "baseline_ci_low", "baseline_ci_high", "variant_f1",
    "variant_ci_low", "variant_ci_high", "delta", "shared_test_set", "p", "p_holm", "notes",
]


def _sensitivity(table: pd.DataFrame, st: list[dict], compare: Callable) -> pd.DataFrame:
    """Each non-baseline variant row against the baseline row of the same backbone x strategy: both CIs,
    the difference, and a paired test where the test set (images and labels) is shared; Holm over these."""
    rows = []
    base = {(r["backbone"], r["strategy"]): i for i, r in table.iterrows() if r["variant"] == "baseline"}
    for i, r in table.iterrows():
        if r["variant"] == "baseline":
            continue
        j = base.get((r["backbone"], r["strategy"]))
        notes: list[str] = []
        if j is None:
            notes.append("no baseline row for this backbone x strategy")
        b = table.loc[j] if j is not None else None
        shared = j is not None and st[i]["image_set"] == st[j]["image_set"]
        p = compare(i, j, [], "baseline") if shared else float("nan")
        if j is not None and not shared:
            notes.append("other test images or labels than the baseline: CIs only, no paired test")
        rows.append({
            "backbone": r["backbone"], "strategy": r["strategy"], "variant": r["variant"],
            "baseline_f1": b["test_f1_mean"] if b is not None else float("nan"),
            "baseline_ci_low": b["ci_low"] if b is not None else float("nan"),
            "baseline_ci_high": b["ci_high"] if b is not None else float("nan"),
            "variant_f1": r["test_f1_mean"], "variant_ci_low": r["ci_low"], "variant_ci_high": r["ci_high"],
            "delta": r["test_f1_mean"] - b["test_f1_mean"] if b is not None else float("nan"),
            "shared_test_set": bool(shared), "p": p, "notes": "; ".join(notes),
        })
    out = pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
    if len(out):
        out["p_holm"] = stats.holm(out["p"].to_numpy(dtype=float))
    return out


def sensitivity_markdown(sens: pd.DataFrame, synthetic: bool, n_boot: int | None, level: float = 0.95) -> str:
    """The sensitivity table: each variant against its baseline row."""
    lines = ["**SYNTHETIC DEMO DATA** — not the paper's data.", ""] if synthetic else []
    lines += [
        "**Sensitivity to the paper's open choices.** Test macro F1 of each variant vs the baseline row.",
        "",
        f"| Row | Variant | Baseline F1 [{level:.0%} CI] | Variant F1 [{level:.0%} CI] | Δ | paired p (raw / Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in sens.iterrows():
        p = (f"{_fmt_p(r['p'], n_boot)} / {_fmt_p(r['p_holm'], n_boot)}" if r["shared_test_set"]
             else "– (other test set)")
        lines.append(
            f"| {r['backbone']} · {r['strategy']} | {r['variant']} | {_fmt(r['baseline_f1'])} "
            f"[{_fmt(r['baseline_ci_low'])}, {_fmt(r['baseline_ci_high'])}] | {_fmt(r['variant_f1'])} "
            f"[{_fmt(r['variant_ci_low'])}, {_fmt(r['variant_ci_high'])}] | {_fmt(r['delta'])} | {p} |"
        )
    lines += [
        "",
        "Variants (configs/variant/): image_split = data.split.group_by=none; crop600 = "
        "backbone.preprocess.spatial=center_crop (crop_size, then resize); min_grade2 = data.labels.min_grade=2. "
        "A paired test needs the same test images and labels, so only variants that keep the baseline's test set "
        "(crop600) get one; the others are compared through their CIs. Holm adjusts over this table's tests.",
    ]
    return "\n".join(lines) + "\n"


def per_class_table(results: Sequence[dict]) -> pd.DataFrame:
    """Per-class test F1 (mean over folds, from per_class.csv): one row per class in ontology order, a
    `support` column (test positives per fold) and one column per run, in the paper's order."""
    results = sorted(results, key=_row_order)
    classes = result_classes(results[0]) if results else list(CATEGORIES)
    out = pd.DataFrame({"class": classes})
    support = None
    for r in results:
        path = Path(r["run_dir"]) / "per_class.csv"
        if not path.is_file():
            raise DinolocError(f"{path} is missing; the run is incomplete. Rerun it with dinoloc-run force=true")
        df = pd.read_csv(path)
        missing = [c for c in ("fold", "split", "class", "f1", "support") if c not in df.columns]
        if missing:
            raise DinolocError(f"{path} lacks column(s) {missing}; expected fold, split, class, f1, precision, recall, support")
        test = df[df["split"] == "test"]
        unknown = sorted(set(test["class"]) - set(classes))
        if unknown:
            raise DinolocError(f"{path}: unknown class name(s) {unknown}; the runs' classes are {classes} "
                               "(report one dataset per experiment)")
        agg = test.groupby("class")[["f1", "support"]].mean().reindex(classes)
        if support is None:
            support = agg["support"].to_numpy()
        elif not np.allclose(support, agg["support"].to_numpy(), equal_nan=True):
            _warn(f"{path}: test support differs from the first run's; the support column is the first run's")
        out[_run_name(r)] = agg["f1"].to_numpy()
    out.insert(1, "support", support if support is not None else np.nan)
    return out


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or pd.isna(x):
        return "–"
    return f"{float(x):.{digits}f}"


def _fmt_p(p: Any, n_boot: int | None) -> str:
    if p is None or pd.isna(p):
        return "–"
    if p == 0 and n_boot:
        return f"< {1 / n_boot:.0e}"
    if p < 0.001:  # the smallest bootstrap p is 1/(B+1)
        return f"{float(p):.1e}"
    return f"{float(p):.3f}"


def _fmt_std(r: Any) -> str:
    seed_std = r.get("test_f1_seed_std")
    text = f"{_fmt(r['test_f1_mean'])} ± {_fmt(r['test_f1_std'])}"
    if seed_std is not None and not pd.isna(seed_std):
        text += f" (seeds ± {_fmt(seed_std)})"
    return text


def markdown_table(
    table: pd.DataFrame, missing: Sequence[str], synthetic: bool, n_boot: int | None = 1000,
    results: Sequence[dict] | None = None,
    label_notes: dict[str, Any] | None = None,
) -> str:
    """Table III as Markdown, with the notes a reader needs to interpret it: data, CI method and its measured
    coverage, thin classes, the paper's open choices as this run made them, and the generated list of
    deviations from the paper (from each run's resolved config, see dinoloc.provenance)."""
    from dinoloc import provenance

    ci = table.attrs.get("ci", {"n_boot": n_boot, "level": 0.95, "method": "percentile", "seed": 0})
    level = float(ci.get("level", 0.95))
    method = str(ci.get("method", "percentile"))
    lines = []
    if synthetic:
        lines += [
            "**SYNTHETIC DEMO DATA** — not the paper's data: generated images and stand-in backbones, so these "
            "numbers say nothing about the paper's claims.",
            "",
        ]
    lines += [
        "**Table III.** Test macro F1 (mean ± std over the cross-validation folds).",
        "",
        f"| Weights | Model | Approach | Head | DINO epochs | Test macro F1 | {level:.0%} CI | bias | "
        "F1 (≥3-target classes) [CI] | Train F1 | Val F1 | Δ vs best | p vs best (raw / Holm) | "
        "p vs floor (raw / Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = table.attrs.get("best", table["test_f1_mean"].idxmax() if len(table) else None)
    for idx, r in table.iterrows():
        epochs = "–" if pd.isna(r["dino_epochs"]) else str(int(r["dino_epochs"]))
        cfg_epochs = r.get("dino_epochs_config")
        if r.get("dino_epochs_source") == "config":
            epochs += "*"
        elif not pd.isna(r["dino_epochs"]) and cfg_epochs is not None and not pd.isna(cfg_epochs) and (
            int(cfg_epochs) != int(r["dino_epochs"])
        ):
            epochs += "†"
        delta = "best" if idx == best else f"{r['delta_vs_best']:+.4f}"
        floor = "floor" if r.get("random_weights") else (
            f"{_fmt_p(r['p_vs_floor'], n_boot)} / {_fmt_p(r['p_vs_floor_holm'], n_boot)}"
        )
        approach = r["approach"] if r.get("variant", "baseline") == "baseline" else f"{r['approach']} ({r['variant']})"
        lines.append(
            f"| {r['weights']} | {r['model']} | {approach} | {r.get('head', DEFAULT_HEAD)} | {epochs} | {_fmt_std(r)} | "
            f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['ci_bias'], 3) if not pd.isna(r['ci_bias']) else '–'} | "
            f"{_fmt(r['ws_f1'])} [{_fmt(r['ws_ci_low'])}, {_fmt(r['ws_ci_high'])}] | {_fmt(r['train_f1_mean'])} | "
            f"{_fmt(r['val_f1_mean'])} | {delta} | "
            f"{_fmt_p(r['p_vs_best'], n_boot)} / {_fmt_p(r['p_vs_best_holm'], n_boot)} | {floor} |"
        )
    ddofs = sorted({int(d) for d in table["std_ddof"].dropna()}) if "std_ddof" in table else []
    ddof_text = ", ".join(str(d) for d in ddofs) if ddofs else "not recorded"
    n_seeds = sorted({int(n) for n in table["n_seeds"].dropna()}) if "n_seeds" in table else [1]
    cov = stats.SIMULATED_COVERAGE.get(method, {})
    thin = sorted({c.strip() for t in table.get("thin_classes", []) for c in str(t).split(",") if c.strip()})
    seeds_text = (
        f" Classifier seeds: {', '.join(map(str, n_seeds))}; the score is the mean over seeds and folds, "
        "'seeds ±' the std over seeds of each seed's fold mean." if n_seeds != [1] else ""
    )
    lines += [
        "",
        f"Notes: ± is the standard deviation of the per-fold test macro F1 (ddof = {ddof_text}); each fold's "
        f"classifier predicts the same held-out test set.{seeds_text} Macro F1 averages the classes with at least "
        "one positive test image. "
        f"The {level:.0%} CI is a {stats.METHOD_NAMES.get(method, method)} bootstrap interval "
        f"({ci.get('n_boot')} replicates, seed {ci.get('seed')}) resampling test targets (proteins) with "
        "replacement, since all images of a target share its labels; every replicate scores the same classes as "
        "the estimate (a class not drawn scores 0). 'bias' is the replicate mean minus the estimate. "
        + (
            f"Measured coverage of the expected test macro F1 by this interval in a simulation of an "
            f"OpenCell-like population (17 classes, six with 1-3 positive test targets; scripts/ci_coverage.py): "
            f"{cov['all']:.2f} over all scored classes and {cov['well_supported']:.2f} over the well-supported "
            f"ones at nominal {cov['level']:.2f}: the interval is too narrow there, mainly because which thin "
            "classes a test set contains is itself random, which no resampling of one test set can see. "
            if cov else ""
        )
        + f"F1 (≥{stats.WELL_SUPPORTED}-target classes) averages only classes with at least "
        f"{stats.WELL_SUPPORTED} positive test targets"
        + (f"; thin classes left out: {', '.join(thin)}." if thin else ".")
        + " p are two-sided paired bootstrap tests on the same replicates and class set (replicate differences "
        "centred on their mean), against the best row and against the random-weights floor; Holm adjusts over "
        "every comparison in the table (–: the row itself, or a different test set). DINO epochs are read from "
        "the checkpoint; * the file records none, so backbone.dino_epochs is shown; † the checkpoint's count "
        "differs from backbone.dino_epochs.",
    ]
    if "head" in table and table["head"].nunique() > 1:
        lines.append(
            "Heads: mlp = the paper's MLP; knn = DINO's weighted k-NN (k = 20, T = 0.07, cosine on L2-normalised "
            "embeddings, per-class weighted vote); linear = one linear layer with the MLP's recipe."
        )
        lines += [f"Ranking: {n}." for n in ranking_notes(table)]
    if label_notes is None and results:
        label_notes = next((r["data"]["label_notes"] for r in results if r.get("data", {}).get("label_notes")), None)
    if label_notes and label_notes.get("ignored"):
        counts = ", ".join(f"{c} ({n})" for c, n in label_notes["ignored"].items())
        only = len(label_notes.get("only_ignored") or [])
        lines.append(
            f"Annotation names outside the 17 classes were dropped (data.labels.ignore), targets carrying each: "
            f"{counts}. {only} target(s) carried only such names and count as labelled with no positive class."
        )
    if results:
        lines += ["", provenance.choices_note(results)]
        mismatches = provenance.epoch_mismatches(results)
        if mismatches:
            lines.append("Epoch mismatches: " + "; ".join(mismatches))
        lines += ["", "**Deviations from the paper** (generated from each run's resolved config):", ""]
        lines += [f"- {d}" for d in provenance.deviations_list(results)] or ["- none"]
        warns = provenance.embedding_warnings(results)
        if warns:
            lines += ["", "**Embedding health:**", ""] + [f"- {w}" for w in warns]
    notes = [f"{r['run']}: {r['notes']}" for _, r in table.iterrows() if r.get("notes")]
    if notes:
        lines.append("Run notes: " + " | ".join(notes))
    if missing:
        lines.append(f"Missing rows: {', '.join(missing)} (no finished run folder).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# the whole stage
# ----------------------------------------------------------------------------------------------------------
def write_report(
    runs_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    expected: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "percentile",
    figure2_colors: str = "magenta_green",
    embedding_maps: str = "auto",
    max_points: int = 2000,
    *,
    display_percentiles: Sequence[float],
) -> dict[str, Path]:
    """Aggregate `runs_dir` into out_dir: table3.csv, table3.md, per_class.csv, figure1, figure2 (best row's
    best fold, panels stretched by `display_percentiles`), per_class_f1 (heatmap) and embedding_maps
    (`embedding_maps`: auto | umap | tsne | none, at most `max_points` images per panel), each figure as .png
    and .pdf. Returns {file name: path}."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    results = collect_runs(runs_dir)
    if not results:
        raise DinolocError(
            f"no finished runs in {runs_dir} (no */result.json). Make them first, e.g. "
            "`dinoloc-run -m experiment=table3 data.root=/path/to/opencell` (or experiment=demo), then rerun "
            "dinoloc-report with the same experiment"
        )
    table, missing = build_table(results, expected=expected, n_boot=n_boot, seed=seed, level=level, method=method)
    from dinoloc.provenance import embedding_warnings

    for message in embedding_warnings(results):
        _warn(message)
    synthetic = bool(table["synthetic"].any())
    paths = {name: out_dir / name for name in ("table3.csv", "table3.md", "per_class.csv", "figure1.png")}
    write_csv(paths["table3.csv"], table)
    write_text(paths["table3.md"], markdown_table(table, missing, synthetic, n_boot=n_boot, results=results))
    write_csv(paths["per_class.csv"], per_class_table(results))
    sens = pd.DataFrame(table.attrs.get("sensitivity") or [], columns=SENSITIVITY_COLUMNS)
    if len(sens):
        paths["sensitivity.csv"], paths["sensitivity.md"] = out_dir / "sensitivity.csv", out_dir / "sensitivity.md"
        write_csv(paths["sensitivity.csv"], sens)
        write_text(paths["sensitivity.md"], sensitivity_markdown(sens, synthetic, n_boot, level))
    plot_figure1(paths["table3.csv"], paths["figure1.png"])
    paths["figure1.pdf"] = paths["figure1.png"].with_suffix(".pdf")
    best_dir = table.loc[table.attrs["best"], "run_dir"]
    paths["figure2.png"] = out_dir / "figure2.png"
    shown = plot_figure2(best_dir, paths["figure2.png"], seed=seed, colors=figure2_colors,
                         display_percentiles=display_percentiles)
    print(f"Figure 2: {', '.join(shown)} from {best_dir}", file=sys.stderr)
    paths["per_class_f1.png"] = out_dir / "per_class_f1.png"
    plot_per_class(paths["per_class.csv"], paths["per_class_f1.png"], synthetic=synthetic,
                   labels={r["run"]: f"{r['weights']} · {r['strategy']}" for _, r in table.iterrows()})
    for name in ("figure2", "per_class_f1"):
        paths[f"{name}.pdf"] = out_dir / f"{name}.pdf"
    if embedding_maps != "none":
        from dinoloc.embedding_maps import plot_embedding_maps

        try:  # the table stands without the maps: a row whose cache was deleted only costs its map
            info = plot_embedding_maps(results, out_dir / "embedding_maps.png", method=embedding_maps,
                                       max_points=max_points, seed=seed)
        except DinolocError as e:
            _warn(f"embedding maps skipped: {e}")
        else:
            paths["embedding_maps.png"] = out_dir / "embedding_maps.png"
            paths["embedding_maps.pdf"] = out_dir / "embedding_maps.pdf"
            print(f"Embedding maps: {info['method']}, {info['n_points']} of {info['n_labelled']} labelled images "
                  f"drawn per panel, {len(info['panels'])} panel(s), {info['seconds']:.1f} s", file=sys.stderr)
    return paths
