"""Plain folders of unlabelled multi-channel TIFFs (the stand-in pretraining data).

A folder holds `*.tif` / `*.tiff` images, channel-first (C, H, W), and `channels.json`
{"channels": [...]} naming the channel order, which must match the backbone's `channels`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tifffile

from dinoloc.io import DinolocError

CHANNELS_FILE = "channels.json"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The folder's `*.tif` / `*.tiff` files (not hidden temporary files), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DinolocError(f"{folder}: image folder not found; set pretrain.image_dir (or run dinoloc-synth)")
    found = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in (".tif", ".tiff")
    )
    if not found:
        raise DinolocError(f"{folder}: no *.tif / *.tiff images; put the pretraining images there")
    return found


def read_channels(folder: str | os.PathLike) -> list[str]:
    """The channel names from `<folder>/channels.json` ({"channels": ["nucleus", "protein", ...]})."""
    path = Path(folder) / CHANNELS_FILE
    how = f'write {path} as {{"channels": ["name", ...]}} listing the images\' channels in order'
    if not path.is_file():
        raise DinolocError(f"{path}: not found; {how}")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as err:
        raise DinolocError(f"{path}: not readable JSON ({err}); {how}") from err
    channels = obj.get("channels") if isinstance(obj, dict) else None
    if (
        not isinstance(channels, list) or not channels
        or not all(isinstance(c, str) and c for c in channels) or len(set(channels)) != len(channels)
    ):
        raise DinolocError(f"{path}: key 'channels' must be a non-empty list of distinct names; {how}")
    return channels


def read_multichannel(path: str | os.PathLike, n_channels: int) -> np.ndarray:
    """Read one image as float32 (C, H, W); channel-last (H, W, C) files are transposed."""
    path = Path(path)
    if not path.is_file():
        raise DinolocError(f"{path}: image file not found; check the folder or regenerate it")
    try:
        arr = np.asarray(tifffile.imread(path))
    except Exception as err:  # tifffile raises several types on truncated or non-TIFF files
        raise DinolocError(
            f"{path}: unreadable TIFF ({type(err).__name__}: {err}); the file is empty, truncated or not a "
            "TIFF; regenerate or remove it"
        ) from err
    if arr.ndim == 2 and n_channels == 1:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[0] != n_channels and arr.shape[-1] == n_channels:
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim != 3 or arr.shape[0] != n_channels:
        raise DinolocError(
            f"{path}: image shape {arr.shape}, expected {n_channels} channels as (C, H, W) "
            f"(channels.json lists {n_channels}); fix the file or channels.json"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DinolocError(f"{path}: pixel type {arr.dtype} is not a real number type")
    return np.ascontiguousarray(arr, dtype=np.float32)
