"""The one interface every dataset reader implements, and the registry that finds a reader by name.

A reader is a module `dinoloc.data.<name>` with a module-level `READER` object (a `Reader` subclass);
`data.reader=<name>` in a YAML under configs/data/ selects it. Adding a dataset = that module plus that YAML:
nothing else names readers. What every reader answers:

- `manifest(spec)`: one row per image (image_id, path, target = the group that never crosses splits, labeled,
  one 0/1 column per class; `attrs["classes"]` the class list). `path` is relative to data.root; an image stored
  as one file per channel lists its files in channel order separated by `;` (`FILE_SEP`).
- `channels(spec)`: the channel names of what `read_fn` returns, in order;
- `read_fn(spec, keep)`: reads one manifest `path` (resolved by `item`) as float32 (C, H, W) in that order;
- `source(spec, ...)`: how the channels enter a backbone under a strategy (a `Source`; by name: data.channel_roles).
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dinoloc.io import DinolocError

if TYPE_CHECKING:
    from dinoloc.data.prepare import DataSpec

FILE_SEP = ";"  # a one-file-per-channel image's files in the manifest's `path`, in channel order


@dataclass(frozen=True)
class Source:
    """How a dataset's images enter a backbone under a strategy (what `Reader.source` answers)."""

    read_fn: Callable[[Any], np.ndarray]  # one manifest item (`Reader.item`) -> float32 (C, H, W)
    source_channels: tuple[str, ...]      # the names the strategy sees, in read_fn's channel order
    channel_map: dict[str, str]           # data channel -> backbone channel (strategy=mapping)
    fields: dict[str, Any]                # the reader's cache-key fields ({} for OpenCell: its keys stay as they were)
    left_out: tuple[str, ...] = ()        # data channels strategy=mapping has no place for (not read)


class Reader:
    """The defaults suit a reader whose channels have names (data.channels, renamed by data.channel_roles)."""

    name: str = ""
    root_help: str = "point data.root at your image folder"
    # the reader-specific data keys it reads (dinoloc.data.prepare.READER_KEYS); the others must stay unset
    KEYS: tuple[str, ...] = ("channels", "channel_roles", "classes")

    # ---- the dataset
    def check_root(self, spec: DataSpec) -> None:
        if not spec.synthetic and not Path(spec.root).is_dir():
            raise DinolocError(f"data.root={spec.root} does not exist; {self.root_help}")

    def manifest(self, spec: DataSpec) -> pd.DataFrame:
        raise NotImplementedError

    def channels(self, spec: DataSpec) -> list[str]:
        return [str(c) for c in spec.channels or ()]

    def classes(self, spec: DataSpec) -> list[str] | None:
        return None if spec.classes is None else [str(c) for c in spec.classes]

    def nucleus_channel(self, spec: DataSpec, roles: Mapping[str, str | None] | None = None) -> int:
        """The index (in `channels`) of the nucleus channel, for cell segmentation: the channel whose role is
        `nucleus` (data.channel_roles), else one named like DNA / nucleus / Hoechst / DAPI."""
        from dinoloc.data.folder import channel_roles

        chans = self.channels(spec)
        r = channel_roles(chans, roles)
        if "nucleus" in r:
            return r.index("nucleus")
        for i, c in enumerate(chans):
            if c.lower() in ("dna", "nucleus", "nuclei", "hoechst", "dapi"):
                return i
        raise DinolocError(
            f"data.unit=cell segments the nucleus channel, but none of data.channels={chans} is one; give it the "
            "role nucleus (data.channel_roles={<name>: nucleus}) or set data.masks to a masks column"
        )

    # ---- the pixels
    def item(self, root: str | os.PathLike, rel: str) -> Any:
        """What `read_fn` receives for one manifest `path`: one file, or the tuple of a site's channel files."""
        parts = split_files(rel)
        return Path(root) / parts[0] if len(parts) == 1 else tuple(Path(root) / p for p in parts)

    def read_fn(self, spec: DataSpec, keep: Sequence[int] | None = None) -> Callable[[Any], np.ndarray]:
        raise NotImplementedError

    def source(self, spec: DataSpec, roles: Mapping[str, str | None] | None, backbone_channels: Sequence[str],
               channel_map: Mapping[str, str], strategy: str) -> Source:
        """The data channels renamed by data.channel_roles (`roles`); mapping reads only the placed ones."""
        from dinoloc.channel_strategies import strategy_module
        from dinoloc.data.folder import channel_roles, mapping_plan

        channels = self.channels(spec)
        r = channel_roles(channels, roles)
        if not strategy_module(strategy).READS_ALL_CHANNELS:  # mapping reads only the channels it places
            keep, src, cmap = mapping_plan(channels, r, list(backbone_channels), dict(channel_map))
        else:  # every channel; a channel left out of mapping (role null) keeps its own name here
            keep, src, cmap = None, [x if x is not None else c for c, x in zip(channels, r, strict=True)], dict(channel_map)
        return Source(read_fn=self.read_fn(spec, keep), source_channels=tuple(src), channel_map=cmap,
                      fields={"data_channels": channels, "source_channels": list(src)},
                      left_out=tuple(c for i, c in enumerate(channels) if keep is not None and i not in keep))

    def display_pair(self, root: str | os.PathLike, rel: str, channels: Sequence[str],
                     roles: Mapping[str, str | None] | None = None) -> np.ndarray:
        """(2, H, W) = the channels shown as protein and nucleus in Figure 2: those whose role is protein /
        nucleus, else the last and the first channel. `channels`: result.json's data.channels."""
        from dinoloc.data.folder import channel_roles

        image = self.read_names(list(channels))(self.item(root, rel))
        r = channel_roles(channels, roles)
        protein = r.index("protein") if "protein" in r else len(channels) - 1
        nucleus = r.index("nucleus") if "nucleus" in r else 0
        return image[[protein, nucleus]]

    def read_names(self, channels: list[str]) -> Callable[[Any], np.ndarray]:
        """A reader of one image's `channels` (by name) without a spec (the report's figures)."""
        raise NotImplementedError


def split_files(rel: str) -> list[str]:
    return [p for p in str(rel).split(FILE_SEP) if p]


def join_files(parts: Sequence[str]) -> str:
    bad = [p for p in parts if FILE_SEP in p]
    if bad:
        raise DinolocError(f"file name {bad[0]!r} holds {FILE_SEP!r}, which separates a site's channel files; "
                           "rename the file")
    return FILE_SEP.join(parts)


def _is_reader_module(name: str) -> bool:
    return not name.startswith("_")  # a module without a READER is no reader (found by `available`)


@functools.cache
def available() -> tuple[str, ...]:
    """The names of the modules under dinoloc.data that define a READER."""
    import dinoloc.data as pkg

    names = []
    for mod in pkgutil.iter_modules(pkg.__path__):
        if _is_reader_module(mod.name) and isinstance(
                getattr(importlib.import_module(f"dinoloc.data.{mod.name}"), "READER", None), Reader):
            names.append(mod.name)
    return tuple(sorted(names))


def get_reader(name: str) -> Reader:
    """The reader registered as `name` (the module dinoloc.data.<name>'s READER)."""
    name = str(name)
    reader = None
    if name.isidentifier() and _is_reader_module(name):
        try:
            reader = getattr(importlib.import_module(f"dinoloc.data.{name}"), "READER", None)
        except ModuleNotFoundError:
            reader = None
    if not isinstance(reader, Reader):
        raise DinolocError(f"data.reader={name!r} is unknown; use one of {', '.join(available())} "
                           "(a new reader is a module dinoloc/data/<name>.py with a READER object)")
    return reader
