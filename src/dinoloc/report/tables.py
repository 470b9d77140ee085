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
    role,
    row_order,
    run_name,
    warn,
    weights_label,
)
from dinoloc.report.sensitivity import sensitivity_rows
from dinoloc.report.statistics import run_stats
from dinoloc.results import DEFAULT_HEAD, PER_CLASS_FILE, read_per_class, result_classes

TABLE_COLUMNS = [
    "weights",
    "model",
    "approach",
    "head",
    "role",  # pretrained | floor | trivial | classical (docs/references.md)
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
    "rank",  # 1 = highest test macro F1 among rows of the same variant and head (a rank, not a comparison)
    "n_test_targets",
    "calibrated",  # enough test targets for a calibrated interval and paired tests (stats.CALIBRATION)
    "delta_vs_floor",
    "p_vs_floor",  # raw paired bootstrap p (a declared comparison: every row vs the random-weights floor)
    "p_vs_floor_holm",  # Holm-adjusted over every declared comparison in the table (attrs["comparisons"])
    "random_weights",  # the random-weights floor row
    "synthetic",
    "single_label",  # every labelled image has one class: the heads predicted the top class
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



FLOOR_WHY = "row vs the random-weights floor"
PAIR_WHY = "mapping vs replication, same backbone"
HPA_WHY = "the paper's claim: HPA mapping vs each other row"


def declared_comparisons(results: Sequence[dict]) -> list[tuple[int, int, str]]:
    """The comparisons Table III tests, fixed before any score is seen (never chosen from the results):
    within each (variant, head) group, every row vs the random-weights floor; mapping vs replication within
    each backbone; and the paper's own claim, HPA mapping vs each other row. A pair is tested once (its
    first reason). Returns (row, versus, reason) index pairs into `results`."""
    out: list[tuple[int, int, str]] = []
    seen: set[frozenset] = set()

    def add(i: int, j: int, why: str) -> None:
        if i != j and frozenset((i, j)) not in seen:
            seen.add(frozenset((i, j)))
            out.append((i, j, why))

    # The trivial row's head (constant) reads no feature: it is read against the paper's head's floor.
    key = [((r.get("variant") or "baseline"), DEFAULT_HEAD if role(r) == "trivial" else head(r)) for r in results]
    for g in dict.fromkeys(key):
        idx = [i for i in range(len(results)) if key[i] == g]
        floors = [i for i in idx if is_floor(results[i])]
        for i in idx:
            for f in floors[:1]:
                add(i, f, FLOOR_WHY)
        for i in idx:
            if results[i]["strategy"] != "mapping" or is_floor(results[i]):
                continue
            for j in idx:
                if results[j]["backbone"] == results[i]["backbone"] and results[j]["strategy"] == "replication":
                    add(i, j, PAIR_WHY)
        hpa = [i for i in idx if str(results[i]["backbone"]).startswith("hpa") and results[i]["strategy"] == "mapping"]
        for i in hpa[:1]:
            for j in idx:
                add(i, j, HPA_WHY)
    return out


def build_table(
    results: Sequence[dict], expected: Sequence[str] | None = None, *, n_boot: int, seed: int, level: float,
    method: str,
) -> tuple[pd.DataFrame, list[str]]:
    """One row per run in the paper's order, with mean ± std from result.json and, from predictions.csv,
    a target-bootstrap CI, its bias, a plain rank, and the declared paired comparisons (declared_comparisons;
    raw and Holm-adjusted over all of them, in `table.attrs["comparisons"]`; the floor's in the row). Returns (table,
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
    # The trivial row (constant head, reads no feature) is ranked with the paper's head, as it is compared.
    group = [(results[i].get("variant") or "baseline", DEFAULT_HEAD if role(results[i]) == "trivial" else head(results[i]))
             for i in range(len(results))]
    ranks = pd.Series(means).groupby(pd.Series(group, dtype=object)).rank(ascending=False, method="min")
    # For Figure 2 only (which row's images to show): the top baseline pretrained row (no reference row).
    shown = [i for i in range(len(results)) if role(results[i]) == "pretrained" and group[i][0] == "baseline"]
    best = max(shown or list(range(len(results))), key=lambda i: means[i])

    def compare(i: int, j: int | None, notes: list[str], what: str) -> float:
        if j is None or i == j or n_boot <= 0:
            return float("nan")
        if st[i]["image_set"] != st[j]["image_set"]:
            notes.append(f"different test images than the {what} row: no paired test")
            return float("nan")
        if st[i]["weights"] is None or st[j]["weights"] is None:
            return float("nan")  # too few test targets: the row's note says so
        return stats.paired_p_value(st[i]["counts"], st[j]["counts"], st[j]["classes"], st[i]["weights"],
                                    st[j]["weights"], float(stats.CALIBRATION["inflate"]))[1]

    all_notes = [list(s["notes"]) for s in st]
    declared = declared_comparisons(results)
    comparisons = []
    for i, j, why in declared:
        p = compare(i, j, all_notes[i], "compared")
        comparisons.append({"row": names[i], "versus": names[j], "why": why, "delta": float(means[i] - means[j]),
                            "p": p})
    adjusted = stats.holm([c["p"] for c in comparisons])
    for c, p_holm in zip(comparisons, adjusted, strict=True):
        c["p_holm"] = float(p_holm)
    vs_floor = {i: c for (i, _, why), c in zip(declared, comparisons, strict=True) if why == FLOOR_WHY}
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
                "role": role(r),
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
                "rank": int(ranks[i]),
                "n_test_targets": s["n_test_targets"],
                "calibrated": bool(s["calibrated"]),
                "delta_vs_floor": vs_floor[i]["delta"] if i in vs_floor else float("nan"),
                "p_vs_floor": vs_floor[i]["p"] if i in vs_floor else float("nan"),
                "p_vs_floor_holm": vs_floor[i]["p_holm"] if i in vs_floor else float("nan"),
                "random_weights": is_floor(r),
                "synthetic": bool(r.get("synthetic", False)),
                "single_label": bool(r.get("single_label", False)),
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
    table.attrs["best"] = best  # Figure 2's row, not a comparator
    table.attrs["comparisons"] = comparisons
    table.attrs["n_seeds"] = sorted({len(s["seeds"]) for s in st})
    # records, not a DataFrame: pandas compares attrs when it propagates them
    table.attrs["sensitivity"] = sensitivity_rows(table, st, compare).to_dict("records")
    return table, missing



def per_class_table(results: Sequence[dict]) -> pd.DataFrame:
    """Per-class test F1 (mean over folds, from per_class.csv): one row per class in ontology order, a
    `support` column (test positives per fold) and one column per run, in the paper's order. Classes the
    macro F1 does not score (no positive test image) are NaN."""
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
        # a class with no positive test image is not scored (the macro F1's class set): NaN, not a 0 F1
        out[run_name(r)] = np.where(agg["support"].to_numpy() > 0, agg["f1"].to_numpy(), np.nan)
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
        f"| Weights | Model | Approach | Head | Role | DINO epochs | Test macro F1 | {level:.0%} CI | bias | "
        "F1 (≥3-target classes) [CI] | Train F1 | Val F1 | Rank | Δ vs floor | p vs floor (raw / Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        epochs = "–" if pd.isna(r["dino_epochs"]) else str(int(r["dino_epochs"]))
        cfg_epochs = r.get("dino_epochs_config")
        if r.get("dino_epochs_source") == "config":
            epochs += "*"
        elif not pd.isna(r["dino_epochs"]) and cfg_epochs is not None and not pd.isna(cfg_epochs) and (
            int(cfg_epochs) != int(r["dino_epochs"])
        ):
            epochs += "†"
        calibrated = bool(r.get("calibrated", True))
        ci_text = f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]" if calibrated else "too few test targets"
        ws_ci = f" [{fmt(r['ws_ci_low'])}, {fmt(r['ws_ci_high'])}]" if calibrated else ""
        floor = "floor" if r.get("random_weights") else (
            f"{fmt_p(r['p_vs_floor'], n_boot)} / {fmt_p(r['p_vs_floor_holm'], n_boot)}" if calibrated else "–"
        )
        d_floor = "–" if pd.isna(r["delta_vs_floor"]) or r.get("random_weights") else f"{r['delta_vs_floor']:+.4f}"
        approach = r["approach"] if r.get("variant", "baseline") == "baseline" else f"{r['approach']} ({r['variant']})"
        lines.append(
            f"| {r['weights']} | {r['model']} | {approach} | {r.get('head', DEFAULT_HEAD)} | "
            f"{r.get('role', 'pretrained')} | {epochs} | {fmt_std(r)} | "
            f"{ci_text} | {fmt(r['ci_bias'], 3) if not pd.isna(r['ci_bias']) else '–'} | "
            f"{fmt(r['ws_f1'])}{ws_ci} | {fmt(r['train_f1_mean'])} | "
            f"{fmt(r['val_f1_mean'])} | {int(r['rank'])} | {d_floor} | {floor} |"
        )
    lines += comparison_lines(table.attrs.get("comparisons") or [], n_boot)
    lines += table_notes(table, missing, n_boot, results, label_notes)
    return "\n".join(lines) + "\n"


def comparison_lines(comparisons: Sequence[dict], n_boot: int | None) -> list[str]:
    """The declared comparisons (declared_comparisons) other than each row vs the floor, as a small table."""
    rest = [c for c in comparisons if c["why"] != FLOOR_WHY]
    if not rest:
        return []
    lines = ["", "**Declared comparisons** (fixed before the data; Holm over every comparison of this table, "
             "the floor's included):", "", "| Row | vs | why | Δ | p (raw / Holm) |", "|---|---|---|---|---|"]
    for c in rest:
        lines.append(f"| {c['row']} | {c['versus']} | {c['why']} | {c['delta']:+.4f} | "
                     f"{fmt_p(c['p'], n_boot)} / {fmt_p(c['p_holm'], n_boot)} |")
    return lines
