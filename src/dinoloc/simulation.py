"""Coverage of Table III's intervals and paired tests, by simulation at the table's own scale.

    python scripts/ci_coverage.py --scale opencell|demo --seeds 0,1,2,3,4 --json

A simulated world: targets whose label sets follow the real structure (`opencell`: OpenCell's own public
annotation table, OPENCELL_LABEL_SETS; `demo`: the demo's own label generator at its configured size), a
classifier in the paper's regime (macro F1 ~0.8, rare classes harder), test sets drawn with dinoloc's own
split procedure (data/split.py `choose_test_units`: stratified 10%, every class with >= 2 targets in test),
the replicates the table uses (stats.replicates), and as truth the population macro F1 (the classifier's
macro F1 on a large population of targets from the same world). Pure numpy (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dinoloc import stats
from dinoloc.ontology import CATEGORIES
from dinoloc.simulation_data import OPENCELL_LABEL_SETS

N_CLASSES = len(CATEGORIES)
# The classifier model: a per-target, per-class latent score  sep_c·y + target noise (shared by the target's
# images; half shared by the rows compared, half each row's own) + fold noise + image noise, thresholded at
# sep_c / 2. sep_c falls with the class's rarity; each world's `sep_base` puts its population macro F1 near
# the paper's ~0.8 (OpenCell 5.6 -> 0.80, demo 4.6 -> 0.80; `population_f1` prints it).
SEP_SLOPE = 0.4  # separation lost per factor e of rarity relative to the commonest class
FOLD_NOISE = 0.3
IMAGE_NOISE = 0.5
SHARED = 0.5  # share of the target-level noise the rows on one test set have in common (pairing)


@dataclass(frozen=True)
class World:
    """Everything a simulated table depends on: the label-set pool targets are drawn from, the dataset
    size, the split's parameters, images per target (low, high) and the number of folds."""

    name: str
    pool: np.ndarray  # (n_pool, n_classes) bool label vectors, drawn uniformly with replacement
    n_targets: int  # labelled targets per dataset
    test_size: float
    n_folds: int
    images: tuple[int, int]
    sep_base: float

    def separation(self) -> np.ndarray:
        freq = np.maximum(self.pool.mean(axis=0), 1e-3)
        return self.sep_base - SEP_SLOPE * np.log(freq.max() / freq)


def label_matrix(label_sets: dict[str, int]) -> np.ndarray:
    """One bool row per target from {"class;class": n_targets}."""
    rows = []
    for names, n in label_sets.items():
        v = np.zeros(N_CLASSES, dtype=bool)
        v[[CATEGORIES.index(c) for c in names.split(";") if c]] = True
        rows += [v] * int(n)
    return np.array(rows)


def opencell_world() -> World:
    """OpenCell at the paper's split: its 1,310 annotated targets' label sets, 10% test, 5 folds, and
    1 + Poisson(3) FOVs per target (here 1-7)."""
    y = label_matrix(OPENCELL_LABEL_SETS)
    return World("opencell", y, len(y), 0.1, 5, (1, 7), 5.6)


def demo_world(n_draws: int = 50) -> World:
    """The demo at its configured size: labels from the demo's own generator (configs/data/synthetic.yaml
    `generator`, synthetic/opencell.py assign_categories), pooled over `n_draws` generator seeds; the
    demo's split parameters as composed (data=synthetic, the default: its own test_size over opencell.yaml's)."""
    from omegaconf import OmegaConf

    from dinoloc.config import compose
    from dinoloc.synthetic.generate import packaged_spec
    from dinoloc.synthetic.opencell import assign_categories

    spec = packaged_spec()
    split = OmegaConf.to_container(compose(["data=synthetic"]).data.split)
    n_labelled = spec.n_targets - spec.n_unannotated
    rows = []
    for s in range(n_draws):
        rng = np.random.default_rng([spec.seed + s, 1_000_003])
        annotated = np.ones(spec.n_targets, dtype=bool)
        annotated[rng.choice(spec.n_targets, size=spec.n_unannotated, replace=False)] = False
        for t, grades in enumerate(assign_categories(rng, spec.n_targets, annotated)):
            if annotated[t]:
                v = np.zeros(N_CLASSES, dtype=bool)
                v[[CATEGORIES.index(c) for c in grades]] = True
                rows.append(v)
    return World("demo", np.array(rows), n_labelled, float(split["test_size"]), int(split["n_folds"]),
                 tuple(int(v) for v in spec.images_per_target), 4.6)


def world(scale: str) -> World:
    if scale == "opencell":
        return opencell_world()
    if scale == "demo":
        return demo_world()
    raise ValueError(f"unknown scale {scale!r}; use opencell or demo")


def _counts(rng: np.random.Generator, y: np.ndarray, images: tuple[int, int], n_folds: int, sep: np.ndarray,
            shared: np.ndarray, rows: Sequence[float]) -> list[np.ndarray]:
    """Per row (its separation multiplier): counts (4, n_folds, n_targets, n_classes) on targets y, the
    rows sharing `shared` (the common part of the target-level noise) and the images."""
    n_t = len(y)
    n_img = rng.integers(images[0], images[1] + 1, size=n_t)
    tidx = np.repeat(np.arange(n_t), n_img)
    yi = y[tidx]
    out = []
    for mult in rows:
        s = sep * mult
        own = rng.normal(size=y.shape)
        latent = s * y + np.sqrt(SHARED) * shared + np.sqrt(1 - SHARED) * own
        counts = np.zeros((4, n_folds, n_t, y.shape[1]))
        for f in range(n_folds):
            score = (latent + rng.normal(scale=FOLD_NOISE, size=y.shape))[tidx]
            pred = score + rng.normal(scale=IMAGE_NOISE, size=yi.shape) > s / 2
            for k, v in enumerate((pred & yi, pred & ~yi, ~pred & yi, yi)):
                np.add.at(counts[k, f], tidx, v.astype(np.float64))
        out.append(counts)
    return out


def population_f1(w: World, mult: float = 1.0, n: int = 20000, seed: int = 12345) -> float:
    """The truth: macro F1 of the classifier (separation multiplier `mult`) on `n` targets of the world,
    over every class the world has (each model's F1 on the pooled counts, mean over the folds)."""
    rng = np.random.default_rng(seed)
    y = w.pool[rng.integers(len(w.pool), size=n)]
    counts = _counts(rng, y, w.images, w.n_folds, w.separation(), rng.normal(size=y.shape), [mult])[0]
    return stats.estimate(counts, w.pool.any(axis=0))


def multiplier_for_gap(w: World, gap: float, truth: float) -> float:
    """The separation multiplier whose population macro F1 is `truth - gap` (bisection)."""
    lo, hi = 0.5, 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        if population_f1(w, mid) > truth - gap:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def simulate(w: World, seed: int, n_sets: int, n_boot: int, level: float = 0.95, gap: float = 0.015,
             truth: float | None = None, mult_gap: float | None = None) -> dict[str, np.ndarray]:
    """`n_sets` simulated tables: per set the estimate, the raw percentile interval, the test size, and the
    raw paired statistics (d, centred replicate spread) of a true null and of a `gap` difference."""
    from dinoloc.data.split import choose_test_units

    truth = population_f1(w) if truth is None else truth
    mult_gap = multiplier_for_gap(w, gap, truth) if mult_gap is None else mult_gap
    rng = np.random.default_rng([seed, 7])
    alpha = (1 - level) / 2
    out: dict[str, list] = {k: [] for k in ("theta", "lo", "hi", "n_test", "n_scored", "d_null", "null_null",
                                            "d_gap", "null_gap")}
    for i in range(n_sets):
        y = w.pool[rng.integers(len(w.pool), size=w.n_targets)]
        _, is_test = choose_test_units(y.astype(np.int64), w.test_size, int(rng.integers(2**31)))
        yt = y[is_test]
        shared = rng.normal(size=yt.shape)
        a, b_null, b_gap = _counts(rng, yt, w.images, w.n_folds, w.separation(), shared, [1.0, 1.0, mult_gap])
        classes = stats.scored_classes(a)
        reps = stats.replicates(a, classes, n_boot, seed=i)
        fa = stats.macro_f1(a, reps, classes)
        theta = stats.estimate(a, classes)
        lo, hi = np.quantile(fa, [alpha, 1 - alpha])
        out["theta"].append(theta)
        out["lo"].append(lo)
        out["hi"].append(hi)
        out["n_test"].append(int(is_test.sum()))
        out["n_scored"].append(int(classes.sum()))
        for name, b in (("null", b_null), ("gap", b_gap)):
            d = theta - stats.estimate(b, classes)
            dr = fa - stats.macro_f1(b, reps, classes)
            out[f"d_{name}"].append(d)
            out[f"null_{name}"].append(dr - dr.mean())
    res = {k: np.asarray(v) for k, v in out.items()}
    res["truth"] = np.asarray(truth)
    return res


def summarize(sims: Sequence[dict[str, np.ndarray]], inflate: float = 1.0, alpha: float = 0.05) -> dict[str, float]:
    """Coverage (and its Monte Carlo standard error over the seeds' sets), the paired test's rejection rate of
    true nulls and of the gap, at the calibration `inflate`."""
    cov, t1, pw, width, n_test = [], [], [], [], []
    for s in sims:
        lo, hi = stats.calibrate(s["theta"], s["lo"], s["hi"], inflate)
        cov.append((lo <= s["truth"]) & (s["truth"] <= hi))
        width.append(hi - lo)
        n_test.append(s["n_test"])
        for key, acc in (("null", t1), ("gap", pw)):
            B = s[f"null_{key}"].shape[1]
            extreme = (inflate * np.abs(s[f"null_{key}"]) >= np.abs(s[f"d_{key}"])[:, None] - 1e-12).sum(axis=1)
            acc.append((1 + extreme) / (1 + B) < alpha)
    c = np.concatenate(cov)
    per_seed = [float(x.mean()) for x in cov]
    return {
        "coverage": float(c.mean()),
        "coverage_mc_se": float(np.sqrt(c.mean() * (1 - c.mean()) / c.size)),
        "coverage_per_seed": per_seed,
        "type1_paired": float(np.concatenate(t1).mean()),
        "power_paired_0015": float(np.concatenate(pw).mean()),
        "mean_width": float(np.concatenate(width).mean()),
        "n_test_targets_median": float(np.median(np.concatenate(n_test))),
        "inflate": inflate,
    }
