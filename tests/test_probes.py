"""Probe heads: DINO's weighted k-NN (against a direct numpy transcription of eval_knn.py), the linear head,
their run folders, and the report's head column and ranking notes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from dinoloc import CONFIG_DIR
from dinoloc.classify.cv import CVData, cross_validate
from dinoloc.classify.params import ClassifierParams, KNNParams, params_from_config
from dinoloc.classify.probes import knn_vote
from dinoloc.classify.trainer import train_folds
from dinoloc.io import DinolocError
from dinoloc.report.notes import ranking_notes
from dinoloc.report.runs import collect_runs
from dinoloc.report.tables import build_table, markdown_table
from dinoloc.results import run_dir_name
from dinoloc.rules import typed

REPO = Path(__file__).resolve().parents[1]


def compose_classifier(name: str, *extra: str) -> dict:
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"classifier={name}", *extra])
    return OmegaConf.to_container(cfg.classifier, resolve=True)


def numpy_knn(train_x, train_y, query_x, k, T):
    """eval_knn.py written out with numpy, one query at a time: normalise, cosine, top-k, exp(sim/T) weights."""
    tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    out = []
    for q in query_x:
        q = q / np.linalg.norm(q)
        sim = tr @ q
        top = np.argsort(-sim, kind="stable")[:k]
        w = np.exp(sim[top] / T)
        out.append((w[:, None] * train_y[top]).sum(0) / w.sum())
    return np.array(out)


def test_knn_params_from_yaml_are_dinos():
    d = compose_classifier("knn")
    p = params_from_config(d)
    assert isinstance(p, KNNParams) and (p.k, p.temperature, p.threshold) == (20, 0.07, 0.5)
    assert p.standardize is False  # DINO only L2-normalises
    with pytest.raises(DinolocError, match="classifier.k="):
        typed(KNNParams, {**d, "k": 0})
    with pytest.raises(DinolocError, match="classifier.temperature"):
        typed(KNNParams, {**d, "temperature": -1})
    with pytest.raises(DinolocError, match="classifier.bogus"):
        typed(KNNParams, {**d, "bogus": 1})
    # the demo preset sets the MLP's batch size for every head of its sweep: harmless for the k-NN
    assert params_from_config(compose_classifier("knn", "experiment=demo_probes")) == p


def test_knn_vote_matches_eval_knn_transcription():
    rng = np.random.default_rng(0)
    tx, ty = rng.normal(size=(60, 8)), (rng.random((60, 5)) < 0.3).astype(float)
    q = rng.normal(size=(7, 8))
    got = knn_vote(torch.tensor(tx), torch.tensor(ty), torch.tensor(q), 20, 0.07).numpy()
    np.testing.assert_allclose(got, numpy_knn(tx, ty, q, 20, 0.07), rtol=1e-10, atol=1e-12)
    # cosine: scaling a training row or a query does not change anything
    tx2 = tx * rng.uniform(0.1, 10, size=(60, 1))
    np.testing.assert_allclose(knn_vote(torch.tensor(tx2), torch.tensor(ty), torch.tensor(q * 3), 20, 0.07).numpy(),
                               got, atol=1e-10)
    # fewer training rows than k: all of them vote
    few = knn_vote(torch.tensor(tx[:3]), torch.tensor(ty[:3]), torch.tensor(q), 20, 0.07).numpy()
    np.testing.assert_allclose(few, numpy_knn(tx[:3], ty[:3], q, 3, 0.07), atol=1e-12)


def _data(seed=0, n=120, dim=12, C=4):
    rng = np.random.default_rng(seed)
    y = np.zeros((n, C), dtype=np.int64)
    y[np.arange(n), np.arange(n) % C] = 1
    X = (y @ rng.normal(size=(C, dim)) + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    split = np.where(np.arange(n) < 20, "test", "train")
    fold = np.where(split == "train", np.arange(n) % 5, -1)
    ids = np.array([f"i{i}" for i in range(n)])
    return X, y, split, fold, ids, ids.copy()


def test_knn_cross_validate_uses_only_the_folds_training_rows():
    X, y, split, fold, ids, tg = _data()
    p = KNNParams(k=5, temperature=0.07, threshold=0.5, standardize=False)
    cv = cross_validate(CVData(X, y, split, fold, ids, tg), p, progress=False, classes=list("abcd"))
    assert cv.summary["classes"] == list("abcd")
    pred = cv.predictions
    for k in range(5):
        train = (split == "train") & (fold != k)
        for part in ("val", "test"):
            rows = pred[(pred["fold"] == k) & (pred["split"] == part)]
            idx = [int(i[1:]) for i in rows["image_id"]]
            want = numpy_knn(X[train].astype(np.float64), y[train], X[idx].astype(np.float64), 5, 0.07)
            np.testing.assert_allclose(rows[[f"p_{c}" for c in "abcd"]].to_numpy(), want, atol=1e-9)
    assert cv.summary["test_macro_f1_mean"] > 0.8  # separable clusters: the k-NN finds them
    # standardize=true changes the geometry (fold statistics before the normalisation)
    cv2 = cross_validate(CVData(X, y, split, fold, ids, tg), KNNParams(5, 0.07, 0.5, True), progress=False,
                         classes=list("abcd"))
    assert not np.allclose(cv2.predictions.filter(like="p_").to_numpy(), pred.filter(like="p_").to_numpy())


def test_linear_head_is_one_layer_with_the_mlp_recipe():
    lin, mlp = compose_classifier("linear"), compose_classifier("mlp")
    p = params_from_config(lin)
    assert isinstance(p, ClassifierParams) and p.hidden == () and p.dropout == 0.0
    same = {k for k in mlp if k not in ("name", "hidden", "dropout")}
    assert all(lin[k] == mlp[k] for k in same)
    X = torch.randn(50, 6)
    Y = (torch.rand(50, 3) < 0.3).float()
    small = typed(ClassifierParams, {**lin, "epochs": 2, "batch_size": 16})
    w, b = train_folds(X, Y, [np.arange(40), np.arange(10, 50)], torch.zeros(2, 6), torch.ones(2, 6), small)
    assert [tuple(t.shape) for t in w] == [(2, 6, 3)] and [tuple(t.shape) for t in b] == [(2, 1, 3)]


def test_run_dir_names():
    assert run_dir_name("hpa", "mapping", "mlp") == "hpa__mapping"  # unchanged for the paper's head
    assert run_dir_name("hpa", "mapping", "knn") == "hpa__mapping__knn"
    assert run_dir_name("hpa", "mapping", "knn", "crop600") == "hpa__mapping__knn__crop600"
    assert run_dir_name("hpa", "mapping", "mlp", "baseline") == "hpa__mapping"


def test_ranking_notes():
    t = pd.DataFrame({"backbone": ["a", "b", "a", "b", "a", "b"], "strategy": ["m"] * 6,
                      "head": ["mlp", "mlp", "knn", "knn", "linear", "linear"],
                      "test_f1_mean": [0.5, 0.4, 0.3, 0.6, 0.45, 0.2]})
    notes = ranking_notes(t)
    assert len(notes) == 1 and notes[0].startswith("knn ranks") and "a__m > b__m" in notes[0]
    assert "best row differs" in notes[0]
    assert ranking_notes(t[t["head"] != "knn"]) == []
    assert ranking_notes(t[t["head"] == "mlp"]) == []


def test_report_has_a_head_column(tmp_path):
    from test_report import make_test_set, write_run

    test_set = make_test_set()
    runs = tmp_path / "runs"
    write_run(runs, "hpa", "mapping", test_set, quality=0.9, seed=1)
    write_run(runs, "imagenet", "mapping", test_set, quality=0.3, seed=2)
    # the same rows judged by the k-NN, which prefers ImageNet
    for bb, q, seed in (("hpa", 0.2, 3), ("imagenet", 0.8, 4)):
        d = write_run(runs / "tmp", bb, "mapping", test_set, quality=q, seed=seed)
        res = json.loads((d / "result.json").read_text())
        res["head"] = "knn"
        (d / "result.json").write_text(json.dumps(res))
        d.rename(runs / f"{bb}__mapping__knn")
    (runs / "tmp").rmdir()
    table, missing = build_table(collect_runs(runs), expected=["hpa__mapping__knn"], n_boot=50,
                                          seed=0, level=0.95, method="percentile")
    assert missing == []
    assert list(table["run"]) == ["imagenet__mapping", "imagenet__mapping__knn", "hpa__mapping", "hpa__mapping__knn"]
    assert list(table["head"]) == ["mlp", "knn", "mlp", "knn"]
    md = markdown_table(table, missing, synthetic=False)
    assert "| Head |" in md and "| knn |" in md
    assert "Ranking: knn ranks the rows differently from mlp" in md


def test_knn_leave_group_out_predicts_each_group_from_the_others_only():
    from dinoloc.classify.cv import knn_leave_group_out

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (20, 4)) + 3, rng.normal(0, 0.1, (20, 4)) - 3])
    Y = np.zeros((40, 2), dtype=int)
    Y[:20, 0] = Y[20:, 1] = 1
    group = np.repeat([0, 1, 2, 3], 10)  # groups 0-1 hold cluster A, 2-3 cluster B
    params = KNNParams(k=5, temperature=0.07, threshold=0.5, standardize=True)
    np.testing.assert_array_equal(knn_leave_group_out(X, Y, group, params), Y)
    Y2 = Y.copy()
    Y2[:10, 0] = 0  # group 0's own class-0 labels are gone; its neighbours (group 1) still carry them
    Y2[10:20, 0] = 0
    Y2[:10, 1] = 1  # group 0 is the only carrier of class 1 in cluster A: no other group can vote it in
    pred = knn_leave_group_out(X, Y2, group, params)
    assert pred[:10, 1].sum() == 0 and pred[10:20, 1].sum() == 10  # group 1 sees group 0's class 1
