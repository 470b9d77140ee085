"""DINO pretraining: loss, schedules, EMA, augmentation, checkpoint format, resume, DDP, the stage runner and
the recipe's one source (configs/pretrain/*.yaml, no defaults in code)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from dinoloc.backbones.vit import create_vit
from dinoloc.config import compose as compose_config
from dinoloc.io import DinolocError
from dinoloc.pretrain import step as step_mod
from dinoloc.pretrain import train as train_mod
from dinoloc.pretrain.augment import MultiCropAugment, cell_warp, remove_channel, sample_generator
from dinoloc.pretrain.checkpoint import LOG_COLUMNS, from_official_keys, weight_change
from dinoloc.pretrain.data import select_pretrain_images
from dinoloc.pretrain.head import DINOHead, MultiCropWrapper
from dinoloc.pretrain.loss import DINOLoss, sinkhorn_knopp
from dinoloc.pretrain.params import CropSpec, PretrainParams
from dinoloc.pretrain.schedules import cosine_scheduler, teacher_temp_schedule
from dinoloc.pretrain.stage import PretrainSpec, pretrain_images, run_pretrain
from dinoloc.pretrain.step import (
    build_dino_model,
    cancel_gradients_last_layer,
    clip_gradients,
    ema_update,
    param_groups,
)
from dinoloc.pretrain.train import PretrainModel, train_dino
from dinoloc.rules import typed

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCH = "vit_tiny_patch16_224"
TINY_KW = {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}
# A tiny run of the paper's recipe (configs/pretrain/opencell.yaml) with official DINO's short-run teacher
# temperature (0.04 from the start).
TINY = {
    "epochs": 2, "batch_size_per_gpu": 4, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
    "global_crop_size": 32, "local_crop_size": 16, "local_crops_number": 2, "num_workers": 0,
    "warmup_epochs": 1, "amp": "none", "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
}


@functools.cache
def recipe(name: str = "opencell") -> dict:
    """configs/pretrain/<name>.yaml as composed (the recipe's one source)."""
    return OmegaConf.to_container(compose_config([f"pretrain={name}"]).pretrain, resolve=True)


def tiny_params(**overrides) -> PretrainParams:
    return typed(PretrainParams, {**recipe("opencell"), **TINY, **overrides})


def tiny_images(n: int = 8, size: int = 40, channels: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"img{k}": (rng.random((channels, size, size)) * 1000).astype(np.float32) for k in range(n)}


def run_tiny(out_dir: Path, images: dict[str, np.ndarray], **overrides) -> Path:
    return train_dino(
        [(k, k) for k in images], images.__getitem__, ["protein", "nucleus"], out_dir,
        model=PretrainModel(arch=TINY_ARCH, model_kwargs=TINY_KW, in_chans=2, intensity="zscore", mean=None, std=None),
        params=tiny_params(**overrides), device="cpu",
    )


def load_ckpt(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------------- loss
def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    b, k, ncrops, t_temp, s_temp = 3, 5, 4, 0.07, 0.1
    student = torch.randn(ncrops * b, k)
    teacher = torch.randn(2 * b, k)
    loss_fn = DINOLoss(k, ncrops, t_temp, t_temp, 0, 3, student_temp=s_temp, center_momentum=0.9,
                        centering="softmax_center")
    loss_fn.center.copy_(torch.randn(1, k))  # a non-zero centre must be subtracted
    center = loss_fn.center.clone()
    got = loss_fn(student, teacher, epoch=0).item()

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    total, terms = 0.0, 0
    for iq in range(2):
        for v in range(ncrops):
            if v == iq:
                continue
            per_sample = 0.0
            for i in range(b):
                q = softmax([(teacher[iq * b + i, j] - center[0, j]).item() / t_temp for j in range(k)])
                s = [student[v * b + i, j].item() / s_temp for j in range(k)]
                log_z = math.log(sum(math.exp(x) for x in s))
                per_sample += sum(-q[j] * (s[j] - log_z) for j in range(k))
            total += per_sample / b
            terms += 1
    assert terms == 2 * (ncrops - 1)
    assert got == pytest.approx(total / terms, rel=1e-5)


def test_center_update_is_ema_of_teacher_mean():
    torch.manual_seed(1)
    loss_fn = DINOLoss(6, 3, 0.04, 0.04, 0, 1, student_temp=0.1, center_momentum=0.9, centering="softmax_center")
    t1, t2 = torch.randn(4, 6), torch.randn(4, 6)
    loss_fn(torch.randn(6, 6), t1, 0)
    torch.testing.assert_close(loss_fn.center, 0.1 * t1.mean(0, keepdim=True))
    loss_fn(torch.randn(6, 6), t2, 0)
    torch.testing.assert_close(loss_fn.center, 0.9 * 0.1 * t1.mean(0, keepdim=True) + 0.1 * t2.mean(0, keepdim=True))


def _dinov2_sinkhorn_knopp(teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3) -> torch.Tensor:
    """DINOv2's sinkhorn_knopp_teacher (dinov2/loss/dino_clstoken_loss.py) for one process, in the input's dtype."""
    Q = torch.exp(teacher_output / teacher_temp).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def test_sinkhorn_knopp_equals_dinov2_and_balances_prototypes():
    torch.manual_seed(3)
    logits = torch.randn(12, 8)
    got = sinkhorn_knopp(logits, 0.1)
    torch.testing.assert_close(got, _dinov2_sinkhorn_knopp(logits, 0.1))
    torch.testing.assert_close(got.sum(1), torch.ones(12))  # every sample: a distribution over prototypes
    # every prototype near B/K of the batch's mass, much closer than the plain softmax's (3 iterations, not exact)
    for temp in (0.1, 1.0):
        share = sinkhorn_knopp(logits, temp).sum(0) / (12 / 8)
        plain = torch.softmax(logits / temp, dim=1).sum(0) / (12 / 8)
        assert (share - 1).abs().max() < 0.4 * (plain - 1).abs().max()
    # logits / temp up to 100: DINOv2's float32 exp overflows, the shift by the batch maximum keeps it finite
    sharp = torch.rand(12, 8)
    assert not torch.isfinite(_dinov2_sinkhorn_knopp(sharp, 0.01)).all()
    big = sinkhorn_knopp(sharp, 0.01)
    assert torch.isfinite(big).all() and torch.allclose(big.sum(1), torch.ones(12))
    torch.testing.assert_close(big, _dinov2_sinkhorn_knopp(sharp.double(), 0.01).float())


def test_loss_with_sinkhorn_knopp_uses_it_and_leaves_the_centre():
    torch.manual_seed(4)
    loss_fn = DINOLoss(6, 3, 0.05, 0.05, 0, 1, student_temp=0.1, center_momentum=0.9, centering="sinkhorn_knopp")
    teacher, student = torch.randn(4, 6), torch.randn(6, 6)
    torch.testing.assert_close(loss_fn.teacher_probs(teacher, 0), sinkhorn_knopp(teacher, 0.05))
    q = sinkhorn_knopp(teacher, 0.05).chunk(2)
    s = torch.log_softmax(student / 0.1, dim=-1).chunk(3)
    want = sum((-q[iq] * s[v]).sum(-1).mean() for iq in range(2) for v in range(3) if v != iq) / 4
    torch.testing.assert_close(loss_fn(student, teacher, 0), want)
    assert torch.equal(loss_fn.center, torch.zeros(1, 6))  # no EMA centre with Sinkhorn-Knopp
    with pytest.raises(DinolocError, match="pretrain.centering"):
        typed(PretrainParams, {**recipe("opencell"), "centering": "sinkhorn"})


def test_teacher_temperature_warms_up_linearly_then_stays():
    temps = teacher_temp_schedule(0.04, 0.07, 4, 10)
    assert len(temps) == 10
    assert temps[0] == pytest.approx(0.04) and temps[3] == pytest.approx(0.07)
    assert np.allclose(np.diff(temps[:4]), 0.01)
    assert temps[4:] == [pytest.approx(0.07)] * 6


# ----------------------------------------------------------------------------------------------- schedules
def test_cosine_scheduler_warmup_then_cosine():
    s = cosine_scheduler(1.0, 0.1, epochs=5, niter_per_ep=10, warmup_epochs=2, start_warmup_value=0.0)
    assert len(s) == 50
    assert s[0] == 0.0
    assert np.allclose(np.diff(s[:20]), 1.0 / 19)  # linear ramp reaching base at the last warm-up iteration
    assert s[20] == pytest.approx(1.0)  # cosine starts at the base value
    assert np.all(np.diff(s[20:]) < 0)
    assert s[-1] == pytest.approx(0.1, abs=0.9 * (1 - math.cos(math.pi / 30)) / 2 + 1e-12)
    # midpoint of the cosine part is halfway between base and final
    assert s[20 + 15] == pytest.approx(0.55)
    # momentum schedule without warm-up starts exactly at its base
    m = cosine_scheduler(0.996, 1.0, 3, 4)
    assert m[0] == pytest.approx(0.996) and m[-1] > 0.9995


# ----------------------------------------------------------------------------------------- EMA / optimizer
def test_ema_update_matches_formula():
    torch.manual_seed(0)
    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * t0[name] + 0.1 * dict(student.named_parameters())[name])


def test_param_groups_no_decay_on_biases_and_1d():
    model = MultiCropWrapper(create_vit(TINY_ARCH, 2, img_size=32, **TINY_KW), DINOHead(48, 64, 3, 32, 16, norm_last_layer=True))
    decay, no_decay = param_groups(model)
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim > 1 and not names[id(p)].endswith(".bias") for p in decay["params"])
    assert all(p.ndim == 1 or names[id(p)].endswith(".bias") for p in no_decay["params"])
    assert any(names[id(p)] == "backbone.norm.weight" for p in no_decay["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    # the fixed weight-norm magnitude (norm_last_layer) is not optimised at all
    g = model.head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)


def test_last_layer_gradients_cancelled_only_while_frozen():
    head = DINOHead(8, 10, 2, 6, 4, norm_last_layer=True)
    for epoch, expect_none in ((0, True), (1, False)):
        head.zero_grad(set_to_none=True)
        head(torch.randn(5, 8)).sum().backward()
        cancel_gradients_last_layer(epoch, head, freeze_last_layer=1)
        v = head.last_layer.parametrizations.weight.original1
        assert (v.grad is None) == expect_none
        assert head.mlp[0].weight.grad is not None


def test_clip_gradients_per_parameter():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([0.3, 0.4])
    model = nn.Module()
    model.a, model.b = a, b
    clip_gradients(model, 3.0)
    assert a.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]))  # already small: untouched


# ------------------------------------------------------------------------------------------------- params
def test_typed_params_validate_and_ignore_data_keys():
    base = recipe()
    p = typed(PretrainParams, {**base, "epochs": 3, "global_crops_scale": [0.5, 1], "source": "folder",
                                  "image_dir": "x"})
    assert p.epochs == 3 and p.global_crops_scale == (0.5, 1.0)
    with pytest.raises(DinolocError, match="pretrain.epochz"):
        typed(PretrainParams, {**base, "epochz": 3})
    for key, value in (("epochs", 0), ("lr", 0.0), ("batch_size_per_gpu", 0), ("warp_prob", 1.5),
                       ("local_crops_scale", [0.5, 0.2]), ("amp", "fp8"), ("epochs", 2.5), ("norm_last_layer", 1)):
        with pytest.raises(DinolocError, match=f"pretrain.{key}"):
            typed(PretrainParams, {**base, key: value})
    for key in ("teacher_temp", "num_workers", "batch_size_per_gpu", "zscore"):
        with pytest.raises(DinolocError, match=f"pretrain.{key} is missing from the pretrain config"):
            typed(PretrainParams, {k: v for k, v in base.items() if k != key})


@pytest.mark.parametrize("name", ["opencell", "small", "demo", "hpa_demo", "imagenet_demo"])
def test_config_files_parse(name):
    d = recipe(name)
    p = typed(PretrainParams, d)
    assert d["source"] == ("opencell" if name in ("opencell", "small", "demo") else "folder")
    if name == "opencell":  # the values the code's defaults used to contradict (0.04, 4, 64)
        assert (p.epochs, p.out_dim, p.global_crop_size, p.local_crop_size, p.local_crops_number) == (
            300, 65536, 224, 96, 8)
        assert (p.teacher_temp, p.num_workers, p.batch_size_per_gpu) == (0.07, 10, 32)


def test_recipe_values_have_no_default_in_code():
    """configs/pretrain/*.yaml is the one source: no recipe field, crop value or head size has a code default."""
    for cls in (PretrainParams, CropSpec):
        with_default = [f.name for f in dataclasses.fields(cls)
                        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
        assert with_default == [], cls
    head = inspect.signature(DINOHead).parameters
    loss = inspect.signature(DINOLoss).parameters
    for params, names in ((head, ("out_dim", "nlayers", "hidden_dim", "bottleneck_dim", "norm_last_layer")),
                          (loss, ("student_temp", "center_momentum", "centering"))):
        assert all(params[n].default is inspect.Parameter.empty for n in names)


def test_select_pretrain_images_never_returns_test():
    split = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(10)],
        "split": ["train", "test", "unlabeled", "test", "train", "train", "test", "unlabeled", "train", "test"],
    })
    got = select_pretrain_images(split)
    test_ids = set(split.loc[split["split"] == "test", "image_id"])
    assert not set(got) & test_ids
    assert set(got) == set(split["image_id"]) - test_ids
    with pytest.raises(DinolocError, match="unknown split"):
        select_pretrain_images(split.assign(split="validation"))


# ------------------------------------------------------------------------------------------- augmentation
def test_multicrop_shapes_determinism_and_any_channel_count():
    spec = dataclasses.replace(typed(PretrainParams, recipe("opencell")).crop_spec(), global_crop_size=24,
                               local_crop_size=12, local_crops_number=3, warp_prob=1.0)
    x = torch.rand(4, 50, 40)
    aug = MultiCropAugment(spec, ["nucleus", "protein", "microtubules", "er"])
    crops = aug(x, sample_generator(0, 1, 5))
    assert [tuple(c.shape) for c in crops] == [(4, 24, 24)] * 2 + [(4, 12, 12)] * 3
    assert all(torch.isfinite(c).all() for c in crops)
    again = aug(x, sample_generator(0, 1, 5))
    assert all(torch.equal(a, b) for a, b in zip(crops, again, strict=True))
    other = aug(x, sample_generator(0, 1, 6))
    assert not torch.equal(crops[0], other[0])
    # no protein channel (RGB-like stand-in) works too, with fixed mean/std normalisation
    rgb = MultiCropAugment(spec, ["r", "g", "b"], mean=[0.5] * 3, std=[0.25] * 3)
    assert rgb(torch.rand(3, 30, 30), sample_generator(1))[0].shape == (3, 24, 24)


def test_channel_removal_never_drops_protein_and_warp_keeps_size():
    x = torch.ones(3, 16, 16)
    for k in range(30):
        out = remove_channel(x, protein=1, g=sample_generator(k))
        assert torch.all(out[1] == 1)
        assert (out.sum(dim=(1, 2)) == 0).sum() == 1
    assert torch.equal(remove_channel(torch.ones(1, 4, 4), protein=0, g=sample_generator(0)), torch.ones(1, 4, 4))
    warped = cell_warp(torch.ones(2, 20, 30), sample_generator(3))
    assert warped.shape == (2, 20, 30) and torch.isfinite(warped).all()
    assert (warped == 0).any()  # one corner moved inward leaves an empty (zero) wedge


# ----------------------------------------------------------------------------------------------- training
def test_teacher_sees_only_global_crops(tmp_path, monkeypatch):
    seen: list[tuple[bool, list[tuple[int, ...]]]] = []
    original = MultiCropWrapper.forward

    def spy(self, x):
        is_teacher = not any(p.requires_grad for p in self.parameters())
        seen.append((is_teacher, [tuple(c.shape) for c in x]))
        return original(self, x)

    monkeypatch.setattr(MultiCropWrapper, "forward", spy)
    run_tiny(tmp_path / "run", tiny_images(), epochs=1)
    teacher_calls = [shapes for is_t, shapes in seen if is_t]
    student_calls = [shapes for is_t, shapes in seen if not is_t]
    assert teacher_calls and len(teacher_calls) == len(student_calls)
    assert all(shapes == [(4, 2, 32, 32)] * 2 for shapes in teacher_calls)
    assert all(shapes == [(4, 2, 32, 32)] * 2 + [(4, 2, 16, 16)] * 2 for shapes in student_calls)


def test_checkpoint_format_logs_and_frozen_last_layer(tmp_path):
    images = tiny_images()
    ckpt = run_tiny(tmp_path / "run", images, epochs=1, freeze_last_layer=1)
    assert ckpt == tmp_path / "run" / "checkpoint.pth"
    state = load_ckpt(ckpt)  # weights_only=True with argparse.Namespace allow-listed
    assert {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"} <= set(state)
    assert state["epoch"] == 1 and isinstance(state["args"], argparse.Namespace)
    assert state["args"].arch == TINY_ARCH and state["args"].channels == ["protein", "nucleus"]
    assert all(k.startswith(("module.backbone.", "module.head.")) for k in state["student"])
    assert all(k.startswith(("backbone.", "head.")) for k in state["teacher"])
    assert set(state["dino_loss"]) == {"center"} and state["dino_loss"]["center"].shape == (1, 64)
    # the backbone part is a plain timm state dict
    vit = create_vit(TINY_ARCH, 2, img_size=32, **TINY_KW)
    vit.load_state_dict({k.removeprefix("backbone."): v for k, v in state["teacher"].items()
                         if k.startswith("backbone.")}, strict=True)
    # epoch 0 with freeze_last_layer=1: the student's last layer is still its initial value (same seed),
    # while the rest of the student moved
    torch.manual_seed(0)
    init = build_dino_model(TINY_ARCH, TINY_KW, 2, tiny_params(), 0.1).state_dict()
    last = "head.last_layer.parametrizations.weight.original1"
    assert torch.equal(state["student"]["module.head.last_layer.weight_v"], init[last])  # official key
    assert not torch.equal(state["student"]["module.head.mlp.0.weight"], init["head.mlp.0.weight"])
    assert not torch.equal(state["student"]["module.backbone.blocks.0.attn.qkv.weight"],
                           init["backbone.blocks.0.attn.qkv.weight"])
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert list(log.columns) == LOG_COLUMNS and log["epoch"].tolist() == [1]
    assert np.isfinite(log.drop(columns="epoch").to_numpy()).all()
    assert 0 < log["teacher_entropy"].iloc[0] <= math.log(64) + 1e-6
    assert pd.read_csv(tmp_path / "run" / "pretrain_images.csv")["image_id"].tolist() == list(images)
    # dinoloc_info: the init seed and how far the teacher's backbone moved from that init (the health notes)
    info = state["dinoloc_info"]
    assert info["init_seed"] == 0
    init_bb = {k.removeprefix("backbone."): v for k, v in init.items() if k.startswith("backbone.")}
    now_bb = {k.removeprefix("backbone."): v for k, v in state["teacher"].items() if k.startswith("backbone.")}
    assert info["weight_change_from_init"] == pytest.approx(weight_change(init_bb, now_bb))
    assert 0 < info["weight_change_from_init"] < 1


def test_weight_change_is_the_median_relative_change():
    init = {"a": torch.ones(4), "b": torch.ones(2, 2), "c": torch.ones(3), "n": torch.tensor([5]), "s": torch.ones(1)}
    now = {"a": torch.ones(4) * 1.1, "b": torch.ones(2, 2) * 1.5, "c": torch.ones(3) * 3.0, "n": torch.tensor([9]),
           "s": torch.ones(1) * 7.0}
    # a, b, c count (0.1, 0.5, 2.0 relative change); integer and one-element tensors do not
    assert weight_change(init, now) == pytest.approx(0.5)
    assert weight_change(init, init) == 0.0


def test_last_layer_moves_when_not_frozen(tmp_path):
    state = load_ckpt(run_tiny(tmp_path / "run", tiny_images(), epochs=1, freeze_last_layer=0))
    torch.manual_seed(0)
    init = build_dino_model(TINY_ARCH, TINY_KW, 2, tiny_params(), 0.1).state_dict()
    last = "head.last_layer.parametrizations.weight.original1"
    assert not torch.equal(state["student"]["module.head.last_layer.weight_v"], init[last])


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    images = tiny_images()
    full = load_ckpt(run_tiny(tmp_path / "full", images))

    class Killed(Exception):
        pass

    save = train_mod.save_checkpoint

    def save_then_die(path, state):
        save(path, state)
        if state["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_tiny(tmp_path / "resumed", images)
    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    assert load_ckpt(tmp_path / "resumed" / "checkpoint.pth")["epoch"] == 1
    resumed = load_ckpt(run_tiny(tmp_path / "resumed", images))
    assert resumed["epoch"] == 2
    for part in ("student", "teacher"):
        assert full[part].keys() == resumed[part].keys()
        for k in full[part]:
            assert torch.equal(full[part][k], resumed[part][k]), (part, k)
    assert torch.equal(full["dino_loss"]["center"], resumed["dino_loss"]["center"])
    assert pd.read_csv(tmp_path / "resumed" / "log.csv")["epoch"].tolist() == [1, 2]


def test_result_does_not_depend_on_num_workers(tmp_path):
    images = tiny_images()
    a = load_ckpt(run_tiny(tmp_path / "w0", images, epochs=1, num_workers=0))
    b = load_ckpt(run_tiny(tmp_path / "w2", images, epochs=1, num_workers=2))
    assert all(torch.equal(a["teacher"][k], b["teacher"][k]) for k in a["teacher"])


def test_complete_checkpoint_is_skipped_and_other_images_refused(tmp_path, monkeypatch, capsys):
    images = tiny_images(n=4)
    ckpt = run_tiny(tmp_path / "run", images, epochs=1)
    before = ckpt.stat().st_mtime_ns

    def no_build(*a, **k):
        raise AssertionError("a finished checkpoint must not be trained again")

    monkeypatch.setattr(step_mod, "build_dino_model", no_build)
    assert run_tiny(tmp_path / "run", images, epochs=1) == ckpt
    assert ckpt.stat().st_mtime_ns == before and "skipped" in capsys.readouterr().out
    with pytest.raises(DinolocError, match="other images"):
        run_tiny(tmp_path / "run", tiny_images(n=5), epochs=2)
    monkeypatch.undo()
    with pytest.raises(DinolocError, match="cannot be resumed"):
        run_tiny(tmp_path / "run", images, epochs=2, out_dim=32)


def test_bad_image_shape_names_the_file(tmp_path):
    images = {**tiny_images(n=4), "bad": np.zeros((3, 40, 40), np.float32)}
    with pytest.raises(DinolocError, match="bad"):
        run_tiny(tmp_path / "run", images, epochs=1, batch_size_per_gpu=5)


# ------------------------------------------------------------------------------------------- DDP / long runs
@pytest.mark.slow  # two torchrun processes (~10 s); CI: make test-slow
def test_torchrun_two_process_gloo(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k, arr in tiny_images(n=8).items():
        np.save(data / f"{k}.npy", arr)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    params = json.dumps(dataclasses.asdict(tiny_params(batch_size_per_gpu=2)))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(ROOT / "tests" / "_ddp_pretrain_worker.py"), str(data), str(tmp_path / "out"), params],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_ckpt(tmp_path / "out" / "checkpoint.pth")
    assert state["epoch"] == 2 and state["args"].world_size == 2
    assert pd.read_csv(tmp_path / "out" / "log.csv")["epoch"].tolist() == [1, 2]
    assert "rank 0 done" in proc.stdout and "rank 1 done" in proc.stdout


@pytest.mark.slow
def test_loss_falls_on_structured_images(tmp_path):
    """4 image classes that differ in channel levels (a signal every crop keeps): DINO must learn them, i.e. the
    loss falls well below its early peak and the teacher stays far from the uniform (collapsed) distribution."""
    rng = np.random.default_rng(0)
    images = {}
    for k in range(64):
        c = k % 4
        base = np.array([(4 - c) * 0.5, (c + 1) * 0.5], np.float32)[:, None, None]
        images[f"img{k}"] = base + rng.normal(0, 0.3, (2, 40, 40)).astype(np.float32)
    ckpt = train_dino(
        [(k, k) for k in images], images.__getitem__, ["protein", "nucleus"], tmp_path / "run",
        model=PretrainModel(arch=TINY_ARCH, model_kwargs=TINY_KW, in_chans=2, intensity="none", mean=None, std=None),
        device="cpu",
        params=tiny_params(epochs=80, batch_size_per_gpu=8, lr=0.001, momentum_teacher=0.99, out_dim=256,
                           hidden_dim=64, bottleneck_dim=32),
    )
    log = pd.read_csv(ckpt.parent / "log.csv")
    assert len(log) == 80
    assert log["loss"].tail(5).mean() < log["loss"].max() - 0.8
    assert log["teacher_entropy"].tail(5).mean() < math.log(256) - 1.5


class _OfficialDINOHead(torch.nn.Module):
    """Built like official DINO's DINOHead (facebookresearch/dino vision_transformer.py, use_bn=False):
    Linear/GELU MLP, L2 normalisation, then nn.utils.weight_norm's last layer (keys weight_g, weight_v)."""

    def __init__(self, in_dim, out_dim, nlayers=3, hidden_dim=2048, bottleneck_dim=256):
        super().__init__()
        layers = [torch.nn.Linear(in_dim, hidden_dim), torch.nn.GELU()]
        for _ in range(nlayers - 2):
            layers += [torch.nn.Linear(hidden_dim, hidden_dim), torch.nn.GELU()]
        layers.append(torch.nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = torch.nn.Sequential(*layers)
        with warnings.catch_warnings():  # torch deprecates nn.utils.weight_norm; official DINO uses it
            warnings.simplefilter("ignore")
            self.last_layer = torch.nn.utils.weight_norm(torch.nn.Linear(bottleneck_dim, out_dim, bias=False))

    def forward(self, x):
        return self.last_layer(torch.nn.functional.normalize(self.mlp(x), dim=-1, p=2))


def test_checkpoint_head_uses_official_keys_and_loads_into_official_head(tmp_path):
    state = load_ckpt(run_tiny(tmp_path / "run", tiny_images(), epochs=1))
    assert "head.last_layer.weight_g" in state["teacher"] and "head.last_layer.weight_v" in state["teacher"]
    assert "module.head.last_layer.weight_v" in state["student"]
    assert not any("parametrizations" in k for k in [*state["teacher"], *state["student"]])
    p = tiny_params()
    head_state = {k.removeprefix("head."): v for k, v in state["teacher"].items() if k.startswith("head.")}
    embed_dim = TINY_KW["embed_dim"]
    official = _OfficialDINOHead(embed_dim, p.out_dim, p.nlayers, p.hidden_dim, p.bottleneck_dim)
    official.load_state_dict(head_state, strict=True)
    ours = DINOHead(embed_dim, p.out_dim, p.nlayers, p.hidden_dim, p.bottleneck_dim, norm_last_layer=p.norm_last_layer)
    ours.load_state_dict(from_official_keys(head_state), strict=True)  # and back into dinoloc's head
    x = torch.randn(5, embed_dim)
    with torch.no_grad():
        assert torch.allclose(official(x), ours(x), atol=1e-6)
    # a checkpoint in the older parametrization form still loads (either key form is read)
    assert from_official_keys(ours.state_dict()).keys() == ours.state_dict().keys()


# ------------------------------------------------------------------------------------------- the stage runner
def tiny_spec(tmp_path: Path, **changes) -> PretrainSpec:
    spec = PretrainSpec(
        params=tiny_params(epochs=1), backbone="tiny", arch=TINY_ARCH, model_kwargs=TINY_KW, in_chans=2,
        channels=("protein", "nucleus"), intensity="zscore", mean=None, std=None, source="folder",
        image_dir=str(tmp_path / "images"), data_root=None, out_dir=str(tmp_path / "run"), device="cpu",
        synthetic=True,
    )
    return dataclasses.replace(spec, **changes)


def test_run_pretrain_on_a_folder_checks_its_channels(tmp_path):
    import tifffile

    folder = tmp_path / "images"
    folder.mkdir()
    for k, arr in tiny_images(n=4).items():
        tifffile.imwrite(folder / f"{k}.tif", arr)
    (folder / "channels.json").write_text(json.dumps({"channels": ["nucleus", "protein"]}))
    with pytest.raises(DinolocError, match=r"channels.json lists \['nucleus', 'protein'\] but backbone=tiny"):
        run_pretrain(tiny_spec(tmp_path))
    (folder / "channels.json").write_text(json.dumps({"channels": ["protein", "nucleus"]}))
    ckpt = run_pretrain(tiny_spec(tmp_path))
    assert ckpt == tmp_path / "run" / "checkpoint.pth" and load_ckpt(ckpt)["epoch"] == 1
    assert pd.read_csv(tmp_path / "run" / "pretrain_images.csv")["image_id"].tolist() == [f"img{k}" for k in range(4)]


def test_opencell_source_takes_train_and_unlabeled_images_only(tmp_path):
    manifest = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "path": ["t/a.tif", "t/b.tif", "t/c.tif", "t/d.tif"]})
    split = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "split": ["train", "test", "unlabeled", "test"]})
    spec = tiny_spec(tmp_path, source="opencell", image_dir=None, data_root=str(tmp_path / "root"))
    got = pretrain_images(spec, manifest, split)
    assert got.images == [("a", str(tmp_path / "root" / "t/a.tif")), ("c", str(tmp_path / "root" / "t/c.tif"))]
    assert got.channels == ["protein", "nucleus"]
    with pytest.raises(DinolocError, match="needs the manifest"):
        pretrain_images(spec)
    with pytest.raises(DinolocError, match="pretrain.source=opencell needs a 2-channel"):
        pretrain_images(dataclasses.replace(spec, channels=("nucleus", "protein")), manifest, split)
    with pytest.raises(DinolocError, match="pretrain.source='hpa'"):
        pretrain_images(dataclasses.replace(spec, source="hpa"), manifest, split)


# ----------------------------------------------------------------------- one source per value: the config
def _compose_with_choices(*overrides, config_dir: Path | None = None):
    from hydra import compose, initialize_config_dir

    from dinoloc import CONFIG_DIR

    extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, *extra], return_hydra_config=True)


@pytest.mark.parametrize("key", ["teacher_temp", "num_workers", "batch_size_per_gpu", "global_crops_scale", "source"])
def test_key_missing_from_the_pretrain_yaml_is_refused_naming_it(tmp_path, key):
    """A YAML that forgets a key (here a copy of small.yaml without it) fails in the spec builder, naming the key
    and the YAML, instead of silently training with a value from code."""
    from dinoloc import CONFIG_DIR
    from dinoloc.config import pretrain_spec

    mine = tmp_path / "configs" / "pretrain"
    mine.mkdir(parents=True)
    text = (CONFIG_DIR / "pretrain" / "small.yaml").read_text()  # a recipe that sets every key itself
    kept = [line for line in text.splitlines() if not line.startswith(f"{key}:")]
    assert len(kept) == len(text.splitlines()) - 1
    (mine / "mine.yaml").write_text("\n".join(kept))
    cfg = _compose_with_choices("pretrain=mine", "backbone=opencell_demo", config_dir=tmp_path / "configs")
    assert OmegaConf.is_missing(cfg.pretrain, key)  # the schema keeps the key, without a value
    with pytest.raises(DinolocError, match=rf"^pretrain\.{key} is missing from the pretrain config "
                                           rf"\(configs/pretrain/mine\.yaml\)"):
        pretrain_spec(cfg)


def test_removing_or_misspelling_a_pretrain_key_is_refused_naming_it():
    """`~pretrain.<key>` and a misspelt key are refused by the pretrain schema when the config is composed;
    the console turns Hydra's error into one line naming the key."""
    from dinoloc.config import pretrain_spec
    from dinoloc.console import error_line

    for override, expected in (("~pretrain.teacher_temp", "pretrain.teacher_temp cannot be removed"),
                               ("~pretrain.zscore", "pretrain.zscore cannot be removed"),
                               ("pretrain.teacher_tmp=0.1", "pretrain.teacher_tmp is not a pretrain setting"),
                               ("pretrain.epochs=2.5", "pretrain.epochs: Value '2.5'")):
        with pytest.raises(Exception) as info:
            compose_config([override])
        line = error_line(info.value)
        assert line is not None and line.startswith(expected) and "\n" not in line, line
    spec = pretrain_spec(_compose_with_choices("backbone=opencell_demo", "pretrain=opencell"))
    assert (spec.params.teacher_temp, spec.params.num_workers, spec.params.batch_size_per_gpu) == (0.07, 10, 32)
    assert spec.source == "opencell" and spec.channels == ("protein", "nucleus") and spec.out_dir.endswith("opencell_demo")
    with pytest.raises(DinolocError, match="pretrain.epochs is missing from the pretrain config"):
        pretrain_spec(_compose_with_choices("pretrain.epochs=???"))


def test_dinoloc_pretrain_without_a_key_exits_2_naming_it(tmp_path):
    """The process-level exit-code path: one line on stderr, exit 2, nothing written."""
    out = tmp_path / "out"
    res = subprocess.run([str(Path(sys.executable).parent / "dinoloc-pretrain"), "~pretrain.teacher_temp",
                          f"paths.output_dir={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [
        "dinoloc: error: pretrain.teacher_temp cannot be removed (~pretrain.teacher_temp): every pretrain key needs "
        "a value, set in configs/pretrain/*.yaml (no default in code); give it another value instead, e.g. "
        "pretrain.teacher_temp=<value>"]
    assert not out.exists()


def test_pretrain_help_renders(capsys, monkeypatch):
    """`dinoloc-pretrain --help` (its page once crashed on the shell's `$(...)` in the torchrun example)."""
    from dinoloc import cli

    monkeypatch.setattr(sys, "argv", ["dinoloc-pretrain", "--help"])
    with pytest.raises(SystemExit) as e:
        cli.pretrain_main()
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("dinoloc-pretrain: ")
    assert "torchrun --nproc_per_node 4 $(which dinoloc-pretrain) backbone=opencell pretrain=opencell" in out
