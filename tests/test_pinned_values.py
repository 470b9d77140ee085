"""Every shipped value that decides a number, pinned against its source (the paper, official DINO, Dino4Cells),
so a swapped channel, a BGR mean, another checkpoint key or threshold fails here; and the cache key follows the
weights' bytes, not their path."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch

from dinoloc import provenance
from dinoloc.config import compose, extract_spec, plain
from dinoloc.extract.stage import key_of
from dinoloc.metrics import decide

# official DINO (facebookresearch/dino eval_linear.py / eval_knn.py transforms) and torchvision: RGB order
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@functools.cache
def _cfg(*overrides: str):
    return compose(list(overrides))


def _bb(name: str) -> dict:
    return plain(_cfg(f"backbone={name}").backbone)


def test_imagenet_row_maps_protein_to_red_and_nucleus_to_green():
    # the paper, Sec. "Channel mapping": "protein -> R, nucleus -> G, B = 0"
    bb = _bb("imagenet")
    assert bb["channels"] == ["R", "G", "B"] and bb["channel_map"] == {"protein": "R", "nucleus": "G"}
    assert bb["preprocess"]["mean"] == IMAGENET_MEAN and bb["preprocess"]["std"] == IMAGENET_STD
    assert bb["preprocess"]["img_size"] == 224 and bb["arch"] == "vit_base_patch8_224"  # Table III: vit_base/8
    # the official release: dino_vitbase8_pretrain.pth, backbone-only; full checkpoints keep the teacher
    assert bb["weights"].endswith("dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth")
    assert bb["checkpoint_key"] == "teacher" and bb["dino_epochs"] == 300


def test_hpa_row_is_dino4cells_fov_model():
    # Dino4Cells HPA_FOV_data/DINO_FOV_checkpoint.pth: ViT-B/8, 4 channels, teacher weights, 100 epochs
    # (Table III), per-image z-score; channel order of Dino4Cells' config: nucleus, protein, microtubules, ER
    bb = _bb("hpa")
    assert bb["arch"] == "vit_base_patch8_224" and bb["in_chans"] == 4
    assert bb["channels"] == ["nucleus", "protein", "microtubules", "er"]
    assert bb["channel_map"] == {"protein": "protein", "nucleus": "nucleus"}
    assert bb["checkpoint_key"] == "teacher" and bb["dino_epochs"] == 100
    assert bb["weights"].endswith("DINO_FOV_checkpoint.pth") and bb["preprocess"]["intensity"] == "zscore"


def test_opencell_row_is_native_two_channel_teacher():
    bb = _bb("opencell")
    assert bb["channels"] == ["protein", "nucleus"] and bb["in_chans"] == 2
    assert bb["checkpoint_key"] == "teacher" and bb["dino_epochs"] == 300 and bb["arch"] == "vit_base_patch8_224"


@pytest.mark.parametrize("name", ["imagenet_demo", "hpa_demo", "opencell_demo", "random"])
def test_stand_ins_keep_their_rows_channel_maps_and_keys(name):
    bb, row = _bb(name), _bb({"imagenet_demo": "imagenet", "hpa_demo": "hpa", "opencell_demo": "opencell",
                              "random": "imagenet"}[name])
    assert bb["channel_map"] == row["channel_map"] and bb["channels"] == row["channels"]
    assert bb["checkpoint_key"] == "teacher"
    assert bb["preprocess"].get("mean") == row["preprocess"].get("mean")


def test_mlp_head_is_the_papers():
    # the paper, Sec. "Classification head": MLP 512-256, dropout 0.5, 300 epochs, batch 512, AdamW lr 1e-4,
    # weight decay 0.04, cosine annealing, BCE with logits, sigmoid > 0.5
    c = plain(_cfg().classifier)
    assert (c["hidden"], c["dropout"], c["epochs"], c["batch_size"]) == ([512, 256], 0.5, 300, 512)
    assert (c["lr"], c["weight_decay"], c["betas"], c["scheduler"]) == (1e-4, 0.04, [0.9, 0.999], "cosine")
    assert (c["loss"], c["threshold"], c["lr_scaling"]) == ("bce_with_logits", 0.5, "none")
    # provenance's paper values are the same numbers (one definition each, compared here)
    for key in ("hidden", "dropout", "weight_decay", "betas", "scheduler", "loss"):
        assert provenance.PAPER[f"classifier.{key}"] == c[key]
    assert (provenance.PAPER["used.lr"], provenance.PAPER["used.epochs"], provenance.PAPER["used.batch_size"]) == (
        c["lr"], c["epochs"], c["batch_size"])
    assert provenance.PAPER_DINO_EPOCHS == {"imagenet": 300, "hpa": 100, "opencell": 300}  # Table III


def test_knn_head_is_official_dinos():
    # official DINO eval_knn.py: k = 20 ("usually working the best"), T = 0.07
    c = plain(_cfg("classifier=knn").classifier)
    assert (c["k"], c["temperature"], c["threshold"]) == (20, 0.07, 0.5)


def test_threshold_is_strictly_greater_than():
    p = np.array([[0.5, 0.50001, 0.3]])
    np.testing.assert_array_equal(decide(p, 0.5, False), [[0, 1, 0]])


def test_cache_key_follows_the_weights_bytes_at_the_same_path(tmp_path):
    """A checkpoint retrained at the same path is a new cache key (no cache hit on the old embeddings)."""
    import timm

    ckpt = tmp_path / "pretrain" / "checkpoint.pth"
    ckpt.parent.mkdir()
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.tif").write_bytes(b"0")
    manifest = pd.DataFrame({"image_id": ["a"], "path": ["img/a.tif"]})
    cfg = compose(["backbone=opencell_demo", f"backbone.weights={ckpt}", f"paths.output_dir={tmp_path}",
                   f"data.root={tmp_path}"])

    def retrain(seed: int) -> None:
        torch.manual_seed(seed)
        model = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=2, img_size=64,
                                  **plain(cfg.backbone.model_kwargs))
        torch.save({"teacher": model.state_dict(), "epoch": 1}, ckpt)

    retrain(0)
    first = key_of(extract_spec(cfg), manifest)
    assert key_of(extract_spec(cfg), manifest) == first  # same bytes: the same entry
    retrain(1)
    assert key_of(extract_spec(cfg), manifest) != first


# Cache keys computed on main before the data and backbone groups got their schemas (the images' fingerprint held
# fixed): building the specs from the typed values must leave every key, and so every cached embedding, where it was.
CACHE_KEYS = {
    (): "86c8b54a60206ce0deef",
    ("row=opencell_demo_native",): "8b09778437e6aaf351bd",
    ("row=hpa_demo_replication",): "f74403823654df239a62",
    ("row=classical_demo_native",): "7168dcef015130cdeaea",
    ("row=random_demo_mapping",): "471294b9d6b46500139a",
    ("variant=empty_after_norm",): "4ff6b8592ce3ae2db704",
    ("variant=crop600",): "61cf90473bb28e64de3c",
    ("data=folder", "data.root=/data", "data.channels=[DNA,actin,protein]", "data.channel_roles={DNA: nucleus}"):
        "45a882c5aa27b4ce83b9",
}


@pytest.mark.parametrize("overrides", list(CACHE_KEYS), ids=lambda o: " ".join(o) or "default")
def test_cache_keys_of_the_synthetic_rows_are_unchanged(overrides, monkeypatch, tmp_path):
    from dinoloc.extract import stage

    monkeypatch.setattr(stage, "images_fingerprint", lambda manifest, root: "IMAGES")
    spec = extract_spec(compose(["debug=tiny", f"paths.output_dir={tmp_path}", *overrides]))
    assert key_of(spec, pd.DataFrame({"image_id": ["a"], "path": ["a.tif"]})) == CACHE_KEYS[overrides]
