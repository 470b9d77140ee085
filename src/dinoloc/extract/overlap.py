"""No test image in any backbone's pretraining: the check made before a run embeds with a checkpoint.

A checkpoint dinoloc-pretrain made lists what it trained on (`pretrain_images.csv` beside `checkpoint.pth`).
Before a run embeds with it, that list is compared with the run's test set; any overlap is refused with one
`dinoloc: error:` line naming the checkpoint, the overlap count and the command that pretrains for this split
(dinoloc does not silently pretrain per split: a pretraining is minutes to days, so the user starts it).
Checkpoints from outside record no training images: ImageNet and HPA weights are "disjoint by construction"
for OpenCell-format data (they never saw OpenCell), anything else is "unknown". result.json records the
outcome (`pretraining`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from dinoloc.io import DinolocError

IMAGES_NAME = "pretrain_images.csv"  # dinoloc.pretrain.checkpoint.IMAGES_NAME (no torch import here)
# Backbone families pretrained on data that is not OpenCell (official DINO ImageNet-1k, Dino4Cells' HPA FOVs).
OUTSIDE_FAMILIES = {"imagenet": "ImageNet-1k", "hpa": "HPA FOV images", "dinov2": "LVD-142M"}


def images_list(weights: str | None) -> Path | None:
    """The checkpoint's pretrain_images.csv, where the weights are a local file that has one beside it."""
    if not weights or "://" in str(weights) or str(weights).startswith("timm:"):
        return None
    path = Path(str(weights)).parent / IMAGES_NAME
    return path if path.is_file() else None


def check_pretraining(weights: str | None, backbone: str, reader: str, test_ids: set[str],
                      pretrain_command: str) -> dict[str, Any]:
    """What the checkpoint saw, against this run's test images. Refuses any overlap (DinolocError, naming the
    checkpoint, the count and `pretrain_command`); returns result.json's `pretraining` record."""
    if not weights:
        return {"status": "no pretraining (random weights)", "overlap": 0}
    listed = images_list(weights)
    if listed is not None:
        seen = pd.read_csv(listed, dtype={"image_id": str}, keep_default_na=False)
        if "image_id" not in seen.columns:
            raise DinolocError(f"{listed}: no image_id column; rewrite it with dinoloc-pretrain (force)")
        ids = set(seen["image_id"])
        overlap = sorted(ids & test_ids)
        if overlap:
            raise DinolocError(
                f"{weights}: {len(overlap)} of this run's {len(test_ids)} test images were in this checkpoint's "
                f"pretraining ({listed}, e.g. {', '.join(overlap[:3])}); pretrain for this split: "
                f"{pretrain_command}"
            )
        digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
        return {"status": "checked: disjoint from this run's test set", "overlap": 0, "images_file": str(listed),
                "n_images": len(ids), "images_sha256": digest}
    family = backbone.split("_")[0]
    if family in OUTSIDE_FAMILIES and reader == "opencell":
        return {"status": f"pretraining data disjoint by construction ({OUTSIDE_FAMILIES[family]}, not OpenCell)",
                "overlap": 0}
    return {"status": "unknown: the checkpoint records no training images", "overlap": None}
