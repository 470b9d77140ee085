"""What dinoloc-report needs, as plain values (no heavy imports: the config schema reads its fields)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReportSpec:
    """What dinoloc-report needs (configs/config.yaml `report`, `paths`, `expected_rows`, `figure2_colors`)."""

    runs_dir: Path
    reports_dir: Path
    n_boot: int  # bootstrap replicates (0: no CIs or paired tests)
    seed: int  # bootstrap, Figure 2's image choice and the embedding maps' subsample
    level: float  # CI level, e.g. 0.95
    method: str  # CI method (dinoloc.stats.METHOD_NAMES)
    figure2_colors: str  # magenta_green | red_green
    embedding_maps: str  # auto | umap | tsne | none
    max_points: int  # images per embedding-map panel at most
    display_percentiles: tuple[float, float]  # Figure 2's channel stretch (report.display_percentiles)
    expected: tuple[str, ...] = ()  # run names Table III should have; absent ones are listed as missing
