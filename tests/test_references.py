"""The three references every table carries (docs/references.md): the trivial best constant per class, the
classical CellProfiler-style features and the random-weights floor with a seed of its own, each a regular run
folder with its `role`, beside a pretrained row on a real-format OpenCell fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dinoloc import stats
from dinoloc.backbones.classical import ClassicalFeatures, feature_names, image_features
from dinoloc.classify.constant import best_constant, constant_predict_proba
from dinoloc.classify.cv import CVData, cross_validate
from dinoloc.classify.params import params_from_config
from dinoloc.io import DinolocError
from dinoloc.results import row_role

SETTINGS = {"percentiles": [5, 50, 95], "glcm_levels": 8, "glcm_distances": [1, 2], "granularity_size": 32,
            "granularity_radii": [1, 2, 3], "radial_bins": 3}
TINY = {"patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3}


# ----------------------------------------------------------------------------------------------------------
# trivial: the best constant per class
# ----------------------------------------------------------------------------------------------------------
def test_best_constant_predicts_the_classes_the_training_part_has():
    y = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0]])
    assert best_constant(y).tolist() == [1, 0, 1]  # all-positive F1 > 0 = all-negative F1 when a positive exists


def test_constant_head_scores_like_predicting_every_seen_class_positive():
    """Through cross_validate: the fold's constant (from its training part only) applied to the test rows."""
    rng = np.random.default_rng(0)
    n, c = 60, 4
    Y = (rng.random((n, c)) < [0.5, 0.2, 0.1, 0.0]).astype(int)
    Y[-3:, 3] = 1  # class 3: positives only in the test rows, so no fold's training part has one
    split = np.array(["train"] * 50 + ["test"] * 10)
    fold = np.where(split == "train", np.arange(n) % 5, -1)
    params = params_from_config({"name": "constant", "threshold": 0.5, "epochs": 3, "k": 20})  # others ignored
    with pytest.warns(UserWarning, match="no positive in the training part"):
        cv = cross_validate(CVData(np.zeros((n, 1)), Y, split, fold, np.arange(n).astype(str),
                                   np.arange(n).astype(str)), params, progress=False, classes=list("abcd"))
    test = Y[split == "test"]
    # by hand: classes 0-2 predicted positive on every test image, class 3 negative (unseen in training)
    f1 = [2 * test[:, k].sum() / (test[:, k].sum() + len(test)) for k in range(3)] + [0.0]
    scored = test.sum(axis=0) > 0
    assert cv.summary["test_macro_f1_mean"] == pytest.approx(np.mean(np.array(f1)[scored]))
    assert cv.summary["test_macro_f1_std"] == pytest.approx(0.0)
    proba = constant_predict_proba(Y, [np.flatnonzero((split == "train") & (fold != 0))])
    assert set(np.unique(proba)) <= {0.0, 1.0} and proba[0, :, 3].max() == 0.0


def test_roles_come_from_what_a_run_is():
    assert row_role("constant", "vit_base_patch8_224", False) == "trivial"
    assert row_role("constant", "classical", False) == "trivial"
    assert row_role("mlp", "classical", False) == "classical"
    assert row_role("knn", "vit_base_patch8_224", True) == "floor"
    assert row_role("mlp", "vit_base_patch8_224", False) == "pretrained"


# ----------------------------------------------------------------------------------------------------------
# classical features
# ----------------------------------------------------------------------------------------------------------
def test_classical_features_any_channel_count_finite_and_named():
    rng = np.random.default_rng(0)
    for channels in (["protein", "nucleus"], ["DNA", "actin", "protein"], ["only"]):
        x = torch.from_numpy(rng.random((3, len(channels), 32, 32)).astype(np.float32))
        f = ClassicalFeatures(channels, **SETTINGS)(x)
        assert f.shape == (3, len(feature_names(channels, **SETTINGS))) and torch.isfinite(f).all()
    blank = ClassicalFeatures(["a", "b"], **SETTINGS)(torch.zeros(1, 2, 32, 32))
    assert torch.isfinite(blank).all()


def test_classical_features_see_where_the_protein_is():
    """Radial distribution against the nucleus: a protein on the nucleus vs around it gives other features."""
    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 24)
    nucleus = (r < 10).astype(float)
    on, ring = nucleus.copy(), ((r > 13) & (r < 20)).astype(float)
    names = feature_names(["protein", "nucleus"], **SETTINGS)
    a = dict(zip(names, image_features(np.stack([on, nucleus]), ["protein", "nucleus"], **SETTINGS), strict=True))
    b = dict(zip(names, image_features(np.stack([ring, nucleus]), ["protein", "nucleus"], **SETTINGS), strict=True))
    inside = [f"protein/radial_in{k}" for k in range(3)]
    assert sum(a[k] for k in inside) == pytest.approx(1.0) and sum(b[k] for k in inside) == pytest.approx(0.0)
    assert a["proteinxnucleus/pearson"] == pytest.approx(1.0) and b["proteinxnucleus/pearson"] < 0


def test_classical_settings_are_checked():
    with pytest.raises(DinolocError, match="granularity_radii"):
        ClassicalFeatures(["a"], **{k: v for k, v in SETTINGS.items() if k != "granularity_radii"})


# ----------------------------------------------------------------------------------------------------------
# health: CKA, the floor-calibrated collapse check
# ----------------------------------------------------------------------------------------------------------
def test_linear_cka_is_one_for_a_rotation_and_low_for_unrelated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 20))
    q = np.linalg.qr(rng.normal(size=(20, 20)))[0]
    assert stats.linear_cka(x, 3 * x @ q) == pytest.approx(1.0)
    assert stats.linear_cka(x, rng.normal(size=(500, 30))) < 0.1


def test_collapse_flag_is_calibrated_against_the_floor():
    from dinoloc.provenance import embedding_warnings

    def res(name, rank, random):
        return {"backbone": name, "strategy": "mapping", "arch": "vit_x", "model_kwargs": {}, "head": "mlp",
                "random_weights": random, "provenance": {"embedding_health": {"effective_rank": rank,
                                                                              "top_component_share": 0.5,
                                                                              "mean_std": 1.0}}}

    floor = res("random", 2.1, True)
    # 1.6 is below the fixed threshold 2 but not clearly below this floor: not flagged; 0.9 is
    assert embedding_warnings([floor, res("a", 1.6, False)]) == []
    warns = embedding_warnings([floor, res("b", 0.9, False)])
    assert len(warns) == 1 and "b__mapping" in warns[0] and "floor" in warns[0]
    assert embedding_warnings([res("random", 1.2, True)]) == []  # the floor is the calibration, not judged by it
    unc = embedding_warnings([res("c", 1.2, False)])  # no floor of its architecture: the fixed rule, said so
    assert len(unc) == 1 and "no floor of this architecture" in unc[0]


# ----------------------------------------------------------------------------------------------------------
# the Done-when test: the four roles beside each other on a real-format OpenCell fixture
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    from conftest import make_opencell_tree
    from dinoloc.backbones.vit import create_vit
    from dinoloc.classify.stage import run_classification
    from dinoloc.config import checked_spec, compose, report_spec
    from dinoloc.report.stage import run_report

    tmp = tmp_path_factory.mktemp("references")
    root, _ = make_opencell_tree(tmp / "opencell", n_targets=40, images_per_target=1, size=32)
    torch.manual_seed(3)
    vit = create_vit("vit_tiny_patch16_224", 2, 32, **TINY)
    ckpt = tmp / "checkpoint.pth"
    torch.save({"teacher": vit.state_dict(), "epoch": 2,
                "dinoloc_info": {"weight_change_from_init": 0.31, "init_seed": 3}}, ckpt)
    pd.DataFrame({"epoch": [1, 2], "teacher_entropy": [5.0, 3.25], "prototypes_used": [40, 57]}).to_csv(
        tmp / "log.csv", index=False)  # what dinoloc-pretrain leaves beside its checkpoint
    common = [f"paths.output_dir={tmp / 'out'}", "data=opencell", f"data.root={root}", "extract.num_workers=0",
              "device=cpu", "classifier.epochs=2", "experiment_name=refs", "report.n_boot=50",
              "report.embedding_maps=none", "data.split.n_folds=3"]
    vit_kw = [f"+backbone.model_kwargs.{k}={v}" for k, v in TINY.items()] + ["backbone.preprocess.img_size=32"]
    rows = {
        "pretrained": ["row=opencell_native", f"backbone.weights={ckpt}", "backbone.arch=vit_tiny_patch16_224", *vit_kw],
        "floor": ["row=random_mapping", "backbone.arch=vit_tiny_patch16_224", *vit_kw],
        "classical": ["row=classical_native", "backbone.preprocess.img_size=32", "backbone.model_kwargs.granularity_size=32"],
        "trivial": ["row=trivial", "backbone.preprocess.img_size=32", "backbone.model_kwargs.granularity_size=32"],
    }
    results = {}
    for role, extra in rows.items():
        cfg = compose([*common, *extra])
        results[role] = run_classification(checked_spec(cfg))
    cfg = compose(common)
    paths = run_report(report_spec(cfg))
    return tmp / "out", results, paths


def test_reference_rows_beside_a_pretrained_row(reference_runs):
    out, results, paths = reference_runs
    table = pd.read_csv(paths["table3.csv"])
    assert sorted(table["role"]) == ["classical", "floor", "pretrained", "trivial"]
    by_role = table.set_index("role")
    for role, res in results.items():
        assert res["role"] == role
        stored = json.loads((Path(by_role.loc[role, "run_dir"]) / "result.json").read_text())
        assert stored["role"] == role and by_role.loc[role, "test_f1_mean"] == pytest.approx(stored["test_macro_f1_mean"])
        for name in ("predictions.csv", "per_class.csv"):
            assert (Path(by_role.loc[role, "run_dir"]) / name).is_file()
        if by_role.loc[role, "calibrated"]:
            assert by_role.loc[role, "ci_low"] <= by_role.loc[role, "test_f1_mean"] <= by_role.loc[role, "ci_high"]
        else:  # a fixture this small is below the calibrated size: no interval is printed (docs/statistics.md)
            assert pd.isna(by_role.loc[role, "ci_low"]) and pd.isna(by_role.loc[role, "ci_high"])
    # the floor is its own network: the seed recorded is the YAML's, not 0, and not the pretraining's
    assert results["floor"]["provenance"]["random_seed"] == 104729
    assert results["floor"]["random_weights"] is True and results["classical"]["random_weights"] is False
    assert results["classical"]["n_features"] == results["trivial"]["n_features"] > 0  # one classical cache
    assert results["classical"]["cache_key"] == results["trivial"]["cache_key"]
    # the trivial row is ranked with the paper's head (its own head reads no feature): one ranking of the 4 rows
    expected_rank = table["test_f1_mean"].rank(ascending=False, method="min").astype(int)
    assert table["rank"].tolist() == expected_rank.tolist()
    # the references are compared like any row: each against the floor (declared before the data)
    assert by_role.loc["trivial", "delta_vs_floor"] == pytest.approx(
        by_role.loc["trivial", "test_f1_mean"] - by_role.loc["floor", "test_f1_mean"])


def test_report_notes_show_weight_change_and_cka_with_the_floor(reference_runs):
    _, _, paths = reference_runs
    md = Path(paths["table3.md"]).read_text()
    line = next(x for x in md.splitlines() if x.startswith("- opencell__native: effective rank"))
    assert "floor random__mapping" in line and "weights moved 31.0% from init" in line and "init seed 3" in line
    assert "teacher entropy 3.25, 57 prototypes used" in line
    cka = float(line.split("linear CKA with the floor's embeddings ")[1].split(";")[0])
    assert 0.0 <= cka <= 1.0
    assert "| classical |" in md and "| trivial |" in md and "| floor |" in md


def test_classical_cache_is_reused(reference_runs, tmp_path):
    """A second extraction of the classical features hits the cache (same key, no computation)."""
    from dinoloc.config import compose, extract_spec
    from dinoloc.data.prepare import run_data
    from dinoloc.extract.stage import run_extraction

    out, results, _ = reference_runs
    cfg = compose([f"paths.output_dir={out}", "data=opencell", f"data.root={Path(results['classical']['data']['root'])}",
                   "row=classical_native", "backbone.preprocess.img_size=32",
                   "backbone.model_kwargs.granularity_size=32", "data.split.n_folds=3"])
    manifest, _ = run_data(extract_spec(cfg).data)
    entry = run_extraction(extract_spec(cfg), manifest)
    assert entry.hit and entry.key == results["classical"]["cache_key"]
    assert entry.meta["classical"] is True


def test_classical_and_trivial_rows_on_a_folder_dataset(tmp_path):
    """A folder of 3-channel images (data=folder): the classical features measure all three channels (radial
    distribution against the channel whose role is nucleus), and the trivial row sits on them."""
    from dinoloc.backbones.classical import feature_names
    from dinoloc.classify.stage import run_classification
    from dinoloc.config import checked_spec, compose
    from test_folder_data import CHANNELS, CLASSES, write_folder_dataset

    write_folder_dataset(tmp_path / "imgs", n_groups=16, per_group=1)
    common = [f"paths.output_dir={tmp_path / 'out'}", "data=folder", f"data.root={tmp_path / 'imgs'}",
              f"data.channels=[{','.join(CHANNELS)}]", "data.channel_roles={DNA: nucleus}", "extract.num_workers=0",
              "device=cpu", "classifier.epochs=2", "backbone.preprocess.img_size=24",
              "backbone.model_kwargs.granularity_size=24", "data.split.n_folds=2"]
    out = {}
    for row in ("classical_native", "trivial"):
        cfg = compose([*common, f"row={row}"])
        out[row] = run_classification(checked_spec(cfg))
    cfg = compose([*common, "row=classical_native"])
    names = feature_names(["nucleus", "actin", "protein"], **dict(cfg.backbone.model_kwargs))
    assert out["classical_native"]["n_features"] == len(names)
    assert out["classical_native"]["role"] == "classical" and out["trivial"]["role"] == "trivial"
    assert out["classical_native"]["classes"] == CLASSES == out["trivial"]["classes"]
    assert out["classical_native"]["data"]["channels_used"] == ["nucleus", "actin", "protein"]
    with pytest.raises(DinolocError, match="strategy=native"):
        checked_spec(compose([*common, "row=classical_native", "strategy=mapping"]))
