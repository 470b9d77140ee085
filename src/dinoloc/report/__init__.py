"""The report stage: run folders -> Table III (CSV + Markdown), per-class F1, Figures 1 and 2, embedding maps.

It reads only what the classify stage left in `<runs_dir>/<run name>/` (dinoloc.results) and never re-runs
anything; it imports no torch. One entry point: `run_report(ReportSpec(...))` (`stage`; the spec in `spec`).

- `runs`: which runs finished, their order and row labels.
- `statistics`: each row's recomputed F1, target-bootstrap CIs and paired-test inputs (estimators: dinoloc.stats).
- `tables`: Table III and the per-class table, CSV and Markdown; `notes`: the text under the table.
- `sensitivity`: variants against their baseline row.
- `figures`: Figures 1 and 2 and the per-class heatmap; `embedding_maps`: UMAP / t-SNE panels.
Names are imported from the module that defines them (this file re-exports nothing, so importing a light
module such as `params` or `spec` does not import the heavy ones).
"""
