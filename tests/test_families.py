"""Backbone families (issue 27): each family's release layout written with random weights, loaded strictly
(missing / unexpected keys listed), the embedding size checked, and the forward pass compared with a reference
implementation where one is importable (timm) or a computation it must reduce to; native channel handling."""

from __future__ import annotations

import re

import pytest
import timm
import torch

from dinoloc.backbones.build import build_backbone
from dinoloc.backbones.families import configure, load_family
from dinoloc.io import DinolocError

FAM = "dinoloc.backbones.families."


def _save(state: dict, path) -> str:
    torch.save(state, path)
    return str(path)


def _random_state(model: torch.nn.Module, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}


def _x(c: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, c, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------- SubCell
SUBCELL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "pool_dim": 16, "pool_heads": 2}


def _subcell_release(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our SubCell model's weights in SubCellPortable's encoder.pth layout (HF ViT under `encoder.`, the pooler's
    Sequential index 1 under `pool_model.`; vit_model.py load_model_dict)."""
    out = {}
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for k, v in model.state_dict().items():
        if k.startswith("pool."):
            out["pool_model." + re.sub(r"^(attention_[uv])\.0\.", r"\1.1.", k[5:])] = v
        elif k == "vit.cls_token":
            out["encoder.embeddings.cls_token"] = v
        elif k == "vit.pos_embed":
            out["encoder.embeddings.position_embeddings"] = v
        elif k.startswith("vit.patch_embed.proj."):
            out["encoder.embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("vit.norm."):
            out["encoder.layernorm." + k.rsplit(".", 1)[1]] = v
        elif m := re.match(r"vit\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", k):
            for part, t in zip(("query", "key", "value"), v.chunk(3, dim=0), strict=True):
                out[f"encoder.encoder.layer.{m.group(1)}.attention.attention.{part}.{m.group(2)}"] = t
        else:
            m = re.match(r"vit\.blocks\.(\d+)\.(.+)\.(weight|bias)$", k)
            out[f"encoder.encoder.layer.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"] = v
    return out


def test_subcell_release_layout_loads_strictly(tmp_path):
    ref = load_family(FAM + "subcell").create("x", 2, 32, **SUBCELL)
    ref.load_state_dict(_random_state(ref))
    release = _subcell_release(ref)
    assert "encoder.encoder.layer.1.attention.attention.query.weight" in release
    assert "pool_model.attention_v.1.weight" in release
    path = _save(release, tmp_path / "encoder.pth")
    model = build_backbone("subcell", 2, path, img_size=32, family=FAM + "subcell", **SUBCELL)
    with torch.no_grad():
        out = model(_x(2))
        assert torch.allclose(out, ref.eval()(_x(2)), atol=1e-6)
    assert out.shape == (2, 32 * 2)  # the pooler's heads concatenated (1536 = 768 x 2 for the real model)
    assert model.dinoloc_info["model"] == {"family": "subcell", "embed_dim": 64, "patch_size": 16, "in_chans": 2,
                                           "any_channels": False}
    # the HF ViT's layer norm eps is 1e-12 (model_config.yaml), not timm's 1e-6
    assert model.vit.blocks[0].norm1.eps == 1e-12
    bad = {k: v for k, v in release.items() if "layer.1.layernorm_after" not in k} | {"encoder.extra": torch.zeros(1)}
    with pytest.raises(DinolocError, match=r"missing keys \(2: \['vit.blocks.1.norm2.weight', "
                                           r"'vit.blocks.1.norm2.bias'\]\), unexpected keys \(1: \['encoder.extra'\]"):
        build_backbone("subcell", 2, _save(bad, tmp_path / "bad.pth"), img_size=32, family=FAM + "subcell", **SUBCELL)


def test_subcell_gated_pool_is_softmax_weighted_token_mean():
    """The pooler as SubCellPortable computes it: softmax over tokens of attention(tanh(Vx) * gelu(Ux)) per head."""
    from dinoloc.backbones.families.subcell import GatedAttentionPool

    pool = GatedAttentionPool(8, 4, 2)
    t = torch.randn(3, 5, 8)
    a = pool.attention(torch.tanh(pool.attention_v[0](t)) * torch.nn.functional.gelu(pool.attention_u[0](t)))
    w = a.softmax(dim=1)  # (B, N, heads)
    want = torch.cat([(w[:, :, h:h + 1] * t).sum(1) for h in range(2)], dim=1)
    assert torch.allclose(pool(t), want, atol=1e-6)


def test_subcell_variant_follows_the_data_channels():
    yaml = {"variants": ["rybg", "rbg", "ybg", "bg"], "variant": "auto", "weights": "w/{variant}/encoder.pth",
            "channel_map": {"protein": "protein", "nucleus": "nucleus"}, "display_name": "SubCell {variant}"}
    fam = FAM + "subcell"
    bg = configure(fam, yaml, ["protein", "nucleus"])
    assert (bg["variant"], bg["channels"], bg["in_chans"]) == ("bg", ["nucleus", "protein"], 2)
    assert bg["weights"] == "w/bg/encoder.pth" and bg["display_name"] == "SubCell bg"
    assert configure(fam, yaml, ["nucleus", "er", "protein", "actin"])["variant"] == "ybg"
    four = configure(fam, yaml, ["microtubules", "protein", "nucleus", "er"])
    assert four["variant"] == "rybg" and four["channels"] == ["microtubules", "er", "nucleus", "protein"]
    assert configure(fam, yaml, ["DNA", "x"])["variant"] == "rybg"  # nothing fits: mapping/replication still can
    with pytest.raises(DinolocError, match="backbone.variant='rgb' is not one of"):
        configure(fam, yaml | {"variant": "rgb"}, ["protein"])


# --------------------------------------------------------------------------------------------------- OpenPhenom
PHENOM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "max_in_chans": 11}


def test_openphenom_release_layout_and_channel_agnostic_forward(tmp_path):
    """The Hugging Face MAE's backbone keys (`encoder.vit_backbone.*`; decoder keys dropped) load strictly; one
    channel equals timm's own ViT (the repository's base model) with the first grid of the sin-cos table."""
    from timm.models.vision_transformer import ParallelScalingBlock, VisionTransformer

    from dinoloc.backbones.families.openphenom import sincos_2d

    ref = load_family(FAM + "openphenom").create("x", 6, 32, **PHENOM)
    state = _random_state(ref)
    state["vit.pos_embed"] = sincos_2d(32, 2, 11)
    ref.load_state_dict(state)
    release = {"encoder.vit_backbone." + k[4:]: v for k, v in state.items()}
    release |= {"decoder.blocks.0.norm1.weight": torch.ones(8), "encoder_decoder_proj.weight": torch.ones(8, 32),
                "decoder_pred.weight": torch.ones(256, 8)}
    assert "encoder.vit_backbone.blocks.0.q_norm.weight" in release  # qk_norm=True, ParallelScalingBlock
    assert "encoder.vit_backbone.fc_norm.weight" in release and "encoder.vit_backbone.norm.weight" not in release
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in release.items()}, str(path))
    model = build_backbone("openphenom", 6, str(path), img_size=32, family=FAM + "openphenom", **PHENOM)
    assert model.dinoloc_info["model"]["any_channels"] is True and model.dinoloc_info["model"]["embed_dim"] == 32
    with torch.no_grad():
        for c in (1, 2, 5):  # any channel count
            assert model(_x(c), channels=None).shape == (2, 32)
        base = VisionTransformer(img_size=32, patch_size=16, in_chans=1, num_classes=0, global_pool="avg",
                                 class_token=True, embed_dim=32, depth=2, num_heads=2, init_values=1e-4,
                                 block_fn=ParallelScalingBlock, qkv_bias=False, qk_norm=True).eval()
        sd = {k[4:]: v for k, v in state.items()}
        sd["pos_embed"] = sd["pos_embed"][:, : 1 + 4]
        base.load_state_dict(sd)
        x1 = _x(1)
        # MAEModel.predict: forward_features (final norm Identity under global_pool=avg), mean of the patch tokens
        assert torch.allclose(model(x1), base.forward_features(x1)[:, 1:].mean(1), atol=1e-5)
        assert not torch.allclose(model(x1), base(x1), atol=1e-3)  # not timm's head (fc_norm after the pool)
        # every channel slot holds the same grid, tokens are mean-pooled: a bag of channels, order-free
        x2 = _x(1, seed=1)
        two = model(torch.cat([x1, x2], 1))
        assert torch.allclose(two, model(torch.cat([x2, x1], 1)), atol=1e-5)
        assert not torch.allclose(two, model(x1), atol=1e-3)
    with pytest.raises(DinolocError, match="unexpected keys"):
        build_backbone("openphenom", 6, _save(release | {"encoder.other": torch.zeros(1)}, tmp_path / "b.pth"),
                       img_size=32, family=FAM + "openphenom", **PHENOM)


def test_sincos_table_layout():
    from dinoloc.backbones.families.openphenom import sincos_2d

    t = sincos_2d(8, 3, 2)
    assert t.shape == (1, 1 + 2 * 9, 8) and torch.equal(t[0, 0], torch.zeros(8))
    assert torch.equal(t[0, 1:10], t[0, 10:19])  # every channel slot repeats the grid
    # position (h=1, w=2) -> row 1 + 1*3 + 2: sin(h * f0) first, cos(w * f1) last (D/4 = 2 frequencies)
    assert torch.isclose(t[0, 6, 0], torch.sin(torch.tensor(1.0))) and torch.isclose(t[0, 6, 7], torch.cos(torch.tensor(2.0 / 100)))


# --------------------------------------------------------------------------------------------------- ChannelViT
CVIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "channels": ["R", "G", "B"]}


def test_channelvit_release_layout_and_token_per_channel(tmp_path):
    """hubconf's plain state dict loads strictly; one channel with a zero channel embedding is DINO's ViT (timm)
    on that channel; channels are matched by name, any subset."""
    ref = load_family(FAM + "channelvit").create("x", 3, 32, **CVIT)
    state = _random_state(ref)
    assert {"patch_embed.proj.weight", "patch_embed.channel_embed", "blocks.1.attn.qkv.bias"} <= set(state)
    assert tuple(state["patch_embed.proj.weight"].shape) == (32, 1, 1, 16, 16)
    assert tuple(state["patch_embed.channel_embed"].shape) == (1, 32, 3, 1, 1)
    path = _save(state, tmp_path / "imagenet_channelvit_small_p16_DINO.pth")
    model = build_backbone("channelvit", 3, path, img_size=32, family=FAM + "channelvit", **CVIT)
    x = _x(3)
    with torch.no_grad():
        full = model(x, channels=["R", "G", "B"])
        assert full.shape == (2, 32)
        assert torch.allclose(model(x[:, [2, 0]], channels=["B", "R"]), model(x[:, [0, 2]], channels=["R", "B"]),
                              atol=1e-5)  # a set of named channels, order-free
        assert not torch.allclose(model(x[:, :1], channels=["R"]), model(x[:, :1], channels=["G"]), atol=1e-4)
        zero = dict(state, **{"patch_embed.channel_embed": torch.zeros(1, 32, 3, 1, 1)})
        model.load_state_dict(zero)
        vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=32, in_chans=1,
                                embed_dim=32, depth=2, num_heads=2).eval()
        sd = {k: v for k, v in zero.items() if k != "patch_embed.channel_embed"}
        sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"][:, :, 0]
        vit.load_state_dict(sd)
        assert torch.allclose(model(x[:, :1], channels=["R"]), vit(x[:, :1]), atol=1e-5)
    with pytest.raises(DinolocError, match="ChannelViT knows channels"):
        model(x[:, :1], channels=["protein"])
    with pytest.raises(DinolocError, match=r"missing keys \(1: \['patch_embed.channel_embed'\]"):
        build_backbone("channelvit", 3, _save({k: v for k, v in state.items() if "channel_embed" not in k},
                                              tmp_path / "b.pth"), img_size=32, family=FAM + "channelvit", **CVIT)


# ----------------------------------------------------------------------------------------------------- Cell-DINO
def test_cell_dino_release_layout_matches_timm_dinov2(tmp_path):
    """A DINOv2 state dict with block_chunks=4 (`blocks.<chunk>.<i>.`) and mask_token loads strictly; the bag of
    channels equals timm's own DINOv2 model run on every channel, class tokens concatenated (<= 1e-4)."""
    kw = {"embed_dim": 32, "depth": 4, "num_heads": 2}
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=32, patch_size=16,
                            in_chans=1, **kw).eval()
    state = _random_state(ref)
    ref.load_state_dict(state)
    per_chunk = 1  # depth 4 in 4 chunks: block i under chunk i
    release = {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m.group(1)) // per_chunk}.{m.group(1)}.", k): v
               for k, v in state.items()} | {"mask_token": torch.zeros(1, 32)}
    assert "blocks.3.3.ls2.gamma" in release
    path = _save(release, tmp_path / "channel_adaptive_dino_vitl16.pth")
    model = build_backbone("cell_dino", 4, path, img_size=32, family=FAM + "cell_dino", **kw)
    x = _x(3)
    with torch.no_grad():
        out = model(x, channels=None)
        want = torch.cat([ref(x[:, c:c + 1]) for c in range(3)], dim=1)
    assert out.shape == (2, 3 * 32) and (out - want).abs().max() <= 1e-4
    with pytest.raises(DinolocError, match=r"unexpected keys \(1: \['vit.blocks.4.norm1.weight'\]"):
        build_backbone("cell_dino", 4, _save(release | {"blocks.3.4.norm1.weight": torch.ones(32)}, tmp_path / "b.pth"),
                       img_size=32, family=FAM + "cell_dino", **kw)


# ------------------------------------------------------------------------------------------------------- DINOv3
def _dinov3_meta_layout(state: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """A timm DINOv3 state dict in Meta's layout (dinov3 @6876159 models/vision_transformer.py, layers/attention.py:
    storage_tokens, ls1.gamma, a masked qkv bias with its bias_mask buffer, rope periods, mask_token)."""
    meta = {}
    for k, v in state.items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if k.endswith(("attn.q_bias", "attn.v_bias")):
            continue
        meta[k] = v
        if k.endswith("attn.qkv.weight"):
            q, v_ = (state.get(k.replace("qkv.weight", n), torch.zeros(dim)) for n in ("q_bias", "v_bias"))
            meta[k.replace("weight", "bias")] = torch.cat([q, torch.zeros(dim), v_])  # K's bias masked out
            meta[k.replace("weight", "bias_mask")] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    return meta | {"mask_token": torch.zeros(1, dim), "rope_embed.periods": torch.ones(4)}


@pytest.mark.parametrize("arch", ["vit_small_patch16_dinov3_qkvb", "vit_small_patch16_dinov3"])
def test_dinov3_meta_release_layout_matches_timm(tmp_path, arch):
    """Meta's layout through timm's converter equals timm's reference model (<= 1e-4); the q/v biases land in the
    _qkvb arch, and an arch without them refuses non-zero biases instead of dropping them."""
    kw = {"embed_dim": 32, "depth": 2, "num_heads": 2}
    # the embedding is the class token after the final norm (dinov3's x_norm_clstoken), not timm's default avg
    ref = timm.create_model(arch, pretrained=False, num_classes=0, img_size=32, global_pool="token",
                            dynamic_img_size=True, **kw).eval()
    state = _random_state(ref)
    ref.load_state_dict(state)
    meta = _dinov3_meta_layout(state, 32)
    path = _save(meta, tmp_path / "dinov3_vits16_pretrain_lvd1689m-test.pth")
    model = build_backbone(arch, 3, path, img_size=32, family=FAM + "dinov3", **kw)
    with torch.no_grad():
        assert (model(_x(3)) - ref(_x(3))).abs().max() <= 1e-4
    assert model.dinoloc_info["model"]["embed_dim"] == 32 and model.dinoloc_info["model"]["patch_size"] == 16
    with pytest.raises(DinolocError, match="missing keys"):
        build_backbone(arch, 3, _save({k: v for k, v in meta.items() if k != "norm.weight"}, tmp_path / "b.pth"),
                       img_size=32, family=FAM + "dinov3", **kw)
    if not arch.endswith("_qkvb"):
        biased = dict(meta, **{"blocks.0.attn.qkv.bias": torch.ones(96)})
        with pytest.raises(DinolocError, match="non-zero qkv biases .* use the _qkvb arch"):
            build_backbone(arch, 3, _save(biased, tmp_path / "c.pth"), img_size=32, family=FAM + "dinov3", **kw)


def test_unknown_family_is_one_clear_error():
    with pytest.raises(DinolocError, match="backbone.family='no_such_lab.model' cannot be imported"):
        load_family("no_such_lab.model")
    with pytest.raises(DinolocError, match=r"lacks \['create', 'state_from_checkpoint'\]"):
        load_family("dinoloc.io")


# ------------------------------------------------------------------------------------- strategies and heads by name
PRIOR_HEAD = '''
"""A lab's own head: every class's training prevalence of the fold, for every row."""
import numpy as np
from dinoloc.classify.params import KNNParams
from dinoloc.rules import typed

ORDER, HATCH = 5, "xx"


def params(cfg):
    return typed(KNNParams, cfg)


def predict_proba(X, Y, train_rows, means, stds, params, *, progress=True, hook=None, single_label=False):
    y = Y.cpu().numpy()
    return np.stack([np.repeat(y[rows].mean(0, keepdims=True), len(y), 0) for rows in train_rows]).astype(np.float64)


def effective(params, n_train):
    return {"prior": True}


def describe(params, n_folds):
    return "count the classes"
'''

EVERY_OTHER = '''
"""A lab's own strategy: the data's first channel into every backbone channel (one view)."""
ORDER, LABEL, COLOUR = 7, "first channel", "#000000"
USES_CHANNEL_MAP, READS_ALL_CHANNELS = False, True


def check(ctx):
    return None


def apply(x, ctx):
    return x[:, :1].expand(-1, len(ctx.backbone), -1, -1), list(ctx.backbone)


def views(ctx):
    return 1


def approach(ctx):
    return "first channel everywhere"
'''


def test_a_head_and_a_strategy_from_outside_the_package(tmp_path, monkeypatch):
    import numpy as np

    from dinoloc.classify.cv import CVData, cross_validate
    from dinoloc.classify.params import params_from_config
    from dinoloc.heads import head_order
    from dinoloc.strategies import apply_strategy_named, approach, n_views
    from test_classify import make_data

    (tmp_path / "mylab_prior.py").write_text(PRIOR_HEAD)
    (tmp_path / "mylab_first.py").write_text(EVERY_OTHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = {"name": "mylab_prior", "k": 5, "temperature": 0.07, "threshold": 0.5, "standardize": False}
    params = params_from_config(cfg)
    X, Y, split, fold, ids, targets = make_data()
    cv = cross_validate(CVData(X, Y, split, fold, ids, targets), params, head="mylab_prior", progress=False)
    p = cv.predictions[[c for c in cv.predictions.columns if c.startswith("p_")]].to_numpy()
    first = cv.predictions["fold"] == cv.predictions["fold"].min()
    train0 = (split == "train") & (fold != cv.predictions["fold"].min())
    assert np.allclose(p[first.to_numpy()][0], Y[train0].mean(0))  # the head's own computation, through cv
    assert cv.summary["classifier_effective"] == {"prior": True} and head_order("mylab_prior") == 5
    x = torch.arange(2 * 2 * 4, dtype=torch.float32).reshape(1, 2, 4, 2).expand(2, -1, -1, -1)
    out = apply_strategy_named(x, "mylab_first", ["R", "G", "B"], None, ["protein", "nucleus"])[0]
    assert out.shape == (2, 3, 4, 2) and torch.equal(out[:, 2], x[:, 0])
    assert n_views("mylab_first") == 1 and approach("mylab_first", ["R"], ["protein"]) == "first channel everywhere"
    with pytest.raises(DinolocError, match="classifier.name='nope' is unknown; use classifier=mlp, knn, linear"):
        params_from_config({"name": "nope"})


def test_a_family_without_weights_is_not_a_random_floor(tmp_path, monkeypatch):
    """A hand-crafted feature family (NEEDS_WEIGHTS = False) builds without weights and without the random flag."""
    (tmp_path / "mylab_handcrafted.py").write_text(
        "import torch\nNEEDS_WEIGHTS = False\n"
        "class M(torch.nn.Module):\n"
        "    embed_dim, patch_size, in_chans = 2, None, 2\n"
        "    def forward(self, x):\n        return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)\n"
        "def create(arch, in_chans, img_size, **kw):\n    return M()\n"
        "def state_from_checkpoint(obj, key, source):\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_backbone("stats", 2, None, family="mylab_handcrafted")
    assert model.dinoloc_info["random_init"] is False and model.dinoloc_info["model"]["embed_dim"] == 2
    with pytest.raises(DinolocError, match="allow_random_weights=true"):
        build_backbone("subcell", 2, None, family=FAM + "subcell", **SUBCELL)


def test_authors_intensity_modes():
    """SubCell's min-max over the whole crop (channels jointly) and OpenPhenom's instance norm."""
    from dinoloc.preprocess import scale_intensity

    x = torch.tensor([[[[0.0, 2.0]], [[4.0, 8.0]]]])  # (1, 2, 1, 2)
    assert torch.allclose(scale_intensity(x, "minmax_image"), torch.tensor([[[[0.0, 0.25]], [[0.5, 1.0]]]]), atol=1e-6)
    want = torch.nn.functional.instance_norm(x, eps=1e-5)
    assert torch.allclose(scale_intensity(x, "instance_norm"), want, atol=1e-6)
    assert torch.allclose(scale_intensity(x, "instance_norm")[0, 1], torch.tensor([[-1.0, 1.0]]), atol=1e-3)


@pytest.mark.parametrize("family,kw,chans", [
    ("subcell", SUBCELL, 2), ("channelvit", CVIT, 3), ("cell_dino", {"embed_dim": 32, "depth": 1, "num_heads": 2}, 4),
    ("openphenom", PHENOM, 6)])
def test_weights_load_at_their_own_grid_whatever_the_input_size(tmp_path, family, kw, chans):
    """A checkpoint made at 32 px loads under backbone.preprocess.img_size=64 (the model is built for the
    checkpoint's position table); other inputs are interpolated, except OpenPhenom's fixed table: refused."""
    fam = load_family(FAM + family)
    ref = fam.create("x", chans, 32, **kw)
    path = _save(_random_state(ref), tmp_path / "w.pth")  # our own keys: state_from_checkpoint passes them through
    if family == "subcell":
        path = _save(_subcell_release(ref), tmp_path / "w.pth")
    elif family == "openphenom":
        path = _save({"encoder.vit_backbone." + k[4:]: v for k, v in ref.state_dict().items()}, tmp_path / "w.pth")
    elif family == "cell_dino":
        path = _save({k[4:]: v for k, v in ref.state_dict().items()}, tmp_path / "w.pth")
    model = build_backbone("x", chans, path, img_size=64, family=FAM + family, **kw)
    call = (lambda x: model(x, channels=None if family != "channelvit" else ["R", "G", "B"])) \
        if getattr(model, "any_channels", False) else model
    with torch.no_grad():
        assert call(_x(chans, 32)).shape[0] == 2
        if family == "openphenom":
            with pytest.raises(DinolocError, match="OpenPhenom takes 32 px crops .*img_size=32"):
                call(_x(chans, 64))
        else:
            assert torch.isfinite(call(_x(chans, 64))).all()
