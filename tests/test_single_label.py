"""Single-label data (one class per image): detected, and every head predicts the top class, as official DINO's
eval_knn.py / eval_linear.py do, instead of thresholding each class at 0.5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from dinoloc.classify.cv import CVData, cross_validate
from dinoloc.classify.params import ClassifierParams, KNNParams
from dinoloc.classify.probes import knn_vote
from dinoloc.metrics import decide, is_single_label
from dinoloc.rules import typed

CLASSES = [f"c{i}" for i in range(6)]


def _gaussians(seed: int = 0, n_per: int = 40, d: int = 16, spread: float = 1.2):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), d))
    label = np.repeat(np.arange(len(CLASSES)), n_per)
    x = centres[label] + spread * rng.normal(size=(len(label), d))
    return x.astype(np.float32), np.eye(len(CLASSES), dtype=np.int64)[label], label


def dino_knn_top1(train_x, train_label, test_x, k, T, n_classes):
    """Official DINO eval_knn.py knn_classifier (facebookresearch/dino), top-1, on one test chunk:
    normalised features, similarity, top-k, one-hot votes weighted by exp(sim / T), sorted descending."""
    train_features = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float64), dim=1)
    features = torch.nn.functional.normalize(torch.as_tensor(test_x, dtype=torch.float64), dim=1)
    train_labels = torch.as_tensor(train_label)
    similarity = torch.mm(features, train_features.t())
    distances, indices = similarity.topk(k, largest=True, sorted=True)
    candidates = train_labels.view(1, -1).expand(len(features), -1)
    retrieved_neighbors = torch.gather(candidates, 1, indices)
    retrieval_one_hot = torch.zeros(len(features) * k, n_classes, dtype=torch.float64)
    retrieval_one_hot.scatter_(1, retrieved_neighbors.view(-1, 1), 1)
    distances_transform = distances.clone().div_(T).exp_()
    probs = torch.sum(torch.mul(retrieval_one_hot.view(len(features), -1, n_classes),
                                distances_transform.view(len(features), -1, 1)), 1)
    _, predictions = probs.sort(1, True)
    return predictions[:, 0].numpy()


def test_detection():
    assert is_single_label(np.eye(3, dtype=int)[[0, 1, 2, 1]])
    assert not is_single_label(np.array([[1, 1, 0], [0, 1, 0]]))
    assert not is_single_label(np.array([[0, 0, 0], [0, 1, 0]]))  # a row with no class is not single-label


def test_knn_top_class_equals_official_dino_rule():
    x, y, label = _gaussians(1)
    rng = np.random.default_rng(2)
    test = rng.random(len(x)) < 0.3
    vote = knn_vote(torch.as_tensor(x[~test]), torch.as_tensor(y[~test]), torch.as_tensor(x[test]), 20, 0.07)
    ours = decide(vote.numpy(), 0.5, single_label=True).argmax(axis=1)
    ref = dino_knn_top1(x[~test], label[~test], x[test], 20, 0.07, len(CLASSES))
    np.testing.assert_array_equal(ours, ref)
    # the multi-label rule leaves images with no class at all; the top class never does
    assert (decide(vote.numpy(), 0.5, single_label=False).sum(axis=1) == 0).any()
    assert (decide(vote.numpy(), 0.5, single_label=True).sum(axis=1) == 1).all()


def _cv(params, seed=3):
    x, y, label = _gaussians(seed, spread=2.5)
    rng = np.random.default_rng(seed)
    n = len(x)
    split = np.where(rng.random(n) < 0.25, "test", "train")
    fold = np.where(split == "train", rng.integers(0, 3, n), -1)
    ids = np.array([f"img{i}" for i in range(n)])
    return cross_validate(CVData(x, y, split, fold, ids, ids), params, progress=False, classes=CLASSES), y, split


@pytest.mark.parametrize("head", ["knn", "mlp"])
def test_cross_validate_predicts_the_top_class_on_single_label_data(head):
    if head == "knn":
        params = KNNParams(k=20, temperature=0.07, threshold=0.5, standardize=True)
    else:
        params = typed(ClassifierParams, {
            "hidden": [32], "dropout": 0.0, "epochs": 8, "batch_size": 32, "lr": 1e-2, "weight_decay": 0.0,
            "betas": [0.9, 0.999], "scheduler": "cosine", "loss": "bce_with_logits", "threshold": 0.5,
            "resample": "none", "unlabeled_weight": 0.0, "standardize": True, "seed": 0, "lr_scaling": "none",
            "schedule_step": "epoch", "sampler": "rarest_label", "n_seeds": 1})
    cv, y, split = _cv(params)
    assert cv.summary["single_label"] is True
    test = cv.predictions[cv.predictions["split"] == "test"]
    p = test[[f"p_{c}" for c in CLASSES]].to_numpy()
    if head == "mlp":  # softmax outputs, as CrossEntropyLoss's model
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    truth = test[[f"y_{c}" for c in CLASSES]].to_numpy()
    pred = decide(p, 0.5, True)
    # result.json's number is sklearn's macro F1 of the top class
    for f in cv.summary["folds"]:
        rows = test["fold"] == f["fold"]
        assert f["test_macro_f1"] == pytest.approx(
            f1_score(truth[rows], pred[rows.to_numpy()], average="macro", zero_division=0), abs=1e-12)
