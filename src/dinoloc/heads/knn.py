"""DINO's weighted k-NN probe (configs/classifier/knn.yaml; dinoloc.classify.probes): no training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dinoloc.classify.params import KNNParams
from dinoloc.rules import typed

ORDER, HATCH = 1, "//"


def params(classifier_cfg: Mapping[str, Any]) -> KNNParams:
    return typed(KNNParams, classifier_cfg)


def predict_proba(X, Y, train_rows, means, stds, params, *, progress: bool = True, hook=None,
                  single_label: bool = False) -> np.ndarray:
    """The vote shares; with single-label data the decision is their arg-max (metrics.decide), as eval_knn.py."""
    from dinoloc.classify.probes import knn_predict_proba

    return knn_predict_proba(X, Y, train_rows, means, stds, params)


def effective(params, n_train: list[int]) -> None:
    return None  # the k-NN has no optimiser


def describe(params, n_folds: int) -> str:
    return "fit the k-NN"
