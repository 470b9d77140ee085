"""Backbone families: one module per family, named in its backbone YAML by import path (`family:`).

A family module is any importable module (dinoloc's own under this package, or a lab's own package) with:

- `create(arch: str, in_chans: int, img_size: int, **model_kwargs) -> torch.nn.Module`: the model, randomly
  initialised (dinoloc seeds the draw). The model's `forward(x)` returns one embedding per image, and it exposes
  `embed_dim` (int), `patch_size` (int) and `in_chans` (int; for a model that accepts any channel count, the
  count its channel layout names). A model with `any_channels = True` takes any number of channels and is called
  as `model(x, channels=[names])` (strategy=native feeds it every data channel).
- `state_from_checkpoint(obj, checkpoint_key: str, source: str) -> dict[str, Tensor]`: the model's state dict
  from the object read from the release file (`torch.load`), converting the release's own key layout.

Optional:
- `ANY_CHANNELS: bool` (module level, read before any model exists, e.g. to skip sweep combinations) and
  `NAMED_CHANNELS: bool` (such a model matches the data's channels to its own by name);
- `load(model, state, source)`: loading the converted state (default: `load_strict`, every missing or
  unexpected key listed);
- `create_for_checkpoint(state, arch, in_chans, img_size, **model_kwargs)`: a model built to the checkpoint's
  own geometry (default: `create`);
- `from_timm(name, arch, in_chans, img_size, model_kwargs)`: `backbone.weights=timm:<name>`;
- `NEEDS_WEIGHTS: bool` (default true): false for a family without learned weights (hand-crafted features):
  an empty backbone.weights then builds it as is, not as a "random weights" floor;
- `finalize(model)`: anything after the weights are in (e.g. official position-embedding interpolation);
- `configure(backbone: dict, data_channels: list[str]) -> dict`: adjust the backbone's config to the data before
  anything runs (SubCell picks its channel-subset variant here).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from dinoloc.io import DinolocError

# Backbone YAMLs without `family:` are timm ViTs (every YAML written before families existed).
DEFAULT_FAMILY = "dinoloc.backbones.families.timm_vit"
_REQUIRED = ("create", "state_from_checkpoint")


def load_family(path: str | None) -> ModuleType:
    """The family module named by `backbone.family` (an import path), checked for the two required functions."""
    name = str(path or DEFAULT_FAMILY)
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise DinolocError(
            f"backbone.family={name!r} cannot be imported ({e}); name a module on the Python path, e.g. "
            f"{DEFAULT_FAMILY} or my_lab.my_backbone"
        ) from e
    missing = [f for f in _REQUIRED if not callable(getattr(module, f, None))]
    if missing:
        raise DinolocError(f"backbone.family={name!r} lacks {missing}; a family module defines create() and "
                           "state_from_checkpoint() (see dinoloc.backbones.families)")
    return module


def family_label(path: str | None) -> str:
    """A family's short name for tables: its module's last component (timm_vit, subcell, my_backbone)."""
    return str(path or DEFAULT_FAMILY).rsplit(".", 1)[-1]


def any_channels(path: str | None) -> bool:
    """Whether the family's models take any number of channels (strategy=native feeds them every channel)."""
    return bool(getattr(load_family(path), "ANY_CHANNELS", False))


def channel_traits(path: str | None) -> dict[str, bool]:
    """{any_channels, named_channels} of a family, as the strategies take them (module-level flags)."""
    fam = load_family(path)
    return {"any_channels": bool(getattr(fam, "ANY_CHANNELS", False)),
            "named_channels": bool(getattr(fam, "NAMED_CHANNELS", False))}


def needs_weights(path: str | None) -> bool:
    return bool(getattr(load_family(path), "NEEDS_WEIGHTS", True))


def configure(path: str | None, backbone: dict[str, Any], data_channels: list[str]) -> dict[str, Any]:
    hook = getattr(load_family(path), "configure", None)
    return hook(dict(backbone), list(data_channels)) if callable(hook) else backbone


def describe_model(model: Any) -> dict[str, Any]:
    """What the model says about itself: embedding size, patch size, channels (the report's model column)."""
    def as_int(v: Any) -> int | None:
        if isinstance(v, (tuple, list)):
            v = v[0]
        return int(v) if v is not None else None

    return {"embed_dim": as_int(getattr(model, "embed_dim", None)),
            "patch_size": as_int(getattr(model, "patch_size", None)),
            "in_chans": as_int(getattr(model, "in_chans", None)),
            "any_channels": bool(getattr(model, "any_channels", False))}


def load_strict(model: Any, state: dict[str, Any], source: str) -> None:
    """Load `state` exactly: every missing or unexpected key, and every shape that differs, listed."""
    from dinoloc.backbones.checkpoint import check_keys, list_keys

    own = model.state_dict()
    check_keys(own, state, source, "backbone.family / backbone.arch / backbone.model_kwargs")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise DinolocError(f"{source}: tensor shapes differ from the backbone's (checkpoint vs model) for "
                           f"{list_keys(wrong)}. Check backbone.arch / backbone.model_kwargs.")
    model.load_state_dict(state, strict=True)


def checkpoint_img_size(pos: Any, patch_size: int, fallback: int, slots: int = 1) -> int:
    """The input size a checkpoint's (1, 1 + slots * side**2, D) position table was made for (side * patch), so a
    model built for it loads strictly whatever backbone.preprocess.img_size says; `fallback` when not square."""
    import math

    if pos is None or getattr(pos, "ndim", 0) != 3 or (pos.shape[1] - 1) % slots:
        return fallback
    n = (pos.shape[1] - 1) // slots
    side = math.isqrt(n)
    return side * int(patch_size) if side * side == n else fallback


def backbone_state(obj: Any, checkpoint_key: str, source: str) -> dict[str, Any]:
    """A checkpoint's backbone weights: `obj[checkpoint_key]` of a DINO training checkpoint ({teacher: ...}) or the
    release's own state dict (`unwrap`), with DDP's `module.` and DINO's `backbone.` prefixes taken off."""
    sd = obj[checkpoint_key] if isinstance(obj, dict) and isinstance(obj.get(checkpoint_key), dict) else unwrap(obj, source)
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}


def unwrap(obj: Any, source: str, keys: tuple[str, ...] = ("state_dict", "model")) -> dict[str, Any]:
    """A release's state dict: the object itself when it maps names to tensors, else its first wrapper key."""
    import torch

    if not isinstance(obj, dict):
        raise DinolocError(f"{source} holds a {type(obj).__name__}, not a state dict")
    for k in keys:
        if isinstance(obj.get(k), dict):
            return obj[k]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise DinolocError(f"{source} is not a state dict (top-level keys {list(obj)[:20]}); expected tensors or one of "
                       f"the wrappers {list(keys)}")
