"""The linear probe (configs/classifier/linear.yaml: the MLP without hidden layers, `hidden: []`, `dropout: 0`),
trained by the MLP's batched trainer and recipe, so the heads differ only in capacity."""

from __future__ import annotations

from dinoloc.heads.mlp import describe, effective, params, predict_proba

ORDER, HATCH = 2, ".."

__all__ = ["ORDER", "HATCH", "describe", "effective", "params", "predict_proba"]
