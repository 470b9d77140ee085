"""DINO pretraining from scratch.

stage.py (PretrainSpec, run_pretrain: the stage's entry point) -> data.py (which images, the loader) ->
train.py (train_dino: the loop) -> step.py (models, one iteration), schedules.py, checkpoint.py;
params.py (the recipe, no defaults: configs/pretrain/*.yaml), augment.py, head.py, loss.py.
"""

from dinoloc.pretrain.augment import CropSpec, MultiCropAugment, sample_generator
from dinoloc.pretrain.checkpoint import CHECKPOINT_NAME, LOG_COLUMNS, from_official_keys, to_official_keys
from dinoloc.pretrain.data import PretrainDataset, PretrainImages, select_pretrain_images
from dinoloc.pretrain.head import DINOHead, MultiCropWrapper
from dinoloc.pretrain.loss import DINOLoss, collapse_stats
from dinoloc.pretrain.params import DATA_KEYS, PretrainParams
from dinoloc.pretrain.schedules import cosine_scheduler, teacher_temp_schedule
from dinoloc.pretrain.stage import PretrainSpec, pretrain_images, run_pretrain
from dinoloc.pretrain.step import (
    build_dino_model,
    cancel_gradients_last_layer,
    clip_gradients,
    ema_update,
    param_groups,
)
from dinoloc.pretrain.train import train_dino

__all__ = [
    "CHECKPOINT_NAME", "DATA_KEYS", "LOG_COLUMNS", "CropSpec", "DINOHead", "DINOLoss", "MultiCropAugment",
    "MultiCropWrapper", "PretrainDataset", "PretrainImages", "PretrainParams", "PretrainSpec", "build_dino_model",
    "cancel_gradients_last_layer", "clip_gradients", "collapse_stats", "cosine_scheduler", "ema_update",
    "from_official_keys", "param_groups", "pretrain_images", "run_pretrain", "sample_generator",
    "select_pretrain_images", "teacher_temp_schedule", "to_official_keys", "train_dino",
]
