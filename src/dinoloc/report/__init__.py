"""The report stage: run folders -> Table III (CSV + Markdown), per-class F1, Figures 1 and 2, embedding maps.

It reads only what the classify stage left in `<runs_dir>/<run name>/` (dinoloc.results) and never re-runs
anything; it imports no torch. One entry point: `run_report(ReportSpec(...))` (`stage`; the spec in `spec`).

- `runs`: which runs finished, their order and row labels.
- `statistics`: each row's recomputed F1, target-bootstrap CIs and paired-test inputs (estimators: dinoloc.stats).
- `tables`: Table III and the per-class table, CSV and Markdown; `notes`: the text under the table.
- `sensitivity`: variants against their baseline row.
- `figures`: Figures 1 and 2 and the per-class heatmap; `embedding_maps`: UMAP / t-SNE panels.
"""

from __future__ import annotations

from dinoloc.lazy import lazy_exports

# Loaded on first use (PEP 562): the config schema reads `spec` at every command's start without scipy/matplotlib.
_WHERE = {
    "ReportSpec": "spec", "run_report": "stage", "SENSITIVITY_COLUMNS": "sensitivity", "sensitivity_markdown": "sensitivity",
    "TABLE_COLUMNS": "tables", "build_table": "tables", "markdown_table": "tables", "per_class_table": "tables",
    "collect_runs": "runs",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
