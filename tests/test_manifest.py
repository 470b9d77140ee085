"""Manifest: one row per image joined to its target's labels; validation of images and annotations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dinoloc.data.manifest import MANIFEST_COLUMNS, build_manifest, manifest_hash, read_manifest_csv
from dinoloc.data.opencell import read_annotations
from dinoloc.io import DinolocError, write_csv
from dinoloc.ontology import grade_columns, label_columns


def test_manifest_rows_labels_and_unannotated(write_opencell_tree):
    root, csv = write_opencell_tree(n_targets=5, images_per_target=2, unannotated=1)
    m = build_manifest(root, csv)
    assert list(m.columns) == MANIFEST_COLUMNS
    assert len(m) == 12 and m["image_id"].is_unique and m["image_id"].is_monotonic_increasing
    ann = read_annotations(csv).set_index("ensg_id")
    for _, row in m.iterrows():
        if row["labeled"]:
            expect = ann.loc[row["ensg_id"], label_columns() + grade_columns()].to_numpy()
            np.testing.assert_array_equal(row[label_columns() + grade_columns()].to_numpy(dtype=np.int64), expect)
            assert row[label_columns()].sum() >= 1
    unl = m[~m["labeled"]]
    assert set(unl["target"]) == {"GENE005"} and len(unl) == 2
    assert unl[label_columns() + grade_columns()].to_numpy().sum() == 0
    assert m["labeled"].dtype == bool and m[label_columns()].dtypes.eq(np.int64).all()


def test_min_grade_changes_manifest_labels(write_opencell_tree):
    root, csv = write_opencell_tree(n_targets=10, images_per_target=1)
    m1, m3 = build_manifest(root, csv, min_grade=1), build_manifest(root, csv, min_grade=3)
    assert m3[label_columns()].to_numpy().sum() < m1[label_columns()].to_numpy().sum()
    assert (m3[label_columns()].to_numpy().sum(axis=1) == 1).all()  # the fixture has one grade-3 class each
    assert manifest_hash(m1) != manifest_hash(m3)


def test_annotated_target_without_images_names_target_and_row(write_opencell_tree):
    root, csv = write_opencell_tree(n_targets=3, images_per_target=1)
    with open(csv, "a", encoding="utf-8") as f:
        f.write("ENSG99999999999,GHOST,er,,\n")
    with pytest.raises(DinolocError, match=r"row 4 \(line 5\) annotates target GHOST") as e:
        build_manifest(root, csv)
    assert str(csv) in str(e.value)


def test_bad_image_is_named_and_validation_can_be_skipped(write_opencell_tree):
    root, csv = write_opencell_tree(n_targets=3, images_per_target=2)
    bad = sorted(root.rglob("*_proj.tif"))[3]
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DinolocError) as e:
        build_manifest(root, csv)
    assert str(bad) in str(e.value)
    assert len(build_manifest(root, csv, validate_images=False)) == 6


def test_manifest_hash_round_trips_through_csv(tmp_path, write_opencell_tree):
    root, csv = write_opencell_tree(n_targets=4, images_per_target=2, unannotated=1)
    m = build_manifest(root, csv)
    # A gene literally named 'NA' must survive the CSV round trip as a string.
    m.loc[0, "target"] = "NA"
    write_csv(tmp_path / "manifest.csv", m)
    back = read_manifest_csv(tmp_path / "manifest.csv")
    pd.testing.assert_frame_equal(back, m, check_dtype=False)
    assert manifest_hash(back) == manifest_hash(m)
    m2 = m.copy()
    m2.loc[1, label_columns()[0]] = 1 - m2.loc[1, label_columns()[0]]
    assert manifest_hash(m2) != manifest_hash(m)


def test_progress_bar_only_for_many_images(write_opencell_tree, tmp_path, capsys):
    root, csv = write_opencell_tree(n_targets=3, images_per_target=1, size=16)
    build_manifest(root, csv)
    assert "checking images" not in capsys.readouterr().err
    root, csv = write_opencell_tree(root=tmp_path / "big", n_targets=101, images_per_target=2, size=16)
    build_manifest(root, csv)
    assert "checking images" in capsys.readouterr().err
