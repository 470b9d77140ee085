"""The statistics of Table III alone (dinoloc.stats): no training, no files, seconds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import f1_score

from dinoloc import stats


def _images(rng: np.random.Generator, n_targets: int = 40, n_cls: int = 6, n_models: int = 1):
    """Per-image labels, per-model predictions and target ids (2 images per target), and their counts."""
    y_t = rng.random((n_targets, n_cls)) < 0.3
    y_t[0, -1], y_t[1:, -1] = True, False  # the last class has exactly one positive target
    y_t[:, 2] = False  # a class with no positive test target: not scored
    tidx = np.repeat(np.arange(n_targets), 2)
    y = y_t[tidx]
    preds = [np.where(rng.random(y.shape) < 0.8, y, ~y) for _ in range(n_models)]
    counts = np.zeros((4, n_models, n_targets, n_cls))
    for m, p in enumerate(preds):
        for k, v in enumerate((p & y, p & ~y, ~p & y, y)):
            np.add.at(counts[k, m], tidx, v.astype(float))
    return y, preds, tidx, counts


def _sk(y, p, classes):
    return f1_score(y, p, average="macro", labels=np.flatnonzero(classes), zero_division=0)


def test_estimate_and_every_replicate_equal_sklearn_macro_f1_on_the_drawn_images():
    rng = np.random.default_rng(0)
    y, preds, tidx, counts = _images(rng, n_models=2)
    classes = stats.scored_classes(counts)
    assert not classes[2] and classes[-1]
    assert stats.estimate(counts, classes) == pytest.approx(np.mean([_sk(y, p, classes) for p in preds]), abs=1e-12)
    reps = stats.replicates(counts, classes, 25, seed=4)
    got = stats.macro_f1(counts, reps, classes)
    for b in range(25):
        draw = np.repeat(np.arange(counts.shape[2]), reps.targets[b].astype(int))
        rows = np.concatenate([np.flatnonzero(tidx == t) for t in draw])
        want = np.mean([_sk(y[rows], p[rows], classes) for p in preds])
        assert got[b] == pytest.approx(want, abs=1e-12)


def test_replicates_keep_a_positive_of_every_scored_class_and_their_size():
    """The split keeps a positive of every class in the test set; every replicate keeps that rule."""
    rng = np.random.default_rng(1)
    _, _, _, counts = _images(rng, n_targets=30)
    classes = stats.scored_classes(counts)
    pos = counts[stats.POS, 0][:, classes] > 0
    plain = stats.bootstrap_weights(30, 2000, 0)
    assert ((plain @ pos) == 0).any()  # an unconditioned bootstrap loses the one-target class ~37% of the time
    w = stats.bootstrap_weights(30, 2000, 0, pos)
    assert ((w @ pos) > 0).all()
    np.testing.assert_array_equal(w.sum(axis=1), 30)
    # Replicates that needed no swap are left as drawn (the scheme only touches the ones lacking a class).
    ok = ((plain @ pos) > 0).all(axis=1)
    np.testing.assert_array_equal(w[ok], plain[ok])


def test_seed_resampling_draws_whole_seeds():
    cols = stats.column_weights([0, 0, 1, 1, 2, 2], 500, 0)
    assert cols.shape == (500, 6)
    np.testing.assert_array_equal(cols[:, 0], cols[:, 1])  # the folds of one seed move together
    np.testing.assert_array_equal(cols[:, ::2].sum(axis=1), 3)
    assert (cols[:, ::2] == 0).any()  # some replicates leave a seed out
    assert stats.column_weights([0, 0, 0], 10, 0) is None  # one seed: nothing to resample


def test_raw_interval_brackets_the_estimate_without_widening():
    """Asserted on the interval BEFORE calibration and widening (which would make it hold for any interval)."""
    rng = np.random.default_rng(1)
    for i in range(20):
        _, _, _, counts = _images(rng, n_targets=60, n_models=2)
        classes = stats.scored_classes(counts)
        reps = stats.replicates(counts, classes, 400, seed=i)
        ci = stats.bootstrap_interval(counts, classes, reps, 0.95, "percentile")
        assert ci.raw_low < ci.estimate < ci.raw_high
        assert not ci.widened
        assert ci.bias == pytest.approx(ci.replicates.mean() - ci.estimate)


def test_calibration_scales_the_half_widths():
    rng = np.random.default_rng(2)
    _, _, _, counts = _images(rng, n_targets=60)
    classes = stats.scored_classes(counts)
    reps = stats.replicates(counts, classes, 300, seed=0)
    a = stats.bootstrap_interval(counts, classes, reps, 0.95, "percentile", inflate=1.0)
    b = stats.bootstrap_interval(counts, classes, reps, 0.95, "percentile", inflate=1.5)
    assert (a.raw_low, a.raw_high) == (b.raw_low, b.raw_high)
    assert b.estimate - b.low == pytest.approx(1.5 * (a.estimate - a.low))
    assert b.high - b.estimate == pytest.approx(1.5 * (a.high - a.estimate))


def test_an_interval_that_misses_the_estimate_is_widened_to_it():
    lo, hi = stats.interval_from_replicates(0.1, np.linspace(0.2, 0.3, 100), 0.95, "percentile")
    assert lo > 0.1
    counts = np.zeros((4, 1, 3, 2))
    counts[stats.POS, 0, 0, 0] = counts[stats.TP, 0, 0, 0] = 1
    counts[stats.POS, 0, 1, 1] = counts[stats.FN, 0, 1, 1] = 1
    # every replicate keeps both classes' one target: each is exactly the estimate
    ci = stats.bootstrap_interval(counts, stats.scored_classes(counts), stats.replicates(
        counts, stats.scored_classes(counts), 200, 0), 0.95, "percentile")
    assert ci.raw_low == ci.raw_high == ci.estimate == 0.5


def test_bca_matches_scipy():
    """Our BCa on a plain mean equals scipy.stats.bootstrap's BCa on the same problem (Monte Carlo error)."""
    rng = np.random.default_rng(2)
    x = rng.exponential(size=60)
    w = stats.bootstrap_weights(60, 20000, 3)
    reps = w @ x / 60
    jack = (x.sum() - x) / 59
    ours = stats.interval_from_replicates(x.mean(), reps, 0.95, "bca", jack)
    ref = sps.bootstrap((x,), np.mean, method="BCa", n_resamples=20000, rng=4).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.02)


def test_paired_p_identical_rows_and_clearly_better_row():
    rng = np.random.default_rng(3)
    _, _, _, counts = _images(rng, n_targets=131)
    classes = stats.scored_classes(counts)
    w = stats.replicates(counts, classes, 1000, 0)
    d, p = stats.paired_p_value(counts, counts.copy(), classes, w)
    assert d == 0 and p == pytest.approx(1.0)
    better = counts.copy()
    better[stats.TP] += better[stats.FN]
    better[stats.FN] = 0
    d, p = stats.paired_p_value(better, counts, classes, w)
    assert d > 0.05 and p < 0.01
    d2, p2 = stats.paired_p_value(counts, better, classes, w)
    assert d2 == pytest.approx(-d) and p2 == pytest.approx(p)
    # Calibration widens the null: a small gap that is significant raw is less so inflated.
    slightly = counts.copy()
    moved = np.minimum(slightly[stats.FN], 1) * (rng.random(slightly[stats.FN].shape) < 0.15)
    slightly[stats.TP] += moved
    slightly[stats.FN] -= moved
    _, p_raw = stats.paired_p_value(slightly, counts, classes, w)
    _, p_cal = stats.paired_p_value(slightly, counts, classes, w, inflate=2.0)
    assert p_cal > p_raw


def test_holm():
    p = [0.01, 0.04, 0.03, np.nan, 0.2]
    # Holm by hand: sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> monotone 0.09, 0.2
    np.testing.assert_allclose(stats.holm(p), [0.04, 0.09, 0.09, np.nan, 0.2])
    assert np.all(stats.holm([0.5, 0.9]) <= 1.0)
