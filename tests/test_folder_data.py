"""`data=folder`: a labels CSV over any image folder. The reader, its errors (naming the CSV line), channel
roles for the strategies, and the whole pipeline on a generated 3-channel, 4-class, 30-group dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from dinoloc.classify.stage import run_classification
from dinoloc.config import checked_spec, classify_spec, compose, report_spec
from dinoloc.data.folder import (
    build_folder_manifest,
    channel_roles,
    mapping_plan,
    read_folder_image,
    source_setup,
)
from dinoloc.data.prepare import SplitSpec
from dinoloc.data.split import make_split, prepare_dataset
from dinoloc.io import DinolocError
from dinoloc.report.stage import run_report

CHANNELS = ["DNA", "actin", "protein"]
CLASSES = ["cytosol", "membrane", "nucleus", "vesicles"]
BIN = Path(sys.executable).parent


def write_folder_dataset(root: Path, n_groups: int = 30, per_group: int = 2, size: int = 24, seed: int = 0,
                         unlabelled_groups: int = 2) -> Path:
    """Images of 3 channels (DNA, actin, protein) in mixed formats (uint16 channel-first and channel-last TIFF,
    float32 TIFF, 8-bit RGB PNG), one class per group (single-label), class-dependent protein pattern; the last
    `unlabelled_groups` groups are unlabelled. Writes root/labels.csv and returns it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[:size, :size] / size
    patterns = [np.ones_like(yy), (np.minimum.reduce([xx, yy, 1 - xx, 1 - yy]) < 0.12) * 1.0,
                ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.06) * 1.0, (np.sin(20 * xx) * np.sin(20 * yy) > 0.6) * 1.0]
    for g in range(n_groups):
        cls = g % len(CLASSES)
        labelled = g < n_groups - unlabelled_groups
        for i in range(per_group):
            img = np.stack([patterns[2], rng.random((size, size)), patterns[cls]]) + 0.3 * rng.random((3, size, size))
            fmt = (g + i) % 4
            if fmt == 0:
                rel = f"plate{g % 3}/g{g:02d}_{i}.tif"
                data = (img / img.max() * 60000).astype(np.uint16)  # channel-first 16-bit
            elif fmt == 1:
                rel = f"plate{g % 3}/g{g:02d}_{i}.tiff"
                data = np.moveaxis((img / img.max() * 60000).astype(np.uint16), 0, -1)  # channel-last
            elif fmt == 2:
                rel = f"plate{g % 3}/g{g:02d}_{i}_f.tif"
                data = img.astype(np.float32)
            else:
                rel = f"plate{g % 3}/g{g:02d}_{i}.png"
                data = None
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                Image.fromarray(np.moveaxis((img / img.max() * 255).astype(np.uint8), 0, -1)).save(root / rel)
            else:
                tifffile.imwrite(root / rel, data, photometric="minisblack")
            rows.append({"image": rel, "group": f"G{g:02d}", "labels": CLASSES[cls] if labelled else ""})
    csv = root / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


# ---------------------------------------------------------------------------------------------------- reader
def test_manifest_from_labels_csv(tmp_path):
    csv = write_folder_dataset(tmp_path / "d")
    m = build_folder_manifest(tmp_path / "d", csv, CHANNELS)
    assert m.attrs["classes"] == CLASSES  # sorted union of the labels
    assert list(m.columns) == ["image_id", "path", "target", "labeled", *CLASSES]
    assert len(m) == 60 and m["target"].nunique() == 30 and (~m["labeled"]).sum() == 4
    assert (m.loc[m["labeled"], CLASSES].sum(axis=1) == 1).all() and (m.loc[~m["labeled"], CLASSES] == 0).all().all()
    g = m.set_index("image_id").loc["plate1/g01_0.tiff"]
    assert g["target"] == "G01" and g["membrane"] == 1
    # data.classes fixes the order (and the classifier's output size)
    m2 = build_folder_manifest(tmp_path / "d", csv, CHANNELS, classes=["vesicles", "nucleus", "membrane", "cytosol", "x"])
    assert m2.attrs["classes"] == ["vesicles", "nucleus", "membrane", "cytosol", "x"] and (m2["x"] == 0).all()
    # no group column: every image is its own group
    pd.read_csv(csv).drop(columns="group").to_csv(tmp_path / "nogroup.csv", index=False)
    m3 = build_folder_manifest(tmp_path / "d", tmp_path / "nogroup.csv", CHANNELS)
    assert (m3["target"] == m3["image_id"]).all()


@pytest.mark.parametrize("fmt", ["first", "last", "float", "png", "gray"])
def test_read_folder_image_any_layout(tmp_path, fmt):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 8, 10)).astype(np.uint8)
    n = 3
    if fmt == "first":
        tifffile.imwrite(p := tmp_path / "a.tif", img.astype(np.uint16) * 200, photometric="minisblack")
        want = img.astype(np.float32) * 200
    elif fmt == "last":
        tifffile.imwrite(p := tmp_path / "a.tif", np.moveaxis(img, 0, -1))
        want = img.astype(np.float32)
    elif fmt == "float":
        tifffile.imwrite(p := tmp_path / "a.tif", img.astype(np.float32) / 7, photometric="minisblack")
        want = img.astype(np.float32) / 7
    elif fmt == "png":
        Image.fromarray(np.moveaxis(img, 0, -1)).save(p := tmp_path / "a.png")
        want = img.astype(np.float32)
    else:
        Image.fromarray(img[0]).save(p := tmp_path / "a.png")
        want, n = img[:1].astype(np.float32), 1
    out = read_folder_image(p, n)
    assert out.dtype == np.float32 and out.shape == (n, 8, 10)
    np.testing.assert_array_equal(out, want)
    if n == 3:
        np.testing.assert_array_equal(read_folder_image(p, 3, keep=[2, 0]), want[[2, 0]])


def _csv(tmp_path: Path, rows: list[dict], channels: int = 3) -> Path:
    root = tmp_path / "d"
    root.mkdir(exist_ok=True)
    for r in rows:
        if not r.get("_missing"):
            tifffile.imwrite(root / r["image"], np.zeros((r.get("_c", channels), 8, 8), np.uint16), photometric="minisblack")
    pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]).to_csv(
        root / "labels.csv", index=False)
    return root / "labels.csv"


@pytest.mark.parametrize("case,match", [
    ("missing", r"line 3: image b.tif not found under data.root"),
    ("class", r"line 2: class\(es\) \['blob'\] not in data.classes"),
    ("channels", r"line 3: image b.tif has .*5.*data.channels lists 3 \(DNA, actin, protein\)"),
    ("mixed", r"group 'G1' \(lines \[2, 3\]\) holds labelled and unlabelled images"),
    ("duplicate", r"line 3: image a.tif is listed twice \(also line 2\)"),
])
def test_bad_input_names_the_line_and_the_fix(tmp_path, case, match):
    rows = [{"image": "a.tif", "group": "G1", "labels": "x"}, {"image": "b.tif", "group": "G2", "labels": "y"}]
    classes = None
    if case == "missing":
        rows[1]["_missing"] = True
    elif case == "class":
        rows[0]["labels"], classes = "blob;x", ["x", "y"]
    elif case == "channels":
        rows[1]["_c"] = 5
    elif case == "mixed":
        rows[1].update(group="G1", labels="")
    else:
        rows[1]["image"] = "a.tif"
    csv = _csv(tmp_path, rows)
    with pytest.raises(DinolocError, match=match):
        build_folder_manifest(csv.parent, csv, CHANNELS, classes=classes)
    if case == "mixed":  # an image-level split does not care
        assert len(build_folder_manifest(csv.parent, csv, CHANNELS, group_by="none")) == 2


def test_split_never_shares_a_group(tmp_path):
    csv = write_folder_dataset(tmp_path / "d", n_groups=40, per_group=3)
    m = build_folder_manifest(tmp_path / "d", csv, CHANNELS)
    s = make_split(m, test_size=0.1, n_folds=5, seed=0)
    owner = s[s["split"] != "unlabeled"].groupby("target").apply(
        lambda g: {(a, b) for a, b in zip(g["split"], g["fold"].astype(str), strict=True)}, include_groups=False)
    assert (owner.map(len) == 1).all()  # one split (and one fold) per group
    assert set(s.loc[~m["labeled"].to_numpy(), "split"]) == {"unlabeled"}
    # stored and read back with its class list (not OpenCell's 17)
    man, sp = prepare_dataset(build_folder_manifest(tmp_path / "d", csv, CHANNELS), tmp_path / "out",
                              SplitSpec(test_size=0.1, n_folds=5, group_by="target", seed=0))
    from dinoloc.data.split import load_dataset

    man2, sp2 = load_dataset(tmp_path / "out")
    assert list(man2.columns) == list(man.columns) and man2.attrs["classes"] == CLASSES
    assert json.loads((tmp_path / "out" / "split.json").read_text())["classes"] == CLASSES


# ---------------------------------------------------------------------------------------------------- channels
def test_channel_roles_and_mapping_plan():
    roles = channel_roles(["DNA", "ER", "AGP", "Mito"], {"DNA": "nucleus", "ER": "er", "AGP": "protein", "Mito": None})
    assert roles == ["nucleus", "er", "protein", None]
    hpa = ["nucleus", "protein", "microtubules", "er"]
    keep, kept, plan = mapping_plan(["DNA", "ER", "AGP", "Mito"], roles, hpa, {"protein": "protein", "nucleus": "nucleus"})
    assert keep == [0, 1, 2] and kept == ["nucleus", "er", "protein"]
    assert plan == {"nucleus": "nucleus", "er": "er", "protein": "protein"}  # er by name, Mito left out
    # a channel without a place in this backbone (actin on RGB) is left out, as the paper's B = 0
    assert mapping_plan(CHANNELS, channel_roles(CHANNELS, {"DNA": "nucleus"}), ["R", "G", "B"],
                        {"protein": "R", "nucleus": "G"})[0] == [0, 2]
    with pytest.raises(DinolocError, match="no data channel of .* has a place in the backbone"):
        mapping_plan(["a", "b"], ["a", "b"], ["R", "G", "B"], {"protein": "R"})
    with pytest.raises(DinolocError, match="not in data.channels"):
        channel_roles(CHANNELS, {"RNA": "nucleus"})
    folder = _spec(reader="folder", channels=tuple(CHANNELS))
    roles = {"DNA": "nucleus", "actin": None}
    s = source_setup(folder, ["R", "G", "B"], {"protein": "R", "nucleus": "G"}, "mapping", roles)
    assert s.source_channels == ("nucleus", "protein") and s.channel_map == {"nucleus": "G", "protein": "R"}
    assert s.left_out == ("actin",) and s.fields["source_channels"] == ["nucleus", "protein"]
    r = source_setup(folder, ["R", "G", "B"], {"protein": "R", "nucleus": "G"}, "replication", roles)
    assert r.source_channels == ("nucleus", "actin", "protein")  # replication: every channel
    o = source_setup(_spec(reader="opencell"), ["R", "G", "B"], {"protein": "R", "nucleus": "G"}, "mapping")
    assert o.source_channels == ("protein", "nucleus") and o.fields == {}  # OpenCell: as before


def _spec(**kw):
    from _specs import data_spec

    return data_spec(**kw)


# ---------------------------------------------------------------------------------------------------- end to end
def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def test_folder_dataset_end_to_end(tmp_path, capsys):
    """dinoloc-data, a tiny timm ViT under each strategy, the three heads, dinoloc-report (issue 15's done-when;
    in the default suite: ~31 s on 2 idle cores, and it caught a merge bug the fast tests missed)."""
    write_folder_dataset(tmp_path / "imgs")
    common = [f"paths.output_dir={tmp_path / 'out'}", "data=folder", f"data.root={tmp_path / 'imgs'}",
              f"data.channels=[{','.join(CHANNELS)}]", "data.channel_roles={DNA: nucleus}",
              "backbone=timm", "backbone.arch=vit_tiny_patch16_224", "backbone.weights=", "allow_random_weights=true",
              "backbone.in_chans=3", "backbone.channels=[nucleus,actin,protein]",
              "backbone.channel_map={protein: protein, nucleus: nucleus}", "backbone.preprocess.img_size=32",
              "backbone.preprocess.intensity=zscore", "backbone.preprocess.mean=null", "backbone.preprocess.std=null",
              "+backbone.model_kwargs.patch_size=8", "+backbone.model_kwargs.embed_dim=48",
              "+backbone.model_kwargs.depth=1", "+backbone.model_kwargs.num_heads=3",
              "classifier.epochs=5", "extract.num_workers=0", "experiment_name=mine", "device=cpu",
              "report.embedding_maps=tsne"]
    # dinoloc-data's summary through its console script; the nine runs and the report through the stage runners
    data = _run([str(BIN / "dinoloc-data"), *common], tmp_path)
    assert "cytosol" in data.stdout and "nuclear_membrane" not in data.stdout
    for strategy in ("mapping", "replication", "native"):
        for head in ("mlp", "knn", "linear"):
            cfg = compose([*common, f"strategy={strategy}", f"classifier={head}"])
            checked_spec(cfg)
            run_classification(classify_spec(cfg))
    paths = run_report(report_spec(compose(common)))
    out = tmp_path / "out"
    split = pd.read_csv(out / "data" / "folder" / "split.csv")
    lab = split[split["split"] != "unlabeled"]
    assert (lab.groupby("target")["split"].nunique() == 1).all()
    assert (lab[lab["split"] == "train"].groupby("target")["fold"].nunique() == 1).all()
    table = pd.read_csv(out / "reports" / "mine" / "table3.csv")
    assert len(table) == 9 and set(table["head"]) == {"mlp", "knn", "linear"}
    assert set(table["strategy"]) == {"mapping", "replication", "native"}
    for _, row in table.iterrows():
        res = json.loads((Path(row["run_dir"]) / "result.json").read_text())
        assert res["classes"] == CLASSES and res["data"]["reader"] == "folder"
        assert res["n_features"] == (3 * 48 if row["strategy"] == "replication" else 48)
        pred = pd.read_csv(Path(row["run_dir"]) / "predictions.csv")
        assert [c for c in pred.columns if c.startswith("p_")] == [f"p_{c}" for c in CLASSES]
        assert 0 <= row["test_f1_mean"] <= 1
    assert "random init" in table["weights"].iloc[0]
    per_class = pd.read_csv(out / "reports" / "mine" / "per_class.csv")
    assert per_class["class"].tolist() == CLASSES
    for name in ("figure2.png", "embedding_maps.png", "embedding_maps.pdf"):
        assert (out / "reports" / "mine" / name).stat().st_size > 0
    assert "Embedding maps: tsne, 56 of 56 labelled images drawn per panel, 3 panel(s)" in capsys.readouterr().err
    assert "| Head |" in paths["table3.md"].read_text()
