"""Dino4Cells' own choices where the paper is silent (issue 17): each option changes what its YAML says.

Classifier: lr_scaling (linear scaling rule), schedule_step (per-step cosine), sampler (class-uniform draw).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dinoloc.classify import ClassifierParams, class_uniform_weights, cross_validate, fit_standardizer, fold_seed, init_mlp
from dinoloc.io import DinolocError
from dinoloc.ontology import N_CLASSES
from test_classify import P_COLS, _collect_hook, make_data, small_params, yaml_dict


def run(data, params, **kw):
    return cross_validate(*data, params, progress=False, **kw)


# ---------------------------------------------------------------------------------------------------- lr scaling
def test_linear_lr_scaling_at_batch_512_one_process_is_2e4():
    d = yaml_dict()
    assert (d["lr"], d["batch_size"], d["lr_scaling"]) == (1e-4, 512, "none")  # the paper's values, unscaled
    assert ClassifierParams.from_dict(d).effective_lr() == pytest.approx(1e-4)
    assert ClassifierParams.from_dict({**d, "lr_scaling": "linear"}).effective_lr() == pytest.approx(2e-4)
    # result.json (the summary) records the lr training actually used
    data = make_data(n_targets=40, dim=4)
    res = run(data, small_params(epochs=1, batch_size=512, lr=1e-4, lr_scaling="linear"))
    assert res.summary["classifier_effective"]["lr"] == pytest.approx(2e-4)
    assert res.summary["classifier_effective"]["sampler"] == "rarest_label"


def test_linear_scaling_trains_exactly_like_the_scaled_lr():
    data = make_data(n_targets=60, dim=8)
    scaled = run(data, small_params(epochs=3, batch_size=64, lr=1e-3, lr_scaling="linear"))
    by_hand = run(data, small_params(epochs=3, batch_size=64, lr=1e-3 * 64 / 256))
    unscaled = run(data, small_params(epochs=3, batch_size=64, lr=1e-3))
    np.testing.assert_array_equal(scaled.predictions[P_COLS].to_numpy(), by_hand.predictions[P_COLS].to_numpy())
    assert not np.allclose(scaled.predictions[P_COLS].to_numpy(), unscaled.predictions[P_COLS].to_numpy())


def test_bad_option_values_refused_naming_the_key():
    d = yaml_dict()
    for key in ("lr_scaling", "schedule_step", "sampler"):
        with pytest.raises(DinolocError, match=f"classifier.{key}"):
            ClassifierParams.from_dict({**d, key: "bogus"})


# ---------------------------------------------------------------------------------------------------- per-step cosine
def _reference_per_step(X, Y, events, params, k_index):
    """One fold alone: nn.Sequential + AdamW + CosineAnnealingLR(T_max = epochs x batches) stepped every batch,
    as Dino4Cells' run_end_to_end.py does, replaying the batched trainer's index stream."""
    fold_k = list(events["folds"])[k_index]
    tr = events["folds"][fold_k]["train"]
    mean, std = fit_standardizer(X[tr])
    Xs = torch.as_tensor(((X - mean) / std).astype(np.float32))
    Yt = torch.as_tensor(Y, dtype=torch.float32)
    dims = (X.shape[1], *params.hidden, N_CLASSES)
    layers = []
    init = init_mlp(X.shape[1], params.hidden, N_CLASSES, fold_seed(params.seed, k_index, 0))
    for (w, b), fan_in, fan_out in zip(init, dims[:-1], dims[1:], strict=True):
        lin = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.AdamW(model.parameters(), lr=params.effective_lr(), betas=params.betas,
                            weight_decay=params.weight_decay)
    total = params.epochs * math.ceil(len(tr) / params.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for e in events["epochs"]:
        order = e["rows"][k_index][e["valid"][k_index]]
        for lo in range(0, len(order), params.batch_size):
            idx = torch.as_tensor(order[lo : lo + params.batch_size])
            opt.zero_grad()
            loss_fn(model(Xs[idx]), Yt[idx]).backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return torch.sigmoid(model(Xs)).double().numpy()


def test_per_step_cosine_equals_torch_scheduler_stepped_every_batch():
    # Unequal folds: each fold has its own number of updates, hence its own T_max.
    data = make_data(n_targets=100, fold_of_target=lambda t: min((t - 20) // 18, 4))
    X, Y, split, fold, ids, targets = data
    params = small_params(epochs=6, dropout=0.0, batch_size=32, lr=3e-2, schedule_step="step", lr_scaling="linear")
    events, hook = _collect_hook()
    res = run(data, params, hook=hook)
    assert res.summary["classifier_effective"]["schedule_step"] == "step"
    pos = {v: j for j, v in enumerate(ids)}
    for i, k in enumerate(events["folds"]):
        ref = _reference_per_step(X, Y, events, params, i)
        rows = res.predictions[(res.predictions.fold == k) & (res.predictions.split == "test")]
        np.testing.assert_allclose(rows[P_COLS].to_numpy(), ref[[pos[v] for v in rows.image_id]], atol=2e-5)
    per_epoch = run(data, small_params(epochs=6, dropout=0.0, batch_size=32, lr=3e-2, lr_scaling="linear"))
    assert not np.allclose(per_epoch.predictions[P_COLS].to_numpy(), res.predictions[P_COLS].to_numpy())


# ---------------------------------------------------------------------------------------------------- class-uniform sampler
def _two_stage_probabilities(y: np.ndarray) -> np.ndarray:
    """P(row) under 'draw a class uniformly among classes with a positive, then a positive of it uniformly',
    enumerated class by class (the definition, not the formula in classify.py)."""
    p = np.zeros(len(y))
    classes = [c for c in range(y.shape[1]) if y[:, c].any()]
    for c in classes:
        pos = np.flatnonzero(y[:, c])
        p[pos] += 1.0 / len(classes) / len(pos)
    return p


def test_class_uniform_sampler_draw_frequencies_match_its_definition():
    data = make_data(n_targets=60, per_target=2, dim=4)
    X, Y, split, fold, ids, targets = data
    Y = Y.copy()
    unl = np.flatnonzero(split == "train")[::7]
    Y[unl] = 0
    epochs = 80
    events, hook = _collect_hook()
    res = run((X, Y, split, fold, ids, targets),
              small_params(hidden=[4], epochs=epochs, batch_size=256, sampler="class_uniform"), hook=hook)
    assert res.summary["classifier_effective"]["sampler"] == "class_uniform"
    tr = events["folds"][0]["train"]
    expected = _two_stage_probabilities(Y[tr])
    np.testing.assert_allclose(class_uniform_weights(Y[tr]), expected, rtol=1e-12)
    drawn = np.concatenate([e["rows"][0][e["valid"][0]] for e in events["epochs"]])
    assert len(drawn) == epochs * len(tr)  # epoch length = training size, as len(dataset) in Dino4Cells
    assert not np.isin(drawn, unl).any()
    counts = pd.Series(drawn).value_counts().reindex(tr, fill_value=0).to_numpy()
    # Per class: the share of draws landing on its positives is that class's expected share (1/C+ for a class
    # whose positives have no other label), within binomial noise.
    for c in range(N_CLASSES):
        pos = Y[tr][:, c] == 1
        if not pos.any():
            continue
        exp = expected[pos].sum()
        sd = math.sqrt(exp * (1 - exp) / len(drawn))
        assert counts[pos].sum() / len(drawn) == pytest.approx(exp, abs=5 * sd), c
    # and it differs from the rarest-label draw on the same data
    from dinoloc.classify import rarest_label_weights

    w, _ = rarest_label_weights(Y[tr], 0.0)
    assert not np.allclose(w / w.sum(), expected)


def test_resample_none_ignores_the_sampler():
    data = make_data(n_targets=40, dim=4)
    events, hook = _collect_hook()
    res = run(data, small_params(epochs=2, resample="none", sampler="class_uniform"), hook=hook)
    assert res.summary["classifier_effective"]["sampler"] == "none"
    tr = events["folds"][0]["train"]
    for e in events["epochs"]:
        assert sorted(e["rows"][0][e["valid"][0]]) == sorted(tr)
