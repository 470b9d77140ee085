"""Issue 18: OpenCell category names outside the paper's 17 are known, dropped and reported, not refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from dinoloc import CONFIG_DIR
from dinoloc.config import compose, data_spec
from dinoloc.console import error_line
from dinoloc.data.manifest import build_manifest
from dinoloc.data.opencell import check_label_sets, read_annotations
from dinoloc.data.prepare import run_data
from dinoloc.data.split import summarize
from dinoloc.io import DinolocError
from dinoloc.ontology import CATEGORIES, GRADE_COLUMNS, label_columns

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LABELS = OmegaConf.load(CONFIG_DIR / "data" / "opencell.yaml").labels
CLASSES, IGNORE = list(LABELS.classes), list(LABELS.ignore)
HEADER = "ensg_id,target_name,annotations_grade_3,annotations_grade_2,annotations_grade_1\n"


def _csv(tmp_path: Path, body: str, name: str = "ann.csv") -> Path:
    p = tmp_path / name
    p.write_text(HEADER + body, encoding="utf-8")
    return p


def test_config_lists_the_17_classes_and_opencells_other_names():
    assert tuple(CLASSES) == CATEGORIES
    # The portal's two extra public categories and the export's non-public ones named in the issue.
    for name in ("nucleolus", "small_aggregates", "cilia", "diffuse", "textured",
                 "nucleus_cytoplasm_variation", "nucleolar_ring"):
        assert name in IGNORE
    assert not set(IGNORE) & set(CLASSES)


@pytest.mark.parametrize("column", list(GRADE_COLUMNS.values()))
def test_ignored_name_at_any_grade_is_dropped_and_counted(tmp_path, column):
    rows = {"annotations_grade_3": "er", "annotations_grade_2": "golgi", "annotations_grade_1": "membrane"}
    plain = _csv(tmp_path, f"ENSG1,A,{rows['annotations_grade_3']},{rows['annotations_grade_2']},"
                           f"{rows['annotations_grade_1']}\nENSG2,B,cytoplasmic,,\n", "plain.csv")
    rows[column] = rows[column] + ";Small_Aggregates"  # case as a hand-edited file might have it
    extra = _csv(tmp_path, f"ENSG1,A,{rows['annotations_grade_3']},{rows['annotations_grade_2']},"
                           f"{rows['annotations_grade_1']}\nENSG2,B,cytoplasmic;diffuse,,\n", "extra.csv")
    a = read_annotations(plain, classes=CLASSES, ignore=IGNORE)
    b = read_annotations(extra, classes=CLASSES, ignore=IGNORE)
    pd.testing.assert_frame_equal(a, b)  # the 17-class labels and grades are unchanged
    assert b.attrs["label_notes"] == {"ignored": {"small_aggregates": 1, "diffuse": 1}, "only_ignored": []}
    with pytest.raises(DinolocError, match="(?i)unknown category .small_aggregates"):  # without the ignore list: refused
        read_annotations(extra)


def test_target_with_only_ignored_names_stays_labelled_with_no_positive(tmp_path, write_opencell_tree):
    root, csv = write_opencell_tree(n_targets=4, images_per_target=2, size=16)
    lines = csv.read_text().splitlines()
    fields = lines[2].split(",")
    lines[2] = ",".join([*fields[:2], "nucleolus", "", "small_aggregates"])  # target 2: only ignored names
    csv.write_text("\n".join(lines) + "\n")
    m = build_manifest(root, csv, classes=CLASSES, ignore=IGNORE)
    target = fields[1]
    rows = m[m["target"] == target]
    assert len(rows) == 2 and rows["labeled"].all()
    assert (rows[label_columns()].to_numpy() == 0).all()
    notes = m.attrs["label_notes"]
    assert notes == {"ignored": {"nucleolus": 1, "small_aggregates": 1}, "only_ignored": [target]}
    # Other targets keep labels.
    assert m.loc[m["target"] != target, label_columns()].to_numpy().sum(axis=1).min() >= 1
    split = pd.DataFrame({"image_id": m["image_id"], "target": m["target"], "split": "train", "fold": 0})
    text = summarize(m, split)
    assert "nucleolus" in text and "small_aggregates" in text and target in text


def test_a_typo_is_still_refused_with_line_column_and_valid_names(tmp_path):
    p = _csv(tmp_path, "ENSG1,A,er,,\nENSG2,B,,nucleoli,\n")
    with pytest.raises(DinolocError) as e:
        read_annotations(p, classes=CLASSES, ignore=IGNORE)
    msg = str(e.value)
    assert str(p) in msg and "row 2 (line 3)" in msg and "annotations_grade_2" in msg
    assert "'nucleoli'" in msg and "nucleolus_fc_dfc" in msg and "small_aggregates" in msg


def test_label_sets_are_validated():
    with pytest.raises(DinolocError, match="also in labels.classes: er"):
        check_label_sets(CLASSES, ["er", "cilia"])
    with pytest.raises(DinolocError, match="listed twice: cilia"):
        check_label_sets(CLASSES, ["cilia", "cilia"])
    with pytest.raises(DinolocError, match="paper's 17"):
        check_label_sets(CLASSES[:-1], [])


def test_dinoloc_data_on_a_real_format_table_with_other_categories(tmp_path, write_opencell_tree):
    """The issue's done-when: small_aggregates, nucleolus and diffuse load and are reported; a typo is not."""
    root, csv = write_opencell_tree(n_targets=20, images_per_target=2, size=16)
    before = read_annotations(csv)
    lines = csv.read_text().splitlines()
    for i, extra in ((1, "small_aggregates"), (2, "nucleolus"), (3, "diffuse"), (4, "small_aggregates")):
        f = lines[i].split(",")
        f[4] = ";".join([x for x in f[4].split(";") if x] + [extra])
        lines[i] = ",".join(f)
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    cmd = [str(BIN / "dinoloc-data"), "data=opencell", f"data.root={root}", f"paths.output_dir={out}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = res.stdout.split("ignored categories", 1)[1]
    counts = {ln.split()[0]: int(ln.split()[1]) for ln in summary.splitlines()[1:] if len(ln.split()) == 2}
    assert counts == {"nucleolus": 1, "small_aggregates": 2, "diffuse": 1}
    manifest = pd.read_csv(out / "data" / "opencell" / "manifest.csv", dtype={"ensg_id": str})
    after = manifest.drop_duplicates("ensg_id").set_index("ensg_id")[label_columns()]
    np.testing.assert_array_equal(after.loc[before["ensg_id"]].to_numpy(), before[label_columns()].to_numpy())

    f = lines[5].split(",")
    f[2] = f[2] + ";nucleoli"
    lines[5] = ",".join(f)
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DinolocError) as refused:  # the data stage in-process (the exit code: tests/faults)
        run_data(data_spec(compose(cmd[1:])))
    line = error_line(refused.value)
    assert "row 5 (line 6)" in line and "'nucleoli'" in line and "membrane" in line
