"""The sensitivity table: each variant row (configs/variant/) against the baseline row of the same backbone x
strategy, with both CIs, the difference and a paired test where the test set is shared (Holm over these)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from dinoloc import stats
from dinoloc.report.notes import fmt, fmt_p

SENSITIVITY_COLUMNS = [
    "backbone", "strategy", "variant", "baseline_f1", "baseline_ci_low", "baseline_ci_high", "variant_f1",
    "variant_ci_low", "variant_ci_high", "delta", "shared_test_set", "p", "p_holm", "notes",
]


def sensitivity_rows(table: pd.DataFrame, st: list[dict], compare: Callable) -> pd.DataFrame:
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


def sensitivity_markdown(sens: pd.DataFrame, synthetic: bool, n_boot: int | None, level: float) -> str:
    """The sensitivity table: each variant against its baseline row."""
    lines = ["**SYNTHETIC DEMO DATA** — not the paper's data.", ""] if synthetic else []
    lines += [
        "**Sensitivity to the paper's open choices.** Test macro F1 of each variant vs the baseline row.",
        "",
        f"| Row | Variant | Baseline F1 [{level:.0%} CI] | Variant F1 [{level:.0%} CI] | Δ | paired p (raw / Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in sens.iterrows():
        p = (f"{fmt_p(r['p'], n_boot)} / {fmt_p(r['p_holm'], n_boot)}" if r["shared_test_set"]
             else "– (other test set)")
        lines.append(
            f"| {r['backbone']} · {r['strategy']} | {r['variant']} | {fmt(r['baseline_f1'])} "
            f"[{fmt(r['baseline_ci_low'])}, {fmt(r['baseline_ci_high'])}] | {fmt(r['variant_f1'])} "
            f"[{fmt(r['variant_ci_low'])}, {fmt(r['variant_ci_high'])}] | {fmt(r['delta'])} | {p} |"
        )
    lines += [
        "",
        "Variants (configs/variant/): image_split = data.split.group_by=none; crop600 = "
        "backbone.preprocess.spatial=center_crop (crop_size, then resize); min_grade2 = data.labels.min_grade=2. "
        "A paired test needs the same test images and labels, so only variants that keep the baseline's test set "
        "(crop600) get one; the others are compared through their CIs. Holm adjusts over this table's tests.",
    ]
    return "\n".join(lines) + "\n"
