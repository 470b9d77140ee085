"""The report stage's entry point: `run_report(ReportSpec)` writes the tables, notes and figures."""


from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from dinoloc.io import DinolocError, write_csv, write_text
from dinoloc.provenance import embedding_warnings
from dinoloc.report.figures import plot_figure1, plot_figure2, plot_per_class
from dinoloc.report.runs import collect_runs, warn
from dinoloc.report.sensitivity import SENSITIVITY_COLUMNS, sensitivity_markdown
from dinoloc.report.spec import ReportSpec
from dinoloc.report.tables import build_table, markdown_table, per_class_table


def run_report(spec: ReportSpec) -> dict[str, Path]:
    """Aggregate spec.runs_dir into spec.reports_dir: table3.csv, table3.md, per_class.csv, sensitivity.csv/.md
    (when a variant ran), figure1, figure2 (best row's best fold), per_class_f1 (heatmap) and embedding_maps,
    each figure as .png and .pdf. Returns {file name: path}."""
    out_dir = Path(spec.reports_dir)
    results = collect_runs(spec.runs_dir)
    if not results:
        raise DinolocError(
            f"no finished runs in {spec.runs_dir} (no */result.json). Make them first, e.g. "
            "`dinoloc-run -m experiment=table3 data.root=/path/to/opencell` (or experiment=demo), then rerun "
            "dinoloc-report with the same experiment"
        )
    table, missing = build_table(results, expected=list(spec.expected) or None, n_boot=spec.n_boot, seed=spec.seed,
                                 level=spec.level, method=spec.method)
    from dinoloc.report.health import health_flags, health_rows

    for message in embedding_warnings(results) + health_flags(health_rows(results)):
        warn(message)
    synthetic = bool(table["synthetic"].any())
    paths = _write_tables(out_dir, table, missing, results, synthetic, spec)
    paths.update(_draw_figures(out_dir, table, paths, synthetic, spec))
    if spec.embedding_maps != "none":
        paths.update(_draw_embedding_maps(out_dir, results, spec))
    return paths


def _write_tables(out_dir: Path, table: pd.DataFrame, missing: list[str], results: list[dict], synthetic: bool,
                  spec: ReportSpec) -> dict[str, Path]:
    paths = {name: out_dir / name for name in ("table3.csv", "table3.md", "per_class.csv")}
    write_csv(paths["table3.csv"], table)
    write_text(paths["table3.md"], markdown_table(table, missing, synthetic, results=results))
    write_csv(paths["per_class.csv"], per_class_table(results))
    comparisons = table.attrs.get("comparisons") or []
    if comparisons:  # every declared paired comparison with its raw and Holm p (tables.declared_comparisons)
        paths["comparisons.csv"] = out_dir / "comparisons.csv"
        write_csv(paths["comparisons.csv"], pd.DataFrame(comparisons, columns=["row", "versus", "why", "delta", "p", "p_holm"]))
    sens = pd.DataFrame(table.attrs.get("sensitivity") or [], columns=SENSITIVITY_COLUMNS)
    if len(sens):
        paths["sensitivity.csv"], paths["sensitivity.md"] = out_dir / "sensitivity.csv", out_dir / "sensitivity.md"
        write_csv(paths["sensitivity.csv"], sens)
        write_text(paths["sensitivity.md"], sensitivity_markdown(sens, synthetic, spec.n_boot, spec.level))
    return paths


def _draw_figures(out_dir: Path, table: pd.DataFrame, paths: dict[str, Path], synthetic: bool,
                  spec: ReportSpec) -> dict[str, Path]:
    out = {name: out_dir / name for name in ("figure1.png", "figure1.pdf", "figure2.png", "figure2.pdf",
                                            "per_class_f1.png", "per_class_f1.pdf")}
    plot_figure1(paths["table3.csv"], out["figure1.png"])
    best_dir = table.loc[table.attrs["best"], "run_dir"]
    shown = plot_figure2(best_dir, out["figure2.png"], seed=spec.seed, colors=spec.figure2_colors,
                         display_percentiles=spec.display_percentiles)
    print(f"Figure 2: {', '.join(shown)} from {best_dir}", file=sys.stderr)
    plot_per_class(paths["per_class.csv"], out["per_class_f1.png"], synthetic=synthetic,
                   labels={r["run"]: f"{r['weights']} · {r['strategy']}" for _, r in table.iterrows()})
    return out


def _draw_embedding_maps(out_dir: Path, results: list[dict], spec: ReportSpec) -> dict[str, Path]:
    from dinoloc.report.embedding_maps import plot_embedding_maps

    try:  # the table stands without the maps: a row whose cache was deleted only costs its map
        info = plot_embedding_maps(results, out_dir / "embedding_maps.png", method=spec.embedding_maps,
                                   max_points=spec.max_points, seed=spec.seed)
    except DinolocError as e:
        warn(f"embedding maps skipped: {e}")
        return {}
    print(f"Embedding maps: {info['method']}, {info['n_points']} of {info['n_labelled']} labelled images "
          f"drawn per panel, {len(info['panels'])} panel(s), {info['seconds']:.1f} s", file=sys.stderr)
    return {"embedding_maps.png": out_dir / "embedding_maps.png", "embedding_maps.pdf": out_dir / "embedding_maps.pdf"}
