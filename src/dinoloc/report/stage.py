"""The report stage's entry point: `run_report(ReportSpec)` writes the tables, notes and figures."""


from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from dinoloc.io import DinolocError, write_csv, write_text
from dinoloc.provenance import embedding_warnings
from dinoloc.report.embedding_maps import draw_or_skip
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
    maps = _start_embedding_maps(out_dir, results, spec) if spec.embedding_maps != "none" else None
    try:
        table, missing = build_table(results, expected=list(spec.expected) or None, n_boot=spec.n_boot,
                                     seed=spec.seed, level=spec.level, method=spec.method)
        from dinoloc.report.health import health_flags, health_rows

        for message in embedding_warnings(results) + health_flags(health_rows(results)):
            warn(message)
        synthetic = bool(table["synthetic"].any())
        paths = _write_tables(out_dir, table, missing, results, synthetic, spec)
        paths.update(_draw_figures(out_dir, table, paths, synthetic, spec))
        if maps is not None:
            paths.update(_embedding_maps_done(out_dir, maps.result()))
    finally:
        if maps is not None:
            maps.close()
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


class _Maps:
    """The embedding maps, drawn while the tables and figures are made: in one spawned worker process where
    there is a second core (UMAP's numba compile and layouts are most of the report's CPU time; measured on the
    demo: 17 of 26 CPU s), else here when their result is asked for. The same files either way."""

    def __init__(self, args: tuple) -> None:
        self.args, self.pool, self.pending = args, None, None
        if (os.cpu_count() or 1) >= 2:
            import multiprocessing

            # spawn: a fresh interpreter (the report has imported torch; numba's threads after a fork are not safe)
            self.pool = multiprocessing.get_context("spawn").Pool(1)
            self.pending = self.pool.apply_async(draw_or_skip, args)

    def result(self) -> dict:
        return draw_or_skip(*self.args) if self.pending is None else self.pending.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()  # nothing left to wait for (done) or to keep (the report failed)
            self.pool.join()


def _start_embedding_maps(out_dir: Path, results: list[dict], spec: ReportSpec) -> _Maps:
    return _Maps((results, out_dir / "embedding_maps.png", spec.embedding_maps, spec.max_points, spec.seed))


def _embedding_maps_done(out_dir: Path, outcome: dict) -> dict[str, Path]:
    if "skipped" in outcome:  # the table stands without the maps: a row whose cache was deleted only costs its map
        warn(f"embedding maps skipped: {outcome['skipped']}")
        return {}
    info = outcome["info"]
    print(f"Embedding maps: {info['method']}, {info['n_points']} of {info['n_labelled']} labelled images "
          f"drawn per panel, {len(info['panels'])} panel(s), {info['seconds']:.1f} s", file=sys.stderr)
    return {"embedding_maps.png": out_dir / "embedding_maps.png", "embedding_maps.pdf": out_dir / "embedding_maps.pdf"}
