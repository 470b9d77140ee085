"""`backbone=classical`: CellProfiler-style measurements of each image, the classical reference (role
`classical`, docs/references.md). Biologists' first question about a pretrained ViT is whether it beats the
measurements they already have (Doron et al. compared DINO with CellProfiler features).

Per channel, on the image after the configured resize and intensity scaling (backbone.preprocess):
- intensity distribution (MeasureImageIntensity): mean, std, percentiles, skewness, kurtosis;
- area occupied (MeasureImageAreaOccupied): Otsu foreground fraction, its objects' count and mean area, the
  mean intensity inside and outside it;
- texture (MeasureTexture): Haralick features of the grey-level co-occurrence matrix (scikit-image), averaged
  over four angles, at each configured distance;
- granularity (MeasureGranularity): the share of the signal each successive grey opening removes;
- radial distribution (MeasureObjectIntensityDistribution): the share of the channel's intensity in bins of
  normalised distance inside and outside a reference mask (the nucleus channel's Otsu foreground when the data
  has a channel called nucleus, else the channel's own), and the inside/outside mean ratio;
and per pair of channels (MeasureColocalization): Pearson correlation, Manders' M1 and M2, mask overlap.

Any channel count works: the features are the data's own channels in order (`strategy=native`). Every setting
comes from the backbone YAML (`model_kwargs`); the cache stores the features exactly as it stores embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dinoloc.io import DinolocError

if TYPE_CHECKING:  # torch only where a batch is measured: checking a config needs none
    import torch

ARCH = "classical"
# Bump when the features change: it enters the cache key, so old caches are never mistaken for new features.
FEATURES_VERSION = 1
NUCLEUS_NAMES = ("nucleus", "dna", "dapi", "hoechst")  # a channel by one of these names is the radial reference
SETTINGS = ("percentiles", "glcm_levels", "glcm_distances", "granularity_size", "granularity_radii", "radial_bins")


def is_classical(arch: str) -> bool:
    return str(arch) == ARCH


def check_settings(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The YAML's feature settings, checked (one error naming backbone.model_kwargs.<key>)."""
    missing = [k for k in SETTINGS if k not in model_kwargs]
    unknown = sorted(set(model_kwargs) - set(SETTINGS))
    if missing or unknown:
        raise DinolocError(
            f"backbone=classical: backbone.model_kwargs needs exactly {list(SETTINGS)}"
            + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else "")
            + " (see configs/backbone/classical.yaml)"
        )
    out = {k: model_kwargs[k] for k in SETTINGS}
    if int(out["glcm_levels"]) < 2 or int(out["radial_bins"]) < 1 or int(out["granularity_size"]) < 8:
        raise DinolocError("backbone.model_kwargs.glcm_levels must be >= 2, radial_bins >= 1 and granularity_size "
                           ">= 8 for backbone=classical")
    if not out["glcm_distances"] or not out["granularity_radii"]:
        raise DinolocError("backbone.model_kwargs.glcm_distances and granularity_radii must not be empty")
    return out


class ClassicalFeatures:
    """A parameter-free 'model' for the extraction engine (it calls .to(device).eval() and then the model on each
    batch): (B, C, H, W) scaled images -> (B, D) features, computed in numpy on the CPU."""

    def __init__(self, channels: Sequence[str], **settings: Any) -> None:
        self.channels = [str(c) for c in channels]
        self.settings = check_settings(settings)
        self.dinoloc_info = {"weights": None, "weights_sha256": None, "checkpoint_epoch": None, "random_init": False,
                             "classical": True, "features_version": FEATURES_VERSION}

    def to(self, *_: Any, **__: Any) -> ClassicalFeatures:
        return self

    def eval(self) -> ClassicalFeatures:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if x.ndim != 4 or x.shape[1] != len(self.channels):
            raise DinolocError(f"classical features: expected a (B, {len(self.channels)}, H, W) batch, got {tuple(x.shape)}")
        arr = x.detach().float().cpu().numpy()
        feats = np.stack([image_features(img, self.channels, **self.settings) for img in arr])
        return torch.from_numpy(feats).to(x.device)


def feature_names(channels: Sequence[str], **settings: Any) -> list[str]:
    """The names of image_features' columns, in order."""
    s = check_settings(settings)
    per = [f"intensity_{k}" for k in ("mean", "std", *(f"p{p:g}" for p in s["percentiles"]), "skew", "kurtosis")]
    per += ["area_fraction", "objects_per_kpx", "object_mean_area", "mean_inside", "mean_outside"]
    per += [f"texture_{p}_d{d}" for d in s["glcm_distances"] for p in _GLCM_PROPS]
    per += [f"granularity_r{r}" for r in s["granularity_radii"]]
    per += [f"radial_{side}{b}" for side in ("in", "out") for b in range(int(s["radial_bins"]))] + ["radial_in_out_ratio"]
    names = [f"{c}/{p}" for c in channels for p in per]
    for i, a in enumerate(channels):
        for b in channels[i + 1:]:
            names += [f"{a}x{b}/{k}" for k in ("pearson", "manders_m1", "manders_m2", "mask_jaccard")]
    return names


_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


def image_features(img: np.ndarray, channels: Sequence[str], *, percentiles: Sequence[float], glcm_levels: int,
                   glcm_distances: Sequence[int], granularity_size: int, granularity_radii: Sequence[int],
                   radial_bins: int) -> np.ndarray:
    """One image (C, H, W), intensities scaled to about [0, 1] -> its feature vector (float32, finite)."""
    img = np.nan_to_num(np.asarray(img, dtype=np.float64))
    masks = [_foreground(ch) for ch in img]
    names = [c.lower() for c in channels]
    ref = next((i for i, n in enumerate(names) if n in NUCLEUS_NAMES), None)
    out: list[np.ndarray] = []
    for c, ch in enumerate(img):
        ref_mask = masks[ref] if ref is not None else masks[c]
        out += [
            _intensity(ch, percentiles),
            _area(ch, masks[c]),
            _texture(ch, glcm_levels, glcm_distances),
            _granularity(ch, int(granularity_size), granularity_radii),
            _radial(ch, ref_mask, int(radial_bins)),
        ]
    for a in range(len(img)):
        for b in range(a + 1, len(img)):
            out.append(_colocalization(img[a], img[b], masks[a], masks[b]))
    return np.nan_to_num(np.concatenate(out), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def _foreground(ch: np.ndarray) -> np.ndarray:
    """Otsu's foreground; empty for a constant channel."""
    from skimage.filters import threshold_otsu

    if ch.max() <= ch.min():
        return np.zeros(ch.shape, dtype=bool)
    return ch > threshold_otsu(ch)


def _intensity(ch: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    v = ch.ravel()
    mean, std = v.mean(), v.std()
    z = (v - mean) / std if std > 0 else np.zeros_like(v)
    return np.array([mean, std, *np.percentile(v, list(percentiles)), (z**3).mean(), (z**4).mean() - 3.0])


def _area(ch: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    n = int(label(mask, connectivity=2).max()) if mask.any() else 0
    inside = ch[mask].mean() if mask.any() else 0.0
    outside = ch[~mask].mean() if (~mask).any() else 0.0
    return np.array([mask.mean(), 1000.0 * n / mask.size, mask.sum() / max(n, 1), inside, outside])


def _texture(ch: np.ndarray, levels: int, distances: Sequence[int]) -> np.ndarray:
    """Haralick features of the co-occurrence matrix at `levels` grey levels (the channel's own range)."""
    from skimage.feature import graycomatrix, graycoprops

    lo, hi = ch.min(), ch.max()
    q = np.zeros(ch.shape, dtype=np.uint8) if hi <= lo else np.minimum(
        ((ch - lo) / (hi - lo) * levels).astype(np.int64), levels - 1).astype(np.uint8)
    glcm = graycomatrix(q, distances=[int(d) for d in distances], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                        levels=int(levels), symmetric=True, normed=True)
    return np.concatenate([[graycoprops(glcm, p)[k].mean() for p in _GLCM_PROPS] for k in range(len(distances))])


def _granularity(ch: np.ndarray, size: int, radii: Sequence[int]) -> np.ndarray:
    """CellProfiler's granularity spectrum: the share of the total signal removed by each grey opening with a
    disk of the next radius (openings of a growing element, applied to the original image), on the channel
    shrunk to at most `size` px (CellProfiler MeasureGranularity subsamples too; openings are the slow part)."""
    from scipy.ndimage import grey_opening
    from skimage.morphology import disk
    from skimage.transform import resize

    if max(ch.shape) > size:
        ch = resize(ch, (size, size), anti_aliasing=True, preserve_range=True)
    total = ch.sum()
    prev, out = total, []
    for r in radii:
        cur = grey_opening(ch, footprint=disk(int(r))).sum()  # scipy's: ~3x skimage's opening here
        out.append((prev - cur) / total if total > 0 else 0.0)
        prev = cur
    return np.asarray(out)


def _radial(ch: np.ndarray, ref_mask: np.ndarray, bins: int) -> np.ndarray:
    """Share of the channel's intensity per bin of distance inside the reference mask (normalised to its deepest
    point: bin 0 at the boundary) and outside it (normalised to the farthest pixel), and inside/outside mean."""
    from scipy.ndimage import distance_transform_edt

    total = ch.sum()
    if total <= 0 or not ref_mask.any() or ref_mask.all():
        return np.zeros(2 * bins + 1)
    parts = []
    for region in (ref_mask, ~ref_mask):
        d = distance_transform_edt(region)[region]
        frac = np.minimum((d / d.max() * bins).astype(np.int64), bins - 1)
        parts.append(np.bincount(frac, weights=ch[region], minlength=bins) / total)
    ratio = ch[ref_mask].mean() / max(ch[~ref_mask].mean(), 1e-12)
    return np.concatenate([*parts, [np.log1p(ratio)]])


def _colocalization(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray) -> np.ndarray:
    sa, sb = a.std(), b.std()
    pearson = ((a - a.mean()) * (b - b.mean())).mean() / (sa * sb) if sa > 0 and sb > 0 else 0.0
    m1 = a[mb].sum() / a.sum() if a.sum() > 0 else 0.0
    m2 = b[ma].sum() / b.sum() if b.sum() > 0 else 0.0
    union = (ma | mb).sum()
    return np.array([pearson, m1, m2, (ma & mb).sum() / union if union else 0.0])


def classical_embed(model: ClassicalFeatures, x: torch.Tensor, *, img_size: int, intensity: str, spatial: str,
                    crop_size: int) -> torch.Tensor:
    """The engine's embed_fn for backbone=classical: the backbones' spatial and intensity preprocessing
    (dinoloc.preprocess), then the measurements. spatial=tile is not offered: measurements need no fixed size."""
    from dinoloc.preprocess import center_crop, resize, scale_intensity

    if spatial == "resize":
        x = resize(x, img_size)
    elif spatial == "center_crop":
        x = resize(center_crop(x, crop_size), img_size)
    elif spatial != "full":
        raise DinolocError(f"backbone.preprocess.spatial={spatial!r} is not offered for backbone=classical; "
                           "use resize, center_crop or full")
    return model(scale_intensity(x, intensity))
