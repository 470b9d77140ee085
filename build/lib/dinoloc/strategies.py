"""How a 2-channel OpenCell image (protein, nucleus) becomes the input of a backbone with other channels.

- mapping: each source channel goes into the backbone channel that `backbone.channel_map` names; the other
  backbone channels are zero (the paper: protein -> R, nucleus -> G, B = 0; HPA: microtubules, ER = 0).
- replication: each source channel alone, copied into every input channel, is one view; the views'
  embeddings are concatenated in source channel order (protein, nucleus) -> n_source x D features.
- native: the backbone was trained on exactly these channels; they are only reordered by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dinoloc.io import DinolocError
from dinoloc.ontology import OPENCELL_CHANNELS
from dinoloc.preprocess import center_crop, normalize, resize, scale_intensity, tile

STRATEGIES = ("mapping", "replication", "native")
SPATIAL_MODES = ("resize", "tile", "center_crop", "full")
EMPTY_CHANNEL_MODES = ("zero_before_norm", "zero_after_norm")


def check_strategy(
    strategy: str,
    backbone_channels: Sequence[str],
    channel_map: Mapping[str, str] | None,
    source_channels: Sequence[str] = OPENCELL_CHANNELS,
) -> None:
    """Refuse a strategy x backbone pair that cannot work, before any image is read."""
    backbone_channels, source_channels = list(backbone_channels), list(source_channels)
    if not backbone_channels:
        raise DinolocError("backbone.channels is empty; list the backbone's input channels by name")
    if len(set(backbone_channels)) != len(backbone_channels):
        raise DinolocError(f"backbone.channels={backbone_channels} repeats a name; channel names must be unique")
    if strategy == "mapping":
        if not channel_map:
            raise DinolocError(
                "strategy=mapping needs backbone.channel_map (source channel -> backbone channel), "
                f"e.g. {{protein: {backbone_channels[0]}, ...}}; it is empty"
            )
        channel_map = dict(channel_map)
        unknown = sorted(set(channel_map) - set(source_channels))
        unmapped = [c for c in source_channels if c not in channel_map]
        bad_targets = {s: t for s, t in channel_map.items() if t not in backbone_channels}
        if unknown or unmapped or bad_targets:
            parts = []
            if unmapped:
                parts.append(f"source channels not mapped: {unmapped}")
            if unknown:
                parts.append(f"unknown source channels: {unknown} (the image has {source_channels})")
            if bad_targets:
                parts.append(f"targets not among backbone.channels={backbone_channels}: {bad_targets}")
            raise DinolocError(f"backbone.channel_map={channel_map} is invalid for strategy=mapping: " + "; ".join(parts))
        targets = [channel_map[c] for c in source_channels]
        if len(set(targets)) != len(targets):
            raise DinolocError(
                f"backbone.channel_map={channel_map} maps two source channels onto the same backbone channel"
            )
    elif strategy == "native":
        if set(backbone_channels) != set(source_channels) or len(backbone_channels) != len(source_channels):
            raise DinolocError(
                f"strategy=native needs a backbone trained on exactly the image's channels {source_channels}, "
                f"but backbone.in_chans={len(backbone_channels)} with backbone.channels={backbone_channels}; "
                "use strategy=mapping or strategy=replication for this backbone"
            )
    elif strategy != "replication":
        raise DinolocError(f"strategy={strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")


def apply_strategy(
    x: torch.Tensor,
    strategy: str,
    backbone_channels: Sequence[str],
    channel_map: Mapping[str, str] | None,
    source_channels: Sequence[str] = OPENCELL_CHANNELS,
) -> torch.Tensor:
    """(B, n_source, H, W) in source channel order -> model input.

    mapping: (B, C, H, W), zeros outside the mapped channels. native: (B, C, H, W) reordered by name.
    replication: (B * n_source, C, H, W); row b * n_source + v is image b's source channel v copied into all
    C channels (views of one image are adjacent, in source channel order).
    """
    check_strategy(strategy, backbone_channels, channel_map, source_channels)
    backbone_channels, source_channels = list(backbone_channels), list(source_channels)
    if x.ndim != 4 or x.shape[1] != len(source_channels):
        raise DinolocError(
            f"apply_strategy: expected a (B, {len(source_channels)}, H, W) batch in channel order "
            f"{source_channels}, got {tuple(x.shape)}"
        )
    b, s, h, w = x.shape
    c = len(backbone_channels)
    if strategy == "mapping":
        out = x.new_zeros(b, c, h, w)
        dst = [backbone_channels.index(channel_map[name]) for name in source_channels]
        out[:, dst] = x
        return out
    if strategy == "replication":
        return x.reshape(b * s, 1, h, w).expand(b * s, c, h, w)
    return x[:, [source_channels.index(name) for name in backbone_channels]]  # native


def n_views(strategy: str, source_channels: Sequence[str] = OPENCELL_CHANNELS) -> int:
    """Forward passes per image: one per source channel for replication, else one."""
    return len(source_channels) if strategy == "replication" else 1


def combine_views(emb: torch.Tensor, strategy: str, n_source: int) -> torch.Tensor:
    """(B * n_views, D) in apply_strategy's row order -> (B, n_views * D): views concatenated in source order."""
    if strategy != "replication":
        return emb
    if emb.ndim != 2 or emb.shape[0] % n_source:
        raise DinolocError(
            f"combine_views: {tuple(emb.shape)} embeddings are not (B * {n_source}, D) rows for replication"
        )
    return emb.reshape(emb.shape[0] // n_source, n_source * emb.shape[1])


def embed_batch(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    strategy: str,
    backbone_channels: Sequence[str],
    channel_map: Mapping[str, str] | None,
    img_size: int,
    intensity: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    spatial: str = "resize",
    source_channels: Sequence[str] = OPENCELL_CHANNELS,
    empty_channels: str = "zero_before_norm",
    crop_size: int = 600,
) -> torch.Tensor:
    """Raw (B, n_source, H, W) batch -> (B, n_views * D) float32 embeddings; the whole per-batch path.

    resize: resize -> scale_intensity -> strategy -> normalize -> model.
    tile: scale_intensity on the whole image (so every tile shares the image's statistics) -> tiles ->
    strategy -> normalize -> model -> mean over the image's tiles.
    center_crop: the centred crop_size square -> resize -> as resize.
    full: scale_intensity -> strategy -> normalize -> model on the whole image, no resize (Dino4Cells' test
    transform); the backbone interpolates its position embeddings as official DINO does.
    Intensity scaling always acts on the source channels before the strategy. The channels that mapping
    leaves empty are zero before the fixed normalisation (empty_channels=zero_before_norm, so e.g. ImageNet's
    B becomes -0.406/0.225 = -1.80) or zero in the model input (zero_after_norm).
    """
    if x.ndim != 4:
        raise DinolocError(f"embed_batch: expected a (B, C, H, W) batch, got {tuple(x.shape)}")
    b = x.shape[0]
    if spatial == "resize":
        x, n_tiles = scale_intensity(resize(x, img_size), intensity), 1
    elif spatial == "tile":
        x, n_tiles = tile(scale_intensity(x, intensity), img_size)
    elif spatial == "center_crop":
        x, n_tiles = scale_intensity(resize(center_crop(x, crop_size), img_size), intensity), 1
    elif spatial == "full":
        x, n_tiles = scale_intensity(x, intensity), 1
    else:
        raise DinolocError(
            f"backbone.preprocess.spatial={spatial!r} is unknown; use one of {', '.join(SPATIAL_MODES)}"
        )
    if empty_channels not in EMPTY_CHANNEL_MODES:
        raise DinolocError(
            f"strategy.empty_channels={empty_channels!r} is unknown; use one of {', '.join(EMPTY_CHANNEL_MODES)}"
        )
    x = normalize(apply_strategy(x, strategy, backbone_channels, channel_map, source_channels), mean, std)
    if strategy == "mapping" and empty_channels == "zero_after_norm" and mean is not None:
        mapped = {channel_map[c] for c in source_channels}
        empty = [i for i, name in enumerate(backbone_channels) if name not in mapped]
        x[:, empty] = 0.0
    emb = model(x).float()  # rows ordered (image, tile, view)
    v = n_views(strategy, source_channels)
    emb = emb.reshape(b, n_tiles, v, -1).mean(dim=1).reshape(b * v, -1)
    return combine_views(emb, strategy, len(source_channels))
