"""How an image's channels (OpenCell: protein, nucleus) become the input of a backbone with other channels.
Each strategy is one module of dinoloc.channel_strategies, found by name; this module dispatches to it.

- mapping: each source channel goes into the backbone channel that `backbone.channel_map` names; the other
  backbone channels are zero (the paper: protein -> R, nucleus -> G, B = 0; HPA: microtubules, ER = 0).
- replication: each source channel alone, copied into every input channel, is one view; the views'
  embeddings are concatenated in source channel order (protein, nucleus) -> n_source x D features.
- native: the backbone was trained on exactly these channels (reordered by name), or takes any channel count
  (every data channel fed, with its name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from dinoloc.backbones.spec import SPATIAL_MODES, PreprocessSpec
from dinoloc.channel_strategies import Channels, strategy_module
from dinoloc.io import DinolocError
from dinoloc.ontology import OPENCELL_CHANNELS
from dinoloc.preprocess import center_crop, normalize, resize, scale_intensity, tile

EMPTY_CHANNEL_MODES = ("zero_before_norm", "zero_after_norm")


def _context(backbone_channels: Sequence[str], channel_map: Mapping[str, str] | None,
             source_channels: Sequence[str], any_channels: bool = False, named_channels: bool = False) -> Channels:
    return Channels(tuple(backbone_channels), dict(channel_map) if channel_map else None, tuple(source_channels),
                    any_channels, named_channels)


def check_strategy(
    strategy: str,
    backbone_channels: Sequence[str],
    channel_map: Mapping[str, str] | None,
    source_channels: Sequence[str] = OPENCELL_CHANNELS,
    *,
    any_channels: bool = False,
    named_channels: bool = False,
) -> None:
    """Refuse a strategy x backbone pair that cannot work, before any image is read."""
    backbone_channels = list(backbone_channels)
    if not backbone_channels:
        raise DinolocError("backbone.channels is empty; list the backbone's input channels by name")
    if len(set(backbone_channels)) != len(backbone_channels):
        raise DinolocError(f"backbone.channels={backbone_channels} repeats a name; channel names must be unique")
    strategy_module(strategy).check(_context(backbone_channels, channel_map, source_channels, any_channels,
                                             named_channels))


def apply_strategy_named(
    x: torch.Tensor,
    strategy: str,
    backbone_channels: Sequence[str],
    channel_map: Mapping[str, str] | None,
    source_channels: Sequence[str] = OPENCELL_CHANNELS,
    **traits: bool,
) -> tuple[torch.Tensor, list[str]]:
    """(B, n_source, H, W) in source channel order -> (model input, the names of its channels).

    mapping: (B, C, H, W), zeros outside the mapped channels. native: (B, C, H, W) reordered by name, or every
    data channel for a backbone that takes any count. replication: (B * n_source, C, H, W); row b * n_source + v
    is image b's source channel v copied into all C channels (views of one image are adjacent, in source order).
    `traits`: the family's any_channels / named_channels (check_strategy).
    """
    check_strategy(strategy, backbone_channels, channel_map, source_channels, **traits)
    source_channels = list(source_channels)
    if x.ndim != 4 or x.shape[1] != len(source_channels):
        raise DinolocError(
            f"apply_strategy_named: expected a (B, {len(source_channels)}, H, W) batch in channel order "
            f"{source_channels}, got {tuple(x.shape)}"
        )
    ctx = _context(backbone_channels, channel_map, source_channels, **traits)
    return strategy_module(strategy).apply(x, ctx)


def n_views(strategy: str, source_channels: Sequence[str] = OPENCELL_CHANNELS) -> int:
    """Forward passes per image (one per source channel for replication, else one)."""
    return int(strategy_module(strategy).views(_context((), None, source_channels)))


def combine_views(emb: torch.Tensor, strategy: str, n_source: int) -> torch.Tensor:
    """(B * n_views, D) in apply_strategy_named's row order -> (B, n_views * D): views concatenated in source order."""
    v = n_views(strategy, [str(i) for i in range(n_source)])
    if v == 1:
        return emb
    if emb.ndim != 2 or emb.shape[0] % v:
        raise DinolocError(f"combine_views: {tuple(emb.shape)} embeddings are not (B * {v}, D) rows for {strategy}")
    return emb.reshape(emb.shape[0] // v, v * emb.shape[1])


def approach(strategy: str, backbone_channels: Sequence[str], source_channels: Sequence[str], *,
             any_channels: bool = False, named_channels: bool = False) -> str:
    """What the strategy does with this backbone and data, for the report's approach column."""
    ctx = _context(backbone_channels, None, source_channels, any_channels, named_channels)
    return str(strategy_module(strategy).approach(ctx))


@dataclass(frozen=True)
class EmbedPlan:
    """What `embed_batch` does to a raw batch: the strategy with the backbone's and the data's channels, and the
    backbone's preprocessing (dinoloc.extract.stage builds it from the ExtractSpec and the data's Source)."""

    strategy: str
    backbone_channels: tuple[str, ...]
    channel_map: Mapping[str, str] | None
    source_channels: tuple[str, ...]
    preprocess: PreprocessSpec
    empty_channels: str = "zero_before_norm"  # strategy.empty_channels (mapping's unmapped channels)
    any_channels: bool = False                # the family's flags (dinoloc.backbones.families.channel_traits)
    named_channels: bool = False


def embed_batch(model: torch.nn.Module, x: torch.Tensor, plan: EmbedPlan) -> torch.Tensor:
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
    pp, strategy, channels = plan.preprocess, plan.strategy, list(plan.source_channels)
    if x.ndim != 4:
        raise DinolocError(f"embed_batch: expected a (B, C, H, W) batch, got {tuple(x.shape)}")
    b = x.shape[0]
    if pp.spatial == "resize":
        x, n_tiles = scale_intensity(resize(x, pp.img_size), pp.intensity), 1
    elif pp.spatial == "tile":
        x, n_tiles = tile(scale_intensity(x, pp.intensity), pp.img_size)
    elif pp.spatial == "center_crop":
        x, n_tiles = scale_intensity(resize(center_crop(x, pp.crop_size), pp.img_size), pp.intensity), 1
    elif pp.spatial == "full":
        x, n_tiles = scale_intensity(x, pp.intensity), 1
    else:
        raise DinolocError(
            f"backbone.preprocess.spatial={pp.spatial!r} is unknown; use one of {', '.join(SPATIAL_MODES)}"
        )
    if plan.empty_channels not in EMPTY_CHANNEL_MODES:
        raise DinolocError(
            f"strategy.empty_channels={plan.empty_channels!r} is unknown; use one of {', '.join(EMPTY_CHANNEL_MODES)}"
        )
    x, fed = apply_strategy_named(x, strategy, plan.backbone_channels, plan.channel_map, channels,
                                  any_channels=plan.any_channels, named_channels=plan.named_channels)
    x = normalize(x, pp.mean, pp.std)
    after = getattr(strategy_module(strategy), "after_normalize", None)
    if after is not None and pp.mean is not None:
        x = after(x, _context(plan.backbone_channels, plan.channel_map, channels, plan.any_channels,
                              plan.named_channels), plan.empty_channels)
    # rows ordered (image, tile, view); a model that takes any channel count is told which it gets
    emb = (model(x, channels=fed) if getattr(model, "any_channels", False) else model(x)).float()
    v = n_views(strategy, channels)
    emb = emb.reshape(b, n_tiles, v, -1).mean(dim=1).reshape(b * v, -1)
    return combine_views(emb, strategy, len(channels))
