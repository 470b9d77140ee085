"""Table III: one row per run (mean ± std from result.json; CIs and paired tests from predictions.csv), as CSV
columns and as Markdown, and the per-class F1 table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc import stats
from dinoloc.io import DinolocError
from dinoloc.ontology import CATEGORIES
from dinoloc.report.notes import fmt, fmt_p, fmt_std, table_notes
from dinoloc.report.runs import (
    NATIVE_APPROACH,
    checkpoint_epochs,
    epochs_source,
    head,
    is_floor,
    row_order,
    run_name,
    warn,
    weights_label,
)
from dinoloc.report.sensitivity import sensitivity_rows
from dinoloc.report.statistics import holm_over_pairs, run_stats
from dinoloc.results import DEFAULT_HEAD, PER_CLASS_FILE, read_per_class, result_classes

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
    "family",  # the backbone's family module (timm_vit, subcell, openphenom, ...): rows are grouped by it
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



def build_table(
    results: Sequence[dict], expected: Sequence[str] | None = None, *, n_boot: int, seed: int, level: float,
    method: str,
) -> tuple[pd.DataFrame, list[str]]:
    """One row per run in the paper's order, with mean ± std from result.json and, from predictions.csv,
    a target-bootstrap CI, its bias, and paired comparisons against the best row and against the
    random-weights floor (raw and Holm-adjusted over all the table's comparisons). Returns (table,
    missing), `missing` being the `expected` run names without a finished run. n_boot, seed, level and method
    (the CI method) have no defaults: their values live in configs/config.yaml `report:` (ReportSpec); the
    table carries them in `table.attrs["ci"]` for markdown_table."""
    ci = {"n_boot": n_boot, "seed": seed, "level": level, "method": method}
    results = sorted(results, key=row_order)
    names = [run_name(r) for r in results]
    dirs = [Path(r["run_dir"]).name for r in results]
    missing = [e for e in (expected or []) if e not in names and e not in dirs]
    if missing:
        warn(f"Table III is missing expected row(s): {', '.join(missing)} (no finished run folder)")
    if not results:
        empty = pd.DataFrame(columns=TABLE_COLUMNS)
        empty.attrs["ci"] = ci
        return empty, missing

    st = [run_stats(r, n_boot=n_boot, seed=seed, level=level, method=method) for r in results]
    means = np.array([float(r["test_macro_f1_mean"]) for r in results])
    floors = [i for i, r in enumerate(results) if is_floor(r)]
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
    p_best_holm, p_floor_holm = holm_over_pairs(p_best, p_floor, best, floor)
    rows = []
    for i, (r, s) in enumerate(zip(results, st, strict=True)):
        strategy = str(r["strategy"])
        prov = r.get("provenance") or {}
        rows.append(
            {
                "weights": weights_label(r),
                "model": r.get("model_label", r.get("arch", "")),
                # the strategy's own account (result.json, since issue 27); older results: the paper's dash
                "approach": r.get("approach") or (NATIVE_APPROACH if strategy == "native" else strategy),
                "family": r.get("family") or "timm_vit",
                "head": head(r),
                "dino_epochs": checkpoint_epochs(r),
                "dino_epochs_source": epochs_source(r),
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
                "random_weights": is_floor(r),
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
    table.attrs["ci"] = ci
    table.attrs["best"] = best
    # records, not a DataFrame: pandas compares attrs when it propagates them
    table.attrs["sensitivity"] = sensitivity_rows(table, st, compare).to_dict("records")
    return table, missing



def per_class_table(results: Sequence[dict]) -> pd.DataFrame:
    """Per-class test F1 (mean over folds, from per_class.csv): one row per class in ontology order, a
    `support` column (test positives per fold) and one column per run, in the paper's order."""
    results = sorted(results, key=row_order)
    classes = result_classes(results[0]) if results else list(CATEGORIES)
    out = pd.DataFrame({"class": classes})
    support = None
    for r in results:
        path = Path(r["run_dir"]) / PER_CLASS_FILE
        df = read_per_class(r["run_dir"])
        test = df[df["split"] == "test"]
        unknown = sorted(set(test["class"]) - set(classes))
        if unknown:
            raise DinolocError(f"{path}: unknown class name(s) {unknown}; the runs' classes are {classes} "
                               "(report one dataset per experiment)")
        agg = test.groupby("class")[["f1", "support"]].mean().reindex(classes)
        if support is None:
            support = agg["support"].to_numpy()
        elif not np.allclose(support, agg["support"].to_numpy(), equal_nan=True):
            warn(f"{path}: test support differs from the first run's; the support column is the first run's")
        out[run_name(r)] = agg["f1"].to_numpy()
    out.insert(1, "support", support if support is not None else np.nan)
    return out


def markdown_table(
    table: pd.DataFrame, missing: Sequence[str], synthetic: bool, results: Sequence[dict] | None = None,
    label_notes: dict[str, Any] | None = None,
) -> str:
    """Table III as Markdown, with the notes a reader needs to interpret it: data, CI method and its measured
    coverage, thin classes, the paper's open choices as this run made them, and the generated list of
    deviations from the paper (from each run's resolved config, see dinoloc.provenance). The CI settings are
    the ones build_table used (`table.attrs["ci"]`)."""
    ci = table.attrs["ci"]
    n_boot, level = int(ci["n_boot"]), float(ci["level"])
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
            f"{fmt_p(r['p_vs_floor'], n_boot)} / {fmt_p(r['p_vs_floor_holm'], n_boot)}"
        )
        approach = r["approach"] if r.get("variant", "baseline") == "baseline" else f"{r['approach']} ({r['variant']})"
        lines.append(
            f"| {r['weights']} | {r['model']} | {approach} | {r.get('head', DEFAULT_HEAD)} | {epochs} | {fmt_std(r)} | "
            f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] | {fmt(r['ci_bias'], 3) if not pd.isna(r['ci_bias']) else '–'} | "
            f"{fmt(r['ws_f1'])} [{fmt(r['ws_ci_low'])}, {fmt(r['ws_ci_high'])}] | {fmt(r['train_f1_mean'])} | "
            f"{fmt(r['val_f1_mean'])} | {delta} | "
            f"{fmt_p(r['p_vs_best'], n_boot)} / {fmt_p(r['p_vs_best_holm'], n_boot)} | {floor} |"
        )
    lines += table_notes(table, missing, n_boot, results, label_notes)
    return "\n".join(lines) + "\n"
