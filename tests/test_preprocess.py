"""Intensity scaling, resizing, tiling and fixed normalisation on batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinoloc.io import DinolocError
from dinoloc.preprocess import center_crop, normalize, resize, scale_intensity, tile


def _raw(shape=(2, 2, 9, 11), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 65535, shape, generator=g).float()


def test_zscore_matches_per_image_per_channel_formula():
    x = _raw()
    y = scale_intensity(x, "zscore")
    xn = x.numpy().astype(np.float64)
    mean = xn.mean(axis=(2, 3), keepdims=True)
    std = xn.std(axis=(2, 3), keepdims=True)  # population std
    np.testing.assert_allclose(y.numpy(), (xn - mean) / (std + 1e-7), rtol=1e-5, atol=1e-5)
    # Each (image, channel) is standardized on its own, not over the batch.
    assert torch.allclose(y.mean(dim=(2, 3)), torch.zeros(2, 2), atol=1e-5)
    assert torch.allclose(y.std(dim=(2, 3), correction=0), torch.ones(2, 2), atol=1e-4)


def test_minmax_divides_by_channel_max():
    x = _raw()
    y = scale_intensity(x, "minmax")
    expected = x / x.amax(dim=(2, 3), keepdim=True)
    assert torch.equal(y, expected)
    assert torch.equal(y.amax(dim=(2, 3)), torch.ones(2, 2))


@pytest.mark.parametrize("mode", ["zscore", "minmax"])
def test_all_zero_channel_gives_zeros_not_nan(mode):
    x = _raw()
    x[1, 1] = 0
    y = scale_intensity(x, mode)
    assert torch.isfinite(y).all()
    assert torch.equal(y[1, 1], torch.zeros_like(y[1, 1]))
    assert y[1, 0].abs().sum() > 0  # the other channel is untouched by the zero one


def test_integer_input_and_none_mode():
    x = torch.randint(0, 65535, (1, 2, 4, 4), dtype=torch.int32)
    assert scale_intensity(x, "none").dtype == torch.float32
    assert torch.equal(scale_intensity(x, "none"), x.float())
    with pytest.raises(DinolocError, match="intensity='bogus'.*zscore, minmax, minmax_image, instance_norm, none"):
        scale_intensity(x, "bogus")


def test_resize_shape_and_identity():
    x = _raw((2, 2, 50, 70))
    y = resize(x, 32)
    assert y.shape == (2, 2, 32, 32)
    same = _raw((1, 2, 32, 32))
    assert resize(same, 32) is same
    const = torch.full((1, 2, 40, 40), 7.0)
    assert torch.allclose(resize(const, 16), torch.full((1, 2, 16, 16), 7.0))


def test_tile_covers_the_image_with_reflect_padding():
    x = _raw((2, 3, 10, 13))
    tiles, n = tile(x, 4)
    assert n == 3 * 4
    assert tiles.shape == (2 * 12, 3, 4, 4)
    # Reassemble the grid: rows of image b are b*n .. b*n+n-1 in row-major tile order.
    grid = tiles.reshape(2, 3, 4, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(2, 3, 12, 16)
    assert torch.equal(grid[:, :, :10, :13], x)
    # Padding is a reflection of the border (row 10 mirrors row 8, column 13 mirrors column 11).
    assert torch.equal(grid[:, :, 10, :13], x[:, :, 8])
    assert torch.equal(grid[:, :, :10, 13], x[:, :, :, 11])


def test_tile_exact_multiple_and_tiny_image():
    x = _raw((1, 2, 8, 8))
    tiles, n = tile(x, 4)
    assert n == 4
    assert torch.equal(tiles[1], x[0, :, 0:4, 4:8])
    assert torch.equal(tiles[2], x[0, :, 4:8, 0:4])
    small = _raw((1, 1, 3, 3))
    tiles, n = tile(small, 8)  # smaller than the padding: replicated border instead of reflection
    assert n == 1 and tiles.shape == (1, 1, 8, 8)
    assert torch.equal(tiles[0, :, :3, :3], small[0])


def test_normalize():
    x = torch.rand(2, 3, 4, 4)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    y = normalize(x, mean, std)
    for c in range(3):
        assert torch.allclose(y[:, c], (x[:, c] - mean[c]) / std[c])
    assert normalize(x, None, None) is x
    with pytest.raises(DinolocError, match="one value per backbone input channel"):
        normalize(x, [0.5, 0.5], [0.1, 0.1])


def test_center_crop_takes_the_centred_square():
    x = torch.arange(2 * 10 * 12, dtype=torch.float32).reshape(1, 2, 10, 12)
    c = center_crop(x, 4)
    assert torch.equal(c, x[..., 3:7, 4:8])
    assert torch.equal(center_crop(x, 600), x[..., :, 1:11])  # smaller image: its largest centred square
    with pytest.raises(DinolocError, match="crop_size"):
        center_crop(x, 0)


def test_embed_batch_center_crop_is_crop_then_resize():
    from _specs import embed_batch

    torch.manual_seed(0)
    x = torch.rand(2, 2, 40, 40) * 1000
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    kw = dict(strategy="mapping", backbone_channels=["R", "G", "B"], channel_map={"protein": "R", "nucleus": "G"},
              img_size=16, intensity="minmax", mean=None, std=None)
    cropped = embed_batch(model, x, spatial="center_crop", crop_size=20, **kw)
    manual = embed_batch(model, x[..., 10:30, 10:30], spatial="resize", **kw)
    whole = embed_batch(model, x, spatial="resize", **kw)
    assert torch.allclose(cropped, manual) and not torch.allclose(cropped, whole)
