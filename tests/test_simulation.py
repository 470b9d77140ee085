"""The coverage simulation (dinoloc.simulation, scripts/ci_coverage.py): its world is OpenCell's real label
structure and dinoloc's own split, and the figures the table notes quote are the ones it measures."""

from __future__ import annotations

import numpy as np
import pytest

from dinoloc import simulation, stats
from dinoloc.config import compose
from dinoloc.ontology import CATEGORIES

# ../shared/reference/opencell/README.md (computed from OpenCell's public annotation table, grade >= 1)
README_TARGETS_PER_CLASS = {
    "cytoplasmic": 687, "nucleoplasm": 600, "vesicles": 343, "membrane": 178, "nuclear_punctae": 141, "er": 140,
    "chromatin": 124, "golgi": 103, "nucleolus_gc": 97, "centrosome": 68, "big_aggregates": 61, "cell_contact": 57,
    "cytoskeleton": 54, "nuclear_membrane": 38, "nucleolus_fc_dfc": 32, "focal_adhesions": 13, "mitochondria": 13,
}
README_LABELS_PER_TARGET = [0, 338, 601, 287, 73, 10, 1]


def test_opencell_world_is_the_real_label_structure():
    w = simulation.opencell_world()
    per_class = dict(zip(CATEGORIES, w.pool.sum(axis=0).tolist(), strict=True))
    assert per_class == README_TARGETS_PER_CLASS
    assert np.bincount(w.pool.sum(axis=1)).tolist() == README_LABELS_PER_TARGET
    assert (w.test_size, w.n_folds, w.n_targets) == (0.1, 5, 1310)


def test_demo_world_takes_its_size_from_the_demo_config():
    from dinoloc.synthetic.generate import packaged_spec

    spec = packaged_spec()
    w = simulation.demo_world(n_draws=2)
    assert w.n_targets == spec.n_targets - spec.n_unannotated
    assert w.images == tuple(spec.images_per_target)
    assert len(w.pool) == 2 * w.n_targets
    assert w.test_size == float(compose(["data=synthetic"]).data.split.test_size)  # the demo's own share

def test_population_is_in_the_papers_regime():
    assert 0.77 <= simulation.population_f1(simulation.opencell_world(), n=5000) <= 0.82


def test_simulated_test_sets_follow_the_split_rule():
    """Every class with >= 2 targets in the dataset has a positive in each simulated test set (the split's
    rule), so every table scores all 17 classes at OpenCell's scale."""
    w = simulation.opencell_world()
    r = simulation.simulate(w, seed=0, n_sets=3, n_boot=50, truth=0.79, mult_gap=0.9)
    assert ((r["n_test"] >= 120) & (r["n_test"] <= 145)).all()  # ~10% of 1,310, grown by the coverage rule
    assert (r["n_scored"] == 17).all()
    assert np.all((r["lo"] <= r["theta"]) & (r["theta"] <= r["hi"]))


def test_recorded_figures_are_the_measured_ones():
    oc, demo = stats.SIMULATED_COVERAGE["opencell"], stats.SIMULATED_COVERAGE["demo"]
    assert 0.93 <= oc["coverage"] <= 0.97 and oc["type1_paired"] <= 0.06  # the goal, met
    assert 0.93 <= demo["coverage"] <= 0.97 and demo["type1_paired"] <= 0.06  # at the demo's own size too
    assert min(oc["n_test_targets"], demo["n_test_targets"]) >= stats.CALIBRATION["min_test_targets"]
    assert stats.SIMULATED_COVERAGE["opencell_60"]["coverage"] < 0.93  # why smaller tables print no interval


@pytest.mark.slow
def test_a_fresh_opencell_simulation_agrees_with_the_recorded_coverage():
    w = simulation.opencell_world()
    sims = [simulation.simulate(w, seed=11, n_sets=120, n_boot=400, truth=simulation.population_f1(w),
                                mult_gap=0.9)]
    got = simulation.summarize(sims, stats.CALIBRATION["inflate"])
    assert abs(got["coverage"] - stats.SIMULATED_COVERAGE["opencell"]["coverage"]) < 4 * got["coverage_mc_se"] + 0.01
