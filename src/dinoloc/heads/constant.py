"""The trivial reference (configs/classifier/constant.yaml; dinoloc.classify.constant): per class the best
constant prediction on the fold's training part. It reads no feature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dinoloc.classify.params import ConstantParams
from dinoloc.rules import typed

ORDER, HATCH = 3, "xx"


def params(classifier_cfg: Mapping[str, Any]) -> ConstantParams:
    return typed(ConstantParams, classifier_cfg)


def predict_proba(X, Y, train_rows, means, stds, params, *, progress: bool = True, hook=None,
                  single_label: bool = False) -> np.ndarray:
    from dinoloc.classify.constant import constant_predict_proba

    return constant_predict_proba(np.asarray(Y.cpu() if hasattr(Y, "cpu") else Y), train_rows)


def effective(params, n_train: list[int]) -> None:
    return None  # nothing is trained


def describe(params, n_folds: int) -> str:
    return "the best constant per class"
