"""Backbones: timm ViTs whose forward pass returns DINO's embedding, and strict DINO checkpoint loading.

One loader reads every weight file the study uses: the official backbone-only release
(`dino_vitbase8_pretrain.pth`, a plain state dict), full DINO training checkpoints
(`{student, teacher, optimizer, epoch, args, dino_loss}`: Dino4Cells' HPA model and our own OpenCell
pretraining), and `{"state_dict": ...}` / `{"model": ...}` wrappers. Loading is strict on purpose: a key or
shape that does not fit is an error, never a silently random layer.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import types
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from filelock import FileLock
from timm.layers import resample_abs_pos_embed

from dinoloc.io import DinolocError, atomic_path, file_sha256, text_sha256

DEFAULT_CACHE_DIR = Path("~/.cache/dinoloc/weights")
TIMM_PREFIX = "timm:"
_URL_SCHEMES = ("http://", "https://", "file://")
_WRAPPER_KEYS = ("state_dict", "model")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# sha256 of weight files already hashed in this process, keyed by (path, size, mtime): the cache key and the
# model build both need it, and hashing a 350 MB file twice is wasted time.
_HASHES: dict[tuple[str, int, int], str] = {}


# ----------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------
def create_vit(
    arch: str, in_chans: int, img_size: int = 224, drop_path_rate: float = 0.0, **model_kwargs: Any
) -> torch.nn.Module:
    """A randomly initialised timm ViT whose forward(x) is the CLS token after the final norm (DINO's embedding).

    dynamic_img_size lets the same model take other input sizes (position embeddings interpolated on the fly,
    as DINO does). model_kwargs override the architecture, e.g. a tiny ViT for tests and the demo.
    """
    try:
        return timm.create_model(
            arch, pretrained=False, num_classes=0, global_pool="token", in_chans=in_chans, img_size=img_size,
            dynamic_img_size=True, drop_path_rate=drop_path_rate, **model_kwargs,
        )
    except RuntimeError as e:  # timm's "Unknown model"
        raise DinolocError(f"backbone.arch={arch!r}: {e}; use a timm ViT name such as vit_base_patch8_224") from e


def dino_interpolate_pos_encoding(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Official DINO's `VisionTransformer.interpolate_pos_encoding` (facebookresearch/dino vision_transformer.py,
    which Dino4Cells copies) for a (grid_h x grid_w) patch grid: the class token's embedding kept, the square
    grid resampled bicubically with scale_factor (grid + 0.1) / sqrt(N) (the +0.1 avoids a floating-point
    off-by-one, dino issue #8), no antialiasing. timm's own resampling (size=, antialias=True) differs from it
    whenever the grid shrinks (CLS up to 0.019 apart at 96 px for ViT-B/8), so dinoloc uses this one."""
    n = pos_embed.shape[1] - 1
    if grid_h * grid_w == n and grid_h == grid_w:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    side = int(math.sqrt(n))
    h0, w0 = grid_h + 0.1, grid_w + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)),
        mode="bicubic",
    )
    if tuple(patch_pos_embed.shape[-2:]) != (grid_h, grid_w):  # the official code asserts this too
        raise DinolocError(f"position-embedding interpolation gave {tuple(patch_pos_embed.shape[-2:])}, "
                           f"expected {(grid_h, grid_w)}")
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def _official_pos_embed(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's `_pos_embed` for a (B, H, W, C) patch grid, with official DINO's interpolation."""
    b, h, w, c = x.shape
    pos = dino_interpolate_pos_encoding(self.pos_embed, h, w)
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
    return self.pos_drop(x + pos)


def use_official_pos_interpolation(model: torch.nn.Module) -> torch.nn.Module:
    """Make a timm ViT interpolate its position embeddings as official DINO does at every input size.

    Only for DINO's layout (one class token, no register tokens, embedding over the class token, square grid);
    any other model keeps timm's own resampling. Returns the model."""
    pos = getattr(model, "pos_embed", None)
    n_grid = None if pos is None else pos.shape[1] - 1
    if (
        pos is None or getattr(model, "cls_token", None) is None or getattr(model, "reg_token", None) is not None
        or getattr(model, "no_embed_class", False) or not getattr(model, "dynamic_img_size", False)
        or int(math.isqrt(n_grid)) ** 2 != n_grid
    ):
        return model
    model._pos_embed = types.MethodType(_official_pos_embed, model)
    return model


def _checkpoint_img_size(state: dict[str, torch.Tensor], fallback: int) -> int:
    """The input size the checkpoint's position embeddings were trained for (square grid x patch size), so the
    model keeps them as trained and only the forward pass interpolates (once, the official way)."""
    pos, proj = state.get("pos_embed"), state.get("patch_embed.proj.weight")
    if not isinstance(pos, torch.Tensor) or not isinstance(proj, torch.Tensor) or pos.ndim != 3 or proj.ndim != 4:
        return fallback
    n = pos.shape[1] - 1
    side = math.isqrt(max(n, 0))
    if side * side != n or proj.shape[-1] != proj.shape[-2]:
        return fallback
    return side * int(proj.shape[-1])


# ----------------------------------------------------------------------------------------------------------
# weights: where they come from
# ----------------------------------------------------------------------------------------------------------
def _is_url(weights: str) -> bool:
    return weights.lower().startswith(_URL_SCHEMES)


def _check_sha256(sha256: str | None) -> str | None:
    if sha256 is None or sha256 == "":
        return None
    value = str(sha256).strip().lower()
    if not _SHA256_RE.match(value):
        raise DinolocError(f"backbone.weights_sha256={sha256!r} is not a sha256 hex digest (64 hex characters)")
    return value


def _sha256_of(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)
    return _HASHES[key]


def cached_weights_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a URL's file lives in the cache: <cache_dir>/<hash of the URL>/<file name>.

    The URL hash keeps two different `checkpoint.pth` URLs apart; the file name keeps the folder readable.
    """
    root = Path(cache_dir if cache_dir else DEFAULT_CACHE_DIR).expanduser()
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "weights.pth"
    return root / text_sha256(url)[:16] / name


def fetch_weights(
    url: str, cache_dir: str | os.PathLike | None = None, sha256: str | None = None, progress: bool = True
) -> Path:
    """Download `url` once into the cache and return the local file; a pinned sha256 is checked every time."""
    sha256 = _check_sha256(sha256)
    dest = cached_weights_path(url, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Parallel sweep jobs may want the same file: one downloads, the others wait and reuse it.
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            if sha256 is not None and (got := _sha256_of(dest)) != sha256:
                raise DinolocError(
                    f"cached weights {dest} (from {url}) have sha256 {got}, but backbone.weights_sha256={sha256}. "
                    "Fix backbone.weights_sha256, or delete the cached file to download it again."
                )
            return dest
        with atomic_path(dest) as tmp:
            try:
                torch.hub.download_url_to_file(url, str(tmp), progress=progress)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise DinolocError(
                    f"could not download backbone.weights={url}: {e}. Download it by hand and set "
                    "backbone.weights=<local path>."
                ) from e
            if sha256 is not None and (got := file_sha256(tmp)) != sha256:
                raise DinolocError(
                    f"the download of {url} has sha256 {got}, but backbone.weights_sha256={sha256}; refused, nothing "
                    "was cached. Check the URL, or fix backbone.weights_sha256 if the file legitimately changed."
                )
    return dest


def _local_weights(weights: str | os.PathLike, sha256: str | None) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DinolocError(
            f"backbone.weights={weights} does not exist (or is not a file). Point it at the checkpoint "
            "(.pth), a URL, or timm:<model name>."
        )
    if sha256 is not None and (got := _sha256_of(path)) != sha256:
        raise DinolocError(f"{path} has sha256 {got}, but backbone.weights_sha256={sha256}; refused")
    return path


RANDOM_INIT_SEED = 0  # the random-weights baseline is one fixed draw per architecture


def weights_fingerprint(
    weights: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None,
    weights_sha256: str | None = None,
) -> str:
    """What identifies the weights in cache keys: the file's sha256, `timm:<name>`, or "random:seed<N>" (random init is seeded).

    A URL is identified by its downloaded file's hash (downloaded now if not cached yet), or directly by
    `weights_sha256` when pinned, since a download with another hash would be refused anyway.
    """
    if weights is None or str(weights) == "":
        return f"random:seed{RANDOM_INIT_SEED}"
    weights = str(weights)
    if weights.startswith(TIMM_PREFIX):
        return weights
    sha256 = _check_sha256(weights_sha256)
    if _is_url(weights):
        if sha256 is not None and not cached_weights_path(weights, cache_dir).exists():
            return sha256
        return _sha256_of(fetch_weights(weights, cache_dir, sha256))
    return _sha256_of(_local_weights(weights, sha256))


# ----------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load with weights_only: tensors and plain containers only, plus argparse.Namespace (DINO's `args`).

    A pickle that asks for any other global (i.e. could run code) is refused without executing anything.
    """
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


def _list_keys(keys: list[str]) -> str:
    return f"{len(keys)}: {keys[:20]}" + (" ..." if len(keys) > 20 else "")


def load_backbone_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load `state` into a timm ViT, resampling position embeddings to the model's grid."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise DinolocError(
            f"{source} does not fit the backbone: missing keys ({_list_keys(missing)}), unexpected keys "
            f"({_list_keys(unexpected)}). Check backbone.arch / backbone.model_kwargs and backbone.checkpoint_key."
        )
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
            f"{source}: tensor shapes differ from the backbone's (checkpoint vs model) for {_list_keys(wrong)}. "
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


def _convert_dinov2_release(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict[str, Any]:
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


def describe_weights(weights: str | os.PathLike | None) -> str:
    """Short human name of a weights source for display names: the timm tag, the file name, or 'random init'."""
    if weights is None or str(weights) == "":
        return "random init"
    weights = str(weights)
    if weights.startswith(TIMM_PREFIX):
        return weights
    if _is_url(weights):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(weights).path)).name or weights
    return Path(weights).name


def display_name(display: str | None, label: str | None, arch: str, weights: str | os.PathLike | None) -> str:
    """A backbone's name in tables: `display` when the config sets one, else '<label or arch> (<weights>)', so a
    generic timm backbone always says which weights were used."""
    if display:
        return str(display)
    return f"{label or arch} ({describe_weights(weights)})"


def _checkpoint_epoch(obj: Any) -> int | None:
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    if isinstance(epoch, torch.Tensor) and epoch.numel() == 1:
        epoch = epoch.item()
    return int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None


def checkpoint_facts(obj: Any, state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says about itself: its epoch (official DINO stores the number of finished epochs),
    the arch and patch size of its `args` when present, and the patch size, input channels and width read
    from the patch embedding's weight (so a bare backbone file has them too)."""
    facts: dict[str, Any] = {"epoch": _checkpoint_epoch(obj)}
    args = obj.get("args") if isinstance(obj, dict) else None
    args = vars(args) if hasattr(args, "__dict__") else (args if isinstance(args, dict) else {})
    for key in ("arch", "patch_size", "epochs"):
        value = args.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            facts[f"args_{key}" if key == "epochs" else key] = value
    w = state.get("patch_embed.proj.weight")
    if isinstance(w, torch.Tensor) and w.ndim == 4:
        facts["embed_dim"], facts["in_chans"] = int(w.shape[0]), int(w.shape[1])
        facts.setdefault("patch_size", int(w.shape[-1]))
    return facts


def build_backbone(
    arch: str,
    in_chans: int,
    weights: str | os.PathLike | None = None,
    checkpoint_key: str = "teacher",
    img_size: int = 224,
    *,
    weights_sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_random: bool = False,
    **model_kwargs: Any,
) -> torch.nn.Module:
    """A ViT in eval mode holding `weights` (local path, http(s)/file URL, `timm:<name>`, or None for random).

    The model carries `dinoloc_info = {weights, weights_sha256, checkpoint_epoch, random_init}`.
    """
    sha256 = _check_sha256(weights_sha256)
    weights = None if weights is None or str(weights) == "" else str(weights)
    info: dict[str, Any] = {"weights": weights, "weights_sha256": None, "checkpoint_epoch": None, "random_init": False}
    if weights is None:
        if not allow_random:
            raise DinolocError(
                f"no weights for backbone.arch={arch}: set backbone.weights=<path, URL or timm:name>, or "
                "allow_random_weights=true to embed with a randomly initialised model"
            )
        # Seeded, so "random" names ONE model in cache keys: a resumed extraction continues with the same weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = create_vit(arch, in_chans, img_size, **model_kwargs)
        info["random_init"] = True
        info["random_seed"] = RANDOM_INIT_SEED
    elif weights.startswith(TIMM_PREFIX):
        model = _timm_pretrained(weights[len(TIMM_PREFIX):], arch, in_chans, img_size, model_kwargs)
    else:
        path = fetch_weights(weights, cache_dir, sha256) if _is_url(weights) else _local_weights(weights, sha256)
        obj = read_checkpoint(path)
        source = str(path) if str(path) == weights else f"{path} (backbone.weights={weights})"
        state = extract_state_dict(obj, checkpoint_key, source)
        if "mask_token" in state:  # Meta's own DINOv2 release layout: timm's converter renames it to timm's keys
            model = create_vit(arch, in_chans, img_size, **model_kwargs)
            state = _convert_dinov2_release(state, model, source)
        else:
            # Built at the checkpoint's own grid: other input sizes are then interpolated at forward time exactly
            # as official DINO does (resampling at load with timm's antialiased resize, then again, would differ).
            model = create_vit(arch, in_chans, _checkpoint_img_size(state, img_size), **model_kwargs)
        load_backbone_state(model, state, source)
        info["weights_sha256"] = _sha256_of(path)
        info["checkpoint_epoch"] = _checkpoint_epoch(obj)
        info["checkpoint"] = checkpoint_facts(obj, state)
    use_official_pos_interpolation(model)
    model.eval()
    model.dinoloc_info = info
    return model


def _timm_pretrained(
    name: str, arch: str, in_chans: int, img_size: int, model_kwargs: dict[str, Any]
) -> torch.nn.Module:
    """timm's own pretrained copy (e.g. vit_base_patch8_224.dino), from the user's local Hugging Face cache."""
    if not name:
        raise DinolocError("backbone.weights='timm:' names no model; e.g. timm:vit_base_patch8_224.dino")
    if name.split(".")[0] != arch:
        raise DinolocError(f"backbone.weights=timm:{name} is not a {arch}; set backbone.arch={name.split('.')[0]}")
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as e:
        cfg, why = None, str(e)
    else:
        why = "not registered"
    if cfg is None:
        raise DinolocError(f"backbone.weights=timm:{name}: timm has no such pretrained model ({why})")
    src_chans = (cfg.input_size or (3,))[0]
    if src_chans != in_chans:
        # timm would silently sum/repeat the RGB filters; keep loading strict as for files.
        raise DinolocError(
            f"backbone.weights=timm:{name}: checkpoint has {src_chans} input channels, backbone.in_chans={in_chans}"
        )
    try:
        # At the pretrained input size, so other sizes are interpolated at forward time the official way.
        own_size = int((cfg.input_size or (3, img_size, img_size))[-1])
        return timm.create_model(
            name, pretrained=True, num_classes=0, global_pool="token", in_chans=in_chans, img_size=own_size,
            dynamic_img_size=True, **model_kwargs,
        )
    except (OSError, RuntimeError, ValueError) as e:
        raise DinolocError(
            f"could not load backbone.weights=timm:{name} ({e}); is it in the local Hugging Face cache?"
        ) from e
