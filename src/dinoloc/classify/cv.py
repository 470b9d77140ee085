"""Cross-validation: per fold k, standardize with the statistics of the fold's training part, train a head on
that part (the batched trainer, or the k-NN probe) and score train / val (fold k) / test. The test rows serve
only the final evaluation. `cross_validate_seeds` repeats it over classifier seeds."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from dinoloc.classify.params import ClassifierParams, ConstantParams, KNNParams
from dinoloc.classify.probes import knn_predict_proba
from dinoloc.classify.trainer import Hook
from dinoloc.heads import head_module
from dinoloc.io import DinolocError
from dinoloc.metrics import class_list, decide, is_single_label, macro_f1, per_class_scores
from dinoloc.ontology import N_CLASSES
from dinoloc.results import DEFAULT_HEAD, label_columns, prob_columns

SPLITS = ("train", "test", "unlabeled")


@dataclass
class CVResult:
    """result.json's classifier summary and the two CSVs (dinoloc.results), before the run's identity is added."""

    summary: dict[str, Any]
    predictions: pd.DataFrame
    per_class: pd.DataFrame


def fit_standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) like sklearn's StandardScaler (ddof 0, std 0 -> 1), computed in float64."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    return mean, std


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


@dataclass(frozen=True)
class CVData:
    """The rows the CV sees, in manifest order: embeddings X (N, D), labels Y (N, classes) 0/1, split
    (train|test|unlabeled), fold (-1 where not train), image ids and targets (the groups)."""

    X: np.ndarray
    Y: np.ndarray
    split: np.ndarray
    fold: np.ndarray
    image_ids: np.ndarray
    targets: np.ndarray


def cross_validate(
    data: CVData,
    params: ClassifierParams | KNNParams | ConstantParams,
    device: str = "cpu",
    progress: bool = True,
    *,
    hook: Hook | None = None,
    classes: Sequence[str] | None = None,
    head: str | None = None,
) -> CVResult:
    """K-fold CV of the paper's MLP (or of a probe head, dinoloc.classify.probes). X (N, D) embeddings in manifest order, Y (N, 17) 0/1, split
    train|test|unlabeled, fold (-1 where not train). Fold k: train on train rows with fold != k, validate on
    fold k, evaluate on every test row. `hook("folds", {k: {"train", "val", "test"} row indices})` is called
    once, then per epoch (see `train_folds`)."""
    X, Y, split, fold, image_ids, targets = data.X, data.Y, data.split, data.fold, data.image_ids, data.targets
    classes = class_list(classes)  # the output size is the number of classes (17 for OpenCell)
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
    single = is_single_label(Y[split != "unlabeled"])
    # the head's own module (dinoloc.heads): by name, else the one its parameters belong to
    module = head_module(head or getattr(params, "HEAD", DEFAULT_HEAD))
    proba = module.predict_proba(Xt, Yt, train_rows, means, stds, params, progress=progress, hook=hook,
                                 single_label=single)

    folds, pred_frames, class_frames = [], [], []
    y_cols, p_cols = label_columns(classes), prob_columns(classes)
    for i, (k, s) in enumerate(sets.items()):
        entry: dict[str, Any] = {"fold": k}
        excluded = {}
        for name, rows in s.items():
            p = proba[i, rows]
            pred = decide(p, params.threshold, single)  # as the report does (float64 vs threshold)
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
    effective = module.effective(params, n_train)
    if effective is not None:  # a head that trains (the k-NN has no optimiser)
        summary["classifier_effective"] = effective
    summary["n_features"] = int(X.shape[1])
    summary["single_label"] = single
    summary["classes"] = list(classes)
    return CVResult(summary, pd.concat(pred_frames, ignore_index=True), pd.concat(class_frames, ignore_index=True))


def cross_validate_seeds(
    data: CVData, params: ClassifierParams | KNNParams | ConstantParams, device: str = "cpu",
    progress: bool = True, *, classes: Sequence[str] | None = None, head: str | None = None,
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
        runs.append((p.seed, cross_validate(data, p, device, progress, classes=classes, head=head)))
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


def knn_leave_group_out(X: np.ndarray, Y: np.ndarray, group: np.ndarray, params: KNNParams) -> np.ndarray:
    """0/1 predictions (n, C) of the package's k-NN (classifier=knn) for every row, each group predicted from the
    other groups' rows (standardised with their statistics when `params.standardize`): a quick probe that
    scripts score with dinoloc.metrics.macro_f1."""
    X, Y, group = np.asarray(X, dtype=np.float32), np.asarray(Y), np.asarray(group)
    groups = np.unique(group)
    train_rows = [np.flatnonzero(group != g) for g in groups]
    stats = [fit_standardizer(X[r]) if params.standardize else (np.zeros(X.shape[1]), np.ones(X.shape[1]))
             for r in train_rows]
    means = torch.as_tensor(np.stack([m for m, _ in stats]), dtype=torch.float32)
    stds = torch.as_tensor(np.stack([s for _, s in stats]), dtype=torch.float32)
    proba = knn_predict_proba(torch.as_tensor(X), torch.as_tensor(Y, dtype=torch.float32), train_rows, means, stds,
                              params)
    pred = np.zeros(Y.shape, dtype=np.int64)
    for i, g in enumerate(groups):
        held = group == g
        pred[held] = proba[i, held] > params.threshold
    return pred
