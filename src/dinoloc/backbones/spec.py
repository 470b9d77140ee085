"""The `backbone` config group as a typed spec: each key's type, range and choices declared once, here, beside
its field. `rules.typed` builds the spec from a backbone YAML (one-line errors naming `backbone.<key>`) and
dinoloc.schema builds the group's Hydra schema from the same fields (a wrong type or an unknown key fails when the
config is composed). Plain Python: importing this imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from dinoloc.backbones.weights import display_name as _display
from dinoloc.rules import Checked, key, yaml_keys

SPATIAL_MODES = ("resize", "tile", "center_crop", "full")
INTENSITY_MODES = ("zscore", "minmax", "minmax_image", "instance_norm", "none")


@dataclass(frozen=True)
class PreprocessSpec(Checked):
    """backbone.preprocess: how an image becomes the backbone's input (dinoloc.preprocess, dinoloc.strategies)."""

    SECTION: ClassVar[str] = "backbone.preprocess"
    WHERE: ClassVar[str] = "configs/backbone/<name>.yaml (preprocess:)"

    img_size: int = key(gt=0)                   # the model's input side (px)
    spatial: str = key(choices=SPATIAL_MODES)   # resize | tile | center_crop | full
    crop_size: int = key(gt=0)                  # spatial=center_crop: the centred square (px) before the resize
    intensity: str = key(choices=INTENSITY_MODES)
    mean: tuple[float, ...] | None = key()      # per input channel, after `intensity` (null: none)
    std: tuple[float, ...] | None = key(gt=0)

    def as_dict(self) -> dict[str, Any]:
        """The YAML's block (result.json, the cache key's `preprocess`)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BackboneSpec(Checked):
    """One backbone as configured (a YAML of configs/backbone/), as plain values."""

    SECTION: ClassVar[str] = "backbone"
    WHERE: ClassVar[str] = "configs/backbone/<name>.yaml"
    # keys a backbone YAML holds for others: hpa.yaml's channel-order switch (interpolated into `channels`) and
    # SubCell's variant (read by its family's `configure` hook before this spec is built); schema.py types them
    IGNORED: ClassVar[tuple[str, ...]] = ("channel_orders", "channel_order", "variant", "variants")
    NOT_IN_YAML: ClassVar[tuple[str, ...]] = ("weights_default",)

    name: str
    arch: str
    model_kwargs: dict[str, Any]       # the family's / timm's model arguments (free-form)
    in_chans: int = key(ge=0)          # 0: the data's own channel count (backbone=classical)
    channels: tuple[str, ...] = key()  # its input channels by name, in order
    channel_map: dict[str, str] = key()  # OpenCell/data channel -> backbone channel (mapping)
    preprocess: PreprocessSpec = key()
    weights: str | None = key()        # path, URL, timm:<name>; "" or null = random init (stored as None)
    weights_sha256: str | None = key()
    checkpoint_key: str = key()
    dino_epochs: int | None = key(gt=0)  # the config's count; the checkpoint's own wins
    synthetic: bool = key()            # a synthetic demo stand-in
    # keys only some YAMLs have (null where absent)
    display_name: str | None = None    # the table's name; null: derived from `label` or the arch and the weights
    label: str | None = None
    family: str | None = None          # the family module's import path (dinoloc.backbones.families); None = timm ViT
    random_seed: int | None = None     # the seed of a random init (the floor's backbone.random_seed)
    weights_from: str | None = None    # how to get a missing weights file (named in the error)
    # not a YAML key: False when the user gave backbone.weights on the command line (dinoloc.config)
    weights_default: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.weights:
            object.__setattr__(self, "weights", None)

    @property
    def display(self) -> str:
        """The table's name for it."""
        return _display(self.display_name, self.label, self.arch, self.weights)


# The backbone YAML's keys and those only some YAMLs have.
YAML_KEYS = yaml_keys(BackboneSpec)
OPTIONAL_KEYS = tuple(f.name for f in dataclasses.fields(BackboneSpec) if f.default is None)
