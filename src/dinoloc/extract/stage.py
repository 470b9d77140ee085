"""The extraction stage: one typed spec in, the cache entry of every manifest image's embedding out.

The cache key is defined here (`cache_fields`): a hash of everything that changes the embeddings, never
batch size, workers or device.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dinoloc.data.prepare import DataSpec
from dinoloc.extract.cache import CacheEntry, cache_key, images_fingerprint

log = logging.getLogger("dinoloc")
EMPTY_CHANNELS_DEFAULT = "zero_before_norm"


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone as configured (the `backbone` config group), as plain values."""

    name: str
    display: str                     # the table's name for it
    arch: str
    model_kwargs: dict[str, Any]
    in_chans: int
    channels: tuple[str, ...]        # its input channels by name, in order
    channel_map: dict[str, str]      # OpenCell/data channel -> backbone channel (mapping)
    preprocess: dict[str, Any]       # img_size, intensity, mean, std, spatial, crop_size
    weights: str | None              # path, URL, timm:<name>; None = random init
    weights_sha256: str | None = None
    checkpoint_key: str = "teacher"
    dino_epochs: int | None = None   # the config's count; the checkpoint's own wins
    synthetic: bool = False          # a synthetic demo stand-in
    weights_default: bool = True     # False when the user gave backbone.weights on the command line


@dataclass(frozen=True)
class ExtractSpec:
    """Embed `data`'s images with `backbone` under `strategy`; the cache lives under `cache_dir`."""

    data: DataSpec
    backbone: BackboneSpec
    strategy: str                    # mapping | replication | native
    cache_dir: str
    weights_dir: str                 # downloaded weights
    device: str                      # auto | cpu | cuda...
    allow_random_weights: bool
    empty_channels: str              # mapping only: what the unmapped channels hold (configs/strategy/)
    channel_roles: dict[str, str | None]  # a folder's channels' roles ({} for OpenCell)
    # configs/extract/*.yaml (the one place their values live; none enters the cache key)
    batch_size: int
    num_workers: int
    chunk_size: int
    amp: bool


def source(spec: ExtractSpec) -> dict[str, Any]:
    """How the data's images enter the backbone under the strategy (dinoloc.data.folder.source_setup)."""
    from dinoloc.data.folder import source_setup

    data = {"reader": spec.data.reader, "channels": list(spec.data.channels) or None,
            "channel_roles": dict(spec.channel_roles)}
    return source_setup(data, list(spec.backbone.channels), dict(spec.backbone.channel_map), spec.strategy)


def cache_fields(spec: ExtractSpec, manifest: pd.DataFrame) -> dict[str, Any]:
    """Everything that determines the embeddings: the cache key is a hash of this."""
    from dinoloc.backbones.weights import weights_fingerprint

    bb, pp = spec.backbone, spec.backbone.preprocess
    src = source(spec)
    return {
        "arch": bb.arch,
        "model_kwargs": dict(bb.model_kwargs),
        "in_chans": bb.in_chans,
        "channels": list(bb.channels),
        "weights": weights_fingerprint(bb.weights, cache_dir=spec.weights_dir, weights_sha256=bb.weights_sha256),
        "checkpoint_key": bb.checkpoint_key,
        "strategy": spec.strategy,
        "channel_map": src["channel_map"] if spec.strategy == "mapping" else None,
        **src["fields"],  # a folder dataset's channels (nothing for OpenCell: its keys are unchanged)
        # only when not the default, so the default's cache keys stay what they were
        **({"empty_channels": ec} if (ec := _empty_channels(spec)) != EMPTY_CHANNELS_DEFAULT else {}),
        # crop_size only acts under spatial=center_crop: elsewhere it stays out, so other keys do not move.
        "preprocess": {k: v for k, v in pp.items() if k != "crop_size" or pp.get("spatial") == "center_crop"},
        "images": images_fingerprint(manifest, spec.data.root),
    }


def key_of(spec: ExtractSpec, manifest: pd.DataFrame) -> str:
    return cache_key(cache_fields(spec, manifest))


def _empty_channels(spec: ExtractSpec) -> str:
    return spec.empty_channels if spec.strategy == "mapping" else EMPTY_CHANNELS_DEFAULT


def run_extraction(spec: ExtractSpec, manifest: pd.DataFrame) -> CacheEntry:
    """Embed every manifest image with the spec's backbone x strategy, or hit the cache."""
    from dinoloc.backbones.build import build_backbone
    from dinoloc.device import resolve_device
    from dinoloc.extract.engine import extract
    from dinoloc.strategies import embed_batch

    bb, pp = spec.backbone, spec.backbone.preprocess
    fields = cache_fields(spec, manifest)
    meta: dict[str, Any] = {
        "backbone": bb.name, "backbone_display": bb.display, "weights_path": str(bb.weights or ""),
        "synthetic": bool(spec.data.synthetic or bb.synthetic), "data": spec.data.name, **fields,
    }
    model_factory = functools.partial(
        build_backbone, bb.arch, bb.in_chans, bb.weights, bb.checkpoint_key, pp["img_size"],
        weights_sha256=bb.weights_sha256, cache_dir=spec.weights_dir, allow_random=spec.allow_random_weights,
        **bb.model_kwargs,
    )
    src = source(spec)
    if src["left_out"]:
        log.warning("strategy=mapping: data channel(s) %s have no place in backbone=%s and are left out",
                    src["left_out"], bb.name)
    embed_fn = functools.partial(
        embed_batch, strategy=spec.strategy, backbone_channels=list(bb.channels),
        channel_map=src["channel_map"], source_channels=src["source_channels"], img_size=pp["img_size"],
        intensity=pp["intensity"], mean=pp.get("mean"), std=pp.get("std"), spatial=pp["spatial"],
        empty_channels=_empty_channels(spec), crop_size=int(pp["crop_size"]),
    )
    root = Path(spec.data.root)
    return extract(
        image_ids=manifest["image_id"].tolist(),
        paths=[root / p for p in manifest["path"]],
        read_fn=src["read_fn"],
        model_factory=model_factory,
        embed_fn=embed_fn,
        cache_dir=spec.cache_dir,
        key=cache_key(fields),
        meta=meta,
        resize_to=pp["img_size"] if pp["spatial"] == "resize" else None,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        chunk_size=spec.chunk_size,
        device=resolve_device(spec.device),
        amp=spec.amp,
        progress=True,
    )
