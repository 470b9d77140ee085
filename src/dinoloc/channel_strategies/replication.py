"""replication: each data channel alone, copied into every backbone channel, is one view; the views' embeddings
are concatenated in data channel order (protein, nucleus) -> n_source x D features."""

from __future__ import annotations

import torch

from dinoloc.channel_strategies import Channels

USES_CHANNEL_MAP = False
READS_ALL_CHANNELS = True
ORDER, LABEL, COLOUR = 1, "channel replication", "#E69F00"  # Okabe-Ito orange


def check(ctx: Channels) -> None:
    return None


def apply(x: torch.Tensor, ctx: Channels) -> tuple[torch.Tensor, list[str]]:
    b, s, h, w = x.shape
    c = len(ctx.backbone)
    return x.reshape(b * s, 1, h, w).expand(b * s, c, h, w), list(ctx.backbone)


def views(ctx: Channels) -> int:
    return len(ctx.source)


def approach(ctx: Channels) -> str:
    return "replication"
