"""The report's figures (dinoloc.report.figures): what is drawn equals the CSVs, the floor row is a line, both formats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dinoloc.ontology import CATEGORIES
from dinoloc.report import figures
from dinoloc.viz import composite


def _table(tmp_path, floor: bool, ci: bool = True):
    rows = [("ImageNet-1k", "mapping", 0.50, 0.03), ("ImageNet-1k", "replication", 0.48, 0.02),
            ("HPA FOV", "mapping", 0.62, 0.01), ("OpenCell (synthetic)", "native", 0.55, 0.02)]
    df = pd.DataFrame(rows, columns=["weights", "strategy", "test_f1_mean", "test_f1_std"])
    df["n_folds"], df["synthetic"] = 5, False
    if ci:
        df["ci_low"], df["ci_high"] = df["test_f1_mean"] - 0.05, df["test_f1_mean"] + 0.04
    if floor:
        df["random_weights"] = False
        df.loc[len(df)] = {"weights": "random init", "strategy": "mapping", "test_f1_mean": 0.21, "test_f1_std": 0.01,
                           "n_folds": 5, "synthetic": False, "ci_low": 0.18, "ci_high": 0.24, "random_weights": True}
    path = tmp_path / "table3.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def drawn_figures(monkeypatch):
    """Keep each figure handed to _save so a test can read back what was drawn."""
    saved = []
    original = figures._save

    def keep(fig, out_png, title):
        saved.append(fig)
        return original(fig, out_png, title)

    monkeypatch.setattr(figures, "_save", keep)
    return saved


def test_figure1_floor_row_is_a_line_not_a_bar(tmp_path, drawn_figures):
    bars = figures.plot_figure1(_table(tmp_path, floor=True), tmp_path / "f1.png")
    assert [b[0] for b in bars] == ["ImageNet-1k / mapping", "ImageNet-1k / replication", "HPA FOV / mapping",
                                    "OpenCell (synthetic) / native"]
    ax = drawn_figures[0].axes[0]
    floor_lines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(floor_lines) == 1 and set(floor_lines[0].get_ydata()) == {0.21}
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "random weights (floor): 0.210" in labels and "95% CI (bootstrap)" in labels
    # The CI is drawn for every bar, from ci_low to ci_high.
    ci = sorted(tuple(np.round(ln.get_ydata(), 6)) for ln in ax.lines if ln.get_linestyle() == "-" and len(ln.get_ydata()) == 2)
    assert ci == sorted([(0.45, 0.54), (0.43, 0.52), (0.57, 0.66), (0.5, 0.59)])
    # The legend sits outside the axes, so it cannot cover a bar; labels are wrapped, not clipped.
    assert ax.get_legend().get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1
    assert "OpenCell\n(synthetic)" in [t.get_text() for t in ax.get_xticklabels()]
    assert (tmp_path / "f1.pdf").stat().st_size > 0


def test_figure1_draws_the_three_references_as_labelled_lines(tmp_path, drawn_figures):
    """With the `role` column (docs/references.md): floor, classical and trivial are lines, not bars."""
    path = _table(tmp_path, floor=True)
    df = pd.read_csv(path)
    df["role"] = np.where(df["random_weights"], "floor", "pretrained")
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "weights": "Classical features", "strategy": "native",
                       "test_f1_mean": 0.33, "random_weights": False, "role": "classical"}
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "weights": "trivial", "strategy": "native", "test_f1_mean": 0.19,
                       "random_weights": False, "role": "trivial"}
    df.to_csv(path, index=False)
    bars = figures.plot_figure1(path, tmp_path / "f1.png")
    assert len(bars) == 4  # the pretrained rows only
    ax = drawn_figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for label in ("random weights (floor): 0.210", "classical features: 0.330", "trivial (best constant per class): 0.190"):
        assert label in labels
    levels = {round(float(ln.get_ydata()[0]), 3) for ln in ax.lines if ln.get_linestyle() in ("--", "-.", ":")}
    assert levels == {0.21, 0.33, 0.19}


def test_figure1_without_ci_or_floor_columns(tmp_path, drawn_figures):
    bars = figures.plot_figure1(_table(tmp_path, floor=False, ci=False), tmp_path / "f1.png")
    assert len(bars) == 4
    labels = [t.get_text() for t in drawn_figures[0].axes[0].get_legend().get_texts()]
    assert not any("CI" in t or "floor" in t for t in labels)


def test_per_class_heatmap_equals_the_csv(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"class": list(CATEGORIES), "support": rng.integers(0, 9, len(CATEGORIES))})
    df["hpa__mapping"] = rng.random(len(CATEGORIES))
    df["opencell__native"] = rng.random(len(CATEGORIES))
    df.loc[3, ["hpa__mapping", "opencell__native"]] = np.nan  # a class without test positives
    df.to_csv(tmp_path / "per_class.csv", index=False)
    matrix = figures.plot_per_class(tmp_path / "per_class.csv", tmp_path / "pc.png", synthetic=True)
    assert list(matrix.index) == ["hpa__mapping", "opencell__native"] and list(matrix.columns) == list(CATEGORIES)
    np.testing.assert_allclose(matrix.to_numpy(), df[["hpa__mapping", "opencell__native"]].to_numpy().T)
    assert (tmp_path / "pc.pdf").stat().st_size > 0
    with Image.open(tmp_path / "pc.png") as im:
        assert figures.SYNTHETIC_MARKER in im.info.get("Title", "")


def test_magenta_green_composite_is_the_colour_blind_safe_option():
    rng = np.random.default_rng(0)
    protein, nucleus = rng.uniform(0, 100, (8, 8)), rng.uniform(0, 100, (8, 8))
    pct = (0.5, 99.8)
    mg, rg = composite(protein, nucleus, scheme="magenta_green", percentiles=pct), composite(protein, nucleus, percentiles=pct)
    np.testing.assert_array_equal(mg[..., 2], mg[..., 0])  # magenta = red + blue, both the protein
    np.testing.assert_array_equal(mg[..., :2], rg[..., :2])
    assert not rg[..., 2].any()


def test_short_ids():
    assert figures.short_id("OC-FOV_ATL3_ENSG00000184743_CID000367_FID00030311") == "ATL3 FOV 30311"
    assert figures.short_id("img001") == "img001"
    long = figures.short_id("a" * 10 + "_middle_part_" + "b" * 20)
    assert len(long) <= 22 and long.startswith("aaaa") and long.endswith("bbbb")
