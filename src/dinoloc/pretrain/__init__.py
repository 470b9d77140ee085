"""DINO pretraining from scratch: multi-crop augmentation, head, loss and the training loop."""

from dinoloc.pretrain.augment import CropSpec, MultiCropAugment, sample_generator
from dinoloc.pretrain.head import DINOHead, MultiCropWrapper
from dinoloc.pretrain.loss import DINOLoss, collapse_stats, cosine_scheduler, teacher_temp_schedule
from dinoloc.pretrain.train import (
    CHECKPOINT_NAME,
    PretrainDataset,
    PretrainParams,
    cancel_gradients_last_layer,
    clip_gradients,
    ema_update,
    param_groups,
    select_pretrain_images,
    train_dino,
)

__all__ = [
    "CHECKPOINT_NAME", "CropSpec", "DINOHead", "DINOLoss", "MultiCropAugment", "MultiCropWrapper",
    "PretrainDataset", "PretrainParams", "cancel_gradients_last_layer", "clip_gradients", "collapse_stats",
    "cosine_scheduler", "ema_update", "param_groups", "sample_generator", "select_pretrain_images",
    "teacher_temp_schedule", "train_dino",
]
