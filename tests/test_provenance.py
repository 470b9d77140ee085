"""Provenance of a Table III row: the generated deviations list, open-choice notes, checkpoint facts,
embedding health."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from dinoloc import provenance, stats
from dinoloc.backbones.checkpoint import checkpoint_facts


def _resolved(**over) -> dict:
    r = {
        "classifier": {"hidden": [512, 256], "dropout": 0.5, "epochs": 300, "batch_size": 512, "lr": 1e-4,
                       "weight_decay": 0.04, "betas": [0.9, 0.999], "scheduler": "cosine",
                       "loss": "bce_with_logits", "threshold": 0.5, "seed": 0},
        "split": {"test_size": 0.1, "n_folds": 5, "group_by": "target", "seed": 0},
        "labels": {"min_grade": 1},
        "preprocess": {"img_size": 224, "spatial": "resize", "intensity": "minmax", "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "crop_size": 600},
        "used": {"lr": 1e-4, "schedule_step": "epoch", "sampler": "rarest_label", "standardize": True,
                 "epochs": 300, "batch_size": 512, "arch": "vit_base_patch8_224", "patch_size": 8, "img_size": 224,
                 "dino_epochs": 300},
    }
    for key, value in over.items():
        section, name = key.split("__")
        r[section][name] = value
    return r


def _result(backbone: str, resolved: dict | None, **extra) -> dict:
    return {"backbone": backbone, "strategy": "mapping", "resolved": resolved, **extra}


def test_the_papers_values_give_no_deviation():
    assert provenance.deviations(_resolved()) == {}


def test_deviations_are_diffed_from_the_resolved_config():
    runs = [_result("a", _resolved(used__epochs=5, labels__min_grade=2)),
            _result("b", _resolved(used__epochs=5, used__img_size=64))]
    assert provenance.deviations(runs[0]["resolved"]) == {"used.epochs": (5, 300), "labels.min_grade": (2, 1)}
    lines = provenance.deviations_list(runs)
    assert "`used.epochs` = 5 (paper: 300) — all rows" in lines
    assert "`labels.min_grade` = 2 (paper: 1) — a__mapping" in lines
    assert "`used.img_size` = 64 (paper: 224) — b__mapping" in lines
    assert len(lines) == 3
    old = provenance.deviations_list([_result("c", None)])
    assert old and "not recorded" in old[0]


def _used(**classifier_over) -> dict:
    """classify/stage.py used_values for the shipped MLP recipe with `classifier_over` applied."""
    from types import SimpleNamespace

    from dinoloc.classify.params import params_from_config
    from dinoloc.classify.stage import used_values
    from dinoloc.config import compose, plain

    params = params_from_config({**plain(compose().classifier), **classifier_over})
    bb = SimpleNamespace(arch="vit_base_patch8_224", preprocess=SimpleNamespace(img_size=224), dino_epochs=300)
    return used_values(params, bb, 8, {})


@pytest.mark.parametrize("over, key, value", [
    ({"lr_scaling": "linear"}, "used.lr", 2e-4),  # 1e-4 x 512 / 256: the configured lr is still 1e-4
    ({"schedule_step": "step"}, "used.schedule_step", "step"),
    ({"sampler": "class_uniform"}, "used.sampler", "class_uniform"),
    ({"resample": "none"}, "used.sampler", "none"),
    ({"standardize": False}, "used.standardize", False),
    ({"epochs": 7}, "used.epochs", 7),
    ({"batch_size": 32}, "used.batch_size", 32),
])
def test_every_used_value_that_differs_from_the_paper_gives_a_line(over, key, value):
    resolved = _resolved()
    resolved["used"] = _used()
    assert provenance.deviations(resolved, "imagenet") == {}  # the shipped recipe is the paper's
    resolved["used"] = _used(**over)
    dev = provenance.deviations(resolved, "imagenet")
    assert key in dev and dev[key][0] == pytest.approx(value) if isinstance(value, float) else dev[key][0] == value


def test_architecture_patch_and_dino_epochs_per_row():
    res = _resolved(used__arch="vit_tiny_patch16_224", used__patch_size=16, used__dino_epochs=300)
    dev = provenance.deviations(res, "hpa_demo")  # Table III: HPA trained 100 DINO epochs
    assert dev["used.arch"] == ("vit_tiny_patch16_224", "vit_base_patch8_224")
    assert dev["used.patch_size"] == (16, 8) and dev["used.dino_epochs"] == (300, 100)
    assert "used.dino_epochs" not in provenance.deviations(res, "opencell")  # 300 is OpenCell's
    assert "used.dino_epochs" not in provenance.deviations(res, "random")  # the floor has no paper row


def test_choices_note_states_each_open_choice_per_row():
    runs = [_result("a", _resolved()), _result("b", _resolved(split__group_by="none", preprocess__spatial="center_crop"))]
    note = provenance.choices_note(runs)
    assert "grouped by protein (no target in two sets) (a__mapping)" in note and "image level" in note
    assert "whole FOV resized to 224 px (a__mapping)" in note and "centred 600 px square" in note
    assert "grade 1" in note and "divided by its image maximum" in note and "Train F1" in note


def test_checkpoint_facts_from_an_official_style_checkpoint():
    state = {"patch_embed.proj.weight": torch.zeros(96, 2, 8, 8), "cls_token": torch.zeros(1, 1, 96)}
    obj = {"teacher": state, "epoch": 3, "args": argparse.Namespace(arch="vit_tiny", patch_size=8, epochs=100)}
    facts = checkpoint_facts(obj, state)
    assert facts == {"epoch": 3, "arch": "vit_tiny", "patch_size": 8, "args_epochs": 100, "embed_dim": 96,
                     "in_chans": 2}
    bare = checkpoint_facts(state, state)  # a backbone-only release: no epoch, facts from the weights
    assert bare == {"epoch": None, "embed_dim": 96, "in_chans": 2, "patch_size": 8}


def test_epoch_mismatch_and_collapsed_embeddings_are_reported():
    a = _result("a", _resolved(), dino_epochs_config=300, provenance={"checkpoint": {"epoch": 3}})
    b = _result("b", _resolved(), dino_epochs_config=None, provenance={"checkpoint": {"epoch": 3}})
    assert provenance.epoch_mismatches([a, b]) == ["a__mapping: checkpoint epoch 3, backbone.dino_epochs=300"]
    rng = np.random.default_rng(0)
    healthy = stats.embedding_health(rng.normal(size=(300, 32)))
    collapsed = stats.embedding_health(np.outer(rng.normal(size=300), rng.normal(size=32))
                                       + 1e-4 * rng.normal(size=(300, 32)))
    constant = stats.embedding_health(np.ones((300, 32)))
    assert healthy["effective_rank"] > 20 and healthy["top_component_share"] < 0.1
    assert collapsed["effective_rank"] < 1.1 and collapsed["top_component_share"] > 0.99
    assert provenance.health_problem(healthy) is None
    c = _result("c", _resolved(), provenance={"embedding_health": collapsed})
    k = _result("k", _resolved(), provenance={"embedding_health": constant})
    warns = provenance.embedding_warnings([c, k, _result("h", _resolved(), provenance={"embedding_health": healthy})])
    assert len(warns) == 2 and all("check the checkpoint and the channel order" in w for w in warns)
    assert "collapsed" in warns[0] and "near-constant" in warns[1]


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_effective_rank_of_equal_variance_subspaces(rank):
    rng = np.random.default_rng(rank)
    x = rng.normal(size=(4000, rank)) @ np.linalg.qr(rng.normal(size=(32, rank)))[0].T
    assert stats.embedding_health(x)["effective_rank"] == pytest.approx(rank, rel=0.1)
