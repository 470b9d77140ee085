"""The classifier stage: a 5-fold cross-validated MLP on frozen embeddings, its metrics and its result files.

Per fold k: standardize with the statistics of the fold's training part, resample that training part each
epoch by its rarest label (Dino4Cells `balance_data`), train the paper's MLP (Dino4Cells `simple_clf`), and
score train / val (fold k) / test. The test rows serve only the final evaluation.

Speed: the K folds are trained together as ONE batched model. Every parameter carries a leading fold
dimension (K, ...), the forward pass is `torch.baddbmm`, and every step each fold gets its own minibatch
from its own index stream. A fold with n_k training samples makes ceil(n_k / batch) steps per epoch, exactly
as a separate model would; all folds run ceil(max_k n_k / batch) steps, and in the steps past a fold's own
end its samples are padding: masked out of its loss, and its AdamW update (incl. weight decay, moments and
step count) is skipped. The update is torch's own fused AdamW applied to each fold's slices with the fold's
own step count, so it is the separate optimizers side by side; the fold losses are summed, and as no parameter is shared each fold's gradient is its own loss's gradient.
`tests/test_classify.py` checks this against independent per-fold `nn.Sequential` + `torch.optim.AdamW`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, precision_recall_fscore_support
from torch.optim.adamw import adamw as adamw_update
from tqdm import tqdm

from dinoloc.io import DinolocError, read_json, write_csv, write_json
from dinoloc.ontology import CATEGORIES, N_CLASSES

if TYPE_CHECKING:
    from dinoloc.probes import KNNParams

RESAMPLE_CHOICES = ("rarest_label", "none")
SAMPLER_CHOICES = ("rarest_label", "class_uniform")
LR_SCALING_CHOICES = ("none", "linear")
SCHEDULE_STEP_CHOICES = ("epoch", "step")
SCHEDULER_CHOICES = ("cosine", "none")
LOSS_CHOICES = ("bce_with_logits",)
SPLITS = ("train", "test", "unlabeled")
# torch.optim.AdamW's default eps (Dino4Cells does not set it; the YAML has no key for it).
ADAM_EPS = 1e-8
# Rows per chunk when predicting, to bound the (K, rows, D) standardized copy on the device.
_EVAL_CHUNK = 4096

Hook = Callable[[str, dict], None]


# ----------------------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------------------
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
    lr_scaling: str = "none"
    schedule_step: str = "epoch"
    sampler: str = "rarest_label"
    n_seeds: int = 1  # CV repeats with seeds seed, seed+1, ... (cross_validate_seeds); the paper: 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierParams:
        """Validated params from the YAML's keys (`name` is allowed and ignored); errors name `classifier.<key>`."""
        d = {k: v for k, v in dict(d).items() if k != "name"}
        names = [f.name for f in dataclasses.fields(cls)]
        refuse_unknown_keys(d, names, "mlp.yaml")
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = [k for k in names if k not in d and k not in optional]
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
        out["epochs"] = as_int("epochs")
        if out["epochs"] < 1:
            raise bad("epochs", "must be >= 1")
        out["batch_size"] = as_int("batch_size")
        if out["batch_size"] < 1:
            raise bad("batch_size", "must be >= 1")
        out["seed"] = as_int("seed")
        if out["seed"] < 0:
            raise bad("seed", "must be >= 0")
        if "n_seeds" in d:
            out["n_seeds"] = as_int("n_seeds")
            if out["n_seeds"] < 1:
                raise bad("n_seeds", "must be >= 1")
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
            if key not in d:  # an optional key left out: its dataclass default
                continue
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


@dataclass
class CVResult:
    summary: dict[str, Any]
    predictions: pd.DataFrame
    per_class: pd.DataFrame


# ----------------------------------------------------------------------------------------------------------
# metrics (the single definition; the report imports it)
# ----------------------------------------------------------------------------------------------------------
def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str] | None = None) -> tuple[float, list[str]]:
    """Macro F1 over the classes (default OpenCell's 17), zero_division=0, EXCLUDING classes without a positive
    in y_true (Dino4Cells): such a class's F1 is 0 or undefined whatever the model does. Returns (score,
    excluded class names); the score is NaN when no class has a positive."""
    classes = _classes(classes)
    y_true, y_pred = _as_label_matrix(y_true, len(classes)), _as_label_matrix(y_pred, len(classes))
    f1 = f1_score(y_true, y_pred, average=None, labels=list(range(len(classes))), zero_division=0)
    present = y_true.sum(axis=0) > 0
    excluded = [c for c, p in zip(classes, present, strict=True) if not p]
    return (float(f1[present].mean()) if present.any() else float("nan")), excluded


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """class, f1, precision, recall, support for each class (default OpenCell's 17; zero_division=0)."""
    classes = _classes(classes)
    p, r, f, s = precision_recall_fscore_support(
        _as_label_matrix(y_true, len(classes)), _as_label_matrix(y_pred, len(classes)), average=None,
        labels=list(range(len(classes))), zero_division=0,
    )
    return pd.DataFrame({"class": list(classes), "f1": f, "precision": p, "recall": r, "support": s})


def _classes(classes: Sequence[str] | None) -> tuple[str, ...]:
    """The dataset's class list (data config); OpenCell's 17 when not given."""
    return CATEGORIES if classes is None else tuple(str(c) for c in classes)


def _as_label_matrix(y: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != n_classes:
        raise DinolocError(f"labels must have shape (n, {n_classes}); got {y.shape}")
    return y.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------
def rarest_label_weights(y: np.ndarray, unlabeled_weight: float) -> tuple[np.ndarray, list[int]]:
    """Dino4Cells `balance_data` sample weights for the training rows `y` (n, C).

    w_c = 1 / mean(y[:, c]) (0 for a class with no positive: it cannot be drawn anyway); a sample's weight is
    max_c(y_ic * w_c) / max_c(w_c), the inverse frequency of its rarest positive label; samples with no
    positive get `unlabeled_weight`. Returns (weights (n,), indices of the classes without a positive)."""
    y = np.asarray(y, dtype=np.float64)
    freq = y.mean(axis=0)
    absent = [int(c) for c in np.flatnonzero(freq == 0)]
    w_c = np.divide(1.0, freq, out=np.zeros_like(freq), where=freq > 0)
    if w_c.max() <= 0:  # no positive at all: every sample is unlabeled
        return np.full(len(y), float(unlabeled_weight)), absent
    w = (y * w_c).max(axis=1) / w_c.max()
    w[y.sum(axis=1) == 0] = unlabeled_weight
    return w, absent


def class_uniform_weights(y: np.ndarray) -> np.ndarray:
    """Per-draw probability of each training row under Dino4Cells' `AutoBalancedPrecomputedFeatures`
    (data_utils/file_dataset.py): draw a class uniformly among the classes with a positive, then one of its
    positives uniformly. So P(i) = (1 / C+) * sum_c y_ic / n_c; a row without a positive is never drawn."""
    y = np.asarray(y, dtype=np.float64)
    n_c = y.sum(axis=0)
    present = n_c > 0
    if not present.any():
        return np.zeros(len(y))
    return (y[:, present] / n_c[present]).sum(axis=1) / present.sum()


def fit_standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) like sklearn's StandardScaler (ddof 0, std 0 -> 1), computed in float64."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    return mean, std


def fold_seed(seed: int, fold: int, stream: int) -> int:
    """Independent, reproducible seed for one fold's stream (0 = init, 1 = sampling, 2 = dropout)."""
    return int(np.random.SeedSequence([seed, fold, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def init_mlp(dim: int, hidden: tuple[int, ...], n_out: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One MLP's initial (weight (out, in), bias (out,)) per layer, drawn like `nn.Linear.reset_parameters`
    (uniform in +-1/sqrt(fan_in)) from a CPU generator, so the init does not depend on the device."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for fan_in, fan_out in zip((dim, *hidden), (*hidden, n_out), strict=True):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(fan_out, fan_in, generator=g, dtype=torch.float32) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=g, dtype=torch.float32) * 2 - 1) * bound
        layers.append((w, b))
    return layers


def epoch_lrs(lr: float, epochs: int, scheduler: str) -> list[float]:
    """The learning rate of each epoch, read off torch's own CosineAnnealingLR(T_max=epochs) stepped once
    per epoch (so the schedule is the library's, to the last bit). With T_max = the total number of
    optimizer steps and "epochs" = steps, the same function gives Dino4Cells' per-step schedule."""
    if scheduler == "none":
        return [lr] * epochs
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def fold_lr_schedules(params: ClassifierParams, n_train: list[int], world_size: int = 1) -> list[list[float]]:
    """Per fold, the lr of each of its optimizer updates (epochs x ceil(n_k / batch) of them).

    schedule_step=epoch: the cosine steps once per epoch (T_max = epochs), every update of an epoch shares it.
    schedule_step=step: Dino4Cells (run_end_to_end.py: CosineAnnealingLR(optim, epochs * len(train_dl)),
    scheduler.step() after every batch): T_max = all of the fold's updates, a new lr each update."""
    lr = params.effective_lr(world_size)
    out = []
    for n in n_train:
        steps = math.ceil(n / params.batch_size)
        if params.schedule_step == "step":
            out.append(epoch_lrs(lr, params.epochs * steps, params.scheduler))
        else:
            out.append([v for v in epoch_lrs(lr, params.epochs, params.scheduler) for _ in range(steps)])
    return out


# ----------------------------------------------------------------------------------------------------------
# the batched trainer
# ----------------------------------------------------------------------------------------------------------
def _forward(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor], dropout: float,
             gen: torch.Generator | None) -> torch.Tensor:
    """(K, B, D) -> (K, B, C) logits; weights are (K, in, out), biases (K, 1, out). Dropout (inverted, as
    nn.Dropout) after each hidden ReLU when `gen` is given (training), none at evaluation."""
    h = x
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = torch.baddbmm(b, h, w)
        if i < len(weights) - 1:
            h = torch.relu(h)
            if gen is not None and dropout > 0:
                keep = torch.rand(h.shape, generator=gen, device=h.device) >= dropout
                h = h * keep / (1.0 - dropout)
    return h


def train_folds(
    X: torch.Tensor,
    Y: torch.Tensor,
    train_rows: list[np.ndarray],
    means: torch.Tensor,
    stds: torch.Tensor,
    params: ClassifierParams,
    progress: bool = False,
    hook: Hook | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Train K MLPs at once; fold k on rows `train_rows[k]` of X (N, D) / Y (N, C) (device tensors),
    standardized with means[k] / stds[k] (K, D). Returns the stacked (weights, biases).

    `hook("epoch", {"epoch", "rows" (K, P) global row indices, "valid" (K, P) bool})` sees every epoch's
    index stream when given (tests use it to replay the stream and to audit which rows were trained on)."""
    device = X.device
    K, C = len(train_rows), Y.shape[1]
    n = [len(r) for r in train_rows]
    B = params.batch_size
    steps = math.ceil(max(n) / B)
    rows_t = [torch.as_tensor(r, dtype=torch.long, device=device) for r in train_rows]

    layers = [init_mlp(X.shape[1], params.hidden, C, fold_seed(params.seed, k, 0)) for k in range(K)]
    weights = [torch.stack([lay[i][0].T for lay in layers]).contiguous().to(device) for i in range(len(layers[0]))]
    biases = [torch.stack([lay[i][1][None] for lay in layers]).to(device) for i in range(len(layers[0]))]
    tensors = [*weights, *biases]
    for t in tensors:
        t.requires_grad_(True)
    exp_avg = [torch.zeros_like(t) for t in tensors]
    exp_avg_sq = [torch.zeros_like(t) for t in tensors]
    # torch's AdamW state per fold: the fold's slice of every tensor, and its own step count (float32 on the
    # device, as the fused kernel keeps it).
    fold_state = [
        ([t[k] for t in tensors], [m[k] for m in exp_avg], [v[k] for v in exp_avg_sq],
         [torch.zeros((), dtype=torch.float32, device=device) for _ in tensors])
        for k in range(K)
    ]
    beta1, beta2 = params.betas

    sample_gens = [torch.Generator(device=device).manual_seed(fold_seed(params.seed, k, 1)) for k in range(K)]
    drop_gen = torch.Generator(device=device).manual_seed(fold_seed(params.seed, 0, 2))
    sampler = params.effective_sampler
    if sampler != "none":
        probs = []
        for k in range(K):
            if sampler == "class_uniform":
                w = class_uniform_weights(Y[rows_t[k]].cpu().numpy())
            else:
                w, _ = rarest_label_weights(Y[rows_t[k]].cpu().numpy(), params.unlabeled_weight)
            if w.sum() <= 0:
                raise DinolocError(
                    f"fold {k}: every training sample has resampling weight 0 (no positive label and "
                    "classifier.unlabeled_weight=0); set classifier.unlabeled_weight > 0 or resample=none"
                )
            probs.append(torch.as_tensor(w, dtype=torch.float64, device=device))

    # Standardize once per fold, not once per step: (K, N, D) stays on the device (376 MB at 6,120 x 3,072 x 5).
    Xs = (X[None] - means[:, None, :]) / stds[:, None, :]
    fold_idx = torch.arange(K, device=device)[:, None]
    lrs = fold_lr_schedules(params, n)
    steps_done = [0] * K  # each fold's own update count (its position in its schedule)
    for epoch in tqdm(range(params.epochs), desc="classifier epochs", disable=not progress, leave=False):
        # Each fold's draw for this epoch, padded to steps * B; padding positions are masked everywhere.
        rows = torch.zeros(K, steps * B, dtype=torch.long, device=device)
        valid = torch.zeros(K, steps * B, dtype=torch.bool, device=device)
        for k in range(K):
            if sampler != "none":
                local = torch.multinomial(probs[k], n[k], replacement=True, generator=sample_gens[k])
            else:
                local = torch.randperm(n[k], generator=sample_gens[k], device=device)
            rows[k, : n[k]] = rows_t[k][local]
            valid[k, : n[k]] = True
        if hook is not None:
            hook("epoch", {"epoch": epoch, "rows": rows.cpu().numpy(), "valid": valid.cpu().numpy()})
        for s in range(steps):
            lo = s * B
            width = min(B, max(n) - lo)  # no fold has anything past its own n_k: trim the common padding
            r, v = rows[:, lo : lo + width], valid[:, lo : lo + width]
            counts = np.array([max(0, min(B, nk - lo)) for nk in n])
            active = counts > 0
            x = Xs[fold_idx, r]  # (K, width, D): fold k's rows, standardized with fold k's statistics
            logits = _forward(x, weights, biases, params.dropout, drop_gen)
            bce = F.binary_cross_entropy_with_logits(logits, Y[r], reduction="none").sum(-1)  # (K, width)
            denom = torch.as_tensor(np.maximum(counts, 1) * C, dtype=logits.dtype, device=device)
            loss = ((bce * v).sum(1) / denom).sum()  # per fold: BCEWithLogitsLoss(mean) over its own batch
            grads = torch.autograd.grad(loss, tensors)
            fold_lr = [lrs[k][min(steps_done[k], len(lrs[k]) - 1)] for k in range(K)]
            _adamw_step(fold_state, grads, active, fold_lr, beta1, beta2, params.weight_decay)
            for k in np.flatnonzero(active):
                steps_done[k] += 1
    return [w.detach() for w in weights], [b.detach() for b in biases]


@torch.no_grad()
def _adamw_step(fold_state: list[tuple[list[torch.Tensor], ...]], grads: tuple[torch.Tensor, ...],
                active: np.ndarray, lr: list[float], beta1: float, beta2: float, weight_decay: float) -> None:
    """torch's own AdamW update (functional, fused: one pass per tensor) on each active fold's slices; a fold
    with no sample in this step (past the end of its epoch) is untouched, its step count included. `lr[k]` is
    fold k's learning rate for this update."""
    for k in np.flatnonzero(active):
        params, exp_avg, exp_avg_sq, steps = fold_state[k]
        adamw_update(
            params, [g[k] for g in grads], exp_avg, exp_avg_sq, [], steps, fused=True,
            amsgrad=False, beta1=beta1, beta2=beta2, lr=lr[k], weight_decay=weight_decay, eps=ADAM_EPS, maximize=False,
        )


@torch.no_grad()
def predict_proba(X: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor], means: torch.Tensor,
                  stds: torch.Tensor) -> np.ndarray:
    """Sigmoid probabilities of every fold's model on every row: (K, N, C) float64 (no dropout)."""
    out = []
    for lo in range(0, X.shape[0], _EVAL_CHUNK):
        x = (X[None, lo : lo + _EVAL_CHUNK] - means[:, None, :]) / stds[:, None, :]
        out.append(torch.sigmoid(_forward(x, weights, biases, 0.0, None)).double().cpu().numpy())
    return np.concatenate(out, axis=1)


# ----------------------------------------------------------------------------------------------------------
# cross-validation
# ----------------------------------------------------------------------------------------------------------
def _check_inputs(X: np.ndarray, Y: np.ndarray, split: np.ndarray, fold: np.ndarray, image_ids: np.ndarray,
                  targets: np.ndarray, n_classes: int = N_CLASSES) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X)
    if X.ndim != 2:
        raise DinolocError(f"features must be a 2-D array (images, dims); got shape {X.shape}")
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[1] != n_classes:
        raise DinolocError(f"labels must have shape (n, {n_classes}) in the data config's class order; got {Y.shape}")
    n = {"labels": len(Y), "split": len(split), "fold": len(fold), "image_ids": len(image_ids),
         "targets": len(targets)}
    if any(v != len(X) for v in n.values()):
        raise DinolocError(
            f"feature rows do not match the manifest: {len(X)} feature rows vs {n}; the embeddings must be "
            "in manifest/split order (rebuild the embedding cache or the split)"
        )
    if not np.isin(Y, (0, 1)).all():
        raise DinolocError("labels must be 0/1; check the manifest's label columns")
    split = np.asarray(split).astype(str)
    bad = sorted(set(split) - set(SPLITS))
    if bad:
        raise DinolocError(f"split has unknown value(s) {bad}; expected {list(SPLITS)} (rebuild split.csv)")
    if not np.issubdtype(X.dtype, np.number):
        raise DinolocError(f"features must be numeric; got dtype {X.dtype}")
    X = X.astype(np.float32, copy=False)
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        ids = [str(i) for i in np.asarray(image_ids)[~finite][:10]]
        raise DinolocError(
            f"{int((~finite).sum())} embedding row(s) contain NaN or inf, e.g. image_id {ids}; delete the "
            "embedding cache and re-extract (check those images and the backbone weights)"
        )
    fold = np.asarray(fold)
    if not np.issubdtype(fold.dtype, np.integer):
        raise DinolocError(f"fold must be integers (-1 where not train); got dtype {fold.dtype}")
    is_train = split == "train"
    if (fold[is_train] < 0).any():
        raise DinolocError(f"{int((fold[is_train] < 0).sum())} train row(s) have no fold (fold < 0); rebuild split.csv")
    if not (split == "test").any():
        raise DinolocError("no test rows (split == 'test'); the split must hold out a test set (rebuild split.csv)")
    return X, Y.astype(np.int64), split, fold.astype(np.int64)


def cross_validate(
    X: np.ndarray,
    Y: np.ndarray,
    split: np.ndarray,
    fold: np.ndarray,
    image_ids: np.ndarray,
    targets: np.ndarray,
    params: ClassifierParams | KNNParams,
    device: str = "cpu",
    progress: bool = True,
    *,
    hook: Hook | None = None,
    classes: Sequence[str] | None = None,
) -> CVResult:
    """K-fold CV of the paper's MLP (or of a probe head, dinoloc.probes). X (N, D) embeddings in manifest order, Y (N, 17) 0/1, split
    train|test|unlabeled, fold (-1 where not train). Fold k: train on train rows with fold != k, validate on
    fold k, evaluate on every test row. `hook("folds", {k: {"train", "val", "test"} row indices})` is called
    once, then per epoch (see `train_folds`)."""
    classes = _classes(classes)  # the output size is the number of classes (17 for OpenCell)
    X, Y, split, fold = _check_inputs(X, Y, split, fold, image_ids, targets, len(classes))
    image_ids, targets = np.asarray(image_ids), np.asarray(targets)
    is_train, test_rows = split == "train", np.flatnonzero(split == "test")
    fold_ids = sorted(int(f) for f in np.unique(fold[is_train]))
    sets = {}
    for k in fold_ids:
        tr = np.flatnonzero(is_train & (fold != k))
        if len(tr) == 0:
            raise DinolocError(
                f"fold {k} has no training rows (every train row is in fold {k}); the split needs >= 2 folds"
            )
        sets[k] = {"train": tr, "val": np.flatnonzero(is_train & (fold == k)), "test": test_rows}
    if not sets:
        raise DinolocError("no train rows (split == 'train'); rebuild split.csv")
    if hook is not None:
        hook("folds", {k: {name: r.copy() for name, r in s.items()} for k, s in sets.items()})

    warns: list[str] = []
    for k, s in sets.items():
        absent = [classes[c] for c in np.flatnonzero(Y[s["train"]].sum(axis=0) == 0)]
        if absent:
            msg = (f"fold {k}: class(es) {absent} have no positive in the training part; they get "
                   "resampling weight 0 and the model cannot learn them")
            warnings.warn(msg, stacklevel=2)
            warns.append(msg)

    stats = []
    for s in sets.values():
        if params.standardize:
            stats.append(fit_standardizer(X[s["train"]]))
        else:
            stats.append((np.zeros(X.shape[1]), np.ones(X.shape[1])))
    means = torch.as_tensor(np.stack([m for m, _ in stats]), dtype=torch.float32, device=device)
    stds = torch.as_tensor(np.stack([sd for _, sd in stats]), dtype=torch.float32, device=device)
    Xt = torch.as_tensor(X, device=device)
    Yt = torch.as_tensor(Y, dtype=torch.float32, device=device)
    train_rows = [s["train"] for s in sets.values()]
    if isinstance(params, ClassifierParams):  # the MLP, or the linear head (no hidden layer)
        weights, biases = train_folds(Xt, Yt, train_rows, means, stds, params, progress=progress, hook=hook)
        proba = predict_proba(Xt, weights, biases, means, stds)
    else:  # a probe without training (dinoloc.probes.KNNParams)
        from dinoloc.probes import knn_predict_proba

        proba = knn_predict_proba(Xt, Yt, train_rows, means, stds, params)

    folds, pred_frames, class_frames = [], [], []
    y_cols, p_cols = [f"y_{c}" for c in classes], [f"p_{c}" for c in classes]
    for i, (k, s) in enumerate(sets.items()):
        entry: dict[str, Any] = {"fold": k}
        excluded = {}
        for name, rows in s.items():
            p = proba[i, rows]
            pred = (p > params.threshold).astype(np.int64)  # float64 vs threshold, as the report does
            score, excluded[name] = macro_f1(Y[rows], pred, classes)
            entry[f"{name}_macro_f1"] = score
            entry[f"n_{name}"] = len(rows)
            pc = per_class_scores(Y[rows], pred, classes)
            pc.insert(0, "split", name)
            pc.insert(0, "fold", k)
            class_frames.append(pc)
            if name != "train":
                frame = pd.DataFrame({"image_id": image_ids[rows], "fold": k, "split": name, "target": targets[rows]})
                frame = pd.concat([frame, pd.DataFrame(Y[rows], columns=y_cols),
                                   pd.DataFrame(p, columns=p_cols)], axis=1)
                pred_frames.append(frame)
        entry["excluded_classes"] = excluded
        folds.append(entry)

    def mean_std(key: str) -> tuple[float, float]:
        v = np.array([f[key] for f in folds], dtype=np.float64)
        return float(v.mean()), float(v.std(ddof=0))

    summary: dict[str, Any] = {}
    for name in ("test", "train", "val"):
        summary[f"{name}_macro_f1_mean"], summary[f"{name}_macro_f1_std"] = mean_std(f"{name}_macro_f1")
    summary["std_ddof"] = 0
    summary["n_folds"] = len(folds)
    summary["folds"] = folds
    summary["warnings"] = warns
    summary["classifier"] = params.to_dict()
    # What training actually used, for the report's deviations list (the YAML's lr may be scaled).
    n_train = [len(s["train"]) for s in sets.values()]
    if isinstance(params, ClassifierParams):  # the k-NN has no optimiser
        summary["classifier_effective"] = {
            "lr": params.effective_lr(),
            "lr_scaling": params.lr_scaling,
            "world_size": 1,
            "schedule_step": params.schedule_step,
            "sampler": params.effective_sampler,
            "steps_per_epoch": [math.ceil(n / params.batch_size) for n in n_train],
        }
    summary["n_features"] = int(X.shape[1])
    summary["classes"] = list(classes)
    return CVResult(summary, pd.concat(pred_frames, ignore_index=True), pd.concat(class_frames, ignore_index=True))


def cross_validate_seeds(
    X: np.ndarray, Y: np.ndarray, split: np.ndarray, fold: np.ndarray, image_ids: np.ndarray,
    targets: np.ndarray, params: ClassifierParams | KNNParams, device: str = "cpu", progress: bool = True,
    *, classes: Sequence[str] | None = None,
) -> CVResult:
    """`cross_validate` repeated with classifier seeds params.seed, params.seed + 1, ... (params.n_seeds).

    The summary's means are over every (seed, fold); `test_macro_f1_std` is the mean over seeds of each
    seed's fold std, and `test_macro_f1_seed_std` the std over seeds of each seed's fold mean (NaN for one
    seed), so fold noise and seed noise are reported apart. predictions.csv and per_class.csv get a `seed`
    column; with n_seeds = 1 the result is cross_validate's, plus that column."""
    n_seeds = getattr(params, "n_seeds", 1)  # the k-NN is deterministic: one run
    runs = []
    for i in range(int(n_seeds)):
        p = dataclasses.replace(params, seed=params.seed + i)
        runs.append((p.seed, cross_validate(X, Y, split, fold, image_ids, targets, p, device, progress,
                                            classes=classes)))
    if n_seeds == 1:
        seed, cv = runs[0]
        cv.predictions.insert(1, "seed", seed)
        cv.per_class.insert(0, "seed", seed)
        for f in cv.summary["folds"]:
            f["seed"] = seed
        cv.summary.update({"n_seeds": 1, "seeds": [seed], "test_macro_f1_seed_std": float("nan")})
        return cv
    folds, preds, per_class = [], [], []
    for seed, cv in runs:
        folds += [{**f, "seed": seed} for f in cv.summary["folds"]]
        preds.append(cv.predictions.assign(seed=seed))
        per_class.append(cv.per_class.assign(seed=seed))
    summary = dict(runs[0][1].summary)
    for name in ("test", "train", "val"):
        per_seed_mean = np.array([cv.summary[f"{name}_macro_f1_mean"] for _, cv in runs])
        per_seed_std = np.array([cv.summary[f"{name}_macro_f1_std"] for _, cv in runs])
        summary[f"{name}_macro_f1_mean"] = float(per_seed_mean.mean())
        summary[f"{name}_macro_f1_std"] = float(per_seed_std.mean())
        summary[f"{name}_macro_f1_seed_std"] = float(per_seed_mean.std(ddof=0))
    summary["folds"] = folds
    summary["warnings"] = [w for _, cv in runs for w in cv.summary["warnings"]]
    summary["n_seeds"] = int(n_seeds)
    summary["seeds"] = [seed for seed, _ in runs]
    predictions = pd.concat(preds, ignore_index=True)
    predictions.insert(1, "seed", predictions.pop("seed"))
    per_class = pd.concat(per_class, ignore_index=True)
    per_class.insert(0, "seed", per_class.pop("seed"))
    return CVResult(summary, predictions, per_class)


# ----------------------------------------------------------------------------------------------------------
# result files
# ----------------------------------------------------------------------------------------------------------
def save_run(run_dir: str | os.PathLike, result: dict, predictions: pd.DataFrame, per_class: pd.DataFrame) -> None:
    """predictions.csv, per_class.csv, then result.json (atomic writes; result.json last marks completion)."""
    run_dir = Path(run_dir)
    stale = run_dir / "result.json"
    if stale.exists():  # a re-run: the old marker must not vouch for the new, half-written files
        stale.unlink()
    write_csv(run_dir / "predictions.csv", predictions)
    write_csv(run_dir / "per_class.csv", per_class)
    write_json(run_dir / "result.json", result)


def load_result(run_dir: str | os.PathLike) -> dict | None:
    """The run's result.json, or None when the run is absent or incomplete."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError as e:
        raise DinolocError(f"{path} is not valid JSON ({e}); delete {run_dir} and rerun the row") from e
