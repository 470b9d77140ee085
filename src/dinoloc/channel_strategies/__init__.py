"""Channel strategies: one module each, found by name (`strategy.name`: a module of this package, or an import
path for a lab's own). How an image's channels become a backbone's input (see dinoloc.strategies).

A strategy module defines:
- `check(ctx: Channels) -> None`: refuse a pair that cannot work, before any image is read (`CannotRun` when
  the backbone cannot run this strategy at all, so a sweep skips the job; DinolocError for a fixable value);
- `apply(x, ctx) -> (x, fed)`: (B, n_source, H, W) -> the model's input and the channel names it carries
  (rows b * views + v when the strategy makes several views per image);
- `views(ctx) -> int`: forward passes per image (their embeddings are concatenated in view order);
- `approach(ctx) -> str`: what happened, for the report's approach column;
- `USES_CHANNEL_MAP: bool`: reads backbone.channel_map (part of the cache key only then);
- `READS_ALL_CHANNELS: bool`: a folder dataset's every channel is read (else only the mapped ones);
- `ORDER: int`, `LABEL: str`, `COLOUR: str`: the report's row order and figure legend.
Optional: `after_normalize(x, ctx, empty_channels) -> x`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from dinoloc.io import DinolocError
from dinoloc.plugins import find_module, known_modules


class CannotRun(DinolocError):
    """This backbone cannot run under this strategy at all (not a fixable value): a sweep skips such a job,
    listed before its first job, instead of refusing the whole sweep."""


@dataclass(frozen=True)
class Channels:
    """What a strategy sees: the backbone's channels (and whether it takes any count), the data's."""

    backbone: tuple[str, ...]
    channel_map: dict[str, str] | None
    source: tuple[str, ...]
    any_channels: bool = False
    named_channels: bool = False  # an any-channel model that knows its channels by name (ChannelViT)


def known() -> list[str]:
    """This package's strategies, in their report order."""
    return known_modules(__name__, __path__)


def strategy_module(name: str) -> ModuleType:
    """The module of strategy `name`: dinoloc.channel_strategies.<name>, or a module named `name` (e.g. a lab's own)."""
    return find_module(__name__, name, lambda: f"strategy={name!r} is unknown; use one of {', '.join(known())} or an "
                       "import path to your own strategy module")
