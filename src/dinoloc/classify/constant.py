"""The trivial reference (`classifier=constant`): per class, the constant prediction (every image positive, or
every image negative) with the higher F1 on the fold's training part, applied to every val and test image.

F1 of "all negative" is 0 (no true positive), F1 of "all positive" is 2p / (1 + p) > 0 for a class with any
training positive (p its prevalence), so the rule predicts every class positive that the training part has,
and nothing else. It is a head, not a backbone, because it is a property of the labels alone: it reads no
feature, and as a head it goes through the same folds, result files, bootstrap and paired tests as every row
(cross_validate), whatever the embeddings underneath (the preset puts it on the cheap classical features).
"""

from __future__ import annotations

import numpy as np


def best_constant(train_y: np.ndarray) -> np.ndarray:
    """(C,) 0/1: per class, the constant prediction that maximises F1 on these training labels (N, C)."""
    y = np.asarray(train_y)
    tp_all = y.sum(axis=0).astype(np.float64)   # all positive: tp = positives, fp = negatives, fn = 0
    f1_all = np.divide(2 * tp_all, tp_all + len(y), out=np.zeros_like(tp_all), where=len(y) > 0)
    return (f1_all > 0.0).astype(np.int64)       # all negative scores 0: positive wins whenever it scores


def constant_predict_proba(Y: np.ndarray, train_rows: list[np.ndarray]) -> np.ndarray:
    """Every fold's constant decision on every row, as probabilities 0 or 1: (K, N, C) float64."""
    Y = np.asarray(Y)
    return np.stack([np.broadcast_to(best_constant(Y[rows]).astype(np.float64), Y.shape).copy()
                     for rows in train_rows])
