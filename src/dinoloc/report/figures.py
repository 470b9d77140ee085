"""The report's figures, each as PNG and PDF: Figure 1 (test macro F1 per pretraining dataset and strategy),
Figure 2 (example test images with ground truth vs prediction) and the per-class F1 heatmap.

Figure 1 and the heatmap read only the report's CSVs (table3.csv, per_class.csv), so they can be redrawn
without the runs (scripts/plot_figure1.py). Colours are colour-blind safe: the Okabe-Ito palette for the
strategies, viridis for the heatmap, magenta/green for the image composite.
"""

from __future__ import annotations

import functools
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc.io import DinolocError, atomic_path
from dinoloc.metrics import decide
from dinoloc.report.runs import select_test, threshold
from dinoloc.results import (
    RESULT_FILE,
    image_file,
    label_columns,
    prob_columns,
    read_predictions,
    read_result,
    result_classes,
)

SYNTHETIC_MARKER = "SYNTHETIC DEMO — not the paper's data"
def _head_hatch(head: str) -> str:
    """A head module's HATCH (the MLP's bars stay plain); none for a head that cannot be imported."""
    from dinoloc.heads import head_module
    from dinoloc.io import DinolocError

    try:
        return str(getattr(head_module(head), "HATCH", "")) if head else ""
    except DinolocError:
        return ""


def _strategy_style(strategy: str) -> tuple[str, str]:
    """Legend label and colour: the strategy module's LABEL and COLOUR (grey for one that cannot be imported)."""
    from dinoloc.channel_strategies import strategy_module
    from dinoloc.io import DinolocError

    try:
        module = strategy_module(strategy)
    except DinolocError:
        return strategy, "#999999"
    return str(getattr(module, "LABEL", strategy)), str(getattr(module, "COLOUR", "#999999"))


_CI_COLOUR = "#4d4d4d"
_FLOOR_COLOUR = "#CC79A7"


def _truthy(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip().str.lower().isin(["true", "1", "yes"])


def _save(fig: Any, out_png: Path, title: str) -> list[Path]:
    """PNG and PDF beside it, atomically; the title also goes into the metadata (a reader or test checks
    the synthetic marker there)."""
    paths = [out_png, out_png.with_suffix(".pdf")]
    for path, fmt in zip(paths, ("png", "pdf"), strict=True):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata={"Title": title})
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------------------------------------
# Figure 1
# ----------------------------------------------------------------------------------------------------------
# The three references every table carries (docs/references.md), drawn as labelled horizontal lines.
_REFERENCE_STYLE = {
    "floor": ("random weights (floor)", _FLOOR_COLOUR, "--"),
    "classical": ("classical features", "#D55E00", "-."),  # Okabe-Ito vermillion: no bar has it
    "trivial": ("trivial (best constant per class)", "#000000", ":"),
}


def plot_figure1(table_csv: str | os.PathLike, out_png: str | os.PathLike) -> list[tuple[str, float, float]]:
    """The paper's Figure 1 from table3.csv alone: mean test macro F1 bars with ± fold-std error bars (as
    the paper), grouped by pretraining weights, coloured by strategy; the 95% CI (columns ci_low/ci_high,
    when present) as a grey bar beside each error bar; the reference rows (column `role`: floor, classical,
    trivial; docs/references.md) as labelled horizontal lines instead of bars. Legend outside the axes. Writes out_png and a PDF beside it.
    Returns the (label, height, err) of the bars as read back from the drawn Axes."""
    plt = _pyplot()
    from matplotlib.container import BarContainer
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    table_csv, out_png = Path(table_csv), Path(out_png)
    if not table_csv.is_file():
        raise DinolocError(f"{table_csv} does not exist; make it with dinoloc-report")
    df = pd.read_csv(table_csv)
    missing = [c for c in ("weights", "strategy", "test_f1_mean", "test_f1_std") if c not in df.columns]
    if missing:
        raise DinolocError(f"{table_csv} lacks column(s) {missing}; it is not a dinoloc table3.csv")
    if df.empty:
        raise DinolocError(f"{table_csv} has no rows; run the experiment first (dinoloc-run -m experiment=...)")
    synthetic = bool(_truthy(df["synthetic"]).any()) if "synthetic" in df else False
    if "role" in df:  # the references (docs/references.md) are lines, the pretrained rows bars
        is_ref = df["role"].astype(str).isin(_REFERENCE_STYLE).to_numpy()
    else:  # a table3.csv from before the roles: the floor is the random-weights row
        is_ref = _truthy(df["random_weights"]).to_numpy() if "random_weights" in df else np.zeros(len(df), bool)
    refs, df = df[is_ref], df[~is_ref]
    if df.empty:  # only references: draw them as bars, so the figure is not empty
        df, refs = pd.concat([refs, df]), refs.iloc[:0]
    has_ci = {"ci_low", "ci_high"} <= set(df.columns) and df[["ci_low", "ci_high"]].notna().any().any()

    groups = list(dict.fromkeys(df["weights"].astype(str)))  # order of the table (the paper's)
    multi_head = "head" in df and df["head"].nunique() > 1  # probes beside the MLP: hatched bars, head in the label
    per_group = int(df.groupby("weights").size().max()) if len(df) else 1
    width = 0.8 / max(per_group, 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.9 * max(len(groups), 1) + 1.0), 4.2))
    handles: dict[str, Any] = {}
    tops = []
    for gi, group in enumerate(groups):
        rows = df[df["weights"].astype(str) == group]
        for k, (_, r) in enumerate(rows.iterrows()):
            strategy = str(r["strategy"])
            label, colour = _strategy_style(strategy)
            head = str(r["head"]) if multi_head else ""
            if multi_head:
                label, strategy = f"{label} · {head}", f"{strategy} / {head}"
            x = gi + (k - (len(rows) - 1) / 2) * width
            h, err = float(r["test_f1_mean"]), float(r["test_f1_std"])
            hatch = _head_hatch(head)
            bars = ax.bar([x], [h], width * 0.9, yerr=[err], capsize=4, color=colour, edgecolor="black",
                          linewidth=0.5, error_kw={"elinewidth": 1.2}, hatch=hatch)
            bars.patches[0].set_gid(f"{group} / {strategy}")
            handles.setdefault(label, Patch(facecolor=colour, edgecolor="black", linewidth=0.5, label=label,
                                            hatch=hatch))
            tops.append(h + err)
            if has_ci and pd.notna(r.get("ci_low")) and pd.notna(r.get("ci_high")):
                # The CI runs near the bar's right edge, clear of the std whisker and of the value label
                # (centred above the whisker), so neither hides the other.
                xc = x + width * 0.33
                ax.plot([xc, xc], [float(r["ci_low"]), float(r["ci_high"])], color=_CI_COLOUR, lw=3.0,
                        alpha=0.6, solid_capstyle="butt", zorder=3)
                tops.append(float(r["ci_high"]))
            ax.text(x, h + err + 0.01 * max(1.0, float(df["test_f1_mean"].max())), f"{h:.3f}", ha="center",
                    va="bottom", fontsize=6 if multi_head else 7.5)
    extra = [Line2D([], [], color="black", marker="_", markersize=8, lw=1.2, label="± std over folds")]
    if has_ci:
        extra.append(Line2D([], [], color=_CI_COLOUR, lw=3.0, alpha=0.6, label="95% CI (bootstrap)"))
    for _, r in refs.iterrows():
        h = float(r["test_f1_mean"])
        role = str(r["role"]) if "role" in refs else "floor"
        name, colour, ls = _REFERENCE_STYLE[role]
        same = (refs["role"].astype(str) == role).sum() if "role" in refs else len(refs)
        if same > 1:  # several of one kind (probe heads, variants): say which
            name += f": {r['head']}" if "head" in refs and refs["head"].nunique() > 1 else f": {r['weights']} {r['strategy']}"
        ax.axhline(h, color=colour, ls=ls, lw=1.5, zorder=1)
        extra.append(Line2D([], [], color=colour, ls=ls, lw=1.5, label=f"{name}: {h:.3f}"))
        tops.append(h)
    ax.set_xticks(range(len(groups)), [textwrap.fill(g, 14) for g in groups])
    ax.set_xlabel("Pretraining dataset")
    ax.set_ylabel("Test macro F1")
    top = max(tops) if tops else 1.0
    ax.set_ylim(0, min(1.05, top * 1.15 + 0.03) if np.isfinite(top) else 1.0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(handles=[*handles.values(), *extra], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    n_folds = df["n_folds"].iloc[0] if "n_folds" in df and len(df) else "k"
    title = f"Test macro F1 (mean ± std over {n_folds} folds)"
    if synthetic:
        title = f"{SYNTHETIC_MARKER}\n{title}"
    ax.set_title(title, color="red" if synthetic else "black", fontsize=10)
    fig.tight_layout()

    drawn = []
    for container in ax.containers:
        if isinstance(container, BarContainer):
            patch = container.patches[0]
            (seg,) = container.errorbar.lines[2][0].get_segments()
            drawn.append((patch.get_gid(), float(patch.get_height()), float(abs(seg[1][1] - seg[0][1]) / 2)))
    _save(fig, out_png, title)
    plt.close(fig)
    return drawn


# ----------------------------------------------------------------------------------------------------------
# Figure 2
# ----------------------------------------------------------------------------------------------------------


_OPENCELL_ID = re.compile(r"^OC-FOV_(?P<gene>[^_]+)_ENSG\d+_CID\d+_FID0*(?P<fov>\d+)")


def short_id(image_id: str, max_len: int = 22) -> str:
    """A readable label for an image: `<gene> FOV <n>` for OpenCell ids, else the id shortened in the middle."""
    m = _OPENCELL_ID.match(image_id)
    if m:
        return f"{m['gene']} FOV {m['fov']}"
    if len(image_id) <= max_len:
        return image_id
    half = (max_len - 1) // 2
    return f"{image_id[:half]}…{image_id[-half:]}"


_COMPOSITE_NAMES = {"magenta_green": "protein magenta, nucleus green", "red_green": "protein red, nucleus green"}


def plot_figure2(
    best_row_run_dir: str | os.PathLike,
    out_png: str | os.PathLike,
    n_images: int = 2,
    *,
    seed: int,
    colors: str,
    display_percentiles: Sequence[float],
) -> list[str]:
    """The paper's Figure 2: for `n_images` labelled test images of the best fold (highest test macro F1)
    of a run, the composite (`colors`: config figure2_colors, magenta_green colour-blind safe or red_green as the
    paper), each channel, and a table of ground truth vs prediction with probabilities. Every panel is
    stretched by `display_percentiles` (config report.display_percentiles, dinoloc.viz.stretch). Writes out_png
    and a PDF beside it. Returns the image ids shown. The images are read from predictions.csv `path` under the
    run's data.root (dinoloc.results.image_file), so the run folder may move."""
    from dinoloc.viz import composite, stretch

    plt = _pyplot()
    if colors not in _COMPOSITE_NAMES:
        raise DinolocError(f"Figure 2 colours {colors!r}: use one of {', '.join(_COMPOSITE_NAMES)}")
    run_dir, out_png = Path(best_row_run_dir), Path(out_png)
    result = read_result(run_dir)
    cut = threshold(result)
    folds = result.get("folds") or []
    if not folds:
        raise DinolocError(f"{run_dir / RESULT_FILE} has no per-fold results ('folds'); rerun the row")
    best = max(folds, key=lambda f: (float(f["test_macro_f1"]), -int(f["fold"])))
    classes = result_classes(result)
    test = select_test(read_predictions(run_dir, classes), str(run_dir))
    rows = test[test["fold"] == best["fold"]]
    y_cols, p_cols = label_columns(classes), prob_columns(classes)
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

    data = result["data"]
    # the reader's protein / nucleus (a named-channel dataset: by data.channel_roles, else last / first channel)
    from dinoloc.data.reader import get_reader

    reader = get_reader(data.get("reader") or "opencell")
    read_image = functools.partial(reader.display_pair, Path(str(data["root"])), channels=data.get("channels") or (),
                                   roles=data.get("channel_roles"))

    synthetic = bool(result.get("synthetic", False))
    fig, axes = plt.subplots(
        len(picked), 4, figsize=(13, 3.3 * len(picked) + 0.9), squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, 1, 1.45]},
    )
    headers = [f"Composite ({_COMPOSITE_NAMES[colors]})", "Protein", "Nucleus",
               "Ground truth vs prediction\n(blue: agree, orange: disagree)"]
    for row_i, (row_axes, (_, r)) in enumerate(zip(axes, picked.iterrows(), strict=True)):
        image_id = str(r["image_id"])
        image_file(result, r["path"])  # a missing file is named
        image = read_image(str(r["path"]))
        protein, nucleus = image[0], image[1]
        rgb = composite(protein, nucleus, scheme=colors, percentiles=display_percentiles)
        panels = [(rgb, None), (stretch(protein, display_percentiles), "gray"),
                  (stretch(nucleus, display_percentiles), "gray")]
        for ax, (img, cmap) in zip(row_axes[:3], panels, strict=True):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        # One short label per row (the full id is in the PNG metadata and the return value).
        row_axes[0].set_ylabel(f"{short_id(image_id)}\n{r['target']}", fontsize=9)
        if row_i == 0:
            for ax, head in zip(row_axes, headers, strict=True):
                ax.set_title(head, fontsize=9)
        y, prob = r[y_cols].to_numpy(dtype=float), r[p_cols].to_numpy(dtype=float)
        # the run's own decision rule (the top class on single-label data), as the table scores it
        said = decide(prob[None], cut, bool(result.get("single_label", False)))[0]
        shown = [i for i, c in enumerate(classes) if y[i] > 0 or said[i] > 0]
        cells = [
            [classes[i], "yes" if y[i] > 0 else "no", "yes" if said[i] > 0 else "no", f"{prob[i]:.2f}"]
            for i in shown
        ]
        tax = row_axes[3]
        tax.axis("off")
        tab = tax.table(
            cellText=cells, colLabels=["class", "target", "predicted", "probability"], loc="center",
            colWidths=[0.4, 0.18, 0.2, 0.22],
        )
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
        tab.scale(1.0, 1.25)
        for k, i in enumerate(shown, start=1):  # blue when the prediction matches, orange when not (Okabe-Ito)
            ok = (y[i] > 0) == (prob[i] > cut)
            for col in range(4):
                tab[k, col].set_facecolor("#d6e9f8" if ok else "#fbe3c0")
    title = (
        f"{result.get('backbone_display', result['backbone'])} · {result['strategy']} · best fold {best['fold']} "
        f"(test macro F1 {float(best['test_macro_f1']):.4f}); threshold {cut:g}"
    )
    if synthetic:
        title = f"{SYNTHETIC_MARKER}\n{title}"
    fig.suptitle(title, color="red" if synthetic else "black", fontsize=10)
    fig.tight_layout()
    _save(fig, out_png, f"{title}\nimages: {', '.join(picked['image_id'].astype(str))}")
    plt.close(fig)
    return picked["image_id"].astype(str).tolist()


# ----------------------------------------------------------------------------------------------------------
# per-class F1
# ----------------------------------------------------------------------------------------------------------
def plot_per_class(
    per_class_csv: str | os.PathLike,
    out_png: str | os.PathLike,
    synthetic: bool = False,
    labels: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Runs x classes heatmap of the mean test F1 over folds, from the report's per_class.csv (columns
    class, support, then one per run). A class without test positives is grey ("n/a"). `labels` maps run
    names to row labels. Writes out_png and a PDF beside it; returns the drawn matrix (runs x classes)."""
    plt = _pyplot()

    per_class_csv, out_png = Path(per_class_csv), Path(out_png)
    if not per_class_csv.is_file():
        raise DinolocError(f"{per_class_csv} does not exist; make it with dinoloc-report")
    df = pd.read_csv(per_class_csv)
    if "class" not in df.columns:
        raise DinolocError(f"{per_class_csv} lacks a 'class' column; it is not a dinoloc per_class.csv")
    runs = [c for c in df.columns if c not in ("class", "support")]
    if not runs:
        raise DinolocError(f"{per_class_csv} has no run columns; run the experiment first")
    classes = df["class"].astype(str).tolist()
    matrix = df.set_index("class")[runs].apply(pd.to_numeric, errors="coerce").T
    support = df["support"].to_numpy() if "support" in df else None
    fig_w = max(7.0, 0.48 * len(classes) + 2.8)
    fig, ax = plt.subplots(figsize=(fig_w, 0.5 * len(runs) + 2.4))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    values = np.ma.masked_invalid(matrix.to_numpy(dtype=float))
    im = ax.imshow(values, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(matrix.to_numpy(dtype=float)):
        text = "n/a" if not np.isfinite(v) else f"{v:.2f}"
        colour = "black" if not np.isfinite(v) or v > 0.6 else "white"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    xlabels = classes if support is None else [
        f"{c} ({'–' if pd.isna(s) else f'{s:g}'})" for c, s in zip(classes, support, strict=True)
    ]
    ax.set_xticks(range(len(classes)), xlabels, rotation=50, ha="right", rotation_mode="anchor", fontsize=8)
    ylabels = [(labels or {}).get(r, r.replace("__", " · ")) for r in runs]
    ax.set_yticks(range(len(runs)), ylabels, fontsize=8)
    ax.set_xlabel("class (test positives per fold)" if support is not None else "class")
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01).set_label("test F1 (mean over folds)")
    title = "Per-class test F1 (mean over folds)"
    if synthetic:
        title = f"{SYNTHETIC_MARKER}\n{title}"
    ax.set_title(title, color="red" if synthetic else "black", fontsize=10)
    fig.tight_layout()
    _save(fig, out_png, title)
    plt.close(fig)
    return matrix
