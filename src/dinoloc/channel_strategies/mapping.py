"""mapping: each data channel goes into the backbone channel `backbone.channel_map` names (a folder's channels by
their role's name); the other backbone channels are empty (the paper: protein -> R, nucleus -> G, B = 0)."""

from __future__ import annotations

import torch

from dinoloc.channel_strategies import Channels
from dinoloc.io import DinolocError

USES_CHANNEL_MAP = True
READS_ALL_CHANNELS = False
ORDER, LABEL, COLOUR = 0, "channel mapping", "#0072B2"  # Okabe-Ito blue


def check(ctx: Channels) -> None:
    backbone, source = list(ctx.backbone), list(ctx.source)
    if not ctx.channel_map:
        raise DinolocError(
            "strategy=mapping needs backbone.channel_map (source channel -> backbone channel), "
            f"e.g. {{protein: {backbone[0]}, ...}}; it is empty"
        )
    channel_map = dict(ctx.channel_map)
    unknown = sorted(set(channel_map) - set(source))
    unmapped = [c for c in source if c not in channel_map]
    bad_targets = {s: t for s, t in channel_map.items() if t not in backbone}
    if unknown or unmapped or bad_targets:
        parts = []
        if unmapped:
            parts.append(f"source channels not mapped: {unmapped}")
        if unknown:
            parts.append(f"unknown source channels: {unknown} (the image has {source})")
        if bad_targets:
            parts.append(f"targets not among backbone.channels={backbone}: {bad_targets}")
        raise DinolocError(f"backbone.channel_map={channel_map} is invalid for strategy=mapping: " + "; ".join(parts))
    targets = [channel_map[c] for c in source]
    if len(set(targets)) != len(targets):
        raise DinolocError(f"backbone.channel_map={channel_map} maps two source channels onto the same backbone channel")


def apply(x: torch.Tensor, ctx: Channels) -> tuple[torch.Tensor, list[str]]:
    b, _, h, w = x.shape
    out = x.new_zeros(b, len(ctx.backbone), h, w)
    out[:, [list(ctx.backbone).index(ctx.channel_map[name]) for name in ctx.source]] = x
    return out, list(ctx.backbone)


def after_normalize(x: torch.Tensor, ctx: Channels, empty_channels: str) -> torch.Tensor:
    """empty_channels=zero_after_norm: the unmapped channels are 0 in the model input (not 0 before the fixed
    normalisation); configs/strategy/mapping.yaml says why both exist."""
    if empty_channels == "zero_after_norm":
        mapped = {ctx.channel_map[c] for c in ctx.source}
        x[:, [i for i, name in enumerate(ctx.backbone) if name not in mapped]] = 0.0
    return x


def views(ctx: Channels) -> int:
    return 1


def approach(ctx: Channels) -> str:
    return "mapping"
