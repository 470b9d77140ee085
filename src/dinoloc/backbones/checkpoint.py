"""DINO checkpoints: read safely, pick the backbone's state dict, load it strictly (every missing or unexpected
key listed), convert DINOv2 release files, and record what a checkpoint says about itself."""

from __future__ import annotations

import argparse
import os
import pickle
import re
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed

from dinoloc.io import DinolocError

_WRAPPER_KEYS = ("state_dict", "model")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load with weights_only: tensors and plain containers only, plus argparse.Namespace (DINO's `args`).

    A pickle that asks for any other global (i.e. could run code) is refused without executing anything.
    A `.safetensors` file (Hugging Face releases, e.g. OpenPhenom) is read as the flat tensor dict it is.
    """
    if str(path).endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise DinolocError(f"{path} is not a readable safetensors file ({e}); re-download it") from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            what = f" (it asks for {found.group(1)})" if found else ""
            raise DinolocError(
                f"{path} is not a plain checkpoint{what}; refusing to unpickle arbitrary code. Use a checkpoint "
                "holding only tensors and plain containers (e.g. re-save its state dict)."
            ) from None
        raise DinolocError(f"{path} is not a readable PyTorch checkpoint ({e}); re-download or re-save it") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError, IndexError) as e:
        raise DinolocError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another format: {type(e).__name__}: "
            f"{str(e)[:200]}); re-download or re-save it"
        ) from e


def extract_state_dict(obj: Any, checkpoint_key: str = "teacher", source: str = "checkpoint") -> dict[str, Any]:
    """The backbone's state dict from any supported layout, with DINO's prefixes and head removed.

    Full DINO checkpoint: obj[checkpoint_key]; `{"state_dict"|"model": sd}`; else obj itself (official release).
    As in DINO's evaluation code: strip `module.` then `backbone.`, drop `head.*`.
    """
    if not isinstance(obj, dict):
        raise DinolocError(f"{source} holds a {type(obj).__name__}, not a state dict or a DINO checkpoint dict")
    if checkpoint_key and checkpoint_key in obj and isinstance(obj[checkpoint_key], dict):
        sd = obj[checkpoint_key]
    elif wrapper := next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None):
        sd = obj[wrapper]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        nested = [k for k, v in obj.items() if isinstance(v, dict)]
        raise DinolocError(
            f"{source} has no backbone weights under backbone.checkpoint_key={checkpoint_key!r}; its top-level "
            f"keys are {list(obj)[:20]}. Set backbone.checkpoint_key to one of {nested or ['(none is a dict)']}."
        )
    out: dict[str, Any] = {}
    for key, value in sd.items():
        k = str(key).removeprefix("module.").removeprefix("backbone.")
        if k.startswith("head."):
            continue
        out[k] = value
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DinolocError(f"{source}: state dict entries that are not tensors: {bad[:20]}")
    if not out:
        raise DinolocError(f"{source}: the state dict is empty after removing the DINO head")
    return out


def list_keys(keys: list[str]) -> str:
    return f"{len(keys)}: {keys[:20]}" + (" ..." if len(keys) > 20 else "")


def check_keys(own: dict[str, Any], state: dict[str, Any], source: str, hint: str) -> None:
    """Refuse a checkpoint whose keys differ from the model's, listing every missing and unexpected key."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise DinolocError(
            f"{source} does not fit the backbone: missing keys ({list_keys(missing)}), unexpected keys "
            f"({list_keys(unexpected)}). Check {hint}."
        )


def load_backbone_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load `state` into a timm ViT, resampling position embeddings to the model's grid."""
    own = model.state_dict()
    check_keys(own, state, source, "backbone.arch / backbone.model_kwargs and backbone.checkpoint_key")
    state = dict(state)
    pw, mw = state["patch_embed.proj.weight"], own["patch_embed.proj.weight"]
    if pw.ndim == 4 and mw.ndim == 4:
        if pw.shape[1] != mw.shape[1]:
            raise DinolocError(
                f"{source}: checkpoint has {pw.shape[1]} input channels, backbone.in_chans={mw.shape[1]}. "
                "Set backbone.in_chans (and backbone.channels) to the checkpoint's."
            )
        if tuple(pw.shape[2:]) != tuple(mw.shape[2:]):
            raise DinolocError(
                f"{source}: checkpoint has patch size {tuple(pw.shape[2:])}, the backbone "
                f"{tuple(mw.shape[2:])}; choose a backbone.arch / model_kwargs.patch_size that matches"
            )
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = _resample_pos_embed(state["pos_embed"], model, source)
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape
    ]
    if wrong:
        raise DinolocError(
            f"{source}: tensor shapes differ from the backbone's (checkpoint vs model) for {list_keys(wrong)}. "
            "Check backbone.arch / backbone.model_kwargs."
        )
    model.load_state_dict(state, strict=True)


def _resample_pos_embed(pos: torch.Tensor, model: torch.nn.Module, source: str) -> torch.Tensor:
    """Bicubic resampling of a square position-embedding grid to the model's, keeping the class token."""
    n_prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    own = model.pos_embed
    n_grid = pos.shape[1] - n_prefix
    side = int(round(n_grid**0.5))
    if pos.ndim != 3 or pos.shape[-1] != own.shape[-1] or side * side != n_grid:
        raise DinolocError(
            f"{source}: pos_embed {tuple(pos.shape)} cannot be resampled to the backbone's {tuple(own.shape)} "
            "(needs the same width and a square grid); check backbone.arch / backbone.model_kwargs"
        )
    new_size = list(model.patch_embed.grid_size)
    return resample_abs_pos_embed(
        pos, new_size=new_size, old_size=[side, side], num_prefix_tokens=n_prefix, interpolation="bicubic"
    )


def convert_dinov2_release(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict[str, Any]:
    """facebookresearch/dinov2 `dinov2_vit*14*_pretrain.pth` -> timm's vit_*_patch14_dinov2 keys (timm's own
    checkpoint_filter_fn: register_tokens -> reg_token, class-token position folded in, grid resampled)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    # timm's converter would silently resample other patch sizes; loading stays strict.
    pw, mw = state.get("patch_embed.proj.weight"), model.state_dict()["patch_embed.proj.weight"]
    if pw is not None and pw.ndim == 4 and (pw.shape[1], *pw.shape[2:]) != (mw.shape[1], *mw.shape[2:]):
        raise DinolocError(
            f"{source}: checkpoint patch embedding {tuple(pw.shape)} does not fit the backbone's {tuple(mw.shape)}; "
            "set backbone.arch / backbone.in_chans to the checkpoint's"
        )
    try:
        return dict(checkpoint_filter_fn(state, model))
    except (KeyError, RuntimeError, ValueError) as e:
        raise DinolocError(
            f"{source} looks like a DINOv2 release checkpoint (it has mask_token) but does not convert to "
            f"backbone.arch ({e}); use the matching vit_*_patch14(_reg4)_dinov2 arch"
        ) from e


def checkpoint_epoch(obj: Any) -> int | None:
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    if isinstance(epoch, torch.Tensor) and epoch.numel() == 1:
        epoch = epoch.item()
    return int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None


def checkpoint_facts(obj: Any, state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says about itself: its epoch (official DINO stores the number of finished epochs),
    the arch and patch size of its `args` when present, and the patch size, input channels and width read
    from the patch embedding's weight (so a bare backbone file has them too)."""
    facts: dict[str, Any] = {"epoch": checkpoint_epoch(obj)}
    args = obj.get("args") if isinstance(obj, dict) else None
    args = vars(args) if hasattr(args, "__dict__") else (args if isinstance(args, dict) else {})
    for key in ("arch", "patch_size", "epochs"):
        value = args.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            facts[f"args_{key}" if key == "epochs" else key] = value
    # what dinoloc pretraining records about the run (pretrain: `dinoloc_info`): how far the weights moved from
    # their init and the init's seed, shown beside the floor in the report's health notes
    info = obj.get("dinoloc_info") if isinstance(obj, dict) else None
    for key in ("weight_change_from_init", "init_seed"):
        value = (info or {}).get(key) if isinstance(info, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            facts[key] = value
    w = state.get("patch_embed.proj.weight")
    if isinstance(w, torch.Tensor) and w.ndim == 4:
        facts["embed_dim"], facts["in_chans"] = int(w.shape[0]), int(w.shape[1])
        facts.setdefault("patch_size", int(w.shape[-1]))
    return facts
