"""Tests for the report stage, on small fake run folders written in the exact on-disk format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import f1_score

from dinoloc import results
from dinoloc import stats as dstats
from dinoloc.io import DinolocError
from dinoloc.ontology import CATEGORIES
from dinoloc.report import figures, statistics, tables
from dinoloc.report import runs as report_runs
from dinoloc.report.runs import collect_runs
from dinoloc.report.sensitivity import sensitivity_markdown
from dinoloc.report.spec import ReportSpec
from dinoloc.report.stage import run_report
from dinoloc.report.tables import build_table, markdown_table, per_class_table

REPO = Path(__file__).resolve().parents[1]
N_FOLDS = 5
DISPLAY = {"imagenet": "ImageNet-1k", "hpa": "HPA FOV", "opencell": "OpenCell"}
# The bootstrap settings every table call passes (no defaults in code; the pipeline reads configs/config.yaml report:)
CI = {"seed": 0, "level": 0.95, "method": "percentile"}


@pytest.fixture(autouse=True)
def _calibrated_at_fixture_size(monkeypatch):
    """The fixtures' test sets are small (15-30 targets); the table's calibrated statistics start at
    stats.CALIBRATION["min_test_targets"]. Tests of the below-threshold path set it back themselves."""
    monkeypatch.setitem(dstats.CALIBRATION, "min_test_targets", 1)


def _sk_macro(y: np.ndarray, p: np.ndarray) -> float:
    """Independent macro F1 (sklearn, classes with a positive) to write result.json with."""
    f1 = f1_score(y, p, average=None, zero_division=0, labels=list(range(y.shape[1])))
    return float(f1[y.sum(axis=0) > 0].mean())


def make_test_set(seed: int = 0, n_images: int = 40, n_targets: int = 15) -> pd.DataFrame:
    """40 test images in 15 targets; labels belong to the target; the last target has no label."""
    rng = np.random.default_rng(seed)
    targets = [f"ENSG{t:05d}" for t in range(n_targets)]
    labels = {t: (rng.random(len(CATEGORIES)) < 0.2).astype(int) for t in targets}
    for t in targets[:-1]:
        labels[t][rng.integers(len(CATEGORIES))] = 1
    labels[targets[-1]][:] = 0
    assigned = targets + list(rng.choice(targets, n_images - n_targets))
    rows = [{"image_id": f"img{i:03d}", "target": t, **dict(zip(CATEGORIES, labels[t], strict=True))}
            for i, t in enumerate(assigned)]
    return pd.DataFrame(rows)


def write_run(
    runs_dir: Path,
    backbone: str,
    strategy: str,
    test_set: pd.DataFrame,
    quality: float,
    seed: int = 0,
    synthetic: bool = False,
    manifest: Path | None = None,
    probs: dict[int, np.ndarray] | None = None,
    extra: dict | None = None,
) -> Path:
    """A run folder: predictions.csv (test + val rows per fold), per_class.csv, result.json consistent with them."""
    rng = np.random.default_rng(seed)
    run_dir = runs_dir / f"{backbone}__{strategy}"
    run_dir.mkdir(parents=True)
    y = test_set[list(CATEGORIES)].to_numpy()
    pred_rows, pc_rows, folds = [], [], []
    probs_out = {}
    for fold in range(N_FOLDS):
        p = probs[fold] if probs is not None else np.clip(quality * y + (1 - quality) * rng.random(y.shape), 0, 1)
        probs_out[fold] = p
        yhat = (p > 0.5).astype(int)
        test_f1 = _sk_macro(y, yhat)
        for split, ids, yy, pp in (
            ("test", test_set["image_id"], y, p),
            ("val", [f"val{fold}_{i}" for i in range(4)], y[:4], rng.random((4, len(CATEGORIES)))),
        ):
            targets = test_set["target"] if split == "test" else [f"VAL{i}" for i in range(4)]
            for i, (iid, t) in enumerate(zip(ids, targets, strict=True)):
                row = {"image_id": iid, "fold": fold, "split": split, "target": t, "path": f"{t}/{iid}_proj.tif"}
                row.update(zip(results.label_columns(CATEGORIES), map(int, yy[i]), strict=True))
                row.update(zip(results.prob_columns(CATEGORIES), map(float, pp[i]), strict=True))
                pred_rows.append(row)
        per_class = f1_score(y, yhat, average=None, zero_division=0, labels=list(range(len(CATEGORIES))))
        for k, c in enumerate(CATEGORIES):
            pc_rows.append({"fold": fold, "split": "test", "class": c, "f1": per_class[k], "precision": 0.0,
                            "recall": 0.0, "support": int(y[:, k].sum())})
            pc_rows.append({"fold": fold, "split": "train", "class": c, "f1": 0.99, "precision": 0.0,
                            "recall": 0.0, "support": 7})
        folds.append({"fold": fold, "train_macro_f1": 0.95 + 0.001 * fold, "val_macro_f1": 0.7 + 0.01 * fold,
                      "test_macro_f1": test_f1, "n_train": 30, "n_val": 4, "n_test": len(test_set),
                      "excluded_classes": {"train": [], "val": [], "test": []}})
    test_f1 = [f["test_macro_f1"] for f in folds]
    result = {
        "experiment": "table3", "backbone": backbone, "backbone_display": DISPLAY.get(backbone, backbone),
        "arch": "vit_base_patch8_224", "model_label": "vit_base/8", "strategy": strategy,
        "dino_epochs": None if backbone == "other" else 100, "synthetic": synthetic, "random_weights": False,
        "cache_key": "abc", "data": {"name": "opencell", "root": str(manifest.parent) if manifest else "/nowhere",
                                     "manifest": str(manifest) if manifest else "/nowhere/manifest.csv",
                                     "split": "split.csv", "manifest_sha256": "0"},
        "test_macro_f1_mean": float(np.mean(test_f1)), "test_macro_f1_std": float(np.std(test_f1, ddof=1)),
        "std_ddof": 1,
        "train_macro_f1_mean": float(np.mean([f["train_macro_f1"] for f in folds])), "train_macro_f1_std": 0.001,
        "val_macro_f1_mean": float(np.mean([f["val_macro_f1"] for f in folds])), "val_macro_f1_std": 0.01,
        "n_folds": N_FOLDS, "folds": folds, "warnings": [], "classifier": {"threshold": 0.5},
        "n_features": 768, "versions": {}, "classes": list(CATEGORIES),
    }
    result.update(extra or {})
    results.write_run(run_dir, result, pd.DataFrame(pred_rows), pd.DataFrame(pc_rows))  # the contract's writer
    return run_dir


def write_images(root: Path, test_set: pd.DataFrame) -> Path:
    """Tiny real 2-channel uint16 TIFFs (nucleus first in the file) and a manifest pointing at them."""
    rng = np.random.default_rng(1)
    rows = []
    for _, r in test_set.iterrows():
        rel = f"{r['target']}/{r['image_id']}_proj.tif"
        (root / r["target"]).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / rel, rng.integers(0, 4000, (2, 16, 16), dtype=np.uint16))
        rows.append({"image_id": r["image_id"], "path": rel, "target": r["target"], "ensg_id": r["target"],
                     "labeled": True, **{c: r[c] for c in CATEGORIES}, **{f"grade_{c}": 0 for c in CATEGORIES}})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _spec(runs_dir: Path, reports_dir: Path, **over) -> ReportSpec:
    """A ReportSpec with small, fast settings (no embedding maps: tests/test_embedding_maps.py has them)."""
    values = {"n_boot": 20, "seed": 0, "level": 0.95, "method": "percentile", "figure2_colors": "magenta_green",
              "embedding_maps": "none", "max_points": 100, "display_percentiles": (0.5, 99.8), **over}
    return ReportSpec(runs_dir=runs_dir, reports_dir=reports_dir, **values)


@pytest.fixture
def study(tmp_path):
    """Three rows on one test set: HPA mapping good, ImageNet mapping bad, OpenCell native as good as HPA."""
    test_set = make_test_set()
    runs = tmp_path / "runs"
    write_run(runs, "hpa", "mapping", test_set, quality=0.9, seed=1)
    write_run(runs, "imagenet", "mapping", test_set, quality=0.15, seed=2)
    write_run(runs, "opencell", "native", test_set, quality=0.9, seed=1)  # an identical copy of the best
    return runs, test_set


def test_table_matches_result_json_and_is_in_paper_order(study):
    runs, _ = study
    results = collect_runs(runs)
    table, missing = build_table(results, n_boot=100, **CI)
    assert missing == []
    assert list(table["run"]) == ["imagenet__mapping", "hpa__mapping", "opencell__native"]
    assert list(table["approach"]) == ["mapping", "mapping", "–"]
    by_run = {f"{r['backbone']}__{r['strategy']}": r for r in results}
    for _, row in table.iterrows():
        r = by_run[row["run"]]
        assert row["test_f1_mean"] == r["test_macro_f1_mean"]
        assert row["test_f1_std"] == r["test_macro_f1_std"]
        assert row["train_f1_mean"] == r["train_macro_f1_mean"]
        assert row["val_f1_mean"] == r["val_macro_f1_mean"]
        assert row["weights"] == r["backbone_display"] and row["model"] == "vit_base/8"
        assert row["n_folds"] == N_FOLDS and row["dino_epochs"] == 100
    # a plain rank (1 = highest), not a comparison
    want = table["test_f1_mean"].rank(ascending=False, method="min").astype(int)
    assert list(table["rank"]) == list(want)


def test_recomputed_test_f1_equals_result_json(study, recwarn):
    runs, _ = study
    for r in collect_runs(runs):
        stats = statistics.run_stats(r, n_boot=10, **CI)
        assert abs(stats["recomputed"] - r["test_macro_f1_mean"]) <= 1e-9
        # the count-based statistic the bootstrap uses, with every target drawn once, is the same number
        ones = np.ones((1, len(stats["targets"])))
        assert abs(dstats.macro_f1(stats["counts"], ones, stats["classes"])[0] - r["test_macro_f1_mean"]) <= 1e-9
    assert not [w for w in recwarn if "differs" in str(w.message)]


def test_tampered_result_json_is_flagged(study):
    runs, _ = study
    path = runs / "hpa__mapping" / "result.json"
    result = json.loads(path.read_text())
    result["test_macro_f1_mean"] += 0.01
    path.write_text(json.dumps(result))
    with pytest.warns(UserWarning, match="differs from result.json"):
        table, _ = build_table(collect_runs(runs), n_boot=10, **CI)
    assert "differs" in table.set_index("run").loc["hpa__mapping", "notes"]


def test_ci_contains_mean_and_resamples_targets_not_images(tmp_path):
    test_set = make_test_set()
    rng = np.random.default_rng(5)
    y = test_set[list(CATEGORIES)].to_numpy()
    probs = {f: np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1) for f in range(N_FOLDS)}
    write_run(tmp_path / "a", "hpa", "mapping", test_set, 0, probs=probs)
    # every image of every target twice: the same targets, so a target bootstrap gives the same CI
    doubled = pd.concat([test_set, test_set.assign(image_id=test_set["image_id"] + "_dup")], ignore_index=True)
    write_run(tmp_path / "b", "hpa", "mapping", doubled, 0,
              probs={f: np.concatenate([p, p]) for f, p in probs.items()})
    # each image its own target: more independent units, so a different (narrower) CI
    single = test_set.assign(target=test_set["image_id"])
    write_run(tmp_path / "c", "hpa", "mapping", single, 0, probs=probs)
    rows = [build_table(collect_runs(tmp_path / d), n_boot=300, **{**CI, "seed": 3})[0].iloc[0]
            for d in "abc"]
    a, b, c = rows
    assert a["ci_low"] <= a["test_f1_mean"] <= a["ci_high"]
    assert a["ci_high"] - a["ci_low"] > 0.01
    assert a["test_f1_mean"] == pytest.approx(b["test_f1_mean"], abs=1e-12)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((b["ci_low"], b["ci_high"]), abs=1e-12)
    assert (c["ci_high"] - c["ci_low"]) < (a["ci_high"] - a["ci_low"])


def test_declared_comparisons_never_depend_on_the_scores(study):
    runs, _ = study
    results = collect_runs(runs)
    table, _ = build_table(results, n_boot=300, **CI)
    comps = {(c["row"], c["versus"]): c for c in table.attrs["comparisons"]}
    # no floor, no replication rows: only the paper's claim, HPA mapping vs each other row
    assert set(comps) == {("hpa__mapping", "imagenet__mapping"), ("hpa__mapping", "opencell__native")}
    assert comps[("hpa__mapping", "imagenet__mapping")]["p"] < 0.05  # clearly better
    assert comps[("hpa__mapping", "opencell__native")]["p"] > 0.5  # identical predictions
    # the same pairs whatever the scores: swap which row scores highest
    flipped = [dict(r, test_macro_f1_mean=1 - r["test_macro_f1_mean"]) for r in results]
    pairs = [(i, j, w) for i, j, w in tables.declared_comparisons(flipped)]
    assert pairs == tables.declared_comparisons(results)
    assert "p_vs_best" not in table.columns and "delta_vs_best" not in table.columns


def test_declared_comparisons_of_table3():
    rows = [{"backbone": b, "strategy": s, "run_dir": f"/x/{b}__{s}", **({"random_weights": True} if b == "random" else {})}
            for b, s in [("imagenet", "mapping"), ("imagenet", "replication"), ("hpa", "mapping"),
                         ("hpa", "replication"), ("opencell", "native"), ("random", "mapping")]]
    got = {(rows[i]["backbone"] + "_" + rows[i]["strategy"], rows[j]["backbone"] + "_" + rows[j]["strategy"], w)
           for i, j, w in tables.declared_comparisons(rows)}
    floor = {(f"{r['backbone']}_{r['strategy']}", "random_mapping", tables.FLOOR_WHY) for r in rows[:5]}
    pairs = {("imagenet_mapping", "imagenet_replication", tables.PAIR_WHY),
             ("hpa_mapping", "hpa_replication", tables.PAIR_WHY)}
    claim = {("hpa_mapping", x, tables.HPA_WHY) for x in ("imagenet_mapping", "imagenet_replication", "opencell_native")}
    assert got == floor | pairs | claim  # 5 + 2 + 3 = 10 distinct comparisons, each once


def test_floor_row_holm_bias_and_raw_interval(tmp_path):
    test_set = make_test_set(n_images=80, n_targets=30)
    runs = tmp_path / "runs"
    write_run(runs, "hpa", "mapping", test_set, quality=0.9, seed=1)
    write_run(runs, "imagenet", "mapping", test_set, quality=0.3, seed=2)
    write_run(runs, "random", "mapping", test_set, quality=0.0, seed=3, extra={"random_weights": True})
    table, _ = build_table(collect_runs(runs), n_boot=400, **CI)
    t = table.set_index("run")
    assert t.loc["random__mapping", "random_weights"] and not t.loc["hpa__mapping", "random_weights"]
    assert t.loc["random__mapping", "weights"].startswith("random init")
    assert np.isnan(t.loc["random__mapping", "p_vs_floor"])
    assert t.loc["hpa__mapping", "p_vs_floor"] < 0.01
    for _, r in table.iterrows():
        assert np.isfinite(r["ci_bias"]) and abs(r["ci_bias"]) < 0.1
    assert t.loc["imagenet__mapping", "ci_high"] - t.loc["imagenet__mapping", "ci_low"] > 0.01
    comps = table.attrs["comparisons"]
    raw = np.array([c["p"] for c in comps])
    # hpa vs floor, imagenet vs floor, hpa (the paper's claim) vs imagenet: 3 comparisons, Holm over them
    assert len(comps) == 3
    np.testing.assert_allclose([c["p_holm"] for c in comps], dstats.holm(raw))
    assert t.loc["imagenet__mapping", "p_vs_floor_holm"] == pytest.approx(
        next(c["p_holm"] for c in comps if c["row"] == "imagenet__mapping"))
    md = markdown_table(table, [], synthetic=False, results=collect_runs(runs))
    assert "floor" in md and "Deviations from the paper" in md and "Open choices" in md
    assert "Declared comparisons" in md and "best" not in md.split("Notes:")[0]


def test_different_test_sets_give_no_p_value(tmp_path):
    write_run(tmp_path, "hpa", "mapping", make_test_set(0), 0.9, seed=1)
    write_run(tmp_path, "imagenet", "mapping", make_test_set(7), 0.2, seed=2)
    table, _ = build_table(collect_runs(tmp_path), n_boot=50, **CI)
    comp = table.attrs["comparisons"][0]
    assert np.isnan(comp["p"]) and "different test images" in table.set_index("run").loc["hpa__mapping", "notes"]


def test_too_few_test_targets_print_no_interval_and_no_p(tmp_path, monkeypatch):
    monkeypatch.setitem(dstats.CALIBRATION, "min_test_targets", 16)
    test_set = make_test_set()  # 15 targets
    write_run(tmp_path, "hpa", "mapping", test_set, quality=0.9, seed=1)
    write_run(tmp_path, "random", "mapping", test_set, quality=0.0, seed=3, extra={"random_weights": True})
    table, _ = build_table(collect_runs(tmp_path), n_boot=50, **CI)
    row = table.set_index("run").loc["hpa__mapping"]
    assert not row["calibrated"] and np.isnan(row["ci_low"]) and np.isnan(row["p_vs_floor"])
    md = markdown_table(table, [], synthetic=False)
    assert "| too few test targets |" in md and dstats.TOO_FEW.capitalize() in md
    assert "this table has 15" in md  # the coverage quoted is the one measured nearest this table's size


def test_missing_expected_rows_are_reported(study):
    runs, _ = study
    (runs / "hpa__replication").mkdir()  # an incomplete run: listed, not fatal
    with pytest.warns(UserWarning) as rec:
        results = collect_runs(runs)
    assert any("hpa__replication" in str(w.message) for w in rec)
    expected = ["imagenet__mapping", "hpa__mapping", "hpa__replication", "opencell__native"]
    with pytest.warns(UserWarning, match="missing expected"):
        table, missing = build_table(results, expected=expected, n_boot=20, **CI)
    assert missing == ["hpa__replication"]
    md = markdown_table(table, missing, synthetic=False)
    assert "Missing rows: hpa__replication" in md
    assert "SYNTHETIC" not in md
    assert "ddof = 1" in md
    t = table.set_index("run")
    assert f"{t.loc['hpa__mapping', 'test_f1_mean']:.4f} ± {t.loc['hpa__mapping', 'test_f1_std']:.4f}" in md
    main_table = md.split("**Declared comparisons**")[0]
    assert main_table.count("\n| ") == 1 + len(table)  # header + one line per row
    assert "dropped" not in md
    notes = {"ignored": {"nucleolus": 3, "small_aggregates": 7}, "only_ignored": ["GENE1"]}
    md = markdown_table(table, missing, synthetic=False, label_notes=notes)
    assert "nucleolus (3), small_aggregates (7)" in md and "1 target(s) carried only such names" in md


def test_per_class_table(study):
    runs, _ = study
    results = collect_runs(runs)
    pc = per_class_table(results)
    assert list(pc["class"]) == list(CATEGORIES)
    assert list(pc.columns[2:]) == ["imagenet__mapping", "hpa__mapping", "opencell__native"]
    src = pd.read_csv(runs / "hpa__mapping" / "per_class.csv")
    test = src[src["split"] == "test"].groupby("class")[["f1", "support"]].mean().reindex(list(CATEGORIES))
    expect = test["f1"].where(test["support"] > 0)  # an unscored class (no test positive) is NaN, not 0
    np.testing.assert_allclose(pc["hpa__mapping"], expect.to_numpy())
    # the per-class table's scored classes average to the row's macro F1 (the one definition)
    r = next(x for x in results if x["backbone"] == "hpa")
    per_fold = src[src["split"] == "test"].pivot_table(index="fold", columns="class", values="f1")
    scored = test.index[test["support"] > 0]
    assert per_fold[scored].mean(axis=1).mean() == pytest.approx(r["test_macro_f1_mean"], abs=1e-12)


def _png_title(path: Path) -> str:
    with Image.open(path) as im:
        return im.info.get("Title", "")


def test_figure1_bars_equal_csv_and_synthetic_title(tmp_path):
    test_set = make_test_set()
    runs = tmp_path / "runs"
    for i, (bb, st) in enumerate([("hpa", "mapping"), ("hpa", "replication"), ("imagenet", "mapping"),
                                  ("imagenet", "replication"), ("opencell", "native")]):
        write_run(runs, bb, st, test_set, 0.3 + 0.1 * i, seed=i, synthetic=(bb == "opencell"))
    table, _ = build_table(collect_runs(runs), n_boot=20, **CI)
    csv = tmp_path / "table3.csv"
    table.to_csv(csv, index=False)
    bars = figures.plot_figure1(csv, tmp_path / "fig" / "figure1.png")
    assert (tmp_path / "fig" / "figure1.png").stat().st_size > 0
    assert (tmp_path / "fig" / "figure1.pdf").stat().st_size > 0
    df = pd.read_csv(csv)
    assert len(bars) == len(df)
    got = {label: (h, e) for label, h, e in bars}
    for _, r in df.iterrows():
        h, e = got[f"{r['weights']} / {r['strategy']}"]
        assert h == pytest.approx(r["test_f1_mean"], abs=1e-12)
        assert e == pytest.approx(r["test_f1_std"], abs=1e-12)
    assert figures.SYNTHETIC_MARKER in _png_title(tmp_path / "fig" / "figure1.png")
    md = markdown_table(table, [], synthetic=True)
    assert md.startswith("**SYNTHETIC DEMO DATA**")


def test_figure1_script_runs(study, tmp_path):
    runs, _ = study
    table, _ = build_table(collect_runs(runs), n_boot=20, **CI)
    csv = tmp_path / "t.csv"
    table.to_csv(csv, index=False)
    out = tmp_path / "out" / "f1.png"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "plot_figure1.py"), str(csv), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and out.is_file() and out.with_suffix(".pdf").is_file()
    assert figures.SYNTHETIC_MARKER not in _png_title(out)


def test_figure2_shows_labelled_images_from_best_fold(tmp_path):
    test_set = make_test_set()
    manifest = write_images(tmp_path / "data", test_set)
    run = write_run(tmp_path / "runs", "hpa", "mapping", test_set, 0.6, seed=4, synthetic=True, manifest=manifest)
    out = tmp_path / "figure2.png"
    shown = figures.plot_figure2(run, out, n_images=2, seed=0, colors="magenta_green",
                                  display_percentiles=(0.5, 99.8))
    assert out.stat().st_size > 0 and figures.SYNTHETIC_MARKER in _png_title(out)
    assert len(shown) == 2 and len(set(shown)) == 2
    labelled = test_set.set_index("image_id")[list(CATEGORIES)].sum(axis=1) > 0
    assert all(labelled[i] for i in shown)
    assert figures.plot_figure2(run, tmp_path / "again.png", n_images=2, seed=0, colors="magenta_green",
                                 display_percentiles=(0.5, 99.8)) == shown  # deterministic
    result = json.loads((run / "result.json").read_text())
    best_fold = max(result["folds"], key=lambda f: f["test_macro_f1"])["fold"]
    assert f"best fold {best_fold}" in _png_title(out)


def test_figure2_survives_a_moved_run_folder_and_names_a_missing_image(tmp_path):
    test_set = make_test_set()
    manifest = write_images(tmp_path / "data", test_set)
    run = write_run(tmp_path / "outputs" / "runs", "hpa", "mapping", test_set, 0.6, seed=4, manifest=manifest)
    manifest.unlink()  # Figure 2 needs only predictions.csv `path` under data.root, not the manifest
    moved = (tmp_path / "outputs").rename(tmp_path / "elsewhere") / "runs" / run.name
    shown = figures.plot_figure2(moved, tmp_path / "f2.png", n_images=2, seed=0, colors="magenta_green",
                                  display_percentiles=(0.5, 99.8))
    assert len(shown) == 2
    pred = pd.read_csv(moved / "predictions.csv")
    missing = tmp_path / "data" / pred.loc[pred["image_id"] == shown[0], "path"].iloc[0]
    missing.unlink()
    with pytest.raises(DinolocError, match=rf"image {missing} not found.*elsewhere/runs/hpa__mapping/result\.json"):
        figures.plot_figure2(moved, tmp_path / "f2.png", n_images=2, seed=0, colors="magenta_green",
                             display_percentiles=(0.5, 99.8))


def test_report_imports_without_torch():
    code = ("import sys, dinoloc.report, dinoloc.report.embedding_maps, dinoloc.results, dinoloc.metrics; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_run_report_end_to_end(tmp_path):
    test_set = make_test_set()
    manifest = write_images(tmp_path / "data", test_set)
    runs = tmp_path / "runs"
    write_run(runs, "hpa", "mapping", test_set, 0.8, seed=1, manifest=manifest)
    write_run(runs, "opencell", "native", test_set, 0.4, seed=2, manifest=manifest)
    with pytest.warns(UserWarning, match="missing expected"):
        paths = run_report(_spec(runs, tmp_path / "rep", expected=("hpa__replication",), n_boot=50))
    for name in ("table3.csv", "table3.md", "per_class.csv", "figure1.png", "figure1.pdf", "figure2.png"):
        assert paths[name].is_file() and paths[name].parent == tmp_path / "rep"
    assert "Missing rows: hpa__replication" in paths["table3.md"].read_text()
    assert pd.read_csv(paths["table3.csv"])["run"].tolist() == ["hpa__mapping", "opencell__native"]
    assert not list((tmp_path / "rep").glob(".*.tmp"))  # atomic writes leave no temporary files


def test_no_runs_is_a_clear_error(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(DinolocError, match=r"no finished runs in .*runs.*dinoloc-run -m experiment=table3"):
        run_report(_spec(tmp_path / "runs", tmp_path / "rep"))


def test_bad_predictions_file_names_the_file(study):
    runs, _ = study
    pred = runs / "hpa__mapping" / "predictions.csv"
    pd.read_csv(pred).drop(columns=["p_golgi"]).to_csv(pred, index=False)
    with pytest.raises(DinolocError, match=r"hpa__mapping.*predictions\.csv.*p_golgi"):
        build_table(collect_runs(runs), n_boot=10, **CI)


def test_classifier_seeds_are_extra_folds_of_the_bootstrap_and_show_seed_std(tmp_path):
    test_set = make_test_set()
    run_dir = write_run(tmp_path, "hpa", "mapping", test_set, quality=0.6, seed=1)
    pred = pd.read_csv(run_dir / "predictions.csv")
    other = pred.copy()
    p_cols = [f"p_{c}" for c in CATEGORIES]
    other[p_cols] = np.random.default_rng(9).random(other[p_cols].shape)  # seed 1: a much worse classifier
    both = pd.concat([pred.assign(seed=0), other.assign(seed=1)], ignore_index=True)
    both.to_csv(run_dir / "predictions.csv", index=False)
    result = json.loads((run_dir / "result.json").read_text())
    y = test_set[list(CATEGORIES)].to_numpy()
    seed1 = []
    for fold in range(N_FOLDS):
        rows = other[(other["split"] == "test") & (other["fold"] == fold)]
        seed1.append({**result["folds"][fold], "seed": 1,
                      "test_macro_f1": _sk_macro(y, (rows[p_cols].to_numpy() > 0.5).astype(int))})
    seed0 = [{**f, "seed": 0} for f in result["folds"]]
    m0, m1 = np.mean([f["test_macro_f1"] for f in seed0]), np.mean([f["test_macro_f1"] for f in seed1])
    result.update({"folds": seed0 + seed1, "n_seeds": 2, "test_macro_f1_mean": float((m0 + m1) / 2),
                   "test_macro_f1_seed_std": float(np.std([m0, m1]))})
    (run_dir / "result.json").write_text(json.dumps(result))
    table, _ = build_table(collect_runs(tmp_path), n_boot=200, **CI)
    row = table.iloc[0]
    assert row["notes"] == ""  # the recomputed mean over (seed, fold) equals result.json's
    assert row["n_seeds"] == 2 and row["test_f1_seed_std"] == pytest.approx(abs(m0 - m1) / 2)
    assert row["ci_low"] <= row["test_f1_mean"] <= row["ci_high"]
    assert "(seeds ± " in markdown_table(table, [], synthetic=False)


def test_sensitivity_table_pairs_only_shared_test_sets(tmp_path):
    test_set = make_test_set(n_images=60, n_targets=25)
    runs = tmp_path / "runs"
    write_run(runs, "hpa", "mapping", test_set, quality=0.8, seed=1)
    crop = write_run(runs / "c", "hpa", "mapping", test_set, quality=0.3, seed=2, extra={"variant": "crop600"})
    crop.rename(runs / "hpa__mapping__crop600")
    relabelled = test_set.copy()
    relabelled[CATEGORIES[0]] = 1 - relabelled[CATEGORIES[0]]  # other labels (as min_grade=2 would give)
    grade = write_run(runs / "g", "hpa", "mapping", relabelled, quality=0.8, seed=3, extra={"variant": "min_grade2"})
    grade.rename(runs / "hpa__mapping__min_grade2")
    (runs / "c").rmdir(), (runs / "g").rmdir()
    table, _ = build_table(collect_runs(runs), n_boot=300, **CI)
    assert sorted(table["run"]) == ["hpa__mapping", "hpa__mapping__crop600", "hpa__mapping__min_grade2"]
    sens = pd.DataFrame(table.attrs["sensitivity"]).set_index("variant")
    assert sens.loc["crop600", "shared_test_set"] and sens.loc["crop600", "p"] < 0.05
    assert sens.loc["crop600", "delta"] == pytest.approx(
        table.set_index("run").loc["hpa__mapping__crop600", "test_f1_mean"] - table.iloc[0]["test_f1_mean"])
    assert not sens.loc["min_grade2", "shared_test_set"] and np.isnan(sens.loc["min_grade2", "p"])
    assert sens.loc["crop600", "p_holm"] == pytest.approx(sens.loc["crop600", "p"])  # the only test
    md = sensitivity_markdown(sens.reset_index(), synthetic=False, n_boot=300, level=CI["level"])
    assert "crop600" in md and "other test set" in md


def test_weights_label_and_epochs_come_from_what_was_loaded():
    base = {"backbone": "imagenet", "backbone_display": "ImageNet-1k", "strategy": "mapping"}
    user = {**base, "dino_epochs_config": 300,
            "provenance": {"weights_default": False, "weights_path": "/w/my_dino_ep3.pth", "checkpoint": {"epoch": 3}}}
    preset = {**base, "dino_epochs_config": 300, "provenance": {"weights_default": True, "checkpoint": {}}}
    assert report_runs.weights_label(user) == "user's weights (my_dino_ep3.pth) [ImageNet-1k preset]"
    assert report_runs.weights_label(preset) == "ImageNet-1k"
    assert report_runs.checkpoint_epochs(user) == 3 and report_runs.epochs_source(user) == "checkpoint"
    assert report_runs.checkpoint_epochs(preset) == 300 and report_runs.epochs_source(preset) == "config"


def test_every_rows_estimate_and_bootstrap_recomputed_from_predictions_with_sklearn(study):
    """From predictions.csv alone: each row's estimate is the mean over (seed, fold) of sklearn's
    f1_score(average='macro', labels=<classes with a positive test image>, zero_division=0), and so is each
    bootstrap replicate on the images of the drawn targets (with their draw multiplicity)."""
    runs, _ = study
    for r in collect_runs(runs):
        st = statistics.run_stats(r, n_boot=30, **CI)
        preds = pd.read_csv(Path(r["run_dir"]) / "predictions.csv", dtype={"target": str, "image_id": str})
        test = preds[preds["split"] == "test"]
        y_cols, p_cols = results.label_columns(CATEGORIES), results.prob_columns(CATEGORIES)
        labels = np.flatnonzero(test[y_cols].to_numpy().sum(axis=0) > 0)

        def sk(frame, y_cols=y_cols, p_cols=p_cols, labels=labels, cut=r["classifier"]["threshold"]):
            scores = []
            for _, g in frame.groupby(["seed", "fold"] if "seed" in frame else ["fold"]):
                y = g[y_cols].to_numpy()
                p = (g[p_cols].to_numpy() > cut).astype(int)
                scores.append(f1_score(y, p, average="macro", labels=labels, zero_division=0))
            return float(np.mean(scores))

        assert sk(test) == pytest.approx(r["test_macro_f1_mean"], abs=1e-12)
        reps = st["weights"]
        got = dstats.macro_f1(st["counts"], reps, st["classes"])
        for b in range(5):
            drawn = np.repeat(np.array(st["targets"]), reps.targets[b].astype(int))
            frame = pd.concat([test[test["target"] == t] for t in drawn])
            assert got[b] == pytest.approx(sk(frame), abs=1e-12)
        # the interval is the replicates' percentiles (calibration 1.0 at this size: no widening)
        lo, hi = np.quantile(got, [0.025, 0.975])
        assert (st["ci"].raw_low, st["ci"].raw_high) == pytest.approx((lo, hi))
