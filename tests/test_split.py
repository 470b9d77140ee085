"""Split: grouped multilabel-stratified test share and folds; stored once per manifest and reused."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from dinoloc.data.manifest import build_manifest
from dinoloc.data.prepare import SplitSpec
from dinoloc.data.split import load_dataset, make_split, prepare_dataset, summarize
from dinoloc.io import DinolocError, read_json
from dinoloc.ontology import CATEGORIES, label_columns

SPLIT = SplitSpec(test_size=0.1, n_folds=5, group_by="target", seed=0)


@pytest.fixture
def tree60(write_opencell_tree):
    return write_opencell_tree(n_targets=60, images_per_target=3, size=16, unannotated=2)


@pytest.fixture
def manifest60(tree60):
    return build_manifest(*tree60)


def _check_grouped(m: pd.DataFrame, s: pd.DataFrame, n_folds: int = 5) -> None:
    assert list(s.columns) == ["image_id", "target", "split", "fold"]
    assert list(s["image_id"]) == list(m["image_id"])
    assert set(s["split"]) == {"train", "test", "unlabeled"}
    assert (s["split"] == "unlabeled").to_numpy().tolist() == (~m["labeled"]).to_numpy().tolist()
    # No target in two sets or two folds.
    per_target = s.groupby("target").agg(n_split=("split", "nunique"), n_fold=("fold", "nunique"))
    assert (per_target["n_split"] == 1).all() and (per_target["n_fold"] <= 1).all()
    train = s["split"] == "train"
    assert s.loc[train, "fold"].notna().all() and s.loc[~train, "fold"].isna().all()
    assert set(s.loc[train, "fold"]) == set(range(n_folds))


def test_grouped_split_properties(manifest60):
    m = manifest60
    s = make_split(m)
    _check_grouped(m, s)
    n_test_targets = s.loc[s["split"] == "test", "target"].nunique()
    assert 0.05 <= n_test_targets / 60 <= 0.2
    # Every class carried by >= 2 targets has a positive in the test set and in the train set.
    lab = m[m["labeled"]]
    targets_per_class = lab.groupby("target")[label_columns()].max().sum()
    test_pos = m.loc[(s["split"] == "test").to_numpy(), label_columns()].sum()
    train_pos = m.loc[(s["split"] == "train").to_numpy(), label_columns()].sum()
    for c in CATEGORIES:
        if targets_per_class[c] >= 2:
            assert test_pos[c] > 0 and train_pos[c] > 0, c
    # Folds are of similar size (stratified k-fold on targets: 3 images each).
    sizes = s.loc[s["split"] == "train", "fold"].value_counts()
    assert sizes.max() - sizes.min() <= 3 * 3


def test_split_deterministic_per_seed(manifest60):
    a, b = make_split(manifest60, seed=3), make_split(manifest60, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = make_split(manifest60, seed=4)
    assert not a["split"].equals(c["split"]) or not a["fold"].equals(c["fold"])


def test_group_by_none_splits_images(manifest60):
    s = make_split(manifest60, group_by="none")
    labeled = manifest60["labeled"].to_numpy()
    assert (s.loc[labeled, "split"] != "unlabeled").all()
    n_test = int((s["split"] == "test").sum())
    assert 0.05 <= n_test / labeled.sum() <= 0.2
    # Image-level: at least one target is spread over two sets or folds (the leak a grouped split avoids).
    spread = s[s["split"] != "unlabeled"].groupby("target").agg(n=("split", "nunique"), f=("fold", "nunique"))
    assert ((spread["n"] > 1) | (spread["f"] > 1)).any()


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"test_size": 0.0}, "test_size"),
        ({"test_size": 1.0}, "test_size"),
        ({"n_folds": 1}, "n_folds"),
        ({"group_by": "image"}, "group_by"),
    ],
)
def test_split_arguments_validated(manifest60, kw, msg):
    with pytest.raises(DinolocError, match=msg):
        make_split(manifest60, **kw)


def test_too_few_targets_refused(write_opencell_tree):
    m = build_manifest(*write_opencell_tree(n_targets=4, images_per_target=2, size=16))
    with pytest.raises(DinolocError, match="too few labeled units"):
        make_split(m, n_folds=5)


def test_prepare_dataset_writes_and_reuses(tree60, tmp_path):
    out = tmp_path / "data"
    m, s = prepare_dataset(build_manifest(*tree60), out, SPLIT)
    files = {n: out / n for n in ("manifest.csv", "split.csv", "split.json")}
    assert all(p.is_file() for p in files.values())
    meta = read_json(files["split.json"])
    assert meta["params"] == {"min_grade": 1, "test_size": 0.1, "n_folds": 5, "group_by": "target", "seed": 0}
    assert meta["counts"]["train"] + meta["counts"]["test"] + meta["counts"]["unlabeled"] == len(m)
    # Fold cells of non-train rows are written empty.
    text = files["split.csv"].read_text().splitlines()
    assert any(line.endswith(",test,") for line in text) and any(line.endswith(",unlabeled,") for line in text)

    stamps = {n: os.stat(p).st_mtime_ns for n, p in files.items()}
    m2, s2 = prepare_dataset(build_manifest(*tree60), out, SPLIT)
    assert {n: os.stat(p).st_mtime_ns for n, p in files.items()} == stamps  # nothing rewritten
    pd.testing.assert_frame_equal(s2, s)
    lm, ls = load_dataset(out)
    pd.testing.assert_frame_equal(ls, s)
    assert ls["fold"].dtype == "Int64" and lm[label_columns()].dtypes.eq(np.int64).all()
    pd.testing.assert_frame_equal(lm, m)

    text = summarize(lm, ls)
    assert f"images: {len(m)}" in text and "targets: 62" in text and "cytoplasmic" in text


def test_changed_manifest_refused_then_resplit(tree60, tmp_path):
    root, csv = tree60
    out = tmp_path / "data"
    _, s = prepare_dataset(build_manifest(root, csv), out, SPLIT)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    victim = sorted(root.rglob("*_proj.tif"))[0]
    victim.unlink()
    with pytest.raises(DinolocError, match=r"1 image\(s\) removed.*data\.resplit=true"):
        prepare_dataset(build_manifest(root, csv), out, SPLIT)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the stored files are untouched

    with pytest.raises(DinolocError, match=r"seed: 0 -> 1"):
        prepare_dataset(build_manifest(root, csv), out, replace(SPLIT, seed=1))

    m2, s2 = prepare_dataset(build_manifest(root, csv), out, SPLIT, resplit=True)
    assert len(s2) == len(s) - 1 and victim.name[: -len("_proj.tif")] not in set(s2["image_id"])
    assert read_json(out / "split.json")["counts"]["train"] + read_json(out / "split.json")["counts"]["test"] == int(
        m2["labeled"].sum()
    )
    load_dataset(out)  # the new pair is consistent


def test_load_dataset_detects_mismatch(tree60, tmp_path):
    out = tmp_path / "data"
    prepare_dataset(build_manifest(*tree60), out, SPLIT)
    mpath = out / "manifest.csv"
    lines = mpath.read_text().splitlines()
    lines[1] = lines[1].replace("True", "False", 1)
    mpath.write_text("\n".join(lines) + "\n")
    with pytest.raises(DinolocError, match="does not match"):
        load_dataset(out)
    with pytest.raises(DinolocError, match="not found"):
        load_dataset(tmp_path / "nowhere")


def test_nothing_left_after_error(write_opencell_tree, tmp_path):
    root, csv = write_opencell_tree(n_targets=10, images_per_target=1, size=16)
    bad = sorted(root.rglob("*_proj.tif"))[2]
    bad.write_bytes(b"")
    out = tmp_path / "data"
    with pytest.raises(DinolocError, match=bad.name):
        prepare_dataset(build_manifest(root, csv), out, SPLIT)
    assert not out.exists() or list(out.iterdir()) == []
