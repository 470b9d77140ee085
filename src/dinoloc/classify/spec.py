"""What the classification stage needs, as typed values (no heavy imports: the config edge builds it)."""

from __future__ import annotations

from dataclasses import dataclass

from dinoloc.classify.params import ClassifierParams, ConstantParams, KNNParams
from dinoloc.extract.stage import ExtractSpec


@dataclass(frozen=True)
class ClassifySpec:
    """One Table III cell: `extract`'s embeddings, the head and its parameters (the `classifier` config group),
    and where the run folder goes."""

    extract: ExtractSpec
    head: str                                 # a module of dinoloc.heads (mlp | knn | linear | constant) or a lab's own
    classifier: ClassifierParams | KNNParams | ConstantParams
    runs_dir: str
    experiment: str
    variant: str = "baseline"   # a sensitivity variant (configs/variant/)
    force: bool = False         # redo a finished run
