"""The pretraining stage: a typed spec of plain values in, the checkpoint path out.

`dinoloc-pretrain` builds a PretrainSpec from the composed config and calls run_pretrain; scripts and tests call
run_pretrain (or train_dino, for images already in hand) directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dinoloc.data.prepare import DataSpec, ensure_synthetic, run_data
from dinoloc.io import DinolocError
from dinoloc.pretrain.data import PretrainImages, check_source, folder_images, opencell_images
from dinoloc.pretrain.params import PretrainParams
from dinoloc.pretrain.train import PretrainModel, train_dino


@dataclass(frozen=True)
class PretrainSpec:
    """Everything one pretraining run needs, as plain values (cfg.pretrain, cfg.backbone, paths, device)."""

    params: PretrainParams
    backbone: str  # its name, for messages
    arch: str
    model_kwargs: dict[str, Any]  # backbone.model_kwargs (timm create_model arguments)
    in_chans: int
    channels: tuple[str, ...]
    intensity: str  # backbone.preprocess.intensity
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str  # pretrain.source: opencell | folder
    image_dir: str | None  # pretrain.image_dir (source=folder)
    data_root: str | None  # data.root: the manifest's paths are relative to it (source=opencell)
    out_dir: str  # the checkpoint goes to out_dir/checkpoint.pth (the folder of backbone.weights)
    device: str  # auto | cpu | cuda[:n]
    synthetic: bool  # the data or the backbone is a synthetic stand-in: marked in what is printed
    data: DataSpec | None = None  # source=opencell: the dataset to build (run_data); synthetic: generated first

    def __post_init__(self) -> None:
        """What can be refused before any data is read (the recipe itself is checked by PretrainParams)."""
        check_source(self.source, self.image_dir, self.channels, self.backbone)
        if len(self.channels) != self.in_chans:
            raise DinolocError(f"backbone.channels {list(self.channels)} has {len(self.channels)} names, "
                               f"in_chans={self.in_chans} (backbone={self.backbone})")


def pretrain_images(spec: PretrainSpec, manifest: pd.DataFrame | None = None,
                    split: pd.DataFrame | None = None) -> PretrainImages:
    """The choice of pretraining data: source=opencell -> the manifest's train/unlabeled images (never test);
    source=folder -> every TIFF of pretrain.image_dir, whose channels.json must match the backbone."""
    if spec.source == "opencell":
        if manifest is None or split is None or spec.data_root is None:
            raise DinolocError("pretrain.source=opencell needs the manifest, the split and data.root "
                               "(dinoloc.data builds them: dinoloc-data)")
        return opencell_images(manifest, split, spec.data_root)
    return folder_images(str(spec.image_dir), spec.channels, spec.backbone)


def run_pretrain(spec: PretrainSpec, manifest: pd.DataFrame | None = None,
                 split: pd.DataFrame | None = None) -> Path:
    """DINO-pretrain spec's backbone on spec's data; returns the checkpoint (resumes an unfinished one).
    Without `manifest`/`split`, source=opencell builds them from `spec.data`; the synthetic demo's stand-in
    folders are generated first when missing."""
    if spec.data is not None and manifest is None:
        if spec.source == "opencell":
            manifest, split = run_data(spec.data)
        elif spec.data.synthetic:
            ensure_synthetic(spec.data)  # the generated stand-in folders (pretrain.image_dir)
    data = pretrain_images(spec, manifest, split)
    return train_dino(
        data.images, data.read_fn, data.channels, spec.out_dir,
        model=PretrainModel(arch=spec.arch, model_kwargs=spec.model_kwargs, in_chans=spec.in_chans,
                            intensity=spec.intensity, mean=spec.mean, std=spec.std),
        params=spec.params, device=spec.device,
    )
