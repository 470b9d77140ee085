"""scripts/probe_standins.py keeps the test split out of its folds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "probe_standins.py"


def _module():
    spec = importlib.util.spec_from_file_location("probe_standins", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_probe_rows_exclude_test_and_unlabeled_rows():
    split = np.array(["train", "test", "train", "unlabeled", "test", "train"])
    fold = np.array([0, -1, 1, -1, -1, 2])
    mask, group = _module().probe_rows(split, fold)
    assert mask.tolist() == [True, False, True, False, False, True]
    assert group.tolist() == [0, 1, 2]
