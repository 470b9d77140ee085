"""A DataSpec for tests that need no composed config: the flat values the tests vary, put where the data YAML
holds them (split:, labels:, cell:), built by `rules.typed` as dinoloc.config builds it."""

from __future__ import annotations

from typing import Any

from dinoloc.data.prepare import DataSpec
from dinoloc.rules import typed

SPLIT_KEYS = ("test_size", "n_folds", "group_by", "seed")
CELL = {"segmenter": "skimage", "expand_px": 10, "min_area_px": 20, "crop_px": 64, "mask_others": False,
        "aggregate": "mean"}


def data_spec(**kw: Any) -> DataSpec:
    """`min_grade` makes an OpenCell labels block (no class list: the 17; nothing ignored)."""
    split = {"test_size": 0.1, "n_folds": 5, "group_by": "target", "seed": 0}
    split |= {k: kw.pop(k) for k in SPLIT_KEYS if k in kw}
    labels = {"min_grade": kw.pop("min_grade"), "classes": [], "ignore": []} if "min_grade" in kw else None
    base = {"name": "x", "reader": "folder", "root": "/nowhere", "annotations": "/nowhere/labels.csv",
            "out_dir": "/nowhere/out", "synthetic": False, "split": split, "resplit": False, "unit": "image",
            "masks": None, "cell": CELL, "labels": labels}
    return typed(DataSpec, {**base, **kw})
