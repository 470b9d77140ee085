"""The paper's MLP (configs/classifier/mlp.yaml): the K folds' models trained as one batched model
(dinoloc.classify.trainer)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dinoloc.classify.params import ClassifierParams
from dinoloc.rules import typed

ORDER, HATCH = 0, ""  # the paper's head: plain bars


def params(classifier_cfg: Mapping[str, Any]) -> ClassifierParams:
    return typed(ClassifierParams, classifier_cfg)


def predict_proba(X, Y, train_rows, means, stds, params, *, progress: bool = True, hook=None,
                  single_label: bool = False) -> np.ndarray:
    """Single-label data (one class per labelled image) trains with softmax cross-entropy and returns softmax
    probabilities (the top class is predicted, as DINO's eval_linear.py); multi-label keeps the paper's sigmoid."""
    from dinoloc.classify.trainer import predict_proba as trained_proba
    from dinoloc.classify.trainer import train_folds

    weights, biases = train_folds(X, Y, train_rows, means, stds, params, progress=progress, hook=hook,
                                  single_label=single_label)
    return trained_proba(X, weights, biases, means, stds, single_label=single_label)


def effective(params, n_train: list[int]) -> dict[str, Any]:
    """What training actually used, for the report's deviations list (the YAML's lr may be scaled)."""
    return {"lr": params.effective_lr(), "lr_scaling": params.lr_scaling, "world_size": 1,
            "schedule_step": params.schedule_step, "sampler": params.effective_sampler,
            "steps_per_epoch": [math.ceil(n / params.batch_size) for n in n_train]}


def describe(params, n_folds: int) -> str:
    return f"train {n_folds} folds x {params.epochs} epochs"
