"""The batched MLP trainer: the K folds' models trained together as ONE batched model.

Every parameter carries a leading fold dimension (K, ...), the forward pass is `torch.baddbmm`, and every step
each fold gets its own minibatch from its own index stream. A fold with n_k training samples makes
ceil(n_k / batch) steps per epoch, exactly as a separate model would; all folds run ceil(max_k n_k / batch)
steps, and in the steps past a fold's own end its samples are padding: masked out of its loss, and its AdamW
update (incl. weight decay, moments and step count) is skipped. The update is torch's own fused AdamW applied to
each fold's slices with the fold's own step count, so it is the separate optimizers side by side; the fold
losses are summed, and as no parameter is shared each fold's gradient is its own loss's gradient.
`tests/test_classify.py` checks this against independent per-fold `nn.Sequential` + `torch.optim.AdamW`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.adamw import adamw as adamw_update

from dinoloc.classify.params import ClassifierParams
from dinoloc.io import DinolocError
from dinoloc.progress import progress as progress_bar

# torch.optim.AdamW's default eps (Dino4Cells does not set it; the YAML has no key for it).
ADAM_EPS = 1e-8
# Rows per chunk when predicting, to bound the (K, rows, D) standardized copy on the device.
_EVAL_CHUNK = 4096

Hook = Callable[[str, dict], None]


# ----------------------------------------------------------------------------------------------------------
# sampling, seeds, init and schedules
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
    single_label: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Train K MLPs at once; fold k on rows `train_rows[k]` of X (N, D) / Y (N, C) (device tensors),
    standardized with means[k] / stds[k] (K, D). Returns the stacked (weights, biases).

    `hook("epoch", {"epoch", "rows" (K, P) global row indices, "valid" (K, P) bool})` sees every epoch's
    index stream when given (tests use it to replay the stream and to audit which rows were trained on).
    `single_label` (every labelled row has exactly one class): softmax cross-entropy on the class index, mean
    over the batch, as official DINO's eval_linear.py, instead of the paper's multi-label BCE."""
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
    # What each step s of an epoch needs that does not change between epochs: its width (no fold has anything
    # past its own n_k: the common padding is trimmed), which folds have samples in it, and the loss's
    # per-fold denominators (each fold's own batch size; x C for the BCE's mean over classes).
    plan = []
    for s in range(steps):
        lo = s * B
        counts = np.array([max(0, min(B, nk - lo)) for nk in n])
        denom = np.maximum(counts, 1) * (1 if single_label else C)
        plan.append((lo, min(B, max(n) - lo), np.flatnonzero(counts > 0),
                     torch.as_tensor(denom, dtype=Xs.dtype, device=device)))
    for epoch in progress_bar(range(params.epochs), desc="classifier epochs", disable=not progress, leave=False):
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
        for lo, width, active, denom in plan:
            r, v = rows[:, lo : lo + width], valid[:, lo : lo + width]
            x = Xs[fold_idx, r]  # (K, width, D): fold k's rows, standardized with fold k's statistics
            logits = _forward(x, weights, biases, params.dropout, drop_gen)
            if single_label:  # CrossEntropyLoss(mean) over each fold's own batch
                ce = F.cross_entropy(logits.reshape(-1, C), Y[r].argmax(-1).reshape(-1), reduction="none")
                loss = ((ce.reshape(K, -1) * v).sum(1) / denom).sum()
            else:
                bce = F.binary_cross_entropy_with_logits(logits, Y[r], reduction="none").sum(-1)  # (K, width)
                loss = ((bce * v).sum(1) / denom).sum()  # per fold: BCEWithLogitsLoss(mean) over its own batch
            grads = torch.autograd.grad(loss, tensors)
            fold_lr = [lrs[k][min(steps_done[k], len(lrs[k]) - 1)] for k in range(K)]
            _adamw_step(fold_state, grads, active, fold_lr, beta1, beta2, params.weight_decay)
            for k in active:
                steps_done[k] += 1
    return [w.detach() for w in weights], [b.detach() for b in biases]


@torch.no_grad()
def _adamw_step(fold_state: list[tuple[list[torch.Tensor], ...]], grads: tuple[torch.Tensor, ...],
                active: np.ndarray, lr: list[float], beta1: float, beta2: float, weight_decay: float) -> None:
    """torch's own AdamW update (functional, fused: one pass per tensor) on the slices of the folds in `active`
    (indices); a fold with no sample in this step (past the end of its epoch) is untouched, its step count
    included. `lr[k]` is fold k's learning rate for this update."""
    for k in active:
        params, exp_avg, exp_avg_sq, steps = fold_state[k]
        adamw_update(
            params, [g[k] for g in grads], exp_avg, exp_avg_sq, [], steps, fused=True,
            amsgrad=False, beta1=beta1, beta2=beta2, lr=lr[k], weight_decay=weight_decay, eps=ADAM_EPS, maximize=False,
        )


@torch.no_grad()
def predict_proba(X: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor], means: torch.Tensor,
                  stds: torch.Tensor, single_label: bool = False) -> np.ndarray:
    """Sigmoid (single_label: softmax) probabilities of every fold's model on every row: (K, N, C) float64
    (no dropout)."""
    out = []
    for lo in range(0, X.shape[0], _EVAL_CHUNK):
        x = (X[None, lo : lo + _EVAL_CHUNK] - means[:, None, :]) / stds[:, None, :]
        logits = _forward(x, weights, biases, 0.0, None)
        prob = torch.softmax(logits, dim=-1) if single_label else torch.sigmoid(logits)
        out.append(prob.double().cpu().numpy())
    return np.concatenate(out, axis=1)
