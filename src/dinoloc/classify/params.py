"""Every classifier head's parameters from its YAML (configs/classifier/*.yaml, the only place the values live):
`ClassifierParams` for the trained heads (mlp, linear), `KNNParams` for the k-NN probe. Each key's rule is
declared on its field (dinoloc.rules); `params_from_config` builds the head's params from the config node."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from dinoloc.heads import head_module
from dinoloc.results import DEFAULT_HEAD
from dinoloc.rules import Checked, key

RESAMPLE_CHOICES = ("rarest_label", "none")
SAMPLER_CHOICES = ("rarest_label", "class_uniform")
LR_SCALING_CHOICES = ("none", "linear")
SCHEDULE_STEP_CHOICES = ("epoch", "step")
SCHEDULER_CHOICES = ("cosine", "none")
LOSS_CHOICES = ("bce_with_logits",)
# Keys of the trained heads (configs/classifier/mlp.yaml) that mean nothing to the k-NN.
_TRAINING_KEYS = ("hidden", "dropout", "epochs", "batch_size", "lr", "weight_decay", "betas", "scheduler", "loss",
                  "resample", "unlabeled_weight", "lr_scaling", "schedule_step", "sampler", "n_seeds")


@dataclass(frozen=True)
class ClassifierParams(Checked):
    """The classifier settings; values come from configs/classifier/mlp.yaml (the only place they live)."""

    SECTION: ClassVar[str] = "classifier"
    WHERE: ClassVar[str] = "configs/classifier/mlp.yaml"
    IGNORED: ClassVar[tuple[str, ...]] = ("name",)

    hidden: tuple[int, ...] = key(ge=1)  # layer widths, e.g. [512, 256]; [] = the linear head
    dropout: float = key(ge=0, lt=1)
    epochs: int = key(ge=1)
    batch_size: int = key(ge=1)
    lr: float = key(gt=0)
    weight_decay: float = key(ge=0)
    betas: tuple[float, float] = key(ge=0, lt=1)
    scheduler: str = key(choices=SCHEDULER_CHOICES)
    loss: str = key(choices=LOSS_CHOICES)
    threshold: float = key(gt=0, lt=1)
    resample: str = key(choices=RESAMPLE_CHOICES)
    unlabeled_weight: float = key(ge=0)
    standardize: bool = key()
    seed: int = key(ge=0)
    lr_scaling: str = key(choices=LR_SCALING_CHOICES)
    schedule_step: str = key(choices=SCHEDULE_STEP_CHOICES)
    sampler: str = key(choices=SAMPLER_CHOICES)
    n_seeds: int = key(ge=1)  # CV repeats with seeds seed, seed+1, ... (cross_validate_seeds); the paper: 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (lists, not tuples)."""
        d = dataclasses.asdict(self)
        d["hidden"], d["betas"] = list(self.hidden), list(self.betas)
        return d

    def effective_lr(self, world_size: int = 1) -> float:
        """The learning rate the optimizer uses: `lr`, or with lr_scaling=linear Dino4Cells' linear scaling
        rule lr x batch_size x world_size / 256 (`utils/classification_utils.py` get_optimizer). dinoloc trains
        the classifier in one process, so world_size is 1 (a batch of 512 gives 2 x lr)."""
        if self.lr_scaling == "linear":
            return self.lr * self.batch_size * world_size / 256.0
        return self.lr

    @property
    def effective_sampler(self) -> str:
        """How each epoch is drawn: `none` (every sample once) or the balanced sampler's name."""
        return "none" if self.resample == "none" else self.sampler


@dataclass(frozen=True)
class KNNParams(Checked):
    """configs/classifier/knn.yaml (values from the official DINO eval_knn.py unless noted). The MLP's training
    keys are ignored (knn.yaml inherits them so that one sweep, e.g. the demo's batch size, can set them for
    every head)."""

    HEAD: ClassVar[str] = "knn"  # its head module (dinoloc.heads.knn), for callers that pass only the params
    SECTION: ClassVar[str] = "classifier"
    WHERE: ClassVar[str] = "configs/classifier/knn.yaml"
    IGNORED: ClassVar[tuple[str, ...]] = ("name", *_TRAINING_KEYS)

    k: int = key(ge=1)
    temperature: float = key(gt=0)
    threshold: float = key(gt=0, lt=1)
    standardize: bool = key()
    seed: int = key(default=0)  # unused (k-NN is deterministic); kept so every head records a seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ConstantParams(Checked):
    """configs/classifier/constant.yaml: the trivial reference (dinoloc.classify.constant). It reads no feature,
    so only the threshold (what its 0/1 outputs are compared with, as every head's) and a seed are kept. Every
    other head's keys are ignored: a probe sweep (classifier=mlp,knn,linear) may compose the trivial row with any
    head's YAML underneath (configs/row/trivial*.yaml set name=constant)."""

    HEAD: ClassVar[str] = "constant"  # its head module (dinoloc.heads.constant)
    SECTION: ClassVar[str] = "classifier"
    WHERE: ClassVar[str] = "configs/classifier/constant.yaml"
    IGNORED: ClassVar[tuple[str, ...]] = ("name", "standardize", "k", "temperature", *_TRAINING_KEYS)
    standardize: ClassVar[bool] = False  # no features are used: nothing to standardise (the YAML's value is ignored)

    threshold: float = key(gt=0, lt=1)
    seed: int = key(default=0)  # unused (deterministic); kept so every head records a seed

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "standardize": self.standardize}


def head_name(classifier_cfg: Mapping[str, Any]) -> str:
    """The head a classifier config describes (its `name`, a module of dinoloc.heads; `mlp` when absent)."""
    name = str(classifier_cfg.get("name") or DEFAULT_HEAD)
    head_module(name)  # an unknown head: one error naming the known ones
    return name


def params_from_config(classifier_cfg: Mapping[str, Any]) -> Any:
    """Validated parameters of any head, by its module (dinoloc.heads): `KNNParams` for knn, `ClassifierParams`
    for mlp and linear, `ConstantParams` for constant."""
    return head_module(head_name(classifier_cfg)).params(classifier_cfg)
