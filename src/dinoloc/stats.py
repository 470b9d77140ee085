"""Uncertainty for Table III: target-level bootstrap intervals, paired tests and Holm adjustment.

Pure numpy/scipy (no torch), so the statistics can be tested alone in seconds. docs/statistics.md says all of
this for a reader; dinoloc.simulation measures how well it works (scripts/ci_coverage.py).

Everything works on per-target confusion counts: `counts` has shape (4, n_columns, n_targets, n_classes)
holding (tp, fp, fn, positives) of each (classifier seed, fold) model on the images of each test target.
Summing the counts of a multiset of targets gives exactly the F1 of the concatenated images, so a bootstrap
replicate is a vector of draw counts per target, and every statistic is an einsum.

The ONE macro F1 (estimate, every replicate, per-class tables, paired tests): per (seed, fold) model,
sklearn's `f1_score(y, pred, average="macro", labels=<scored classes>, zero_division=0)` on its test images,
then the mean over the models. The scored classes are those with a positive in the test set. dinoloc's split
puts a positive of every class with >= 2 targets into the test set (data/split.py), so the replicates keep
that rule: each replicate draws the test targets with replacement and, for every scored class it lacks
(rarest first), one drawn target is swapped for a positive target of that class (`bootstrap_weights` with
`positives`). Every replicate then scores the same classes on the same kind of test set as the estimate.

Why targets and not images: all images of a protein share its labels, so images are not independent draws.
With several classifier seeds, each replicate also draws the seeds with replacement (`Replicates.columns`),
so intervals and paired tests include training variability; with one seed they are conditional on the
trained models.

Calibration: the percentile interval's half-widths (and the paired test's null spread) are multiplied by
`CALIBRATION["inflate"]`, measured by simulation at OpenCell's scale. A table whose test set has fewer targets
than `CALIBRATION["min_test_targets"]` gets no interval and no p value ("too few test targets for a
calibrated interval"): at 60 test targets no resampling of one test set reached nominal coverage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

TP, FP, FN, POS = range(4)
METHODS = ("bca", "percentile", "basic")
WELL_SUPPORTED = 3  # positive test targets a class needs to count as well supported
METHOD_NAMES = {"bca": "BCa (bias-corrected and accelerated)", "percentile": "percentile", "basic": "basic (reverse percentile)"}
TOO_FEW = "too few test targets for a calibrated interval"
# Measured by `python scripts/ci_coverage.py --scale opencell|demo --seeds 0,1,2,3,4 --json` (docs/statistics.md):
# OpenCell's real label structure, dinoloc's split, a classifier at macro F1 ~0.8, the population macro F1 as
# truth. `inflate` multiplies the percentile half-widths and the paired null; below `min_test_targets` no
# interval or p is printed. tests/test_simulation.py re-measures a smaller run against these.
CALIBRATION: dict[str, float] = {"inflate": 1.0, "min_test_targets": 100}
# `--seeds 0,1,2,3,4` (200 test sets each, 1,000 replicates): coverage of the population macro F1 by the
# calibrated percentile interval, its Monte Carlo standard error, and the paired test's rejection rates. Below
# ~100 test targets the presence-keeping bootstrap can barely move (most classes have one positive test target,
# the old 11-target demo covered 0.013): such tables print no interval (CALIBRATION["min_test_targets"]).
SIMULATED_COVERAGE: dict[str, dict[str, float]] = {
    "opencell": {"coverage": 0.955, "coverage_mc_se": 0.0066, "type1_paired": 0.051, "power_paired_0015": 0.169,
                 "n_test_targets": 131, "inflate": 1.0, "raw_coverage": 0.955, "raw_type1_paired": 0.051,
                 "population_macro_f1": 0.794},
    # The demo at its configured size (500 targets, 22% test share: ~110 test targets; data/synthetic.yaml).
    "demo": {"coverage": 0.967, "coverage_mc_se": 0.0056, "type1_paired": 0.043, "power_paired_0015": 0.127,
             "n_test_targets": 110, "inflate": 1.0, "raw_coverage": 0.967, "raw_type1_paired": 0.043,
             "population_macro_f1": 0.720},
    # OpenCell's label structure at smaller dataset sizes (`--scale opencell --n-targets 300|600|1000 --seeds 0,1
    # --sets 150`), to locate min_test_targets; not calibrated below 100 test targets.
    "opencell_30": {"coverage": 0.383, "coverage_mc_se": 0.028, "type1_paired": 0.183, "power_paired_0015": 0.21,
                    "n_test_targets": 30, "inflate": 1.0, "raw_coverage": 0.383, "raw_type1_paired": 0.183},
    "opencell_60": {"coverage": 0.870, "coverage_mc_se": 0.019, "type1_paired": 0.077, "power_paired_0015": 0.163,
                    "n_test_targets": 60, "inflate": 1.0, "raw_coverage": 0.870, "raw_type1_paired": 0.077},
    "opencell_100": {"coverage": 0.970, "coverage_mc_se": 0.010, "type1_paired": 0.053, "power_paired_0015": 0.11,
                     "n_test_targets": 100, "inflate": 1.0, "raw_coverage": 0.970, "raw_type1_paired": 0.053},
}


# ----------------------------------------------------------------------------------------------------------
# the statistic
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Replicates:
    """Bootstrap replicates: `targets` (n_rep, n_targets) draw counts per test target, and `columns`
    (n_rep, n_columns) weights of the (seed, fold) models (None: every model once, i.e. one seed)."""

    targets: np.ndarray
    columns: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def scored_classes(counts: np.ndarray) -> np.ndarray:
    """Boolean mask of the classes with at least one positive in the full test set (every model predicts the
    same test set, so column 0's positives are everyone's)."""
    return counts[POS].sum(axis=(0, 1)) > 0


def positive_targets(counts: np.ndarray) -> np.ndarray:
    """Per class, how many test targets have a positive (the number that matters for the bootstrap)."""
    return (counts[POS, 0] > 0).sum(axis=0)


def _as_replicates(weights: Replicates | np.ndarray) -> Replicates:
    if isinstance(weights, Replicates):
        return weights
    return Replicates(np.atleast_2d(np.asarray(weights, dtype=np.float64)))


def macro_f1(counts: np.ndarray, weights: Replicates | np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The macro F1 (module docstring) over the fixed `classes` for each replicate: per model
    F1 = 2tp / (2tp + fp + fn), 0 where undefined (zero_division=0), mean over classes, then the
    (seed-weighted) mean over the models."""
    reps = _as_replicates(weights)
    w = reps.targets
    c = counts[:3][..., classes]
    n_f, n_t, n_c = c.shape[1:]
    # one matrix product per count: (n_rep, n_targets) @ (n_targets, n_models * n_classes)
    tp, fp, fn = ((w @ c[k].transpose(1, 0, 2).reshape(n_t, n_f * n_c)).reshape(-1, n_f, n_c) for k in range(3))
    den = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)
    if f1.shape[2] == 0:
        return np.full(w.shape[0], np.nan)
    per_model = f1.mean(axis=2)
    if reps.columns is None:
        return per_model.mean(axis=1)
    return (per_model * reps.columns).sum(axis=1) / reps.columns.sum(axis=1)


def estimate(counts: np.ndarray, classes: np.ndarray) -> float:
    """The point estimate: every target and every model once."""
    return float(macro_f1(counts, np.ones((1, counts.shape[2])), classes)[0])


def bootstrap_weights(
    n_targets: int, n_boot: int, seed: int, positives: np.ndarray | None = None
) -> np.ndarray:
    """(n_boot, n_targets) draw counts: each replicate draws n_targets targets with replacement. With
    `positives` ((n_targets, n_scored) bool: which target carries which scored class) every replicate keeps a
    positive of every scored class, as dinoloc's split keeps one in the test set: for each class a replicate
    lacks (rarest first), one drawn copy of a target whose removal loses no class's last positive is swapped
    for a positive target of that class drawn at random. The same seed and targets give the same replicates,
    so rows on one test set are paired."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(n_targets, size=(n_boot, n_targets)) + n_targets * np.arange(n_boot)[:, None]
    w = np.bincount(draws.ravel(), minlength=n_boot * n_targets).reshape(n_boot, n_targets).astype(np.float64)
    if positives is None:
        return w
    pos = np.asarray(positives, dtype=bool)
    fix_rng = np.random.default_rng([seed, 1])
    for c in np.argsort(pos.sum(axis=0), kind="stable"):
        carriers = np.flatnonzero(pos[:, c])
        if carriers.size == 0:
            continue
        present = w @ pos.astype(np.float64)  # (n_boot, n_classes) drawn positives
        missing = np.flatnonzero(present[:, c] == 0)
        if missing.size == 0:
            continue
        # A copy of target t may go if no class it carries would drop from 1 drawn positive to 0.
        last = (present[missing] == 1).astype(np.float64) @ pos.T.astype(np.float64) > 0
        removable = (w[missing] > 0) & ~(last & (w[missing] == 1))
        # Drop one drawn copy at random among the removable ones (a target weighs its draw count); a
        # replicate with none (a tiny test set) just gains the positive.
        mass = np.where(removable, w[missing], 0.0)
        total = mass.sum(axis=1)
        cum = np.cumsum(mass, axis=1)
        pick = (cum < (fix_rng.random(missing.size) * total)[:, None]).sum(axis=1)
        has = total > 0
        w[missing[has], pick[has]] -= 1
        w[missing, carriers[fix_rng.integers(carriers.size, size=missing.size)]] += 1
    return w


def column_weights(seed_of: Sequence[int], n_boot: int, seed: int) -> np.ndarray | None:
    """(n_boot, n_columns) weights of the (seed, fold) models: each replicate draws the classifier seeds with
    replacement (a model's weight is its seed's draw count). None with one seed (nothing to resample)."""
    seed_of = np.asarray(seed_of)
    seeds = np.unique(seed_of)
    if seeds.size < 2:
        return None
    rng = np.random.default_rng([seed, 2])
    draws = rng.multinomial(seeds.size, np.full(seeds.size, 1.0 / seeds.size), size=n_boot).astype(np.float64)
    return draws[:, np.searchsorted(seeds, seed_of)]


def replicates(
    counts: np.ndarray, classes: np.ndarray, n_boot: int, seed: int, seed_of: Sequence[int] | None = None
) -> Replicates:
    """The table's replicates for one test set: presence-keeping target draws (bootstrap_weights) and, with
    several classifier seeds, seed draws (column_weights)."""
    positives = counts[POS, 0][:, classes] > 0
    targets = bootstrap_weights(counts.shape[2], n_boot, seed, positives)
    cols = column_weights(seed_of, n_boot, seed) if seed_of is not None else None
    return Replicates(targets, cols)


def jackknife_weights(n_targets: int) -> np.ndarray:
    """(n_targets, n_targets) leave-one-target-out weights, for the BCa acceleration."""
    return 1.0 - np.eye(n_targets)


# ----------------------------------------------------------------------------------------------------------
# intervals
# ----------------------------------------------------------------------------------------------------------
def interval_from_replicates(
    theta: float, reps: np.ndarray, level: float, method: str = "percentile", jack: np.ndarray | None = None
) -> tuple[float, float]:
    """(low, high) of a two-sided `level` interval from bootstrap replicates `reps` of the estimate `theta`.
    bca needs the jackknife values `jack`; basic is 2·theta minus the percentile interval."""
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0 or not np.isfinite(theta):
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    if method == "percentile":
        lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    elif method == "basic":
        q_lo, q_hi = np.quantile(reps, [alpha, 1 - alpha])
        lo, hi = 2 * theta - q_hi, 2 * theta - q_lo
    elif method == "bca":
        if jack is None:
            raise ValueError("bca needs the jackknife values")
        # z0: median bias of the replicates (ties count half, as scipy does); a: acceleration (skewness of
        # the jackknife influence values).
        p0 = (np.sum(reps < theta) + 0.5 * np.sum(reps == theta)) / reps.size
        p0 = np.clip(p0, 0.5 / reps.size, 1 - 0.5 / reps.size)
        z0 = sps.norm.ppf(p0)
        u = jack.mean() - jack
        denom = 6.0 * np.sum(u**2) ** 1.5
        a = float(np.sum(u**3) / denom) if denom > 0 else 0.0
        z = sps.norm.ppf([alpha, 1 - alpha])
        adj = sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
        lo, hi = np.quantile(reps, np.clip(adj, 0.0, 1.0))
    else:
        raise ValueError(f"unknown interval method {method!r}; use one of {METHODS}")
    return float(lo), float(hi)


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    bias: float  # replicate mean - estimate
    method: str
    widened: bool = False  # the (calibrated) interval missed the estimate and was widened to it
    replicates: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    raw_low: float = float("nan")  # the method's interval before calibration and widening
    raw_high: float = float("nan")
    inflate: float = 1.0


def calibrate(theta: float, lo: float, hi: float, inflate: float) -> tuple[float, float]:
    """The interval's half-widths around the estimate multiplied by `inflate` (CALIBRATION)."""
    return theta - inflate * (theta - lo), theta + inflate * (hi - theta)


def bootstrap_interval(
    counts: np.ndarray, classes: np.ndarray, weights: Replicates | np.ndarray, level: float = 0.95,
    method: str = "percentile", inflate: float = 1.0,
) -> Interval:
    """Target-bootstrap interval of the model-mean macro F1 over the fixed `classes`, calibrated."""
    theta = estimate(counts, classes)
    reps = macro_f1(counts, weights, classes)
    jack = macro_f1(counts, jackknife_weights(counts.shape[2]), classes) if method == "bca" else None
    raw_lo, raw_hi = interval_from_replicates(theta, reps, level, method, jack)
    lo, hi = calibrate(theta, raw_lo, raw_hi, inflate)
    widened = bool(np.isfinite(theta) and np.isfinite(lo) and not lo <= theta <= hi)
    if widened:
        lo, hi = min(lo, theta), max(hi, theta)
    bias = float(np.nanmean(reps) - theta) if reps.size else float("nan")
    return Interval(theta, lo, hi, bias, method, widened, reps, raw_lo, raw_hi, inflate)


def paired_p_value(
    counts_a: np.ndarray, counts_b: np.ndarray, classes: np.ndarray, weights: Replicates | np.ndarray,
    weights_b: Replicates | np.ndarray | None = None, inflate: float = 1.0,
) -> tuple[float, float]:
    """Two-sided paired bootstrap test of "same expected macro F1" for two rows on the same test targets,
    scored on the same target replicates and class set (`weights_b`: row b's own seed draws where its models
    differ in number). The replicate differences d* are centred on their own mean and scaled by `inflate` to
    form the null distribution, and p = (1 + #{inflate·|d* - mean d*| >= |d|}) / (1 + B), d being the
    observed difference (a p never below 1/(B+1)). Returns (d, p)."""
    if counts_a.shape[2] != counts_b.shape[2]:
        raise ValueError("paired comparison needs the same test targets in both rows")
    d = estimate(counts_a, classes) - estimate(counts_b, classes)
    reps = macro_f1(counts_a, weights, classes) - macro_f1(counts_b, weights if weights_b is None else weights_b, classes)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0 or not np.isfinite(d):
        return d, float("nan")
    null = inflate * (reps - reps.mean())
    # A tolerance so that identical rows (d = 0, every d* = 0) give p = 1 despite float noise.
    extreme = np.abs(null) >= abs(d) - 1e-12
    return float(d), float((1 + extreme.sum()) / (1 + reps.size))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries are not comparisons and stay NaN)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = ok.size
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


# ----------------------------------------------------------------------------------------------------------
# embedding health
# ----------------------------------------------------------------------------------------------------------
def embedding_health(emb: np.ndarray, max_rows: int = 20000) -> dict[str, float]:
    """Effective rank (exp of the entropy of the normalised covariance spectrum, Roy & Vetterli 2007), the
    first principal component's share of the variance, and the mean per-feature std of embeddings (n, d).
    A collapsed DINO model, a dead channel or channels in the wrong order show as rank near 1."""
    x = np.asarray(emb, dtype=np.float64)[:max_rows]
    if x.ndim != 2 or x.shape[0] < 2:
        return {"effective_rank": float("nan"), "top_component_share": float("nan"), "mean_std": float("nan")}
    x = x - x.mean(axis=0)
    sv = np.linalg.svd(x, compute_uv=False)
    var = sv**2
    total = var.sum()
    if total <= 0:
        return {"effective_rank": 0.0, "top_component_share": float("nan"), "mean_std": 0.0}
    p = var / total
    p = p[p > 0]
    return {
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "top_component_share": float(var[0] / total),
        "mean_std": float(x.std(axis=0).mean()),
    }


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment of two embeddings of the same images (rows), Kornblith et al. 2019:
    ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F) after centring each feature. 1 = the same representation up to rotation
    and isotropic scale (e.g. a network compared with itself), near 0 = unrelated. Dimensions may differ."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"linear_cka needs two (n, d) arrays over the same n >= 2 rows; got {x.shape}, {y.shape}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")

