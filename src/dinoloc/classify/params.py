"""Every classifier head's parameters, validated from its YAML (configs/classifier/*.yaml, the only place the
values live): `ClassifierParams` for the trained heads (mlp, linear), `KNNParams` for the k-NN probe."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from dinoloc.io import DinolocError
from dinoloc.results import DEFAULT_HEAD

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
class ClassifierParams:
    """The classifier settings; values come from configs/classifier/mlp.yaml (the only place they live)."""

    hidden: tuple[int, ...]
    dropout: float
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    scheduler: str
    loss: str
    threshold: float
    resample: str
    unlabeled_weight: float
    standardize: bool
    seed: int
    lr_scaling: str
    schedule_step: str
    sampler: str
    n_seeds: int  # CV repeats with seeds seed, seed+1, ... (cross_validate_seeds); the paper: 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierParams:
        """Validated params from the YAML's keys (`name` is allowed and ignored); errors name `classifier.<key>`."""
        d = {k: v for k, v in dict(d).items() if k != "name"}
        names = [f.name for f in dataclasses.fields(cls)]
        refuse_unknown_keys(d, names, "mlp.yaml")
        missing = [k for k in names if k not in d]  # no defaults in code: the YAML holds every value
        if missing:
            raise DinolocError(
                f"missing classifier key(s) {['classifier.' + k for k in missing]}; "
                "set them in configs/classifier/mlp.yaml or on the command line"
            )

        def bad(key: str, why: str) -> DinolocError:
            return DinolocError(f"classifier.{key}={d[key]!r}: {why}")

        def as_int(key: str) -> int:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise bad(key, "must be an integer")
            return int(v)

        def as_float(key: str) -> float:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise bad(key, "must be a number")
            if not math.isfinite(float(v)):
                raise bad(key, "must be finite")
            return float(v)

        out: dict[str, Any] = {}
        hidden = d["hidden"]
        if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
            raise bad("hidden", "must be a list of layer widths, e.g. [512, 256]")
        hidden = list(hidden)
        if not all(isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise bad("hidden", "every width must be an integer >= 1")
        out["hidden"] = tuple(int(h) for h in hidden)
        for key, lowest in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("n_seeds", 1)):
            out[key] = as_int(key)
            if out[key] < lowest:
                raise bad(key, f"must be >= {lowest}")
        out["lr"] = as_float("lr")
        if out["lr"] <= 0:
            raise bad("lr", "must be > 0")
        out["dropout"] = as_float("dropout")
        if not 0 <= out["dropout"] < 1:
            raise bad("dropout", "must satisfy 0 <= dropout < 1")
        out["weight_decay"] = as_float("weight_decay")
        if out["weight_decay"] < 0:
            raise bad("weight_decay", "must be >= 0")
        out["threshold"] = as_float("threshold")
        if not 0 < out["threshold"] < 1:
            raise bad("threshold", "must satisfy 0 < threshold < 1")
        out["unlabeled_weight"] = as_float("unlabeled_weight")
        if out["unlabeled_weight"] < 0:
            raise bad("unlabeled_weight", "must be >= 0")
        betas = d["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__iter__") or len(list(betas)) != 2:
            raise bad("betas", "must be two numbers, e.g. [0.9, 0.999]")
        betas = [float(b) for b in betas]
        if not all(0 <= b < 1 for b in betas):
            raise bad("betas", "each beta must satisfy 0 <= beta < 1")
        out["betas"] = (betas[0], betas[1])
        for key, choices in (("scheduler", SCHEDULER_CHOICES), ("loss", LOSS_CHOICES), ("resample", RESAMPLE_CHOICES),
                             ("lr_scaling", LR_SCALING_CHOICES), ("schedule_step", SCHEDULE_STEP_CHOICES),
                             ("sampler", SAMPLER_CHOICES)):
            if d[key] not in choices:
                raise bad(key, f"must be one of {list(choices)}")
            out[key] = str(d[key])
        if not isinstance(d["standardize"], (bool, np.bool_)):
            raise bad("standardize", "must be true or false")
        out["standardize"] = bool(d["standardize"])
        return cls(**out)

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


def refuse_unknown_keys(d: dict[str, Any], names: list[str], yaml_name: str, head_note: str = "") -> None:
    """A classifier key the head does not know is an error naming it (a typo must not fall back to a default)."""
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise DinolocError(
            f"unknown classifier key(s) {['classifier.' + k for k in unknown]}{head_note}; valid keys are {names} "
            f"(see configs/classifier/{yaml_name})"
        )


@dataclass(frozen=True)
class KNNParams:
    """configs/classifier/knn.yaml (values from the official DINO eval_knn.py unless noted)."""

    HEAD: ClassVar[str] = "knn"  # its head module (dinoloc.heads.knn), for callers that pass only the params

    k: int
    temperature: float
    threshold: float
    standardize: bool
    seed: int = 0  # unused (k-NN is deterministic); kept so every head records a seed

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KNNParams:
        """Validated params; the MLP's training keys are ignored (a sweep preset may set them for every head,
        e.g. the demo's batch size), any other unknown key is an error naming it."""
        d = {k: v for k, v in dict(d).items() if k != "name" and k not in _TRAINING_KEYS}
        refuse_unknown_keys(d, [f.name for f in dataclasses.fields(cls)], "knn.yaml", " for classifier=knn")
        missing = [k for k in ("k", "temperature", "threshold", "standardize") if k not in d]
        if missing:
            raise DinolocError(f"missing classifier key(s) {['classifier.' + k for k in missing]} for classifier=knn")
        k = d["k"]
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise DinolocError(f"classifier.k={k!r}: must be an integer >= 1")
        out: dict[str, Any] = {"k": int(k)}
        for key in ("temperature", "threshold"):
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise DinolocError(f"classifier.{key}={v!r}: must be a finite number")
            out[key] = float(v)
        if out["temperature"] <= 0:
            raise DinolocError(f"classifier.temperature={d['temperature']!r}: must be > 0")
        if not 0 < out["threshold"] < 1:
            raise DinolocError(f"classifier.threshold={d['threshold']!r}: must satisfy 0 < threshold < 1")
        if not isinstance(d["standardize"], (bool, np.bool_)):
            raise DinolocError(f"classifier.standardize={d['standardize']!r}: must be true or false")
        out["standardize"] = bool(d["standardize"])
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise DinolocError(f"classifier.seed={seed!r}: must be an integer")
        out["seed"] = int(seed)
        return cls(**out)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ConstantParams:
    """configs/classifier/constant.yaml: the trivial reference (dinoloc.classify.constant). It reads no feature,
    so only the threshold (what its 0/1 outputs are compared with, as every head's) and a seed are kept."""

    HEAD: ClassVar[str] = "constant"  # its head module (dinoloc.heads.constant)
    threshold: float
    standardize: bool = False  # no features are used: nothing to standardise
    seed: int = 0              # unused (deterministic); kept so every head records a seed

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConstantParams:
        """Validated params. Every other head's keys are ignored: a probe sweep (classifier=mlp,knn,linear) may
        compose the trivial row with any head's YAML underneath (configs/row/trivial*.yaml set name=constant)."""
        threshold = d.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < float(threshold) < 1:
            raise DinolocError(f"classifier.threshold={threshold!r}: must satisfy 0 < threshold < 1 for classifier=constant")
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise DinolocError(f"classifier.seed={seed!r}: must be an integer")
        return cls(threshold=float(threshold), seed=int(seed))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def head_name(classifier_cfg: dict[str, Any]) -> str:
    """The head a classifier config describes (its `name`, a module of dinoloc.heads; `mlp` when absent)."""
    from dinoloc.heads import head_module

    name = str(classifier_cfg.get("name") or DEFAULT_HEAD)
    head_module(name)  # an unknown head: one error naming the known ones
    return name


def params_from_config(classifier_cfg: dict[str, Any]) -> Any:
    """Validated parameters of any head, by its module (dinoloc.heads): `KNNParams` for knn, `ClassifierParams`
    for mlp and linear."""
    from dinoloc.heads import head_module

    return head_module(head_name(classifier_cfg)).params(classifier_cfg)
