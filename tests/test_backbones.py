"""Backbone creation and strict checkpoint loading (official DINO layouts), URL cache, refusals."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import pickle

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from dinoloc.backbones.build import LoadOptions, build_backbone
from dinoloc.backbones.vit import create_vit, dino_interpolate_pos_encoding
from dinoloc.backbones.weights import cached_weights_path, weights_fingerprint
from dinoloc.io import DinolocError, file_sha256

ARCH = "vit_tiny_patch16_224"
TINY = {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}


def _vit(seed: int, in_chans: int = 3, img_size: int = 32, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_vit(ARCH, in_chans=in_chans, img_size=img_size, **{**TINY, **kw}).eval()


def _x(in_chans=3, size=32) -> torch.Tensor:
    return torch.rand(2, in_chans, size, size, generator=torch.Generator().manual_seed(1))


def _build(weights, **kw) -> torch.nn.Module:
    in_chans, img_size = kw.pop("in_chans", 3), kw.pop("img_size", 32)
    load = LoadOptions(**{k: kw.pop(k) for k in [f.name for f in dataclasses.fields(LoadOptions)] if k in kw})
    return build_backbone(ARCH, in_chans, weights, img_size=img_size, load=load, **{**TINY, **kw})


def _dino_checkpoint(teacher: torch.nn.Module, student: torch.nn.Module) -> dict:
    """A full DINO training checkpoint in the official layout (DDP student, plain teacher, with heads)."""
    head = {"mlp.0.weight": torch.randn(16, 48), "last_layer.weight_g": torch.ones(64, 1),
            "last_layer.weight_v": torch.randn(64, 16)}
    return {
        "student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                    **{f"module.head.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()},
                    **{f"head.{k}": v for k, v in head.items()}},
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "weight_decay": 0.04, "params": [0, 1]}]},
        "epoch": 7,
        "args": argparse.Namespace(arch="vit_tiny", patch_size=8, out_dim=64, lr=5e-4, use_fp16=False),
        "dino_loss": {"center": torch.zeros(1, 64)},
    }


def test_create_vit_returns_cls_embedding():
    model = _vit(0)
    out = model(_x())
    assert out.shape == (2, 48)
    feats = model.forward_features(_x())  # (B, tokens, D) after the final norm
    assert torch.equal(out, feats[:, 0])


def test_official_backbone_state_dict(tmp_path):
    ref = _vit(0)
    path = tmp_path / "dino_vittiny8_pretrain.pth"
    torch.save(ref.state_dict(), path)
    model = _build(str(path))
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(_x()), ref(_x()))
        assert not torch.allclose(_vit(5)(_x()), ref(_x()))  # another init really differs
    info = model.dinoloc_info
    assert info == {"weights": str(path), "weights_sha256": file_sha256(path), "checkpoint_epoch": None,
                    "random_init": False,
                    # what the file says about itself: a bare backbone has no epoch; the rest from its weights
                    "checkpoint": {"epoch": None, "embed_dim": 48, "in_chans": 3, "patch_size": 8},
                    # what the model says about itself (the report's model column; not parsed from the arch name)
                    "model": {"family": "timm_vit", "embed_dim": 48, "patch_size": 8, "in_chans": 3,
                              "any_channels": False}}
    assert weights_fingerprint(str(path)) == file_sha256(path)


def test_full_dino_checkpoint_teacher_and_student(tmp_path):
    teacher, student = _vit(1), _vit(2)
    path = tmp_path / "checkpoint.pth"
    torch.save(_dino_checkpoint(teacher, student), path)
    model = _build(path)
    with torch.no_grad():
        assert torch.equal(model(_x()), teacher(_x()))
        assert torch.equal(_build(path, checkpoint_key="student")(_x()), student(_x()))
    assert model.dinoloc_info["checkpoint_epoch"] == 7
    with pytest.raises(DinolocError, match="checkpoint_key='ema'.*teacher"):
        _build(path, checkpoint_key="ema")


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict(tmp_path, wrapper):
    ref = _vit(3)
    path = tmp_path / "w.pth"
    torch.save({wrapper: ref.state_dict(), "epoch": 2}, path)
    with torch.no_grad():
        assert torch.equal(_build(path)(_x()), ref(_x()))


def test_pos_embed_kept_at_checkpoint_grid_and_interpolated_officially(tmp_path):
    ref = _vit(4, img_size=32)  # grid 4x4
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    model = _build(path, img_size=48)  # asked for 48 px: the model keeps the checkpoint's 4x4 grid ...
    assert torch.equal(model.pos_embed, ref.pos_embed)
    # ... and a 48 px input (grid 6x6) gets official DINO's interpolation, not timm's antialiased resize
    from _official_dino import interpolate_pos_encoding

    official = interpolate_pos_encoding(ref.pos_embed.detach(), 48, 48, patch_size=8)
    assert torch.equal(dino_interpolate_pos_encoding(ref.pos_embed.detach(), 6, 6), official)
    timm_way = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)
    assert torch.equal(official[:, 0], ref.pos_embed[:, 0])  # class token kept
    assert not torch.allclose(official, timm_way)
    x = model.patch_embed(_x(size=48))
    with torch.no_grad():
        tokens = model._pos_embed(x)
        assert torch.allclose(tokens[:, 0], model.cls_token[:, 0] + official[:, 0])
        assert torch.allclose(tokens[:, 1:], x.reshape(2, 36, 48) + official[:, 1:])
        assert model(_x(size=48)).shape == (2, 48)
        assert torch.equal(model(_x()), ref(_x()))  # at the checkpoint's own size nothing is interpolated


def test_wrong_keys_listed(tmp_path):
    sd = _vit(0).state_dict()
    sd["blocks.1.mlp.fc9.weight"] = sd.pop("blocks.1.mlp.fc1.weight")
    path = tmp_path / "renamed.pth"
    torch.save(sd, path)
    with pytest.raises(DinolocError) as e:
        _build(path)
    msg = str(e.value)
    assert "blocks.1.mlp.fc1.weight" in msg and "blocks.1.mlp.fc9.weight" in msg and str(path) in msg
    assert "missing keys (1:" in msg and "unexpected keys (1:" in msg


def test_wrong_in_chans_and_patch_size(tmp_path):
    path = tmp_path / "hpa4.pth"
    torch.save(_vit(0, in_chans=4).state_dict(), path)
    with pytest.raises(DinolocError, match="checkpoint has 4 input channels, backbone.in_chans=3"):
        _build(path, in_chans=3)
    assert _build(path, in_chans=4).patch_embed.proj.weight.shape[1] == 4
    p16 = tmp_path / "p16.pth"
    torch.save(_vit(0, patch_size=16).state_dict(), p16)
    with pytest.raises(DinolocError, match="patch size"):
        _build(p16)


class _Payload:
    """A pickle that creates a file when unpickled: stands in for arbitrary code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_malicious_pickle_refused_without_running(tmp_path, fmt):
    # The payload is live: a plain unpickle really runs it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"teacher": {"backbone.cls_token": _Payload(marker)}}
    if fmt == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(DinolocError, match="refusing to unpickle arbitrary code"):
        _build(path)
    assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(_vit(0).state_dict(), good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DinolocError, match="trunc.pth"):
        _build(trunc)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(DinolocError, match="notes.pth"):
        _build(text)
    with pytest.raises(DinolocError, match="does not exist"):
        _build(tmp_path / "missing.pth")


def test_file_url_downloaded_once_and_hash_checked(tmp_path, monkeypatch):
    ref = _vit(0)
    src = tmp_path / "remote" / "dino_tiny.pth"
    src.parent.mkdir()
    torch.save(ref.state_dict(), src)
    url, sha = src.as_uri(), file_sha256(src)
    calls = []
    real = torch.hub.download_url_to_file

    def counting(u, dst, *a, **k):
        calls.append(u)
        return real(u, dst, *a, **k)

    monkeypatch.setattr(torch.hub, "download_url_to_file", counting)
    cache = tmp_path / "cache"
    model = _build(url, weights_sha256=sha, cache_dir=cache)
    cached = cached_weights_path(url, cache)
    assert cached.is_file() and cached.name == "dino_tiny.pth" and file_sha256(cached) == sha
    assert model.dinoloc_info["weights_sha256"] == sha and model.dinoloc_info["weights"] == url
    mtime = cached.stat().st_mtime_ns
    model2 = _build(url, weights_sha256=sha, cache_dir=cache)
    assert calls == [url]  # the second build used the cache
    assert cached.stat().st_mtime_ns == mtime
    assert weights_fingerprint(url, cache_dir=cache) == sha and calls == [url]
    with torch.no_grad():
        assert torch.equal(model2(_x()), ref(_x()))
    # A cached file is re-checked against the pin.
    with pytest.raises(DinolocError, match="weights_sha256"):
        _build(url, weights_sha256="f" * 64, cache_dir=cache)


def test_file_url_wrong_hash_refused_and_not_cached(tmp_path):
    src = tmp_path / "w.pth"
    torch.save(_vit(0).state_dict(), src)
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(DinolocError) as e:
        _build(src.as_uri(), weights_sha256=wrong, cache_dir=cache)
    assert wrong in str(e.value) and file_sha256(src) in str(e.value)
    assert not cached_weights_path(src.as_uri(), cache).exists()
    assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    with pytest.raises(DinolocError, match="not a sha256"):
        _build(src.as_uri(), weights_sha256="abc", cache_dir=cache)


def test_random_weights_need_allow_random():
    with pytest.raises(DinolocError, match="allow_random_weights=true"):
        _build(None)
    with pytest.raises(DinolocError, match="backbone.weights"):
        _build("")
    model = _build(None, allow_random=True)
    assert model.dinoloc_info["random_init"] is True and model.dinoloc_info["weights_sha256"] is None
    assert weights_fingerprint(None) == "random:seed0" and weights_fingerprint("") == "random:seed0"
    # "random" in a cache key must name one model: two builds are the same draw, whatever the global RNG.
    torch.manual_seed(123)
    again = _build(None, allow_random=True)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_timm_weights_argument_handling(monkeypatch):
    seen = {}

    def fake_create_model(name, **kwargs):
        seen.update(name=name, **kwargs)
        return torch.nn.Linear(2, 2)

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    model = build_backbone("vit_base_patch8_224", 3, "timm:vit_base_patch8_224.dino", img_size=224)
    assert seen == {"name": "vit_base_patch8_224.dino", "pretrained": True, "num_classes": 0,
                    "global_pool": "token", "in_chans": 3, "img_size": 224, "dynamic_img_size": True}
    assert not model.training
    assert model.dinoloc_info["weights"] == "timm:vit_base_patch8_224.dino"
    assert weights_fingerprint("timm:vit_base_patch8_224.dino") == "timm:vit_base_patch8_224.dino"
    with pytest.raises(DinolocError, match="backbone.arch=vit_base_patch8_224"):
        build_backbone("vit_small_patch8_224", 3, "timm:vit_base_patch8_224.dino")
    with pytest.raises(DinolocError, match="3 input channels, backbone.in_chans=2"):
        build_backbone("vit_base_patch8_224", 2, "timm:vit_base_patch8_224.dino")
    with pytest.raises(DinolocError, match="no such pretrained model"):
        build_backbone("vit_base_patch8_224", 3, "timm:vit_base_patch8_224.nope")


def test_hash_computed_once_per_file(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    torch.save(_vit(0).state_dict(), path)
    calls = []
    from dinoloc.backbones import weights as weight_sources

    real = weight_sources.file_sha256
    monkeypatch.setattr(weight_sources, "file_sha256", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(weight_sources, "_HASHES", {})
    fp = weights_fingerprint(path)
    _build(path)
    assert fp == real(path) and len(calls) == 1
