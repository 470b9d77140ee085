"""What pretraining reads: the allowed images (never the test split), their reader, and the multi-crop loader.

Two sources (pretrain.source): `opencell` = the manifest's images on the 90% side of the split, read as
(protein, nucleus); `folder` = a folder of multi-channel TIFFs whose channels.json names the channel order.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dinoloc.device import Dist
from dinoloc.io import DinolocError
from dinoloc.preprocess import scale_intensity
from dinoloc.pretrain.augment import MultiCropAugment, sample_generator

PRETRAIN_SPLITS = ("train", "unlabeled")  # the 90% side of the split; "test" never reaches pretraining
OPENCELL_CHANNELS = ["protein", "nucleus"]  # what dinoloc.data.opencell.read_image returns


@dataclass(frozen=True)
class PretrainImages:
    """The images one run trains on: (image_id, path) pairs, how to read one, and their channel order."""

    images: list[tuple[str, str]]
    read_fn: Callable[[str], np.ndarray]
    channels: list[str]


def select_pretrain_images(split_df: pd.DataFrame) -> list[str]:
    """Image ids allowed in pretraining: the 90% side of the split (train and unlabeled), never test."""
    missing = [c for c in ("image_id", "split") if c not in split_df.columns]
    if missing:
        raise DinolocError(f"split table lacks column(s) {missing}; rebuild it with dinoloc-data")
    known = set(PRETRAIN_SPLITS) | {"test"}
    odd = sorted(set(split_df["split"].astype(str)) - known)
    if odd:
        raise DinolocError(f"split table has unknown split value(s) {odd}; expected {sorted(known)}. Rebuild it")
    keep = split_df["split"].isin(PRETRAIN_SPLITS)
    return [str(i) for i in split_df.loc[keep, "image_id"]]


def check_source(source: str, image_dir: str | None, channels: Sequence[str], backbone: str) -> None:
    """What can be checked before reading any data: a known source that fits the backbone's channels."""
    if source == "opencell":
        if list(channels) != OPENCELL_CHANNELS:
            raise DinolocError(f"pretrain.source=opencell needs a 2-channel [protein, nucleus] backbone, not {backbone}")
    elif source == "folder":
        if not image_dir:
            raise DinolocError("pretrain.source=folder needs pretrain.image_dir: the folder of TIFFs to train on")
    else:
        raise DinolocError(f"pretrain.source={source!r}: use opencell or folder")


def opencell_images(manifest: pd.DataFrame, split: pd.DataFrame, data_root: str | os.PathLike) -> PretrainImages:
    """The manifest's images on the 90% side of the split (paths relative to data_root)."""
    from dinoloc.data.opencell import read_image

    allowed = set(select_pretrain_images(split))
    m = manifest[manifest["image_id"].isin(allowed)]
    root = Path(data_root)
    images = [(str(i), str(root / p)) for i, p in zip(m["image_id"], m["path"], strict=True)]
    return PretrainImages(images, read_image, list(OPENCELL_CHANNELS))


def folder_images(image_dir: str | os.PathLike, channels: Sequence[str], backbone: str) -> PretrainImages:
    """Every TIFF of the folder; its channels.json must list the backbone's channels in the same order."""
    from dinoloc.data.folders import list_images, read_channels, read_multichannel

    folder = Path(image_dir)
    found = read_channels(folder)
    if list(found) != list(channels):
        raise DinolocError(f"{folder}/channels.json lists {found} but backbone={backbone} expects {list(channels)}")
    images = [(p.stem, str(p)) for p in list_images(folder)]
    return PretrainImages(images, functools.partial(read_multichannel, n_channels=len(found)), list(found))


class PretrainDataset(Dataset):
    """Reads one image, scales its intensity per image (as extraction does), returns its multi-crop views.

    Sample `index` in epoch `epoch` is augmented with a generator seeded from (seed, epoch, index): the same
    crops whichever worker or process draws it, and after a resume. Set `.epoch` before each epoch.
    """

    def __init__(
        self,
        images: Sequence[tuple[str, str]],
        read_fn: Callable[[str], Any],
        n_channels: int,
        intensity: str,
        augment: MultiCropAugment,
        seed: int,
    ) -> None:
        self.images = list(images)
        self.read_fn = read_fn
        self.n_channels = n_channels
        self.intensity = intensity
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        image_id, path = self.images[index]
        x = torch.as_tensor(np.asarray(self.read_fn(path)), dtype=torch.float32)
        if x.ndim != 3 or x.shape[0] != self.n_channels:
            raise DinolocError(
                f"{path} (image {image_id}): read as shape {tuple(x.shape)}, expected ({self.n_channels}, H, W) "
                "in the backbone's channel order; check backbone.channels / in_chans and the data"
            )
        if not torch.isfinite(x).all():
            raise DinolocError(f"{path} (image {image_id}): contains NaN or inf values; fix or drop the image")
        x = scale_intensity(x[None], self.intensity)[0]
        return self.augment(x, sample_generator(self.seed, self.epoch, index))


def build_loader(
    dataset: PretrainDataset, batch_size: int, num_workers: int, seed: int, d: Dist
) -> tuple[DataLoader, DistributedSampler]:
    """One code path for 1 and N processes: the sampler shuffles with seed + epoch and drops the ragged tail."""
    sampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=d.device.type == "cuda", drop_last=True)
    return loader, sampler
