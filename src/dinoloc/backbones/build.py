"""`build_backbone`: a family's model in eval mode holding its weights (file, URL, timm name or seeded random init)."""


from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import timm
import torch

from dinoloc.backbones.checkpoint import (
    checkpoint_epoch,
    checkpoint_facts,
    read_checkpoint,
)
from dinoloc.backbones.families import describe_model, family_label, load_family, load_strict
from dinoloc.backbones.weights import (
    RANDOM_INIT_SEED,
    TIMM_PREFIX,
    check_sha256,
    fetch_weights,
    is_url,
    local_weights,
    sha256_of,
)
from dinoloc.io import DinolocError


@dataclass(frozen=True)
class LoadOptions:
    """How `build_backbone` loads the weights (backbone.checkpoint_key, weights_sha256, random_seed; where URLs
    are downloaded; whether empty weights may mean a random init)."""

    checkpoint_key: str = "teacher"        # a full DINO checkpoint's entry (teacher / student)
    weights_sha256: str | None = None      # pins the file; a different one is refused
    cache_dir: str | os.PathLike | None = None  # downloaded URLs
    allow_random: bool = False             # None weights: a seeded random init instead of an error
    random_seed: int | None = None         # that init's seed (None: RANDOM_INIT_SEED)


def build_backbone(
    arch: str,
    in_chans: int,
    weights: str | os.PathLike | None = None,
    img_size: int = 224,
    *,
    family: str | None = None,
    load: LoadOptions = LoadOptions(),
    **model_kwargs: Any,
) -> torch.nn.Module:
    """The `family`'s model in eval mode holding `weights` (local path, http(s)/file URL, `timm:<name>`, or None
    for random); `family` is an import path (dinoloc.backbones.families), None = the timm ViT family.

    The model carries `dinoloc_info = {weights, weights_sha256, checkpoint_epoch, random_init, model}`, `model`
    being what the model says about itself (family, embed_dim, patch_size, in_chans, any_channels).
    """
    checkpoint_key, weights_sha256, cache_dir = load.checkpoint_key, load.weights_sha256, load.cache_dir
    allow_random, random_seed = load.allow_random, load.random_seed
    fam = load_family(family)
    sha256 = check_sha256(weights_sha256)
    weights = None if weights is None or str(weights) == "" else str(weights)
    info: dict[str, Any] = {"weights": weights, "weights_sha256": None, "checkpoint_epoch": None, "random_init": False}
    if weights is None and not getattr(fam, "NEEDS_WEIGHTS", True):
        model = fam.create(arch, in_chans, img_size, **model_kwargs)  # e.g. hand-crafted features: nothing to load
    elif weights is None:
        if not allow_random:
            raise DinolocError(
                f"no weights for backbone.arch={arch}: set backbone.weights=<path, URL or timm:name>, or "
                "allow_random_weights=true to embed with a randomly initialised model"
            )
        # Seeded, so "random" names ONE model in cache keys: a resumed extraction continues with the same weights.
        seed = RANDOM_INIT_SEED if random_seed is None else int(random_seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = fam.create(arch, in_chans, img_size, **model_kwargs)
        info["random_init"] = True
        info["random_seed"] = seed
    elif weights.startswith(TIMM_PREFIX):
        if not callable(getattr(fam, "from_timm", None)):
            raise DinolocError(f"backbone.family={family} cannot load timm names; point backbone.weights at a file")
        model = fam.from_timm(weights[len(TIMM_PREFIX):], arch, in_chans, img_size, model_kwargs)
    else:
        path = fetch_weights(weights, cache_dir, sha256) if is_url(weights) else local_weights(weights, sha256)
        obj = read_checkpoint(path)
        source = str(path) if str(path) == weights else f"{path} (backbone.weights={weights})"
        state = fam.state_from_checkpoint(obj, checkpoint_key, source)
        make = getattr(fam, "create_for_checkpoint", None)
        with torch.random.fork_rng(devices=[]):  # every value is overwritten; the draw must not move the global RNG
            model = (make(state, arch, in_chans, img_size, **model_kwargs) if callable(make)
                     else fam.create(arch, in_chans, img_size, **model_kwargs))
        getattr(fam, "load", load_strict)(model, state, source)
        info["weights_sha256"] = sha256_of(path)
        info["checkpoint_epoch"] = checkpoint_epoch(obj)
        info["checkpoint"] = checkpoint_facts(obj, state)
    finalize = getattr(fam, "finalize", None)
    if callable(finalize):
        model = finalize(model)
    model.eval()
    info["model"] = {"family": family_label(family), **describe_model(model)}
    model.dinoloc_info = info
    return model


def timm_pretrained(
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
