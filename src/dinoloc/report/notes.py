"""The text around Table III: number formatting, the notes a reader needs to interpret the table (data, CI
method and its measured coverage, thin classes, the paper's open choices, deviations from the paper, run notes)
and whether the probe heads rank the rows as the MLP does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from dinoloc import provenance, stats
from dinoloc.results import DEFAULT_HEAD


def fmt(x: Any, digits: int = 4) -> str:
    if x is None or pd.isna(x):
        return "–"
    return f"{float(x):.{digits}f}"


def fmt_p(p: Any, n_boot: int | None) -> str:
    if p is None or pd.isna(p):
        return "–"
    if p == 0 and n_boot:
        return f"< {1 / n_boot:.0e}"
    if p < 0.001:  # the smallest bootstrap p is 1/(B+1)
        return f"{float(p):.1e}"
    return f"{float(p):.3f}"


def fmt_std(r: Any) -> str:
    seed_std = r.get("test_f1_seed_std")
    text = f"{fmt(r['test_f1_mean'])} ± {fmt(r['test_f1_std'])}"
    if seed_std is not None and not pd.isna(seed_std):
        text += f" (seeds ± {fmt(seed_std)})"
    return text


def table_notes(
    table: pd.DataFrame, missing: Sequence[str], n_boot: int | None, results: Sequence[dict] | None,
    label_notes: dict[str, Any] | None,
) -> list[str]:
    """The lines under Table III (see the module docstring), from the table and each run's result.json."""
    ci = table.attrs["ci"]  # build_table's CI settings (configs/config.yaml report:)
    level, method = float(ci["level"]), str(ci["method"])
    lines: list[str] = []
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
    cells = next((r["data"] for r in results or [] if r.get("data", {}).get("cells_per_image")), None)
    if cells:
        c = cells["cells_per_image"]
        lines.append(
            f"Single cells (data.unit=cell): {cells.get('n_cells')} cells, per image median {c['median']:g}, min "
            f"{c['min']}, max {c['max']}; {c['no_cell']} image(s) without a cell kept with a zero embedding. Each "
            "image's embedding is the mean of its cells' (data.cell.aggregate), so folds and scores stay per image."
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
    return lines


def ranking_notes(table: pd.DataFrame) -> list[str]:
    """One note per probe head whose ranking of the rows (backbone x strategy, by test macro F1) differs from
    the MLP's, over the rows both heads have. Empty when there is one head or they agree."""
    if "head" not in table or table["head"].nunique() < 2:
        return []
    key = table["backbone"].astype(str) + "__" + table["strategy"].astype(str)
    scores = {h: dict(zip(key[table["head"] == h], table.loc[table["head"] == h, "test_f1_mean"], strict=True))
              for h in table["head"].unique()}
    ref = DEFAULT_HEAD if DEFAULT_HEAD in scores else sorted(scores)[0]
    notes = []
    for head in sorted(h for h in scores if h != ref):
        common = [r for r in scores[ref] if r in scores[head]]
        if len(common) < 2:
            continue
        order_ref = sorted(common, key=lambda r: -scores[ref][r])
        order_head = sorted(common, key=lambda r: -scores[head][r])
        if order_ref != order_head:
            notes.append(
                f"{head} ranks the rows differently from {ref}: {ref} {' > '.join(order_ref)}; "
                f"{head} {' > '.join(order_head)}"
                + (" (the best row differs)" if order_ref[0] != order_head[0] else "")
            )
    return notes
