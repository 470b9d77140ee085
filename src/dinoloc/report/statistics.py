"""Each row's statistics from its predictions.csv: the test macro F1 recomputed and checked against result.json,
target-bootstrap CIs (all scored classes; well-supported classes) and what the paired tests need.

Statistics beyond mean ± std resample test *targets* (proteins), not images: every image of a target shares its
labels, so images are not independent draws and an image bootstrap would be too narrow. The estimators live in
dinoloc.stats; this module turns a run folder into their inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc import stats
from dinoloc.metrics import decide, macro_f1
from dinoloc.ontology import CATEGORIES
from dinoloc.report.runs import select_test, threshold, warn
from dinoloc.results import label_columns, prob_columns, read_predictions, result_classes


def _with_seed(test: pd.DataFrame) -> pd.DataFrame:
    """A single cross_validate run has no seed column: it is classifier seed 0."""
    return test.assign(seed=test["seed"] if "seed" in test.columns else 0)


def target_counts(test: pd.DataFrame, threshold: float,
                  classes: Sequence[str] = CATEGORIES, single_label: bool = False) -> tuple[np.ndarray, list, list[str]]:
    """Per (classifier seed, fold), target and class: the counts (tp, fp, fn, pos) macro F1 is a function of.

    Returns counts of shape (4, n_seed_folds, n_targets, n_classes), the (seed, fold) pairs and the sorted
    targets. Summing the counts of a multiset of targets gives exactly sklearn's F1 on the images."""
    test = _with_seed(test)
    folds = sorted({(int(a), int(b)) for a, b in zip(test["seed"], test["fold"], strict=True)})
    targets = sorted(test["target"].astype(str).unique().tolist())
    t_index = {t: i for i, t in enumerate(targets)}
    y_cols, p_cols = label_columns(classes), prob_columns(classes)
    counts = np.zeros((4, len(folds), len(targets), len(classes)), dtype=np.float64)
    for fi, (seed, fold) in enumerate(folds):
        rows = test[(test["seed"] == seed) & (test["fold"] == fold)]
        y = rows[y_cols].to_numpy(dtype=np.int64) > 0
        p = decide(rows[p_cols].to_numpy(dtype=np.float64), threshold, single_label) > 0
        ti = rows["target"].astype(str).map(t_index).to_numpy()
        for k, v in enumerate((y & p, ~y & p, y & ~p, y)):
            np.add.at(counts[k, fi], ti, v.astype(np.float64))
    return counts, folds, targets


def _fold_scores(test: pd.DataFrame, folds: list, cut: float, classes: Sequence[str],
                 single_label: bool = False) -> dict[tuple, float]:
    """The classifier's own macro F1 on each (seed, fold)'s full test set (images, not counts)."""
    test = _with_seed(test)
    y_cols, p_cols = label_columns(classes), prob_columns(classes)
    out = {}
    for seed, fold in folds:
        rows = test[(test["seed"] == seed) & (test["fold"] == fold)]
        y = rows[y_cols].to_numpy(dtype=np.int64)
        p = decide(rows[p_cols].to_numpy(dtype=np.float64), cut, single_label)
        out[(seed, fold)] = float(macro_f1(y, p, classes)[0])
    return out


def _check_against_result(result: dict, per_fold: dict[tuple, float], notes: list[str]) -> float:
    """The recomputed mean test F1; a warning (and a note) where it or a fold differs from result.json."""
    run_dir = result["run_dir"]
    recomputed = float(np.mean(list(per_fold.values())))
    reported = float(result["test_macro_f1_mean"])
    if not math.isclose(recomputed, reported, rel_tol=0.0, abs_tol=1e-9):
        warn(
            f"{Path(run_dir) / 'predictions.csv'}: test macro F1 recomputed from the predictions "
            f"({recomputed:.10f}) differs from result.json's test_macro_f1_mean ({reported:.10f})"
        )
        notes.append("recomputed test F1 differs from result.json")
    for f in result["folds"]:
        key = (int(f.get("seed", 0)), f.get("fold"))
        if key in per_fold and not math.isclose(per_fold[key], float(f["test_macro_f1"]), abs_tol=1e-9):
            warn(f"{Path(run_dir) / 'result.json'}: fold {key[1]} test_macro_f1 differs from predictions.csv")
    return recomputed


def run_stats(result: dict, *, n_boot: int, seed: int, level: float, method: str) -> dict[str, Any]:
    """Recompute the test macro F1 from predictions.csv, check it against result.json, bootstrap a calibrated
    CI over the scored classes (a positive in the test set; presence-keeping replicates over targets and,
    with several classifier seeds, seeds: dinoloc.stats) and one over the well-supported classes
    (>= stats.WELL_SUPPORTED positive test targets). Below stats.CALIBRATION["min_test_targets"] test targets
    there is no interval (and no paired test): a note says so."""
    run_dir = result["run_dir"]
    cut = threshold(result)
    names = result_classes(result)
    test = select_test(read_predictions(run_dir, names), run_dir)
    single = bool(result.get("single_label", False))  # the top class, not the threshold (classify/cv.py)
    counts, folds, targets = target_counts(test, cut, names, single)
    notes: list[str] = []
    recomputed = _check_against_result(result, _fold_scores(test, folds, cut, names, single), notes)

    classes = stats.scored_classes(counts)
    n_pos = stats.positive_targets(counts)
    well = n_pos >= stats.WELL_SUPPORTED
    seed_of = [s for s, _ in folds]
    calibrated = len(targets) >= stats.CALIBRATION["min_test_targets"]
    inflate = float(stats.CALIBRATION["inflate"])
    reps = stats.replicates(counts, classes, n_boot, seed, seed_of) if n_boot > 0 and calibrated else None
    nan_interval = stats.Interval(float("nan"), float("nan"), float("nan"), float("nan"), method)
    ci = stats.bootstrap_interval(counts, classes, reps, level, method, inflate) if reps is not None else nan_interval
    ws = (stats.bootstrap_interval(counts, well, reps, level, method, inflate)
          if reps is not None and well.any() else nan_interval)
    # below min_test_targets the table's CI cell says "too few test targets" (no run note: the same on every row)
    if ci.widened:
        notes.append(f"the {method} interval missed the estimate and was widened to it")
    y_cols = label_columns(names)
    return {
        "recomputed": recomputed,
        "counts": counts,
        "folds": folds,
        "targets": targets,
        # Paired tests need the same test images AND labels (min_grade changes labels, not images).
        "image_set": frozenset(zip(test["image_id"].astype(str), test["target"].astype(str),
                                   map(tuple, test[y_cols].to_numpy(dtype=np.int64).tolist()), strict=True)),
        "ci": ci,
        "ws": ws if well.any() else nan_interval,
        "ws_estimate": stats.estimate(counts, well) if well.any() else float("nan"),
        "thin_classes": [c for c, k, s in zip(names, n_pos, classes, strict=True) if s and k < stats.WELL_SUPPORTED],
        "n_positive_targets": dict(zip(names, n_pos.tolist(), strict=True)),
        "classes": classes,
        "weights": reps,  # stats.Replicates (None: no bootstrap, or too few test targets)
        "calibrated": calibrated,
        "n_test_targets": len(targets),
        "seeds": sorted(set(seed_of)),
        "notes": notes,
    }
