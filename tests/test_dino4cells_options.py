"""Dino4Cells' own choices where the paper is silent (issue 17): each option changes what its YAML says.

Classifier: lr_scaling (linear scaling rule), schedule_step (per-step cosine), sampler (class-uniform draw).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dinoloc.classify.cv import CVData, cross_validate
from dinoloc.classify.params import ClassifierParams
from dinoloc.classify.trainer import class_uniform_weights
from dinoloc.io import DinolocError
from dinoloc.ontology import N_CLASSES
from dinoloc.rules import typed
from test_classify import P_COLS, _collect_hook, _reference, make_data, small_params, yaml_dict


def run(data, params, **kw):
    return cross_validate(CVData(*data), params, progress=False, **kw)


# ---------------------------------------------------------------------------------------------------- lr scaling
@pytest.mark.filterwarnings("ignore:fold .* no positive")
def test_linear_lr_scaling_at_batch_512_one_process_is_2e4():
    d = yaml_dict()
    assert (d["lr"], d["batch_size"], d["lr_scaling"]) == (1e-4, 512, "none")  # the paper's values, unscaled
    assert typed(ClassifierParams, d).effective_lr() == pytest.approx(1e-4)
    assert typed(ClassifierParams, {**d, "lr_scaling": "linear"}).effective_lr() == pytest.approx(2e-4)
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
            typed(ClassifierParams, {**d, key: "bogus"})


# ---------------------------------------------------------------------------------------------------- per-step cosine
def _reference_per_step(X, Y, events, params, k_index):
    """One fold alone: nn.Sequential + AdamW + CosineAnnealingLR(T_max = epochs x batches) stepped every batch,
    as Dino4Cells' run_end_to_end.py does, replaying the batched trainer's index stream."""
    return _reference(X, Y, events, params, k_index, per_step=True)


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
    from dinoloc.classify.trainer import rarest_label_weights

    w, _ = rarest_label_weights(Y[tr], 0.0)
    assert not np.allclose(w / w.sum(), expected)


@pytest.mark.filterwarnings("ignore:fold .* no positive")
def test_resample_none_ignores_the_sampler():
    data = make_data(n_targets=40, dim=4)
    events, hook = _collect_hook()
    res = run(data, small_params(epochs=2, resample="none", sampler="class_uniform"), hook=hook)
    assert res.summary["classifier_effective"]["sampler"] == "none"
    tr = events["folds"][0]["train"]
    for e in events["epochs"]:
        assert sorted(e["rows"][0][e["valid"][0]]) == sorted(tr)


# ---------------------------------------------------------------------------------------------------- full resolution
ARCH, TINY = "vit_tiny_patch16_224", {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}


class _OfficialStyleViT(torch.nn.Module):
    """The forward of facebookresearch/dino vision_transformer.py (prepare_tokens + interpolate_pos_encoding,
    copied), around a timm model's weights (blocks / norm are the same modules the official ViT has)."""

    def __init__(self, vit: torch.nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.patch_size = vit.patch_embed.proj.kernel_size[0]

    def interpolate_pos_encoding(self, x, w, h):
        from _official_dino import interpolate_pos_encoding

        return interpolate_pos_encoding(self.vit.pos_embed, w, h, self.patch_size)

    def forward(self, x):
        B, nc, w, h = x.shape
        x = self.vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.vit.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        for blk in self.vit.blocks:
            x = blk(x)
        return self.vit.norm(x)[:, 0]


@pytest.mark.parametrize("size", [24, 56, 40])  # grid 3 (shrinks), 7 (grows), 5 vs the checkpoint's 4
def test_full_extraction_equals_official_dino_interpolated_forward(tmp_path, size):
    from _specs import embed_batch
    from dinoloc.backbones.build import build_backbone
    from dinoloc.backbones.vit import create_vit

    torch.manual_seed(0)
    ref = create_vit(ARCH, in_chans=2, img_size=32, **TINY).eval()  # trained at 32 px: a 4x4 grid
    with torch.no_grad():
        ref.pos_embed.normal_(0, 1.0)  # a non-smooth embedding, so interpolation methods really differ
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in ref.state_dict().items()}}, path)
    model = build_backbone(ARCH, 2, str(path), img_size=224, **TINY)  # img_size ignored by `full`
    raw = torch.rand(3, 2, size, size, generator=torch.Generator().manual_seed(1)) * 1000
    kw = dict(strategy="native", backbone_channels=["protein", "nucleus"], channel_map={"protein": "protein",
              "nucleus": "nucleus"}, img_size=224, intensity="zscore", mean=None, std=None)
    with torch.no_grad():
        got = embed_batch(model, raw, spatial="full", **kw)
        from dinoloc.preprocess import scale_intensity

        expected = _OfficialStyleViT(ref)(scale_intensity(raw, "zscore"))
        assert got.shape == (3, 48)
        assert (got - expected).abs().max().item() < 1e-4
        # timm's own (antialiased, size-based) resampling would not have matched
        timm_model = create_vit(ARCH, in_chans=2, img_size=32, **TINY).eval()
        timm_model.load_state_dict(ref.state_dict())
        assert (timm_model(scale_intensity(raw, "zscore")) - expected).abs().max().item() > 1e-3
        # resize (the default) differs from full at a non-224 size
        assert not torch.allclose(embed_batch(model, raw, spatial="resize", **{**kw, "img_size": 32}), got)


# ---------------------------------------------------------------------------------------------------- empty channels
def test_empty_channels_zero_before_or_after_imagenet_norm():
    from _specs import embed_batch

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x.mean(dim=(2, 3))

    raw = torch.rand(2, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 100
    kw = dict(strategy="mapping", backbone_channels=["R", "G", "B"], channel_map={"protein": "R", "nucleus": "G"},
              img_size=16, intensity="minmax", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    embed_batch(Spy(), raw, **kw)
    embed_batch(Spy(), raw, empty_channels="zero_after_norm", **kw)
    before, after = seen
    assert torch.allclose(before[:, 2], torch.full_like(before[:, 2], -0.406 / 0.225))  # B = 0, then normalised
    assert torch.equal(after[:, 2], torch.zeros_like(after[:, 2]))  # B = 0 in the model input
    assert torch.equal(before[:, :2], after[:, :2])  # mapped channels untouched
    with pytest.raises(DinolocError, match="strategy.empty_channels"):
        embed_batch(Spy(), raw, empty_channels="bogus", **kw)


# ---------------------------------------------------------------------------------------------------- pretraining z-score
def _pretrain_params(*overrides):
    """The demo recipe from configs/pretrain/demo.yaml (its one source), with overrides."""
    from omegaconf import OmegaConf

    from dinoloc.config import compose as compose_config
    from dinoloc.pretrain.params import PretrainParams

    pt = compose_config(["pretrain=demo", *(f"pretrain.{o}" for o in overrides)]).pretrain
    return typed(PretrainParams, OmegaConf.to_container(pt, resolve=True))


def test_crop_zscore_gives_unit_std_crops_image_zscore_does_not():
    import dataclasses

    from dinoloc.preprocess import scale_intensity
    from dinoloc.pretrain.augment import MultiCropAugment, sample_generator

    g = torch.Generator().manual_seed(0)
    # an image with structure: bright blobs on one side, so crops of the z-scored image are not unit-std
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    img = torch.stack([torch.exp(-((xx - 20) ** 2 + (yy - 30) ** 2) / 200) * 1000, xx * 3 + yy]) + torch.rand(2, 96, 96, generator=g)
    img = scale_intensity(img[None], "zscore")[0]
    base = dict(global_crop_size=32, local_crop_size=16, local_crops_number=4, warp_prob=0.0, jitter_prob=0.0,
                protein_rescale_prob=0.0, channel_drop_prob=0.0)
    stds = {}
    for mode in ("image", "crop"):
        aug = MultiCropAugment(dataclasses.replace(_pretrain_params().crop_spec(), **base, zscore=mode),
                               ["protein", "nucleus"])
        crops = aug(img, sample_generator(0, 0, 0))
        stds[mode] = torch.stack([c.std(dim=(-2, -1), unbiased=False) for c in crops])
        if mode == "crop":
            means = torch.stack([c.mean(dim=(-2, -1)) for c in crops])
            assert means.abs().max() < 1e-4
    np.testing.assert_allclose(stds["crop"].numpy(), 1.0, atol=1e-4)
    assert (stds["image"] - 1).abs().max() > 0.05


def test_crop_zscore_refused_for_non_zscored_backbone(tmp_path):
    from dinoloc.pretrain.train import PretrainModel, train_dino

    params = _pretrain_params("zscore=crop", "epochs=1")
    with pytest.raises(DinolocError, match="pretrain.zscore=crop"):
        train_dino([("a", "a.tif")], lambda p: None, ["R", "G", "B"], tmp_path,
                   model=PretrainModel(arch=ARCH, model_kwargs=TINY, in_chans=3, intensity="minmax", mean=None,
                                       std=None), params=params, device="cpu")
    with pytest.raises(DinolocError, match="pretrain.zscore"):
        _pretrain_params("zscore=bogus")


# ---------------------------------------------------------------------------------------------------- variants
VARIANTS = {
    "lr_linear": [("classifier.lr_scaling", "linear"), ("classifier.schedule_step", "step")],
    "lr2x_step": [("classifier.lr", 2.0e-4), ("classifier.schedule_step", "step")],
    "sampler_class_uniform": [("classifier.sampler", "class_uniform")],
    "full_res": [("backbone.preprocess.spatial", "full")],
    "zscore_crop": [("pretrain.zscore", "crop")],
    "empty_after_norm": [("strategy.empty_channels", "zero_after_norm")],
    "hpa_rgby": [("backbone.channels", ["microtubules", "protein", "nucleus", "er"])],
}


def _compose(*overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from dinoloc import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_composes_and_changes_the_key_it_names(name):
    from dinoloc import CONFIG_DIR

    assert (CONFIG_DIR / "variant" / f"{name}.yaml").is_file()
    rows = ["row=hpa_mapping", "data.root=/x"]  # a real row: hpa_rgby acts only on the real HPA backbone
    base = _compose(*rows)
    var = _compose(*rows, f"variant={name}")
    assert var["variant"] == name
    for key, value in VARIANTS[name]:
        assert _get(var, key) == value and _get(base, key) != value, key
    # nothing else moved
    changed = {k for k in ("classifier", "backbone", "strategy", "pretrain", "data") if var[k] != base[k]}
    assert changed == {k.split(".")[0] for k, _ in VARIANTS[name]}


def test_hpa_rgby_leaves_other_backbones_alone():
    for row in ("imagenet_mapping", "hpa_demo_mapping"):
        assert _compose(f"row={row}", "variant=hpa_rgby")["backbone"] == _compose(f"row={row}")["backbone"]


# ---------------------------------------------------------------------------------------------------- HPA order check
def test_hpa_channel_order_check_measures_collapse_and_knn():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_hpa_channel_order.py"
    spec = importlib.util.spec_from_file_location("check_hpa_channel_order", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(60, 16))
    # collapsed: every embedding near one point, varying along a single direction
    collapsed = np.ones((60, 16)) + 0.05 * rng.normal(size=(60, 1)) * rng.normal(size=(1, 16))
    a, b = mod.collapse_stats(spread), mod.collapse_stats(collapsed)
    assert b["mean_cosine"] > 0.99 > 0.2 > abs(a["mean_cosine"])
    assert a["effective_rank"] > 8 and b["effective_rank"] < 1.1
    # kNN F1: embeddings that carry the labels beat embeddings that do not
    y = np.zeros((60, N_CLASSES), dtype=int)
    y[np.arange(60), np.arange(60) % 3] = 1
    group = np.arange(60) % 5
    informative = y[:, :3] * 5.0 + 0.1 * rng.normal(size=(60, 3))
    from dinoloc.classify.params import params_from_config

    knn = params_from_config({"name": "knn", "k": 20, "temperature": 0.07, "threshold": 0.5, "standardize": False})
    assert mod.knn_macro_f1(informative, y, group, knn) > 0.9 > mod.knn_macro_f1(rng.normal(size=(60, 3)), y, group, knn)
