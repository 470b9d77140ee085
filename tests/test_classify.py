"""The classifier stage: params validation, resampling, standardization, leakage, metrics, batched == separate."""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from dinoloc.classify.cv import CVData, cross_validate, fit_standardizer
from dinoloc.classify.params import ClassifierParams
from dinoloc.classify.trainer import init_mlp, rarest_label_weights
from dinoloc.io import DinolocError
from dinoloc.metrics import macro_f1
from dinoloc.ontology import CATEGORIES, N_CLASSES
from dinoloc.results import label_columns, prob_columns
from dinoloc.rules import typed

Y_COLS = label_columns(CATEGORIES)
P_COLS = prob_columns(CATEGORIES)


@functools.cache
def _mlp_yaml() -> tuple:
    from dinoloc.config import compose, plain

    return tuple(plain(compose().classifier).items())


def yaml_dict() -> dict:
    """classifier/mlp.yaml's values as composed (a fresh dict each call: tests edit it)."""
    return dict(_mlp_yaml())


def small_params(**over) -> ClassifierParams:
    d = yaml_dict()
    d.update({"hidden": [16, 8], "epochs": 5, "batch_size": 32, "lr": 1e-2}, **over)
    return typed(ClassifierParams, d)


def make_data(n_targets: int = 100, per_target: int = 2, dim: int = 16, seed: int = 0,
              fold_of_target=None, n_test_targets: int = 20):
    """Structured multi-label data: each target has 1-2 labels, features = labels @ projection + noise.
    The first n_test_targets targets are test, the rest train with folds by target."""
    rng = np.random.default_rng(seed)
    labels_t = np.zeros((n_targets, N_CLASSES), dtype=np.int64)
    for t in range(n_targets):
        labels_t[t, t % N_CLASSES] = 1
        if rng.random() < 0.4:
            labels_t[t, rng.integers(N_CLASSES)] = 1
    Y = np.repeat(labels_t, per_target, axis=0)
    proj = rng.normal(size=(N_CLASSES, dim))
    X = (Y @ proj + 0.3 * rng.normal(size=(len(Y), dim))).astype(np.float32)
    tgt = np.repeat(np.arange(n_targets), per_target)
    split = np.where(tgt < n_test_targets, "test", "train")
    if fold_of_target is None:
        fold_of_target = lambda t: (t - n_test_targets) % 5  # noqa: E731
    fold = np.array([fold_of_target(t) if t >= n_test_targets else -1 for t in tgt])
    ids = np.array([f"img{i:04d}" for i in range(len(Y))])
    targets = np.array([f"T{t:03d}" for t in tgt])
    return X, Y, split, fold, ids, targets


def run(data, params, **kw):
    return cross_validate(CVData(*data), params, progress=False, **kw)


# ---------------------------------------------------------------------------------------------------- params
def test_params_from_yaml_and_validation():
    d = yaml_dict()
    p = typed(ClassifierParams, d)
    assert p.epochs == d["epochs"] and p.hidden == tuple(d["hidden"]) and p.betas == tuple(d["betas"])
    assert typed(ClassifierParams, p.to_dict()) == p
    with pytest.raises(DinolocError, match="classifier.bogus"):
        typed(ClassifierParams, {**d, "bogus": 1})
    without = dict(d)
    del without["lr"]
    with pytest.raises(DinolocError, match="classifier.lr"):
        typed(ClassifierParams, without)
    for key, value in [("epochs", 0), ("lr", 0.0), ("lr", -1), ("batch_size", 0), ("dropout", 1.0),
                       ("dropout", -0.1), ("weight_decay", -0.01), ("threshold", 0.0), ("threshold", 1.0),
                       ("epochs", 2.5), ("resample", "bogus"), ("hidden", "512")]:
        with pytest.raises(DinolocError, match=f"classifier.{key}"):
            typed(ClassifierParams, {**d, key: value})


# ---------------------------------------------------------------------------------------------------- pieces
def test_rarest_label_weights_formula():
    y = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1]] + [[0] * 3] * 0)
    y = np.pad(y, ((0, 0), (0, N_CLASSES - 3)))
    w, absent = rarest_label_weights(y, unlabeled_weight=0.0)
    w_c = np.array([5 / 4, 5 / 1, 5 / 1])  # 1 / mean
    expected = [w_c[0] / 5, w_c[1] / 5, w_c[0] / 5, 0.0, w_c[2] / 5]
    np.testing.assert_allclose(w, expected)
    assert absent == list(range(3, N_CLASSES))
    w2, _ = rarest_label_weights(y, unlabeled_weight=0.3)
    assert w2[3] == pytest.approx(0.3)


def test_standardizer_matches_sklearn():
    x = np.random.default_rng(0).normal(size=(30, 5))
    x[:, 2] = 7.0  # constant column -> std 1
    mean, std = fit_standardizer(x)
    sk = StandardScaler().fit(x)
    np.testing.assert_allclose(mean, sk.mean_)
    np.testing.assert_allclose(std, sk.scale_)


def test_macro_f1_excludes_absent_classes():
    y = np.zeros((4, N_CLASSES), dtype=int)
    y[:2, 0] = 1
    y[2:, 1] = 1
    p = y.copy()
    p[0, 0] = 0
    p[0, 5] = 1  # a false positive in a class without positives: excluded, not counted as F1 0
    score, excluded = macro_f1(y, p)
    assert score == pytest.approx((f1_score(y[:, 0], p[:, 0]) + 1.0) / 2)
    assert excluded == list(CATEGORIES[2:])


# ---------------------------------------------------------------------------------------------------- resampling
def _collect_hook():
    events = {"folds": None, "epochs": []}

    def hook(kind, payload):
        if kind == "folds":
            events["folds"] = payload
        else:
            events["epochs"].append(payload)

    return events, hook


def test_resampling_frequencies_match_definition_and_unlabeled_never_drawn():
    data = make_data(n_targets=60, per_target=2, dim=4)
    X, Y, split, fold, ids, targets = data
    unl = np.flatnonzero(split == "train")[::7]
    Y = Y.copy()
    Y[unl] = 0  # some training samples without any positive label
    events, hook = _collect_hook()
    run((X, Y, split, fold, ids, targets), small_params(hidden=[4], epochs=60, batch_size=256), hook=hook)
    tr = events["folds"][0]["train"]
    w, _ = rarest_label_weights(Y[tr], 0.0)
    drawn = np.concatenate([e["rows"][0][e["valid"][0]] for e in events["epochs"]])
    assert len(drawn) == 60 * len(tr)
    assert not np.isin(drawn, unl).any()
    # Group samples by weight level (= their rarest class frequency) and compare draw shares.
    counts = pd.Series(drawn).value_counts().reindex(tr, fill_value=0).to_numpy()
    levels = np.round(w, 9)
    for level in np.unique(levels):
        sel = levels == level
        expected = w[sel].sum() / w.sum()
        assert counts[sel].sum() / len(drawn) == pytest.approx(expected, abs=0.02), level


@pytest.mark.filterwarnings("ignore:fold .* no positive")
def test_unlabeled_weight_lets_unlabeled_samples_be_drawn():
    X, Y, split, fold, ids, targets = make_data(n_targets=40, dim=4)
    unl = np.flatnonzero(split == "train")[::5]
    Y = Y.copy()
    Y[unl] = 0
    events, hook = _collect_hook()
    run((X, Y, split, fold, ids, targets), small_params(hidden=[4], epochs=3, unlabeled_weight=1.0), hook=hook)
    drawn = np.concatenate([e["rows"][e["valid"]] for e in events["epochs"]])
    assert np.isin(drawn, unl).any()


# ---------------------------------------------------------------------------------------------------- leakage
def test_no_test_or_val_row_is_trained_on():
    data = make_data()
    _, _, split, fold, _, _ = data
    events, hook = _collect_hook()
    run(data, small_params(epochs=3), hook=hook)
    test_rows = np.flatnonzero(split == "test")
    sets = events["folds"]
    assert sorted(sets) == [0, 1, 2, 3, 4]
    for k, s in sets.items():
        np.testing.assert_array_equal(s["test"], test_rows)
        np.testing.assert_array_equal(s["val"], np.flatnonzero((split == "train") & (fold == k)))
        assert not np.intersect1d(s["train"], test_rows).size and not np.intersect1d(s["train"], s["val"]).size
    for e in events["epochs"]:
        for i, k in enumerate(sets):
            used = e["rows"][i][e["valid"][i]]
            assert np.isin(used, sets[k]["train"]).all()


def test_standardization_and_training_ignore_test_features():
    data = make_data()
    X, Y, split, fold, ids, targets = data
    params = small_params(epochs=4)
    a = run(data, params)
    X2 = X.copy()
    X2[split == "test"] = X2[split == "test"] * 1000 + 50
    b = run((X2, Y, split, fold, ids, targets), params)
    va, vb = a.predictions[a.predictions.split == "val"], b.predictions[b.predictions.split == "val"]
    np.testing.assert_array_equal(va[P_COLS].to_numpy(), vb[P_COLS].to_numpy())
    assert [f["train_macro_f1"] for f in a.summary["folds"]] == [f["train_macro_f1"] for f in b.summary["folds"]]
    ta, tb = a.predictions[a.predictions.split == "test"], b.predictions[b.predictions.split == "test"]
    assert not np.allclose(ta[P_COLS].to_numpy(), tb[P_COLS].to_numpy())


# ---------------------------------------------------------------------------------------------------- metrics
def test_summary_f1_equals_sklearn_from_predictions_and_excluded_classes():
    X, Y, split, fold, ids, targets = make_data()
    Y = Y.copy()
    Y[split == "test", 3] = 0  # class 3 has no test positive: excluded from the test macro F1
    res = run((X, Y, split, fold, ids, targets), small_params(epochs=6))
    s, pred = res.summary, res.predictions
    thr = s["classifier"]["threshold"]
    per_fold = {}
    for f in s["folds"]:
        assert CATEGORIES[3] in f["excluded_classes"]["test"]
        for name in ("val", "test"):
            rows = pred[(pred.fold == f["fold"]) & (pred.split == name)]
            y = rows[Y_COLS].to_numpy()
            p = (rows[P_COLS].to_numpy() > thr).astype(int)
            present = y.sum(0) > 0
            ref = f1_score(y, p, average=None, zero_division=0, labels=range(N_CLASSES))[present].mean()
            assert f[f"{name}_macro_f1"] == pytest.approx(ref, abs=1e-12)
            per_fold.setdefault(name, []).append(ref)
            assert f[f"n_{name}"] == len(rows)
    assert s["test_macro_f1_mean"] == pytest.approx(np.mean(per_fold["test"]), abs=1e-12)
    assert s["test_macro_f1_std"] == pytest.approx(np.std(per_fold["test"]), abs=1e-12)
    assert s["std_ddof"] == 0 and s["n_folds"] == 5 and s["n_features"] == X.shape[1]
    pc = res.per_class
    assert len(pc) == 5 * 3 * N_CLASSES
    test_pc = pc[(pc.split == "test") & (pc["class"] == CATEGORIES[3])]
    assert (test_pc.support == 0).all()
    assert set(pred.columns) >= {"image_id", "fold", "split", "target", *Y_COLS, *P_COLS}


# ---------------------------------------------------------------------------------------------------- batched == separate
def _reference(X, Y, events, params, k_index, per_step: bool = False):
    """One fold trained alone: nn.Sequential + torch.optim.AdamW + CosineAnnealingLR, replaying the stream.
    per_step: T_max = epochs x batches, stepped every batch (Dino4Cells' run_end_to_end.py); else per epoch."""
    from dinoloc.classify.trainer import fold_seed

    fold_k = list(events["folds"])[k_index]
    tr = events["folds"][fold_k]["train"]
    mean, std = fit_standardizer(X[tr])
    Xs = torch.as_tensor(((X - mean) / std).astype(np.float32))
    Yt = torch.as_tensor(Y, dtype=torch.float32)
    dims = (X.shape[1], *params.hidden, N_CLASSES)
    layers = []
    for (w, b), fan_in, fan_out in zip(init_mlp(X.shape[1], params.hidden, N_CLASSES, fold_seed(params.seed, k_index, 0)),
                                       dims[:-1], dims[1:], strict=True):
        lin = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.AdamW(model.parameters(), lr=params.effective_lr(), betas=params.betas,
                            weight_decay=params.weight_decay)
    total = params.epochs * math.ceil(len(tr) / params.batch_size) if per_step else params.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for e in events["epochs"]:
        order = e["rows"][k_index][e["valid"][k_index]]
        for lo in range(0, len(order), params.batch_size):
            idx = torch.as_tensor(order[lo : lo + params.batch_size])
            opt.zero_grad()
            loss_fn(model(Xs[idx]), Yt[idx]).backward()
            opt.step()
            if per_step:
                sched.step()
        if not per_step:
            sched.step()
    with torch.no_grad():
        return torch.sigmoid(model(Xs)).double().numpy()


def test_batched_training_equals_separate_per_fold_models():
    # Unequal folds (one fold half the size) so that folds make different numbers of steps per epoch.
    data = make_data(n_targets=100, fold_of_target=lambda t: min((t - 20) // 18, 4))
    X, Y, split, fold, ids, targets = data
    n_train = [int(((split == "train") & (fold != k)).sum()) for k in range(5)]
    params = small_params(epochs=8, dropout=0.0, batch_size=32, lr=3e-3)
    assert len({math.ceil(n / 32) for n in n_train}) > 1
    events, hook = _collect_hook()
    res = run(data, params, hook=hook)
    for i, k in enumerate(events["folds"]):
        ref = _reference(X, Y, events, params, i)
        for name in ("val", "test"):
            rows = res.predictions[(res.predictions.fold == k) & (res.predictions.split == name)]
            pos = {v: j for j, v in enumerate(ids)}
            r = np.array([pos[v] for v in rows.image_id])
            np.testing.assert_allclose(rows[P_COLS].to_numpy(), ref[r], atol=2e-5)


def test_deterministic_and_dropout_used():
    data = make_data()
    params = small_params(epochs=4)
    a, b = run(data, params), run(data, params)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    assert a.summary == b.summary
    c = run(data, small_params(epochs=4, dropout=0.0))
    assert not np.allclose(a.predictions[P_COLS].to_numpy(), c.predictions[P_COLS].to_numpy())
    d = run(data, small_params(epochs=4, seed=1))
    assert not np.allclose(a.predictions[P_COLS].to_numpy(), d.predictions[P_COLS].to_numpy())


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_or_warn():
    X, Y, split, fold, ids, targets = make_data()
    p = small_params(epochs=1)
    Xn = X.copy()
    Xn[[3, 7]] = np.nan
    Xn[9, 0] = np.inf
    with pytest.raises(DinolocError, match=r"3 embedding row.*img0003"):
        run((Xn, Y, split, fold, ids, targets), p)
    with pytest.raises(DinolocError, match="feature rows do not match the manifest"):
        run((X[:-1], Y, split, fold, ids, targets), p)
    with pytest.raises(DinolocError, match="feature rows do not match the manifest"):
        run((X, Y, split[:-1], fold, ids, targets), p)
    with pytest.raises(DinolocError, match="no test rows"):
        run((X, Y, np.where(split == "test", "unlabeled", split), fold, ids, targets), p)
    with pytest.raises(DinolocError, match="fold 0 has no training rows"):
        run((X, Y, split, np.where(fold >= 0, 0, -1), ids, targets), p)
    Y2 = Y.copy()
    Y2[split == "train", 5] = 0
    Y2[(split == "train") & (fold == 1), 5] = 1  # class 5 present only in fold 1: absent from fold 1's training part
    with pytest.warns(UserWarning, match="fold 1"):
        res = run((X, Y2, split, fold, ids, targets), p)
    assert any(CATEGORIES[5] in w and "fold 1" in w for w in res.summary["warnings"])


def test_classifier_seeds_repeat_the_cv_and_report_seed_std_beside_fold_std():
    from dinoloc.classify.cv import cross_validate_seeds

    data = make_data(n_targets=60, dim=8)
    two = cross_validate_seeds(CVData(*data), small_params(n_seeds=2, seed=3), progress=False)
    one = [run(data, small_params(seed=s)) for s in (3, 4)]
    means = [cv.summary["test_macro_f1_mean"] for cv in one]
    assert two.summary["n_seeds"] == 2 and two.summary["seeds"] == [3, 4]
    assert two.summary["test_macro_f1_mean"] == pytest.approx(np.mean(means), abs=1e-9)
    assert two.summary["test_macro_f1_seed_std"] == pytest.approx(np.std(means), abs=1e-9)
    assert two.summary["test_macro_f1_std"] == pytest.approx(np.mean([cv.summary["test_macro_f1_std"] for cv in one]))
    assert sorted(two.predictions["seed"].unique()) == [3, 4]
    assert len(two.predictions) == 2 * len(one[0].predictions)
    assert len(two.summary["folds"]) == 2 * len(one[0].summary["folds"])
    single = cross_validate_seeds(CVData(*data), small_params(seed=3), progress=False)
    assert single.summary["test_macro_f1_mean"] == one[0].summary["test_macro_f1_mean"]
    with pytest.raises(DinolocError, match="classifier.n_seeds"):
        small_params(n_seeds=0)
