"""The extraction stage: one typed spec in, the cache entry of every manifest image's embedding out.

The cache key is defined here (`cache_fields`): a hash of everything that changes the embeddings, never
batch size, workers or device.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from dinoloc.backbones.classical import FEATURES_VERSION as CLASSICAL_VERSION
from dinoloc.backbones.classical import check_settings, is_classical
from dinoloc.backbones.families import channel_traits, needs_weights
from dinoloc.backbones.spec import BackboneSpec, PreprocessSpec
from dinoloc.backbones.weights import TIMM_PREFIX, is_url
from dinoloc.channel_strategies import strategy_module
from dinoloc.data.prepare import DataSpec, check_root
from dinoloc.data.reader import Source, get_reader
from dinoloc.extract.cache import CacheEntry, cache_key, images_fingerprint
from dinoloc.io import DinolocError

if TYPE_CHECKING:
    from dinoloc.extract.engine import EngineSettings  # torch: imported where the engine runs
    from dinoloc.strategies import EmbedPlan

log = logging.getLogger("dinoloc")
EMPTY_CHANNELS_DEFAULT = "zero_before_norm"


@dataclass(frozen=True)
class ExtractSpec:
    """Embed `data`'s images with `backbone` under `strategy`; the cache lives under `cache_dir`."""

    data: DataSpec
    backbone: BackboneSpec
    strategy: str                    # a module of dinoloc.channel_strategies (mapping, replication, native)
    cache_dir: str
    weights_dir: str                 # downloaded weights
    device: str                      # auto | cpu | cuda...
    allow_random_weights: bool
    empty_channels: str              # mapping only: what the unmapped channels hold (configs/strategy/)
    # configs/extract/*.yaml (the one place their values live; none enters the cache key)
    batch_size: int
    num_workers: int
    chunk_size: int
    amp: bool


def source(spec: ExtractSpec) -> Source:
    """How the data's images enter the backbone under the strategy (the data reader's `source`)."""
    return get_reader(spec.data.reader).source(spec.data, spec.data.channel_roles, list(spec.backbone.channels),
                                               dict(spec.backbone.channel_map), spec.strategy)


def check(spec: ExtractSpec) -> None:
    """Refuse a bad extraction before any heavy work, naming the offending key: each value was checked when the
    spec was built; this checks how they fit together and what they point at."""
    if is_classical(spec.backbone.arch):
        _check_classical(spec)
    else:
        _check_network(spec)
    check_root(spec.data)
    problem = missing_weights(spec)
    if problem:
        raise DinolocError(problem)


def _check_classical(spec: ExtractSpec) -> None:
    """backbone=classical (no network) measures the data's own channels: only strategy=native fits."""
    bb = spec.backbone
    if spec.strategy != "native":
        raise DinolocError(f"backbone={bb.name} measures the image's own channels: use strategy=native "
                           f"(strategy={spec.strategy} places channels into a network's inputs)")
    check_settings(dict(bb.model_kwargs))


def _check_network(spec: ExtractSpec) -> None:
    """A network backbone's channels, strategy and weights."""
    from dinoloc.strategies import check_strategy  # torch: config checking without a network imports none

    bb = spec.backbone
    if len(bb.channels) != bb.in_chans:
        raise DinolocError(
            f"backbone.channels has {len(bb.channels)} names but backbone.in_chans={bb.in_chans} (backbone={bb.name})"
        )
    src = source(spec)  # a folder's channels by name (data.channel_roles); OpenCell's (protein, nucleus)
    check_strategy(spec.strategy, list(bb.channels), src.channel_map, list(src.source_channels),
                   **channel_traits(bb.family))
    if not bb.weights and not spec.allow_random_weights and needs_weights(bb.family):
        raise DinolocError(
            f"backbone={bb.name} has no weights (backbone.weights is empty); set backbone.weights=<path or URL> "
            "or allow_random_weights=true to embed with a randomly initialised model (marked in every output)"
        )


def missing_weights(spec: ExtractSpec) -> str | None:
    """A local weights file that does not exist, with the command (or download) that makes it; else None.
    URLs and timm names are fetched when the job starts, empty weights are the random baseline."""
    bb = spec.backbone
    weights = str(bb.weights or "")
    if not weights or weights.startswith(TIMM_PREFIX) or is_url(weights) or Path(weights).expanduser().is_file():
        return None
    how = bb.weights_from or "point backbone.weights at the checkpoint file, a URL or timm:<name>"
    if not spec.data.synthetic:
        how = how.replace("data.root=…", f"data.root={spec.data.root}")
    return f"backbone={bb.name}: weights file {weights} does not exist; to get it: {how}"


def cache_fields(spec: ExtractSpec, manifest: pd.DataFrame) -> dict[str, Any]:
    """Everything that determines the embeddings: the cache key is a hash of this."""
    from dinoloc.backbones.weights import weights_fingerprint

    bb, pp = spec.backbone, spec.backbone.preprocess
    src = source(spec)
    if is_classical(bb.arch):  # no weights: the features' code version stands in for them
        return {"arch": bb.arch, "features_version": CLASSICAL_VERSION, "model_kwargs": dict(bb.model_kwargs),
                "strategy": spec.strategy, "source_channels": list(src.source_channels), **src.fields,
                "preprocess": _preprocess_fields(pp),
                "images": images_fingerprint(manifest, spec.data.root)}
    return {
        "arch": bb.arch,
        "model_kwargs": dict(bb.model_kwargs),
        "in_chans": bb.in_chans,
        "channels": list(bb.channels),
        "weights": weights_fingerprint(bb.weights, cache_dir=spec.weights_dir, weights_sha256=bb.weights_sha256,
                                       random_seed=bb.random_seed),
        "checkpoint_key": bb.checkpoint_key,
        "strategy": spec.strategy,
        "channel_map": src.channel_map if strategy_module(spec.strategy).USES_CHANNEL_MAP else None,
        **({"family": bb.family} if bb.family else {}),  # only when set, so the timm ViTs' keys stay what they were
        **src.fields,  # a folder dataset's channels (nothing for OpenCell: its keys are unchanged)
        # only when not the default, so the default's cache keys stay what they were
        **({"empty_channels": ec} if (ec := _empty_channels(spec)) != EMPTY_CHANNELS_DEFAULT else {}),
        "preprocess": _preprocess_fields(pp),
        "images": images_fingerprint(manifest, spec.data.root),
        **(_cell_fields(spec) if spec.data.unit == "cell" else {}),  # image-level keys unchanged
    }


def _preprocess_fields(pp: PreprocessSpec) -> dict[str, Any]:
    """crop_size only acts under spatial=center_crop: elsewhere it stays out, so other keys do not move."""
    return {k: v for k, v in pp.as_dict().items() if k != "crop_size" or pp.spatial == "center_crop"}


def _cell_fields(spec: ExtractSpec) -> dict[str, Any]:
    from dinoloc.extract.cells import cell_fields

    return cell_fields(spec)


def key_of(spec: ExtractSpec, manifest: pd.DataFrame) -> str:
    return cache_key(cache_fields(spec, manifest))


def _empty_channels(spec: ExtractSpec) -> str:
    """What the strategy's empty channels hold: only a strategy that leaves channels empty reads it."""
    leaves_empty = hasattr(strategy_module(spec.strategy), "after_normalize")
    return spec.empty_channels if leaves_empty else EMPTY_CHANNELS_DEFAULT


def approach(spec: ExtractSpec) -> str:
    """The report's approach column: what the strategy did with this backbone and data."""
    from dinoloc.strategies import approach as strategy_approach

    src = source(spec)
    return strategy_approach(spec.strategy, list(spec.backbone.channels), list(src.source_channels),
                             **channel_traits(spec.backbone.family))


def run_extraction(spec: ExtractSpec, manifest: pd.DataFrame) -> CacheEntry:
    """Embed every manifest image with the spec's backbone x strategy, or hit the cache."""
    from dinoloc.backbones.build import LoadOptions, build_backbone
    from dinoloc.strategies import embed_batch

    bb, pp = spec.backbone, spec.backbone.preprocess
    fields = cache_fields(spec, manifest)
    meta: dict[str, Any] = {
        "backbone": bb.name, "backbone_display": bb.display, "weights_path": str(bb.weights or ""),
        "synthetic": bool(spec.data.synthetic or bb.synthetic), "data": spec.data.name, **fields,
        "approach": approach(spec),
    }
    if is_classical(bb.arch):
        return _run_classical(spec, manifest, meta, cache_key(fields))
    load = LoadOptions(checkpoint_key=bb.checkpoint_key, weights_sha256=bb.weights_sha256, cache_dir=spec.weights_dir,
                       allow_random=spec.allow_random_weights, random_seed=bb.random_seed)
    model_factory = functools.partial(build_backbone, bb.arch, bb.in_chans, bb.weights, pp.img_size, family=bb.family,
                                      load=load, **bb.model_kwargs)
    src = source(spec)
    if src.left_out:
        log.warning("strategy=mapping: data channel(s) %s have no place in backbone=%s and are left out",
                    list(src.left_out), bb.name)
    embed_fn = functools.partial(embed_batch, plan=embed_plan(spec, src))
    reader = get_reader(spec.data.reader)
    engine = functools.partial(
        _engine, model_factory=model_factory, embed_fn=embed_fn, spec=spec)
    if spec.data.unit == "cell":
        from dinoloc.extract.cells import extract_cells

        return extract_cells(spec, manifest, fields, meta | {"_read_fn": src.read_fn}, engine)
    return engine([str(i) for i in manifest["image_id"]], [reader.item(spec.data.root, p) for p in manifest["path"]],
                  src.read_fn, cache_key(fields), meta)


def embed_plan(spec: ExtractSpec, src: Source | None = None) -> EmbedPlan:
    """What embed_batch does to each batch: the spec's strategy and preprocessing on the data's Source."""
    from dinoloc.strategies import EmbedPlan

    bb, src = spec.backbone, src or source(spec)
    return EmbedPlan(strategy=spec.strategy, backbone_channels=bb.channels, channel_map=src.channel_map,
                     source_channels=src.source_channels, preprocess=bb.preprocess,
                     empty_channels=_empty_channels(spec), **channel_traits(bb.family))


def _engine(image_ids: list[str], items: list[Any], read_fn: Any, key: str, meta: dict[str, Any], *,
            model_factory: Any, embed_fn: Any, spec: ExtractSpec) -> CacheEntry:
    """The extraction engine with the stage's model, strategy and settings."""
    from dinoloc.device import resolve_device
    from dinoloc.extract.engine import extract

    return extract(image_ids=image_ids, paths=items, read_fn=read_fn, model_factory=model_factory, embed_fn=embed_fn,
                   cache_dir=spec.cache_dir, key=key, meta=meta,
                   settings=engine_settings(spec, device=resolve_device(spec.device), amp=spec.amp))


def engine_settings(spec: ExtractSpec, *, device: Any, amp: bool) -> EngineSettings:
    """The engine's EngineSettings from configs/extract/*.yaml (ExtractSpec) and the backbone's resize."""
    from dinoloc.extract.engine import EngineSettings

    pp = spec.backbone.preprocess
    return EngineSettings(batch_size=spec.batch_size, num_workers=spec.num_workers, chunk_size=spec.chunk_size,
                          device=device, amp=amp, resize_to=pp.img_size if pp.spatial == "resize" else None,
                          progress=True)


def _run_classical(spec: ExtractSpec, manifest: pd.DataFrame, meta: dict[str, Any], key: str) -> CacheEntry:
    """backbone=classical through the same engine (chunks, resume, lock, atomic cache): the 'model' measures."""
    from dinoloc.backbones.classical import ClassicalFeatures, classical_embed
    from dinoloc.extract.engine import extract

    bb, pp = spec.backbone, spec.backbone.preprocess
    if spec.data.unit != "image":
        raise DinolocError(f"backbone={bb.name} measures whole images; data.unit={spec.data.unit} is not offered "
                           "for it: run the classical row with data.unit=image")
    src = source(spec)
    reader = get_reader(spec.data.reader)
    return extract(
        image_ids=manifest["image_id"].tolist(),
        paths=[reader.item(spec.data.root, p) for p in manifest["path"]],
        read_fn=src.read_fn,
        model_factory=functools.partial(ClassicalFeatures, list(src.source_channels), **bb.model_kwargs),
        embed_fn=functools.partial(classical_embed, img_size=pp.img_size, intensity=pp.intensity,
                                   spatial=pp.spatial, crop_size=pp.crop_size),
        cache_dir=spec.cache_dir,
        key=key,
        meta=meta | {"classical": True},
        settings=engine_settings(spec, device="cpu", amp=False),  # measurements run in numpy
    )
