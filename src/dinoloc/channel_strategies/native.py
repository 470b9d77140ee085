"""native: the image's own channels, no placing or copying.

- A backbone trained on exactly the data's channels (our OpenCell model; SubCell's bg variant on OpenCell) gets
  them reordered by name.
- A backbone that takes any channel count (OpenPhenom, ChannelViT, Cell-DINO: `ANY_CHANNELS` in its family)
  gets every data channel, with their names: a model with named channels (ChannelViT's channel embeddings)
  matches them by name, the others take them in order.
"""

from __future__ import annotations

import torch

from dinoloc.channel_strategies import CannotRun, Channels

USES_CHANNEL_MAP = False
READS_ALL_CHANNELS = True
ORDER, LABEL, COLOUR = 2, "native", "#009E73"  # Okabe-Ito bluish green


def check(ctx: Channels) -> None:
    if ctx.any_channels:
        unknown = [c for c in ctx.source if c not in ctx.backbone] if ctx.named_channels else []
        if unknown:
            raise CannotRun(
                f"strategy=native: this backbone knows its channels by name ({list(ctx.backbone)}) and has none "
                f"called {unknown}; name the data's channels by role (data.channel_roles) or use strategy=mapping"
            )
        return
    if set(ctx.backbone) != set(ctx.source) or len(ctx.backbone) != len(ctx.source):
        raise CannotRun(
            f"strategy=native needs a backbone trained on exactly the image's channels {list(ctx.source)}, "
            f"but backbone.in_chans={len(ctx.backbone)} with backbone.channels={list(ctx.backbone)}; "
            "use strategy=mapping or strategy=replication for this backbone"
        )


def apply(x: torch.Tensor, ctx: Channels) -> tuple[torch.Tensor, list[str]]:
    if ctx.any_channels:
        return x, list(ctx.source)
    return x[:, [list(ctx.source).index(name) for name in ctx.backbone]], list(ctx.backbone)


def views(ctx: Channels) -> int:
    return 1


def approach(ctx: Channels) -> str:
    """The paper's Table III writes a dash for the 2-channel model trained on the data's own channels."""
    if ctx.any_channels:
        return f"native (all {len(ctx.source)}: {', '.join(ctx.source)})"
    return "–"
