"""The pretraining recipe (PretrainParams): one field per key of configs/pretrain/*.yaml, none with a default.

Plain dataclasses only (no torch): the config schema (dinoloc.schema) is built from these fields, and each key's
rule is declared on its field (dinoloc.rules): `typed(PretrainParams, node)` builds it, refusing a bad value.
The YAML is the one source of every value; a key missing from it is refused naming the key, instead of silently
falling back to a value in code (which disagreed with the YAML before: teacher_temp 0.04 vs 0.07, batch 64 vs 32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

from dinoloc.io import DinolocError
from dinoloc.rules import Checked, key

AMP_MODES = ("bf16", "fp16", "none")
ZSCORE_MODES = ("image", "crop")
CENTERING_MODES = ("softmax_center", "sinkhorn_knopp")  # dinoloc.pretrain.loss implements each
# Pretrain YAML keys that choose the data (dinoloc.pretrain.stage), not the recipe: accepted and skipped here.
DATA_KEYS = ("source", "image_dir")


@dataclass(frozen=True)
class CropSpec(Checked):
    """The augmentation recipe. No defaults: every value comes from the pretrain YAML (configs/pretrain/)."""

    SECTION: ClassVar[str] = "pretrain"
    WHERE: ClassVar[str] = "configs/pretrain/<name>.yaml"
    IGNORED: ClassVar[tuple[str, ...]] = DATA_KEYS

    global_crop_size: int = key(ge=1)
    local_crop_size: int = key(ge=1)
    global_crops_scale: tuple[float, float] = key(gt=0, le=1, ordered=True)
    local_crops_scale: tuple[float, float] = key(gt=0, le=1, ordered=True)
    local_crops_number: int = key(ge=0)
    flip_prob: float = key(ge=0, le=1)
    warp_prob: float = key(ge=0, le=1)
    protein_rescale_prob: float = key(ge=0, le=1)
    channel_drop_prob: float = key(ge=0, le=1)
    jitter_prob: float = key(ge=0, le=1)
    brightness: float = key(ge=0)
    contrast: float = key(ge=0, le=1)
    # image: z-score the whole image once (backbone.preprocess.intensity), then crop, as extraction does.
    # crop: also z-score every view after its augmentations (Dino4Cells: `self_normalize` closes each crop's
    # transform, utils/yaml_tfms.py), so each crop's channels have mean 0, std 1.
    zscore: str = key(choices=ZSCORE_MODES)


@dataclass(frozen=True)
class PretrainParams(CropSpec):
    """The pretrain YAML's recipe keys: the crop recipe (inherited from CropSpec) and the training recipe.
    configs/pretrain/opencell.yaml says where each value comes from (official DINO, Dino4Cells, the paper)."""

    epochs: int = key(ge=1)
    batch_size_per_gpu: int = key(ge=1)
    lr: float = key(gt=0)  # base lr for a total batch of 256 (scaled linearly)
    min_lr: float = key(ge=0)
    warmup_epochs: int = key(ge=0)
    weight_decay: float = key(ge=0)
    weight_decay_end: float = key(ge=0)
    momentum_teacher: float = key(ge=0, le=1)
    clip_grad: float = key(ge=0)  # 0 = no clipping
    freeze_last_layer: int = key(ge=0)
    drop_path_rate: float = key(ge=0, lt=1)
    out_dim: int = key(ge=1)
    hidden_dim: int = key(ge=1)
    bottleneck_dim: int = key(ge=1)
    nlayers: int = key(ge=1)
    norm_last_layer: bool = key()
    student_temp: float = key(gt=0)
    warmup_teacher_temp: float = key(gt=0)
    teacher_temp: float = key(gt=0)
    warmup_teacher_temp_epochs: int = key(ge=0)
    center_momentum: float = key(ge=0, le=1)  # softmax_center only
    # softmax_center = official DINO; sinkhorn_knopp = DINOv2's balanced teacher (dinoloc.pretrain.loss)
    centering: str = key(choices=CENTERING_MODES)
    amp: str = key(choices=AMP_MODES)  # CUDA only; CPU runs in float32
    num_workers: int = key(ge=0)
    seed: int = key()

    def crop_spec(self) -> CropSpec:
        return CropSpec(**{f.name: getattr(self, f.name) for f in fields(CropSpec)})


def missing_key(key: str, origin: str, also: Sequence[str] = ()) -> DinolocError:
    """The error for a pretrain key without a value (absent from the YAML, or `???`)."""
    return DinolocError(
        f"pretrain.{key} is missing from the pretrain config ({origin}); every pretrain value is set there and "
        f"has no default in code: add `{key}: <value>` to it" + (f" (also missing: {list(also)})" if also else "")
    )
