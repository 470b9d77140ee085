"""The scores: macro F1 (the single definition; classifier and report both use it) and per-class F1.

numpy, pandas and sklearn only, so the report can score predictions without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

from dinoloc.io import DinolocError
from dinoloc.ontology import CATEGORIES, N_CLASSES


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str] | None = None) -> tuple[float, list[str]]:
    """Macro F1 over the classes (default OpenCell's 17), zero_division=0, EXCLUDING classes without a positive
    in y_true (Dino4Cells): such a class's F1 is 0 or undefined whatever the model does. Returns (score,
    excluded class names); the score is NaN when no class has a positive."""
    classes = class_list(classes)
    y_true, y_pred = as_label_matrix(y_true, len(classes)), as_label_matrix(y_pred, len(classes))
    f1 = f1_score(y_true, y_pred, average=None, labels=list(range(len(classes))), zero_division=0)
    present = y_true.sum(axis=0) > 0
    excluded = [c for c, p in zip(classes, present, strict=True) if not p]
    return (float(f1[present].mean()) if present.any() else float("nan")), excluded


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """class, f1, precision, recall, support for each class (default OpenCell's 17; zero_division=0)."""
    classes = class_list(classes)
    p, r, f, s = precision_recall_fscore_support(
        as_label_matrix(y_true, len(classes)), as_label_matrix(y_pred, len(classes)), average=None,
        labels=list(range(len(classes))), zero_division=0,
    )
    return pd.DataFrame({"class": list(classes), "f1": f, "precision": p, "recall": r, "support": s})


def class_list(classes: Sequence[str] | None) -> tuple[str, ...]:
    """The dataset's class list (data config); OpenCell's 17 when not given."""
    return CATEGORIES if classes is None else tuple(str(c) for c in classes)


def as_label_matrix(y: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """y as an (n, n_classes) int64 matrix; any other shape is an error naming it."""
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != n_classes:
        raise DinolocError(f"labels must have shape (n, {n_classes}); got {y.shape}")
    return y.astype(np.int64)


def is_single_label(Y: np.ndarray) -> bool:
    """Every labelled row carries exactly one class (a folder of class subfolders, mechanism-of-action
    labels): then the heads predict the top class, as official DINO's k-NN and linear evaluations do."""
    Y = np.asarray(Y)
    return bool(len(Y)) and bool((Y.sum(axis=1) == 1).all())


def decide(p: np.ndarray, threshold: float, single_label: bool) -> np.ndarray:
    """0/1 predictions (n, C) from scores p: the top class (arg-max, first on ties) on single-label data,
    else every class with p > threshold (the paper's multi-label rule)."""
    p = np.asarray(p, dtype=np.float64)
    if single_label:
        out = np.zeros(p.shape, dtype=np.int64)
        out[np.arange(len(p)), p.argmax(axis=1)] = 1
        return out
    return (p > threshold).astype(np.int64)
