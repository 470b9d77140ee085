"""The pretraining recipe (PretrainParams): one field per key of configs/pretrain/*.yaml, none with a default.

Plain dataclasses only (no torch): the config schema (dinoloc.schema) is built from these fields.
The YAML is the one source of every value; a key missing from it is refused naming the key, instead of silently
falling back to a value in code (which disagreed with the YAML before: teacher_temp 0.04 vs 0.07, batch 64 vs 32).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from dinoloc.io import DinolocError

AMP_MODES = ("bf16", "fp16", "none")
ZSCORE_MODES = ("image", "crop")
# Pretrain YAML keys that choose the data (dinoloc.pretrain.stage), not the recipe: accepted and skipped here.
DATA_KEYS = ("source", "image_dir")


@dataclass(frozen=True)
class CropSpec:
    """The augmentation recipe. No defaults: every value comes from the pretrain YAML (configs/pretrain/)."""

    global_crop_size: int
    local_crop_size: int
    global_crops_scale: tuple[float, float]
    local_crops_scale: tuple[float, float]
    local_crops_number: int
    flip_prob: float
    warp_prob: float
    protein_rescale_prob: float
    channel_drop_prob: float
    jitter_prob: float
    brightness: float
    contrast: float
    # image: z-score the whole image once (backbone.preprocess.intensity), then crop, as extraction does.
    # crop: also z-score every view after its augmentations (Dino4Cells: `self_normalize` closes each crop's
    # transform, utils/yaml_tfms.py), so each crop's channels have mean 0, std 1.
    zscore: str


@dataclass(frozen=True)
class PretrainParams(CropSpec):
    """The pretrain YAML's recipe keys: the crop recipe (inherited from CropSpec) and the training recipe.
    configs/pretrain/opencell.yaml says where each value comes from (official DINO, Dino4Cells, the paper)."""

    epochs: int
    batch_size_per_gpu: int
    lr: float  # base lr for a total batch of 256 (scaled linearly)
    min_lr: float
    warmup_epochs: int
    weight_decay: float
    weight_decay_end: float
    momentum_teacher: float
    clip_grad: float  # 0 = no clipping
    freeze_last_layer: int
    drop_path_rate: float
    out_dim: int
    hidden_dim: int
    bottleneck_dim: int
    nlayers: int
    norm_last_layer: bool
    student_temp: float
    warmup_teacher_temp: float
    teacher_temp: float
    warmup_teacher_temp_epochs: int
    center_momentum: float
    amp: str  # CUDA only; CPU runs in float32
    num_workers: int
    seed: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], origin: str = "configs/pretrain/<name>.yaml") -> PretrainParams:
        """Build from the pretrain config; a missing key, an unknown key or a bad value raises DinolocError
        naming `pretrain.<key>` (`origin`: the YAML the values come from, for the message). `source` and
        `image_dir` (they choose the data) are accepted and ignored."""
        types = typing.get_type_hints(cls)
        known = [f.name for f in fields(cls)]
        unknown = sorted(k for k in d if k not in types and k not in DATA_KEYS)
        if unknown:
            raise DinolocError(
                f"pretrain.{unknown[0]} is not a pretrain setting (unknown keys: {unknown}); known keys: "
                f"{sorted(known)}. Fix the spelling in configs/pretrain/*.yaml or the override."
            )
        missing = [k for k in known if k not in d]
        if missing:
            raise missing_key(missing[0], origin, also=missing[1:])
        params = cls(**{k: _coerce(k, d[k], types[k]) for k in known})
        params.validate()
        return params

    def validate(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise DinolocError(f"pretrain.{key}={getattr(self, key)!r}: must be {rule}")

        for key in ("epochs", "batch_size_per_gpu", "out_dim", "hidden_dim", "bottleneck_dim", "nlayers",
                    "global_crop_size", "local_crop_size"):
            need(getattr(self, key) >= 1, key, ">= 1")
        for key in ("warmup_epochs", "warmup_teacher_temp_epochs", "freeze_last_layer", "local_crops_number",
                    "num_workers", "min_lr", "weight_decay", "weight_decay_end", "clip_grad", "brightness"):
            need(getattr(self, key) >= 0, key, ">= 0")
        for key in ("lr", "student_temp", "teacher_temp", "warmup_teacher_temp"):
            need(getattr(self, key) > 0, key, "> 0")
        for key in ("momentum_teacher", "center_momentum", "flip_prob", "warp_prob", "protein_rescale_prob",
                    "channel_drop_prob", "jitter_prob", "contrast"):
            need(0 <= getattr(self, key) <= 1, key, "in [0, 1]")
        need(0 <= self.drop_path_rate < 1, "drop_path_rate", "in [0, 1)")
        for key in ("global_crops_scale", "local_crops_scale"):
            lo, hi = getattr(self, key)
            need(0 < lo <= hi <= 1, key, "[low, high] with 0 < low <= high <= 1")
        need(self.amp in AMP_MODES, "amp", f"one of {AMP_MODES}")
        need(self.zscore in ZSCORE_MODES, "zscore", f"one of {ZSCORE_MODES}")

    def crop_spec(self) -> CropSpec:
        return CropSpec(**{f.name: getattr(self, f.name) for f in fields(CropSpec)})


def missing_key(key: str, origin: str, also: Sequence[str] = ()) -> DinolocError:
    """The error for a pretrain key without a value (absent from the YAML, or `???`)."""
    return DinolocError(
        f"pretrain.{key} is missing from the pretrain config ({origin}); every pretrain value is set there and "
        f"has no default in code: add `{key}: <value>` to it" + (f" (also missing: {list(also)})" if also else "")
    )


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """A YAML value to the field's type (ints for floats allowed, lists for pairs), else DinolocError."""
    name = getattr(typ, "__name__", str(typ))
    bad = DinolocError(f"pretrain.{key}={value!r}: expected a {name}")
    if typ is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise bad
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise bad
        return float(value)
    if typing.get_origin(typ) is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(typ)):
            raise bad
        return tuple(_coerce(key, v, t) for v, t in zip(value, typing.get_args(typ), strict=True))
    if typ is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise AssertionError(f"{key}: no coercion for {typ}")
