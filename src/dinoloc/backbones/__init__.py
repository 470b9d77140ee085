"""Backbones: timm ViTs whose forward pass returns DINO's embedding, and strict DINO checkpoint loading.

One loader reads every weight file the study uses: the official backbone-only release
(`dino_vitbase8_pretrain.pth`, a plain state dict), full DINO training checkpoints
(`{student, teacher, optimizer, epoch, args, dino_loss}`: Dino4Cells' HPA model and our own OpenCell
pretraining), and `{"state_dict": ...}` / `{"model": ...}` wrappers. Loading is strict on purpose: a key or
shape that does not fit is an error, never a silently random layer.

- `vit`: the model (`create_vit`) and official DINO's position-embedding interpolation;
- `weights`: where weights come from (files, URLs, timm names, random init), fingerprints and display names;
- `checkpoint`: reading checkpoints and loading them strictly;
- `build`: `build_backbone`, the model with its weights.
"""

from __future__ import annotations

from dinoloc.lazy import lazy_exports

# Loaded on first use (PEP 562): naming and checking weights at a command's start needs neither torch nor timm.
_WHERE = {
    "RANDOM_INIT_SEED": "weights",
    "TIMM_PREFIX": "weights",
    "build_backbone": "build",
    "cached_weights_path": "weights",
    "check_sha256": "weights",
    "checkpoint_epoch": "checkpoint",
    "checkpoint_facts": "checkpoint",
    "checkpoint_img_size": "vit",
    "convert_dinov2_release": "checkpoint",
    "create_vit": "vit",
    "describe_weights": "weights",
    "dino_interpolate_pos_encoding": "vit",
    "display_name": "weights",
    "extract_state_dict": "checkpoint",
    "fetch_weights": "weights",
    "is_url": "weights",
    "load_backbone_state": "checkpoint",
    "local_weights": "weights",
    "read_checkpoint": "checkpoint",
    "sha256_of": "weights",
    "use_official_pos_interpolation": "vit",
    "weights_fingerprint": "weights",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
