"""Any timm ViT: DINOv2 presets (patch 14 at 224 px), a generic `backbone=timm`, local weight files in timm's
and in Meta's DINOv2 layout, and display names that say which weights were used. No download: seeded random
init and files written here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from timm.layers import resample_abs_pos_embed

from dinoloc import CONFIG_DIR
from dinoloc.backbones.build import LoadOptions, build_backbone
from dinoloc.backbones.vit import create_vit
from dinoloc.backbones.weights import describe_weights, display_name
from dinoloc.io import DinolocError

REPO = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 48, "depth": 1, "num_heads": 3}
REG = "vit_small_patch14_reg4_dinov2"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("preset,arch", [("dinov2_vits14", REG), ("dinov2_vitb14", "vit_base_patch14_reg4_dinov2")])
def test_dinov2_presets(preset, arch):
    bb = _compose(f"backbone={preset}").backbone
    assert bb.arch == arch and bb.weights == f"timm:{arch}.lvd142m" and bb.preprocess.img_size == 224
    assert bb.name == preset
    from dinoloc.config import backbone_spec

    assert backbone_spec(bb).display == f"{bb.label} (timm:{arch}.lvd142m)"


def test_generic_timm_backbone_config_names_arch_and_weights():
    cfg = _compose("backbone=timm", "backbone.arch=vit_small_patch16_224", "backbone.weights=/w/my_vits16.pth")

    assert cfg.backbone.name == "vit_small_patch16_224"  # run folders keep archs apart
    from dinoloc.config import backbone_spec

    assert backbone_spec(cfg.backbone).display == "vit_small_patch16_224 (my_vits16.pth)"
    with pytest.raises(Exception, match="arch"):
        OmegaConf.to_container(_compose("backbone=timm").backbone, resolve=True, throw_on_missing=True)


def test_describe_weights():
    assert describe_weights(None) == describe_weights("") == "random init"
    assert describe_weights("https://x.org/a/dino_vitbase8_pretrain.pth") == "dino_vitbase8_pretrain.pth"
    assert describe_weights("timm:vit_base_patch8_224.dino") == "timm:vit_base_patch8_224.dino"
    assert display_name("ImageNet-1k", None, "a", "x.pth") == "ImageNet-1k"


def test_patch14_at_224_is_a_16x16_grid_and_seeded():
    a = build_backbone(REG, 3, None, img_size=224, load=LoadOptions(allow_random=True), **TINY)
    b = build_backbone(REG, 3, None, img_size=224, load=LoadOptions(allow_random=True), **TINY)
    assert tuple(a.patch_embed.grid_size) == (16, 16) and a.pos_embed.shape[1] == 256  # registers: no pos
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = a(x)
        assert out.shape == (2, 48) and torch.equal(out, b(x))  # seeded: one random model
        assert torch.equal(out, a.forward_features(x)[:, 0])  # the CLS token after the final norm
    assert a.dinoloc_info["random_init"] is True


def _release_layout(state: dict) -> dict:
    """timm's reg4 DINOv2 keys -> Meta's dinov2 release keys (the inverse of timm's _convert_dinov2)."""
    out = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    out["register_tokens"] = state["reg_token"]
    cls_pos = torch.randn(1, 1, state["pos_embed"].shape[-1])
    out["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    out["cls_token"] = state["cls_token"] - cls_pos
    out["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return out


def test_local_weights_at_518_load_into_224(tmp_path):
    torch.manual_seed(3)
    src = create_vit(REG, 3, 518, **TINY)  # timm's default DINOv2 size: a 37 x 37 grid
    state = src.state_dict()
    torch.save(state, tmp_path / "timm_layout.pth")
    torch.save(_release_layout(state), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    m = build_backbone(REG, 3, str(tmp_path / "timm_layout.pth"), img_size=224, **TINY)
    want = resample_abs_pos_embed(state["pos_embed"], new_size=[16, 16], old_size=[37, 37], num_prefix_tokens=0,
                                  interpolation="bicubic")
    torch.testing.assert_close(m.pos_embed.data, want)
    torch.testing.assert_close(m.blocks[0].attn.qkv.weight.data, state["blocks.0.attn.qkv.weight"])
    assert m.dinoloc_info["random_init"] is False and m.dinoloc_info["weights_sha256"]
    r = build_backbone(REG, 3, str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"), img_size=224, **TINY)
    # Meta's layout converts to the same model (cls position folded into the token: float rounding only)
    rs, ms = r.state_dict(), m.state_dict()
    assert rs.keys() == ms.keys()
    for k in rs:
        torch.testing.assert_close(rs[k], ms[k], rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(DinolocError, match="patch embedding"):  # a release file into a patch-16 arch: refused
        build_backbone("vit_small_patch16_224", 3, str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"),
                       img_size=224, **TINY)


def test_generic_timm_and_dinov2_extract_with_random_weights(tmp_path, write_opencell_tree):
    """Through the pipeline's own extraction: a DINOv2 preset and a generic timm arch, seeded random init."""
    import numpy as np

    from dinoloc.config import data_spec, extract_spec
    from dinoloc.data.prepare import run_data
    from dinoloc.extract.stage import run_extraction

    root, ann = write_opencell_tree(n_targets=12, images_per_target=1, size=32)
    common = [f"paths.output_dir={tmp_path / 'out'}", "data=opencell", f"data.root={root}", "backbone.weights=",
              "allow_random_weights=true", "extract.num_workers=0", "data.split.n_folds=2", "device=cpu",
              "+backbone.model_kwargs.embed_dim=48", "+backbone.model_kwargs.depth=1",
              "+backbone.model_kwargs.num_heads=3"]
    dims = {}
    for extra in (["backbone=dinov2_vits14"], ["backbone=timm", "backbone.arch=vit_small_patch16_224"]):
        cfg = _compose(*common, *extra)
        manifest, _ = run_data(data_spec(cfg))
        entry = run_extraction(extract_spec(cfg), manifest)
        emb, ids = entry.load()
        assert ids == manifest["image_id"].tolist() and np.isfinite(emb).all()
        assert entry.meta["random_weights"] is True and "random init" in entry.meta["backbone_display"]
        dims[cfg.backbone.name] = emb.shape[1]
        again = run_extraction(extract_spec(cfg), manifest)
        assert again.hit and np.array_equal(again.load()[0], emb)
    assert dims == {"dinov2_vits14": 48, "vit_small_patch16_224": 48}
