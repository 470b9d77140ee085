"""Channel strategies: exact tensors for mapping / replication / native, view order, validation, embed_batch."""

from __future__ import annotations

import pytest
import torch

from _specs import embed_batch
from dinoloc.backbones.vit import create_vit
from dinoloc.io import DinolocError
from dinoloc.strategies import apply_strategy_named, check_strategy, combine_views, n_views

RGB = ["R", "G", "B"]
HPA = ["nucleus", "protein", "microtubules", "er"]
IMAGENET_MAP = {"protein": "R", "nucleus": "G"}
HPA_MAP = {"protein": "protein", "nucleus": "nucleus"}
TINY = {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}


def _x(b=2, h=4, w=4) -> torch.Tensor:
    # Distinct, nonzero values everywhere so any misplacement shows.
    return torch.arange(1, b * 2 * h * w + 1, dtype=torch.float32).reshape(b, 2, h, w)


def test_mapping_imagenet_places_protein_r_nucleus_g_zero_b():
    x = _x()
    out = apply_strategy_named(x, "mapping", RGB, IMAGENET_MAP)[0]
    expected = torch.stack([x[:, 0], x[:, 1], torch.zeros_like(x[:, 0])], dim=1)
    assert torch.equal(out, expected)


def test_mapping_hpa_by_name():
    x = _x()
    out = apply_strategy_named(x, "mapping", HPA, HPA_MAP)[0]
    z = torch.zeros_like(x[:, 0])
    assert torch.equal(out, torch.stack([x[:, 1], x[:, 0], z, z], dim=1))


def test_replication_rows_and_channels():
    x = _x(b=2)
    out = apply_strategy_named(x, "replication", RGB, None)[0]
    rows = [x[b, v].expand(3, 4, 4) for b in range(2) for v in range(2)]  # image-major, protein then nucleus
    assert torch.equal(out, torch.stack(rows))
    assert n_views("replication") == 2 and n_views("mapping") == 1 and n_views("native") == 1


def test_native_reorders_by_name():
    x = _x()
    assert torch.equal(apply_strategy_named(x, "native", ["protein", "nucleus"], None)[0], x)
    assert torch.equal(apply_strategy_named(x, "native", ["nucleus", "protein"], None)[0], x[:, [1, 0]])


def test_combine_views_order():
    d = 3
    emb = torch.arange(4 * d, dtype=torch.float32).reshape(4, d)  # rows: img0-protein, img0-nucleus, img1-...
    out = combine_views(emb, "replication", 2)
    assert torch.equal(out, torch.stack([torch.cat([emb[0], emb[1]]), torch.cat([emb[2], emb[3]])]))
    assert combine_views(emb, "mapping", 2) is emb
    with pytest.raises(DinolocError):
        combine_views(emb[:3], "replication", 2)


@pytest.mark.parametrize(
    "strategy, channels, cmap, match",
    [
        ("native", RGB, None, r"strategy=native.*backbone\.in_chans=3"),
        ("native", HPA, None, r"strategy=native.*backbone\.in_chans=4"),
        ("mapping", RGB, {"protein": "R", "nucleus": "X"}, r"backbone\.channel_map.*'X'"),
        ("mapping", RGB, {"protein": "R"}, r"backbone\.channel_map.*not mapped.*nucleus"),
        ("mapping", RGB, {"protein": "R", "nucleus": "G", "dna": "B"}, r"backbone\.channel_map.*unknown.*dna"),
        ("mapping", RGB, {"protein": "R", "nucleus": "R"}, r"backbone\.channel_map.*same backbone channel"),
        ("mapping", RGB, None, r"backbone\.channel_map"),
        ("rgbify", RGB, IMAGENET_MAP, r"mapping, replication, native"),
    ],
)
def test_invalid_pairs_refused(strategy, channels, cmap, match):
    with pytest.raises(DinolocError, match=match):
        check_strategy(strategy, channels, cmap)


@pytest.mark.parametrize("strategy, channels, cmap, broken", [
    ("mapping", RGB, IMAGENET_MAP, {"protein": "R"}),  # a map missing the nucleus
    ("mapping", HPA, HPA_MAP, {"protein": "protein", "nucleus": "dna"}),  # a channel the backbone lacks
    ("replication", RGB, None, None),
    ("replication", HPA, None, None),
    ("native", ["nucleus", "protein"], None, None),
])
def test_valid_pairs_accepted_and_one_change_refused(strategy, channels, cmap, broken):
    """Each valid pair passes (returns, no error); the same pair with one thing broken is refused, so the
    check is not one that accepts everything."""
    assert check_strategy(strategy, channels, cmap) is None
    with pytest.raises(DinolocError):
        if strategy == "mapping":
            check_strategy(strategy, channels, broken)
        elif strategy == "native":
            check_strategy(strategy, [*channels, "er"], None)  # 3 channels for 2-channel data
        else:
            check_strategy(strategy, [*channels, channels[0]], None)  # a repeated channel name


def test_embed_batch_mapping_scales_before_mapping_then_normalizes():
    seen = []

    def model(t):
        seen.append(t)
        return t.mean(dim=(2, 3))

    x = torch.rand(2, 2, 8, 8) * 5000
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    emb = embed_batch(model, x, strategy="mapping", backbone_channels=RGB, channel_map=IMAGENET_MAP, img_size=8,
                      intensity="minmax", mean=mean, std=std)
    inp = seen[0]
    scaled = x / x.amax(dim=(2, 3), keepdim=True)
    assert torch.allclose(inp[:, 0], (scaled[:, 0] - mean[0]) / std[0])
    assert torch.allclose(inp[:, 1], (scaled[:, 1] - mean[1]) / std[1])
    # The empty B channel is exactly zero before the fixed normalisation.
    assert torch.equal(inp[:, 2], torch.full_like(inp[:, 2], (0 - mean[2]) / std[2]))
    assert emb.shape == (2, 3) and emb.dtype == torch.float32


def test_embed_batch_tile_averages_tiles():
    seen = []

    def model(t):
        seen.append(t.shape)
        return t.mean(dim=(2, 3))

    x = torch.rand(3, 2, 8, 8)
    emb = embed_batch(model, x, strategy="native", backbone_channels=["protein", "nucleus"], channel_map=None,
                      img_size=4, intensity="none", mean=None, std=None, spatial="tile")
    assert seen[0] == (3 * 4, 2, 4, 4)
    assert torch.allclose(emb, x.mean(dim=(2, 3)), atol=1e-6)  # mean of equal tiles' means = image mean
    with pytest.raises(DinolocError, match="spatial='crop'"):
        embed_batch(model, x, strategy="native", backbone_channels=["protein", "nucleus"], channel_map=None,
                    img_size=4, intensity="none", mean=None, std=None, spatial="crop")


def test_embed_batch_replication_with_vit_matches_per_image_per_channel():
    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224", in_chans=3, img_size=32, **TINY).eval()
    x = torch.rand(2, 2, 40, 40) * 1000
    with torch.no_grad():
        emb = embed_batch(model, x, strategy="replication", backbone_channels=RGB, channel_map=None, img_size=32,
                          intensity="zscore", mean=None, std=None)
        assert emb.shape == (2, 2 * 48)
        for b in range(2):
            img = torch.nn.functional.interpolate(x[b : b + 1], size=(32, 32), mode="bilinear", antialias=True)
            std, mu = torch.std_mean(img, dim=(2, 3), correction=0, keepdim=True)
            img = (img - mu) / (std + 1e-7)
            views = [model(img[:, v : v + 1].expand(1, 3, 32, 32))[0] for v in range(2)]
            assert torch.allclose(emb[b], torch.cat(views), atol=1e-5)
