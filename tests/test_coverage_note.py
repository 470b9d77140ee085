"""The table notes quote the coverage simulated for the table's own world and size, never another scale's."""

from __future__ import annotations

import pandas as pd

from dinoloc import stats
from dinoloc.report.notes import coverage_note


def _table(n_test: int, synthetic: bool) -> pd.DataFrame:
    t = pd.DataFrame({"n_test_targets": [n_test, n_test], "synthetic": [synthetic, synthetic]})
    t.attrs["ci"] = {"method": "percentile"}
    return t


def test_a_synthetic_table_quotes_the_demo_scale():
    demo = stats.SIMULATED_COVERAGE["demo"]
    note = coverage_note(_table(121, synthetic=True))  # nearer OpenCell's 131 than the demo's size by count
    assert "--scale demo" in note and f"{demo['coverage']:.3f}" in note and "this table has 121" in note


def test_a_real_table_quotes_opencell_at_the_nearest_size():
    oc = stats.SIMULATED_COVERAGE["opencell"]
    note = coverage_note(_table(127, synthetic=False))
    assert "--scale opencell:" in note and f"{oc['coverage']:.3f}" in note
    small = coverage_note(_table(58, synthetic=False))
    assert "Too few test targets" in small and "--n-targets 600" in small
