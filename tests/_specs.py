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


def embed_batch(model: Any, x: Any, *, img_size: int, intensity: str, mean: Any, std: Any, spatial: str = "resize",
                crop_size: int = 600, **plan: Any) -> Any:
    """dinoloc.strategies.embed_batch with its EmbedPlan given as the flat values the tests vary (the backbone's
    preprocessing, then the plan's strategy and channels); source_channels default to OpenCell's."""
    from dinoloc.backbones.spec import PreprocessSpec
    from dinoloc.ontology import OPENCELL_CHANNELS
    from dinoloc.strategies import EmbedPlan
    from dinoloc.strategies import embed_batch as embed

    pp = PreprocessSpec(img_size=img_size, spatial=spatial, crop_size=crop_size, intensity=intensity,
                        mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std))
    plan.setdefault("source_channels", OPENCELL_CHANNELS)
    for k in ("backbone_channels", "source_channels"):
        plan[k] = tuple(plan[k])
    return embed(model, x, EmbedPlan(preprocess=pp, **plan))
