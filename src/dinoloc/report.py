"""The report stage: run folders -> Table III (CSV + Markdown), per-class F1, Figures 1 and 2.

It reads only what the classify stage left in `<runs_dir>/<backbone>__<strategy>/` (result.json,
predictions.csv, per_class.csv) and never re-runs anything. Statistics beyond mean ± std (bootstrap CI,
paired comparison against the best row) resample test *targets* (proteins), not images: every image of a
target shares its labels, so images are not independent draws and an image bootstrap would be too narrow.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc.classify import macro_f1
from dinoloc.io import DinolocError, atomic_path, read_json, write_csv, write_text
from dinoloc.ontology import CATEGORIES
from dinoloc.probes import DEFAULT_HEAD, HEADS, ranking_notes, run_dir_name

SYNTHETIC_MARKER = "SYNTHETIC DEMO — not the paper's data"
NATIVE_APPROACH = "–"  # the paper's Table III writes a dash for the 2-channel native model
_FAMILY_ORDER = ("imagenet", "hpa", "opencell")  # the paper's row order, by pretraining data
_STRATEGY_ORDER = ("mapping", "replication", "native")
_STRATEGY_STYLE = {  # legend label, colour
    "mapping": ("channel mapping", "tab:blue"),
    "replication": ("channel replication", "tab:orange"),
    "native": ("native (2 channels)", "tab:green"),
}
_HEAD_HATCH = {"knn": "//", "linear": ".."}  # the MLP's bars stay plain
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
    "dino_epochs",
    "test_f1_mean",
    "test_f1_std",
    "train_f1_mean",
    "val_f1_mean",
    "n_folds",
    "ci_low",
    "ci_high",
    "delta_vs_best",
    "p_vs_best",
    "synthetic",
    "backbone",
    "strategy",
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
    return run_dir_name(str(result["backbone"]), str(result["strategy"]), _head(result))


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
# target-level bootstrap
# ----------------------------------------------------------------------------------------------------------
def _target_counts(test: pd.DataFrame, threshold: float,
                   classes: Sequence[str] = CATEGORIES) -> tuple[np.ndarray, list, list[str]]:
    """Per fold, target and class: the counts (tp, fp, fn, pos) that macro F1 is a function of.

    Returns counts of shape (4, n_folds, n_targets, n_classes), the folds and the sorted targets. Summing
    the counts of a multiset of targets gives exactly sklearn's F1 on the concatenated images."""
    folds = sorted(test["fold"].unique().tolist())
    targets = sorted(test["target"].astype(str).unique().tolist())
    t_index = {t: i for i, t in enumerate(targets)}
    y_cols = [f"y_{c}" for c in classes]
    p_cols = [f"p_{c}" for c in classes]
    counts = np.zeros((4, len(folds), len(targets), len(classes)), dtype=np.float64)
    for fi, fold in enumerate(folds):
        rows = test[test["fold"] == fold]
        y = rows[y_cols].to_numpy(dtype=np.int64) > 0
        p = rows[p_cols].to_numpy(dtype=np.float64) > threshold
        ti = rows["target"].astype(str).map(t_index).to_numpy()
        for k, v in enumerate((y & p, ~y & p, y & ~p, y)):
            np.add.at(counts[k, fi], ti, v.astype(np.float64))
    return counts, folds, targets


def _fold_mean_macro_f1(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Fold-mean macro F1 for each row of `weights` (n_boot, n_targets: how often each target is drawn).
    F1 = 2tp / (2tp + fp + fn), 0 when undefined (zero_division=0), mean over classes with a positive."""
    tp, fp, fn, pos = (np.einsum("bt,ftc->bfc", weights, counts[k]) for k in range(4))
    den = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)
    present = pos > 0
    n_present = present.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = np.where(n_present > 0, (f1 * present).sum(axis=2) / n_present, np.nan)
    return macro.mean(axis=1)


def bootstrap_weights(n_targets: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_targets) draw counts: each replicate samples n_targets targets with replacement. A fixed
    seed per target set means runs on the same test set see the same replicates (a paired bootstrap)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_targets, np.full(n_targets, 1.0 / n_targets), size=n_boot).astype(np.float64)


def _run_stats(result: dict, n_boot: int, seed: int) -> dict[str, Any]:
    """Recompute the test macro F1 from predictions.csv, check it against result.json, bootstrap a CI."""
    run_dir = result["run_dir"]
    threshold = _threshold(result)
    classes = result_classes(result)
    test = _test_rows(read_predictions(run_dir, classes), run_dir)
    counts, folds, targets = _target_counts(test, threshold, classes)
    notes = []

    # The check uses the classifier's own macro F1 on each fold's full test set (images, not counts).
    y_cols = [f"y_{c}" for c in classes]
    p_cols = [f"p_{c}" for c in classes]
    per_fold = {}
    for fold in folds:
        rows = test[test["fold"] == fold]
        y = rows[y_cols].to_numpy(dtype=np.int64)
        p = (rows[p_cols].to_numpy(dtype=np.float64) > threshold).astype(np.int64)
        per_fold[fold] = _macro_f1(y, p, classes)
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
        fold = f.get("fold")
        if fold in per_fold and not math.isclose(per_fold[fold], float(f["test_macro_f1"]), abs_tol=1e-9):
            _warn(f"{Path(run_dir) / 'result.json'}: fold {fold} test_macro_f1 differs from predictions.csv")

    boot = _fold_mean_macro_f1(counts, bootstrap_weights(len(targets), n_boot, seed))
    ci_low, ci_high = np.nanpercentile(boot, [2.5, 97.5]) if n_boot > 0 else (np.nan, np.nan)
    return {
        "recomputed": recomputed,
        "counts": counts,
        "folds": folds,
        "targets": targets,
        "image_set": frozenset(zip(test["image_id"].astype(str), test["target"].astype(str), strict=True)),
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "notes": notes,
    }


def paired_p_value(counts_a: np.ndarray, counts_b: np.ndarray, n_boot: int, seed: int) -> float:
    """Two-sided paired bootstrap p-value of the difference in fold-mean macro F1 between two runs on the
    same test targets: both are evaluated on the same resampled targets, p = 2·min(P(d ≤ 0), P(d ≥ 0))."""
    if counts_a.shape[2] != counts_b.shape[2]:
        raise ValueError("paired comparison needs the same test targets in both runs")
    w = bootstrap_weights(counts_a.shape[2], n_boot, seed)
    d = _fold_mean_macro_f1(counts_a, w) - _fold_mean_macro_f1(counts_b, w)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    return float(min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))))


# ----------------------------------------------------------------------------------------------------------
# Table III
# ----------------------------------------------------------------------------------------------------------
def build_table(
    results: Sequence[dict], expected: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0
) -> tuple[pd.DataFrame, list[str]]:
    """One row per run in the paper's order, with mean ± std from result.json and, from predictions.csv,
    a 95% target-bootstrap CI and a paired comparison against the best row. Returns (table, missing),
    `missing` being the `expected` "backbone__strategy" names without a finished run."""
    results = sorted(results, key=_row_order)
    names = [_run_name(r) for r in results]
    dirs = [Path(r["run_dir"]).name for r in results]
    missing = [e for e in (expected or []) if e not in names and e not in dirs]
    if missing:
        _warn(f"Table III is missing expected row(s): {', '.join(missing)} (no finished run folder)")
    if not results:
        return pd.DataFrame(columns=TABLE_COLUMNS), missing

    stats = [_run_stats(r, n_boot, seed) for r in results]
    means = np.array([float(r["test_macro_f1_mean"]) for r in results])
    best = int(np.argmax(means))
    rows = []
    for i, (r, s) in enumerate(zip(results, stats, strict=True)):
        notes = list(s["notes"])
        if i == best:
            p = float("nan")
        elif s["image_set"] != stats[best]["image_set"]:
            p = float("nan")
            notes.append("different test images than the best row: no paired test")
        else:
            p = paired_p_value(s["counts"], stats[best]["counts"], n_boot, seed)
        strategy = str(r["strategy"])
        rows.append(
            {
                "weights": r.get("backbone_display", r["backbone"]),
                "model": r.get("model_label", r.get("arch", "")),
                "approach": NATIVE_APPROACH if strategy == "native" else strategy,
                "head": _head(r),
                "dino_epochs": r.get("dino_epochs"),
                "test_f1_mean": float(r["test_macro_f1_mean"]),
                "test_f1_std": float(r["test_macro_f1_std"]),
                "train_f1_mean": float(r["train_macro_f1_mean"]),
                "val_f1_mean": float(r["val_macro_f1_mean"]),
                "n_folds": int(r["n_folds"]),
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "delta_vs_best": float(means[i] - means[best]),
                "p_vs_best": p,
                "synthetic": bool(r.get("synthetic", False)),
                "backbone": r["backbone"],
                "strategy": strategy,
                "run_dir": r["run_dir"],
                "run": names[i],
                "std_ddof": r.get("std_ddof"),
                "notes": "; ".join(notes),
            }
        )
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["dino_epochs"] = table["dino_epochs"].astype("Int64")
    return table, missing


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
    return f"{float(p):.3f}"


def markdown_table(
    table: pd.DataFrame, missing: Sequence[str], synthetic: bool, n_boot: int | None = 1000,
    label_notes: dict[str, Any] | None = None,
) -> str:
    """Table III as Markdown, with the notes a reader needs to interpret it (data, CI method, std ddof)."""
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
        "| Weights | Model | Approach | Head | DINO epochs | Test macro F1 | 95% CI | Train F1 | Val F1 | Δ vs best | p |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = table["test_f1_mean"].idxmax() if len(table) else None
    for idx, r in table.iterrows():
        epochs = "–" if pd.isna(r["dino_epochs"]) else str(int(r["dino_epochs"]))
        delta = "best" if idx == best else f"{r['delta_vs_best']:+.4f}"
        lines.append(
            f"| {r['weights']} | {r['model']} | {r['approach']} | {r.get('head', DEFAULT_HEAD)} | {epochs} | "
            f"{_fmt(r['test_f1_mean'])} ± {_fmt(r['test_f1_std'])} | "
            f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['train_f1_mean'])} | "
            f"{_fmt(r['val_f1_mean'])} | {delta} | {_fmt_p(r['p_vs_best'], n_boot)} |"
        )
    ddofs = sorted({int(d) for d in table["std_ddof"].dropna()}) if "std_ddof" in table else []
    ddof_text = ", ".join(str(d) for d in ddofs) if ddofs else "not recorded"
    lines += [
        "",
        f"Notes: ± is the standard deviation of the per-fold test macro F1 (ddof = {ddof_text}); each fold's "
        "classifier predicts the same held-out test set. Macro F1 averages the classes with at least one "
        "positive test image. The 95% CI is a percentile bootstrap of the fold-mean test macro F1 resampling "
        f"test targets (proteins) with replacement{f' ({n_boot} replicates)' if n_boot else ''}, since all "
        "images of a target share its labels. p is a two-sided paired bootstrap over the same targets of the "
        "difference to the best row (–: the best row itself, or a different test set).",
    ]
    if "head" in table and table["head"].nunique() > 1:
        lines.append(
            "Heads: mlp = the paper's MLP; knn = DINO's weighted k-NN (k = 20, T = 0.07, cosine on L2-normalised "
            "embeddings, per-class weighted vote); linear = one linear layer with the MLP's recipe."
        )
        lines += [f"Ranking: {n}." for n in ranking_notes(table)]
    if label_notes and label_notes.get("ignored"):
        counts = ", ".join(f"{c} ({n})" for c, n in label_notes["ignored"].items())
        only = len(label_notes.get("only_ignored") or [])
        lines.append(
            f"Annotation names outside the 17 classes were dropped (data.labels.ignore), targets carrying each: "
            f"{counts}. {only} target(s) carried only such names and count as labelled with no positive class."
        )
    notes = [f"{r['run']}: {r['notes']}" for _, r in table.iterrows() if r.get("notes")]
    if notes:
        lines.append("Run notes: " + " | ".join(notes))
    if missing:
        lines.append(f"Missing rows: {', '.join(missing)} (no finished run folder).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------------
def _save_figure(fig: Any, out: Path, fmt: str, title: str) -> None:
    # The title also goes into the file's metadata so a reader (or a test) can check the synthetic marker.
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata={"Title": title})


def plot_figure1(table_csv: str | os.PathLike, out_png: str | os.PathLike) -> list[tuple[str, float, float]]:
    """The paper's Figure 1 from table3.csv alone: mean test macro F1 bars with ±1 std error bars, grouped
    by pretraining weights, coloured by strategy. Writes out_png and a PDF beside it. Returns the
    (label, height, err) of the bars as read back from the drawn Axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.container import BarContainer

    table_csv, out_png = Path(table_csv), Path(out_png)
    if not table_csv.is_file():
        raise DinolocError(f"{table_csv} does not exist; make it with dinoloc-report")
    df = pd.read_csv(table_csv)
    missing = [c for c in ("weights", "strategy", "test_f1_mean", "test_f1_std") if c not in df.columns]
    if missing:
        raise DinolocError(f"{table_csv} lacks column(s) {missing}; it is not a dinoloc table3.csv")
    if df.empty:
        raise DinolocError(f"{table_csv} has no rows; run the experiment first (dinoloc-run -m experiment=...)")
    synthetic = bool(df["synthetic"].astype(str).str.lower().eq("true").any()) if "synthetic" in df else False

    groups = list(dict.fromkeys(df["weights"].astype(str)))  # order of the table (the paper's)
    width = 0.8 / max(df.groupby("weights").size().max(), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(groups)), 4.2))
    seen: set[str] = set()
    multi_head = "head" in df and df["head"].nunique() > 1  # probes beside the MLP: hatched bars, head in the label
    for gi, group in enumerate(groups):
        rows = df[df["weights"].astype(str) == group]
        for k, (_, r) in enumerate(rows.iterrows()):
            strategy = str(r["strategy"])
            label, colour = _STRATEGY_STYLE.get(strategy, (strategy, "tab:gray"))
            head = str(r["head"]) if multi_head else ""
            if multi_head:
                label, strategy = f"{label} · {head}", f"{strategy} / {head}"
            x = gi + (k - (len(rows) - 1) / 2) * width
            h, err = float(r["test_f1_mean"]), float(r["test_f1_std"])
            bars = ax.bar(
                [x], [h], width * 0.95, yerr=[err], capsize=4, color=colour, edgecolor="black", linewidth=0.5,
                label=label if strategy not in seen else "_nolegend_", hatch=_HEAD_HATCH.get(head, ""),
            )
            bars.patches[0].set_gid(f"{group} / {strategy}")
            seen.add(strategy)
            ax.text(x, h + err + 0.01, f"{h:.4f}", ha="center", va="bottom", fontsize=6 if multi_head else 8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel("Pretraining dataset")
    ax.set_ylabel("Macro F1")
    top = float((df["test_f1_mean"] + df["test_f1_std"]).max())
    ax.set_ylim(0, min(1.1, top + 0.12) if np.isfinite(top) else 1.0)
    ax.legend(loc="lower right", fontsize=8)
    n_folds = df["n_folds"].iloc[0] if "n_folds" in df else "k"
    title = f"Test macro F1 (mean ± std over {n_folds} folds)"
    if synthetic:
        title = f"{SYNTHETIC_MARKER}\n{title}"
    ax.set_title(title, color="red" if synthetic else "black")
    fig.tight_layout()

    drawn = []
    for container in ax.containers:
        if isinstance(container, BarContainer):
            patch = container.patches[0]
            (seg,) = container.errorbar.lines[2][0].get_segments()
            drawn.append((patch.get_gid(), float(patch.get_height()), float(abs(seg[1][1] - seg[0][1]) / 2)))
    _save_figure(fig, out_png, "png", title)
    _save_figure(fig, out_png.with_suffix(".pdf"), "pdf", title)
    plt.close(fig)
    return drawn


def _image_reader() -> Callable[[str | os.PathLike], np.ndarray]:
    from dinoloc.data.opencell import read_image

    return read_image


def _compositor() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from dinoloc.viz import composite

    return composite


def _stretch(channel: np.ndarray) -> np.ndarray:
    """Display scaling of one channel: 0.5-99.5 percentile to [0, 1] (16-bit images are mostly dark)."""
    lo, hi = np.percentile(channel, [0.5, 99.5])
    return np.clip((channel - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(channel)


def plot_figure2(
    best_row_run_dir: str | os.PathLike, out_png: str | os.PathLike, n_images: int = 2, seed: int = 0
) -> list[str]:
    """The paper's Figure 2: for `n_images` labelled test images of the best fold (highest test macro F1)
    of a run, the composite (protein red, nucleus green), each channel, and a table of ground truth vs
    prediction with probabilities. Returns the image ids shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, out_png = Path(best_row_run_dir), Path(out_png)
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        raise DinolocError(f"{result_path} is missing; pass a finished run folder")
    result = read_json(result_path)
    result["run_dir"] = str(run_dir)
    threshold = _threshold(result)
    folds = result.get("folds") or []
    if not folds:
        raise DinolocError(f"{result_path} has no per-fold results ('folds'); rerun the row")
    best = max(folds, key=lambda f: (float(f["test_macro_f1"]), -int(f["fold"])))
    classes = result_classes(result)
    test = _test_rows(read_predictions(run_dir, classes), str(run_dir))
    rows = test[test["fold"] == best["fold"]]
    y_cols = [f"y_{c}" for c in classes]
    p_cols = [f"p_{c}" for c in classes]
    labelled = rows[rows[y_cols].to_numpy().sum(axis=1) > 0].sort_values("image_id")
    if labelled.empty:
        raise DinolocError(f"{run_dir / 'predictions.csv'}: fold {best['fold']} has no labelled test image")
    # Deterministic choice, preferring distinct proteins so the panels are not near-duplicates.
    order = np.random.default_rng(seed).permutation(len(labelled))
    chosen, targets = [], set()
    for i in order:
        if labelled.iloc[i]["target"] not in targets:
            chosen.append(i)
            targets.add(labelled.iloc[i]["target"])
    chosen += [i for i in order if i not in chosen]
    picked = labelled.iloc[chosen[:n_images]]

    data = result.get("data") or {}
    manifest_path = Path(str(data.get("manifest", "")))
    if not manifest_path.is_file():
        raise DinolocError(
            f"{result_path}: data.manifest={manifest_path} does not exist; Figure 2 needs the images. "
            "Restore the data folder or rerun dinoloc-data"
        )
    manifest = pd.read_csv(manifest_path, dtype={"image_id": str}).set_index("image_id")
    root = Path(str(data.get("root", manifest_path.parent)))
    read_image, composite = _image_reader(), _compositor()
    if data.get("reader") == "folder":  # a labels-CSV folder: its protein / nucleus roles, else last / first channel
        from dinoloc.data.folder import display_pair

        read_image = functools.partial(display_pair, channels=data["channels"], roles=data.get("channel_roles"))

    synthetic = bool(result.get("synthetic", False))
    fig, axes = plt.subplots(
        len(picked), 4, figsize=(15, 3.6 * len(picked)), squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 1.4]}
    )
    for row_axes, (_, r) in zip(axes, picked.iterrows(), strict=True):
        image_id = str(r["image_id"])
        if image_id not in manifest.index:
            raise DinolocError(f"{manifest_path}: image_id {image_id} (from predictions.csv) is not in the manifest")
        image = read_image(root / str(manifest.loc[image_id, "path"]))
        protein, nucleus = image[0], image[1]
        panels = [
            (composite(protein, nucleus), None, "Composite (protein red, nucleus green)"),
            (_stretch(protein), "gray", "Protein"),
            (_stretch(nucleus), "gray", "Nucleus"),
        ]
        for ax, (img, cmap, name) in zip(row_axes[:3], panels, strict=True):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(f"{name}\n{image_id} ({r['target']})", fontsize=8)
            ax.axis("off")
        y, prob = r[y_cols].to_numpy(dtype=float), r[p_cols].to_numpy(dtype=float)
        shown = [i for i, c in enumerate(classes) if y[i] > 0 or prob[i] > threshold]
        cells = [
            [classes[i], "yes" if y[i] > 0 else "no", "yes" if prob[i] > threshold else "no", f"{prob[i]:.2f}"]
            for i in shown
        ]
        tax = row_axes[3]
        tax.axis("off")
        tab = tax.table(
            cellText=cells,
            colLabels=["class", "target", "predicted", "probability"], loc="center",
            colWidths=[0.4, 0.18, 0.2, 0.22],
        )
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
        tab.scale(1.0, 1.3)
        for k, i in enumerate(shown, start=1):  # green when prediction matches the ground truth
            ok = (y[i] > 0) == (prob[i] > threshold)
            for col in range(4):
                tab[k, col].set_facecolor("#d9f2d9" if ok else "#f8d7da")
    title = (
        f"{result.get('backbone_display', result['backbone'])} · {result['strategy']} · best fold {best['fold']} "
        f"(test macro F1 {float(best['test_macro_f1']):.4f}); threshold {threshold:g}"
    )
    if synthetic:
        title = f"{SYNTHETIC_MARKER}\n{title}"
    fig.suptitle(title, color="red" if synthetic else "black")
    fig.tight_layout()
    _save_figure(fig, out_png, "png", title)
    plt.close(fig)
    return picked["image_id"].astype(str).tolist()


# ----------------------------------------------------------------------------------------------------------
# the whole stage
# ----------------------------------------------------------------------------------------------------------
def write_report(
    runs_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    expected: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    embedding_maps: str = "auto",
    max_points: int = 2000,
) -> dict[str, Path]:
    """Aggregate `runs_dir` into out_dir: table3.csv, table3.md, per_class.csv, figure1.png (+ .pdf),
    figure2.png (best row's best fold) and embedding_maps.png (+ .pdf; `embedding_maps`: auto | umap | tsne |
    none, at most `max_points` images per panel). Returns {file name: path}."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    results = collect_runs(runs_dir)
    if not results:
        raise DinolocError(
            f"no finished runs in {runs_dir} (no */result.json). Make them first, e.g. "
            "`dinoloc-run -m experiment=table3 data.root=/path/to/opencell` (or experiment=demo), then rerun "
            "dinoloc-report with the same experiment"
        )
    table, missing = build_table(results, expected=expected, n_boot=n_boot, seed=seed)
    synthetic = bool(table["synthetic"].any())
    paths = {name: out_dir / name for name in ("table3.csv", "table3.md", "per_class.csv", "figure1.png")}
    write_csv(paths["table3.csv"], table)
    label_notes = next((r["data"]["label_notes"] for r in results if r.get("data", {}).get("label_notes")), None)
    write_text(paths["table3.md"], markdown_table(table, missing, synthetic, n_boot=n_boot, label_notes=label_notes))
    write_csv(paths["per_class.csv"], per_class_table(results))
    plot_figure1(paths["table3.csv"], paths["figure1.png"])
    paths["figure1.pdf"] = paths["figure1.png"].with_suffix(".pdf")
    best_dir = table.loc[table["test_f1_mean"].idxmax(), "run_dir"]
    paths["figure2.png"] = out_dir / "figure2.png"
    shown = plot_figure2(best_dir, paths["figure2.png"], seed=seed)
    print(f"Figure 2: {', '.join(shown)} from {best_dir}", file=sys.stderr)
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
