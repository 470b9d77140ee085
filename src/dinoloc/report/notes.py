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


F1_DEFINITION = (
    "Macro F1, the one definition used by the estimate, every bootstrap replicate, the per-class tables and the "
    "paired tests: per (seed, fold) model, scikit-learn's f1_score(average='macro', labels=<the classes with a "
    "positive test image>, zero_division=0) on predictions.csv, then the mean over the models."
)
PAPER_NOTE = (
    "Paper values: this comparison follows the paper's Table III (ImageNet mapping 0.8057 ± 0.0090, ImageNet "
    "replication 0.7986 ± 0.0089, HPA mapping 0.8221 ± 0.0062, HPA replication 0.7681 ± 0.0140, OpenCell "
    "0.7918 ± 0.0096). The paper's abstract gives 0.8057 (± 0.0090) to the OpenCell-trained model instead; "
    "Table III and the Results give it to ImageNet mapping."
)


def coverage_note(table: pd.DataFrame) -> str:
    """The simulated coverage for THIS table's test-set size (stats.SIMULATED_COVERAGE, measured by
    scripts/ci_coverage.py at OpenCell's and at the demo's scale), never a figure from another scale."""
    sizes = table["n_test_targets"].dropna() if "n_test_targets" in table else pd.Series(dtype=float)
    if sizes.empty:
        return ""
    n = int(sizes.median())
    calibrated = n >= stats.CALIBRATION["min_test_targets"]
    if not stats.SIMULATED_COVERAGE:
        return ""
    method = str(table.attrs.get("ci", {}).get("method", "percentile"))
    if method != "percentile" and n >= stats.CALIBRATION["min_test_targets"]:
        return (f"The coverage of the {method} interval was not measured (scripts/ci_coverage.py calibrates the "
                "percentile interval, report.ci_method=percentile).")
    # The measurement of this table's own world (the demo's label structure for a synthetic table, OpenCell's
    # otherwise), nearest its test-set size (demo; OpenCell at 30/60/100/131 test targets).
    synthetic = bool(len(table)) and "synthetic" in table and bool(table["synthetic"].astype(bool).all())
    pool = {k: v for k, v in stats.SIMULATED_COVERAGE.items() if (k.split("_")[0] == "demo") == synthetic}
    scale, cov = min((pool or stats.SIMULATED_COVERAGE).items(), key=lambda kv: abs(kv[1]["n_test_targets"] - n))
    world, size = scale.split("_")[0], ("" if "_" not in scale else f" --n-targets {int(scale.split('_')[1]) * 10}")
    where = (f"scripts/ci_coverage.py --scale {world}{size}: {'OpenCell' if world == 'opencell' else 'the demo'}'s "
             f"label structure, dinoloc's split, a classifier at macro F1 ~0.8, {cov['n_test_targets']:.0f} test "
             f"targets; this table has {n}")
    if calibrated:
        return (f"Simulated coverage of the population macro F1 by this interval (half-widths × {cov['inflate']:.2f}) "
                f"{cov['coverage']:.3f} ± {cov['coverage_mc_se']:.3f} at nominal 0.95; the paired test rejects "
                f"{cov['type1_paired']:.1%} of true nulls at 0.05 and detects {cov['power_paired_0015']:.0%} of "
                f"0.015 differences ({where}).")
    return (f"Too few test targets for a calibrated interval: at this size the same bootstrap covers the "
            f"population macro F1 {cov['raw_coverage']:.2f} of the time (nominal 0.95) and the paired test "
            f"rejects {cov['raw_type1_paired']:.0%} of true nulls at 0.05 ({where}), so the table prints no "
            f"interval and no p value below {int(stats.CALIBRATION['min_test_targets'])} test targets.")


def table_notes(
    table: pd.DataFrame, missing: Sequence[str], n_boot: int | None, results: Sequence[dict] | None,
    label_notes: dict[str, Any] | None,
) -> list[str]:
    """The lines under Table III (see the module docstring), from the table and each run's result.json."""
    ci = table.attrs["ci"]  # build_table's CI settings (configs/config.yaml report:)
    level, method = float(ci["level"]), str(ci["method"])
    lines: list[str] = []
    if "single_label" in table and table["single_label"].fillna(False).astype(bool).any():
        lines += ["", "Single-label data: every labelled image carries exactly one class, so each head predicts "
                  "the top class (softmax cross-entropy for the MLP and linear heads, the arg-max of the vote "
                  "for k-NN, as official DINO's eval_linear.py / eval_knn.py), and macro F1 is computed on "
                  "those predictions."]
    ddofs = sorted({int(d) for d in table["std_ddof"].dropna()}) if "std_ddof" in table else []
    ddof_text = ", ".join(str(d) for d in ddofs) if ddofs else "not recorded"
    n_seeds = sorted({int(n) for n in table["n_seeds"].dropna()}) if "n_seeds" in table else [1]
    thin = sorted({c.strip() for t in table.get("thin_classes", []) for c in str(t).split(",") if c.strip()})
    seeds_text = (
        f" Classifier seeds: {', '.join(map(str, n_seeds))}; the score is the mean over seeds and folds, "
        "'seeds ±' the std over seeds of each seed's fold mean; every bootstrap replicate also draws the seeds "
        "with replacement, so intervals and p values include training variability." if n_seeds != [1] else
        " One classifier seed: intervals and p values are conditional on the trained models (training "
        "variability is not in them; classifier.n_seeds=3 puts it in)."
    )
    lines += [
        "",
        f"Notes: ± is the standard deviation of the per-fold test macro F1 (ddof = {ddof_text}); each fold's "
        f"classifier predicts the same held-out test set.{seeds_text} {F1_DEFINITION} "
        f"The {level:.0%} CI is a {stats.METHOD_NAMES.get(method, method)} bootstrap interval "
        f"({ci.get('n_boot')} replicates, seed {ci.get('seed')}) resampling test targets (proteins) with "
        "replacement, since all images of a target share its labels; each replicate keeps a positive of every "
        "scored class, as the split keeps one in the test set (docs/statistics.md). 'bias' is the replicate "
        "mean minus the estimate. " + coverage_note(table)
        + f" F1 (≥{stats.WELL_SUPPORTED}-target classes) averages only classes with at least "
        f"{stats.WELL_SUPPORTED} positive test targets"
        + (f"; thin classes left out: {', '.join(thin)}." if thin else ".")
        + " Rank is a plain rank by test macro F1 (not a test). p are two-sided paired bootstrap tests of "
        "comparisons declared before the data (every row vs the random-weights floor; mapping vs replication "
        "within each backbone; the paper's claim, HPA mapping vs each other row), on the same replicates and "
        "class set; Holm adjusts over all of them (–: the row itself, or a different test set). DINO epochs are "
        "read from the checkpoint; * the file records none, so backbone.dino_epochs is shown; † the "
        "checkpoint's count differs from backbone.dino_epochs.",
        "",
        PAPER_NOTE,
    ]
    if "head" in table and table["head"].nunique() > 1:
        lines.append(
            "Heads: mlp = the paper's MLP; knn = DINO's weighted k-NN (k = 20, T = 0.07, cosine on L2-normalised "
            "embeddings, per-class weighted vote); linear = one linear layer with the MLP's recipe"
            + ("; constant = the trivial reference, per class the constant prediction with the best training F1 "
               "(reads no feature; docs/references.md)." if (table["head"] == "constant").any() else ".")
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
        from dinoloc.report.health import health_flags, health_lines, health_rows

        rows = health_rows(results)
        warns = provenance.embedding_warnings(results) + health_flags(rows)
        diag = health_lines(rows)
        if warns or diag:
            lines += ["", "**Embedding health** (each pretrained row against the random-weights floor of its own "
                      "architecture; docs/references.md):", ""]
            lines += [f"- WARNING {w}" for w in warns] + [f"- {d}" for d in diag]
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
