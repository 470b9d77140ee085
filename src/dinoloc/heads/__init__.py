"""Classifier heads: one module each, found by name (`classifier.name`: a module of this package, or an import
path for a lab's own). Every head runs through the same folds, standardisation and result files (dinoloc.classify.cv).

A head module defines:
- `params(classifier_cfg: dict)`: its validated parameters (with `threshold`, `standardize`, `seed`);
- `predict_proba(X, Y, train_rows, means, stds, params, *, progress, hook, single_label) -> (K, N, C) float64`:
  every fold's probabilities on every row (fold k fits on train_rows[k] only); `single_label`: every labelled
  image has one class (the decision is then the top class, metrics.decide);
- `effective(params, n_train: list[int]) -> dict | None`: what training actually used (None: nothing trained);
- `describe(params, n_folds: int) -> str`: the dry-run line's classifier part;
- `ORDER: int` (the report's row order within a backbone x strategy), `HATCH: str` (Figure 1's bar hatch).
"""

from __future__ import annotations

from types import ModuleType

from dinoloc.io import DinolocError
from dinoloc.plugins import find_module, known_modules


def known() -> list[str]:
    """This package's heads, in their report order."""
    return known_modules(__name__, __path__)


def head_module(name: str) -> ModuleType:
    """The module of head `name`: dinoloc.heads.<name>, or a module named `name` (e.g. a lab's own)."""
    return find_module(__name__, name, lambda: f"classifier.name={name!r} is unknown; use classifier={', '.join(known())} "
                       "or an import path to your own head module")


def head_order(name: str) -> int:
    try:
        return int(getattr(head_module(name), "ORDER", 99))
    except DinolocError:
        return 99
