"""DINO pretraining from scratch.

stage.py (PretrainSpec, run_pretrain: the stage's entry point) -> data.py (which images, the loader) ->
train.py (train_dino: the loop) -> step.py (models, one iteration), schedules.py, checkpoint.py;
params.py (the recipe, no defaults: configs/pretrain/*.yaml), augment.py, head.py, loss.py.

The names below load their module on first use (PEP 562), so `dinoloc.pretrain.params` (plain dataclasses,
read by the config schema at every command's start) does not pull in torchvision and timm.
"""

from __future__ import annotations

from dinoloc.lazy import lazy_exports

_WHERE = {
    "CropSpec": "params", "DATA_KEYS": "params", "PretrainParams": "params",
    "MultiCropAugment": "augment", "sample_generator": "augment",
    "CHECKPOINT_NAME": "checkpoint", "LOG_COLUMNS": "checkpoint", "from_official_keys": "checkpoint",
    "to_official_keys": "checkpoint",
    "PretrainDataset": "data", "PretrainImages": "data", "select_pretrain_images": "data",
    "DINOHead": "head", "MultiCropWrapper": "head",
    "DINOLoss": "loss", "collapse_stats": "loss",
    "cosine_scheduler": "schedules", "teacher_temp_schedule": "schedules",
    "PretrainSpec": "stage", "pretrain_images": "stage", "run_pretrain": "stage",
    "build_dino_model": "step", "cancel_gradients_last_layer": "step", "clip_gradients": "step",
    "ema_update": "step", "param_groups": "step",
    "train_dino": "train",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
