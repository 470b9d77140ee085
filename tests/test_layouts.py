"""The image layouts labs have (issue 26): CellProfiler LoadData CSVs, HPA's Kaggle layout, OME-TIFF channel names,
the reader registry, and each layout through dinoloc-data, extraction, the MLP and the report. Every dataset here
is synthetic: discs for nuclei, a class-dependent protein pattern, written in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from dinoloc.data.reader import available, get_reader
from dinoloc.io import DinolocError

LD_CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
CLASSES = ["cytosol", "nucleus", "rim"]
COLOURS = ["red", "green", "blue", "yellow"]  # HPA: microtubules, protein, nucleus, er


# ---------------------------------------------------------------------------------------------------- fixtures
def cell_field(rng: np.random.Generator, size: int, n_cells: int, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """(nucleus, protein) float images in [0, 1] and the cell label image (0 = background, 1..n): n_cells discs
    of radius 4 on a jittered grid (well apart), the protein in the cytosol (0), the nucleus (1) or a rim (2)."""
    yy, xx = np.mgrid[:size, :size]
    nucleus = 0.05 * rng.random((size, size))
    protein = 0.05 * rng.random((size, size))
    labels = np.zeros((size, size), np.int32)
    side = int(np.ceil(np.sqrt(n_cells)))
    step = size // side
    for k in range(n_cells):
        cy = step // 2 + (k // side) * step + int(rng.integers(-1, 2))
        cx = step // 2 + (k % side) * step + int(rng.integers(-1, 2))
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        nucleus[d2 <= 16] = 0.8 + 0.1 * rng.random()
        labels[d2 <= 36] = k + 1
        shape = [(d2 > 16) & (d2 <= 36), d2 <= 16, (d2 > 25) & (d2 <= 36)][cls]
        protein[shape] += 0.7
    return nucleus, protein, labels


def write_loaddata(root: Path, n_plates: int = 3, sites: int = 8, size: int = 32, seed: int = 0) -> Path:
    """Cell Painting in LoadData form: 5 single-channel 16-bit TIFFs per site (DNA, ER, RNA, AGP = protein, Mito),
    plates plate0..; labels in Metadata_label; the last plate's PathName_ is absolute. Returns the CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_plates):
        folder = root / "images" / f"plate{p}"
        folder.mkdir(parents=True, exist_ok=True)
        for s in range(sites):
            cls = (s + p) % len(CLASSES)
            nucleus, protein, _ = cell_field(rng, size, 4, cls)
            planes = {"DNA": nucleus, "ER": rng.random((size, size)), "RNA": rng.random((size, size)),
                      "AGP": protein, "Mito": rng.random((size, size))}
            well = f"{'ABC'[s % 3]}{s:02d}"
            row = {"Metadata_Plate": f"plate{p}", "Metadata_Well": well, "Metadata_Site": "1",
                   "Metadata_label": CLASSES[cls] if s < sites - 1 else ""}  # one unlabelled site per plate...
            for ch, img in planes.items():
                name = f"r{s:02d}_{ch.lower()}.tif"
                tifffile.imwrite(folder / name, (img * 60000).astype(np.uint16))
                row[f"FileName_Orig{ch}"] = name
                row[f"PathName_Orig{ch}"] = str(folder) if p == n_plates - 1 else f"images/plate{p}"
            rows.append(row)
    csv = root / "load_data.csv"
    df = pd.DataFrame(rows)
    # ... whose plate is labelled elsewhere: give it a group of its own so no group mixes labelled and not
    df["Metadata_Group"] = [f"{r.Metadata_Plate}" if r.Metadata_label else f"{r.Metadata_Plate}-u"
                            for r in df.itertuples()]
    df.to_csv(csv, index=False)
    return csv


def write_hpa(root: Path, n_ids: int = 24, size: int = 32, seed: int = 1, fmt: str = ".png") -> Path:
    """HPA's Kaggle layout: train.csv (Id, Target) and train/<Id>_{red,green,blue,yellow}.png (8-bit)."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_ids):
        cls = i % 3
        nucleus, protein, _ = cell_field(rng, size, 4, cls)
        image_id = f"{i:04x}-aa{i:02d}"
        planes = {"red": rng.random((size, size)), "green": protein, "blue": nucleus, "yellow": rng.random((size, size))}
        for colour, img in planes.items():
            arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
            if fmt == ".png":
                Image.fromarray(arr).save(root / "train" / f"{image_id}_{colour}.png")
            else:
                tifffile.imwrite(root / "train" / f"{image_id}_{colour}.tif", arr)
        # HPA numbers: 0 nucleoplasm, 25 cytosol, 21 plasma membrane (a rim)
        rows.append({"Id": image_id, "Target": {0: "25", 1: "0", 2: "21 25"}[cls]})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


def write_ome_folder(root: Path, n_groups: int = 12, per_group: int = 2, size: int = 32, seed: int = 2) -> Path:
    """A labels-CSV folder of OME-TIFFs whose OME-XML names the channels (protein, DNA, actin) stored in that
    order, while data.channels asks for [DNA, actin, protein]."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for g in range(n_groups):
        cls = g % 3
        for i in range(per_group):
            nucleus, protein, _ = cell_field(rng, size, 4, cls)
            stored = np.stack([protein, nucleus, rng.random((size, size))])  # protein, DNA, actin
            rel = f"g{g:02d}_{i}.ome.tif"
            tifffile.imwrite(root / rel, (stored * 60000).astype(np.uint16), ome=True,
                             metadata={"axes": "CYX", "Channel": {"Name": ["protein", "DNA", "actin"]}})
            rows.append({"image": rel, "group": f"G{g}", "labels": CLASSES[cls]})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def write_mask_folder(root: Path, n_groups: int = 12, per_group: int = 2, size: int = 40, seed: int = 3,
                      cells: tuple[int, ...] = (3, 4, 5)) -> tuple[Path, int]:
    """A folder of 2-channel TIFFs (DNA, protein) with label masks (column `masks`); image k holds
    cells[k % len(cells)] cells. Returns (labels CSV, total number of cells)."""
    rng = np.random.default_rng(seed)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows, total, k = [], 0, 0
    for g in range(n_groups):
        cls = g % 3
        for i in range(per_group):
            n = cells[k % len(cells)]
            k += 1
            nucleus, protein, labels = cell_field(rng, size, n, cls)
            rel = f"g{g:02d}_{i}.tif"
            tifffile.imwrite(root / rel, (np.stack([nucleus, protein]) * 60000).astype(np.uint16))
            tifffile.imwrite(root / "masks" / rel, labels.astype(np.uint16))
            rows.append({"image": rel, "group": f"G{g}", "labels": CLASSES[cls], "masks": f"masks/{rel}"})
            total += n
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv", total


def _spec(**kw):
    from _specs import data_spec

    return data_spec(**{"test_size": 0.2, "n_folds": 3, **kw})


# ---------------------------------------------------------------------------------------------------- registry
def test_readers_found_by_name():
    assert {"opencell", "folder", "loaddata", "hpa_kaggle"} <= set(available())
    assert get_reader("loaddata").name == "loaddata"
    with pytest.raises(DinolocError, match="data.reader='nope' is unknown; use one of .*folder.*hpa_kaggle"):
        get_reader("nope")
    with pytest.raises(DinolocError, match="unknown"):
        _spec(reader="split")  # a module of dinoloc.data that is no reader


# ---------------------------------------------------------------------------------------------------- LoadData
def test_loaddata_manifest_channels_and_groups(tmp_path):
    from dinoloc.data.loaddata import Columns, build_loaddata_manifest, read_channel_files

    csv = write_loaddata(tmp_path)
    m = build_loaddata_manifest(tmp_path, csv, [], Columns("Metadata_label", "Metadata_Plate"), group_by="none")
    assert len(m) == 24 and m.attrs["classes"] == CLASSES
    assert set(m["target"]) == {"plate0", "plate1", "plate2"}
    first = m["path"].iloc[0].split(";")
    assert len(first) == 5 and first[0].endswith("_dna.tif") and first[4].endswith("_mito.tif")  # Orig dropped
    assert not Path(first[0]).is_absolute() and "Metadata_Well" in m.columns
    assert not Path(m["path"].iloc[-1].split(";")[0]).is_absolute()  # an absolute PathName under root: relative
    # data.channels selects and orders by name
    sel = build_loaddata_manifest(tmp_path, csv, ["AGP", "DNA"], Columns("Metadata_label", "Metadata_Group"))
    parts = sel["path"].iloc[0].split(";")
    assert parts[0].endswith("_agp.tif") and parts[1].endswith("_dna.tif")
    x = get_reader("loaddata").item(tmp_path, sel["path"].iloc[0])
    img = read_channel_files(x)
    assert img.shape == (2, 32, 32) and img[1].max() > img[1].mean() * 3  # DNA discs second
    with pytest.raises(DinolocError, match=r"data.channels=\['Hoechst'\].*has channels \['DNA', 'ER', 'RNA', 'AGP', 'Mito'\]"):
        build_loaddata_manifest(tmp_path, csv, ["Hoechst"], Columns("Metadata_label", "Metadata_Plate"))


def test_loaddata_bad_inputs(tmp_path):
    from dinoloc.data.loaddata import Columns, build_loaddata_manifest

    csv = write_loaddata(tmp_path, n_plates=1, sites=3)
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = df.copy()
    missing.loc[1, "FileName_OrigER"] = "gone.tif"
    missing.to_csv(tmp_path / "missing.csv", index=False)
    with pytest.raises(DinolocError, match=r"missing.csv: line 3: FileName_OrigER file .*gone.tif not found"):
        build_loaddata_manifest(tmp_path, tmp_path / "missing.csv", [], Columns("Metadata_label", "Metadata_Plate"))
    small = tmp_path / "images" / "plate0" / "small.tif"
    tifffile.imwrite(small, np.zeros((16, 16), np.uint16))
    shapes = df.copy()
    shapes.loc[0, "FileName_OrigRNA"] = "small.tif"
    shapes.to_csv(tmp_path / "shapes.csv", index=False)
    with pytest.raises(DinolocError, match=r"shapes.csv: line 2: .*small.tif has shape \(16, 16\) but .*\(32, 32\); every "
                                           "channel of a site must have the same shape"):
        build_loaddata_manifest(tmp_path, tmp_path / "shapes.csv", [], Columns("Metadata_label", "Metadata_Plate"))
    with pytest.raises(DinolocError, match="data.group_column=Metadata_Batch is not a column"):
        build_loaddata_manifest(tmp_path, csv, [], Columns("Metadata_label", "Metadata_Batch"))


# ---------------------------------------------------------------------------------------------------- HPA
def _hpa_classes():
    from omegaconf import OmegaConf

    from dinoloc import CONFIG_DIR

    return list(OmegaConf.load(Path(CONFIG_DIR) / "data" / "hpa_kaggle.yaml").classes)


def test_hpa_layout_manifest_and_errors(tmp_path):
    from dinoloc.data.hpa_kaggle import build_hpa_manifest

    classes = _hpa_classes()
    assert len(classes) == 28 and classes[0] == "nucleoplasm" and classes[25] == "cytosol" and classes[27] == "rods_rings"
    csv = write_hpa(tmp_path)
    m = build_hpa_manifest(tmp_path, csv, ["microtubules", "protein", "nucleus", "er"], classes)
    assert len(m) == 24 and m.attrs["classes"] == classes
    row = m.set_index("image_id").loc["0002-aa02"]
    assert row["plasma_membrane"] == 1 and row["cytosol"] == 1 and row["nucleoplasm"] == 0
    assert [p.rsplit("_", 1)[1] for p in row["path"].split(";")] == ["red.png", "green.png", "blue.png", "yellow.png"]
    # a selection by name: nucleus then protein = blue then green
    m2 = build_hpa_manifest(tmp_path, csv, ["nucleus", "protein"], classes)
    assert [p.rsplit("_", 1)[1] for p in m2["path"].iloc[0].split(";")] == ["blue.png", "green.png"]
    df = pd.read_csv(csv, dtype=str)
    df.loc[3, "Target"] = "0 28"
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DinolocError, match=r"bad.csv: line 5: Target '28' of Id 0003-aa03 is outside 0-27"):
        build_hpa_manifest(tmp_path, tmp_path / "bad.csv", ["protein"], classes)
    (tmp_path / "train" / "0005-aa05_yellow.png").unlink()
    with pytest.raises(DinolocError, match=r"train.csv: line 7: Id 0005-aa05 has no .*0005-aa05_yellow.png \(or .tif\)"):
        build_hpa_manifest(tmp_path, csv, ["microtubules", "protein", "nucleus", "er"], classes)
    with pytest.raises(DinolocError, match=r"data.channels=\['DAPI'\]: HPA's channels are"):
        build_hpa_manifest(tmp_path, csv, ["DAPI"], classes)


# ---------------------------------------------------------------------------------------------------- OME-TIFF
def test_ome_channels_matched_by_name(tmp_path):
    from dinoloc.data.folder import build_folder_manifest, read_folder_image

    csv = write_ome_folder(tmp_path / "d", n_groups=3, per_group=1)
    m = build_folder_manifest(tmp_path / "d", csv, ["DNA", "actin", "protein"])
    img = read_folder_image(tmp_path / "d" / m["path"].iloc[0], 3, names=["DNA", "actin", "protein"])
    stored = tifffile.imread(tmp_path / "d" / m["path"].iloc[0]).astype(np.float32)
    np.testing.assert_array_equal(img[0], stored[1])  # DNA was stored second
    np.testing.assert_array_equal(img[2], stored[0])  # protein first
    with pytest.raises(DinolocError, match=r"g00_0.ome.tif: channel\(s\) \['Hoechst'\] of data.channels not found "
                                           r"among the file's OME channel names \['protein', 'DNA', 'actin'\]"):
        build_folder_manifest(tmp_path / "d", csv, ["Hoechst", "actin", "protein"])
    with pytest.raises(DinolocError, match=r"\['Hoechst'\] .* \['protein', 'DNA', 'actin'\]"):
        read_folder_image(tmp_path / "d" / m["path"].iloc[0], 3, names=["Hoechst", "actin", "protein"])


def read_h5ad(path: Path) -> dict:
    """X, obs (a DataFrame, categoricals decoded) and uns["dinoloc"] of an .h5ad file, with h5py alone."""
    import h5py

    with h5py.File(path, "r") as h5:
        assert h5.attrs["encoding-type"] == "anndata"
        obs = {}
        for c in h5["obs"].attrs["column-order"]:
            node = h5["obs"][c]
            if isinstance(node, h5py.Group):  # categorical
                cats = node["categories"].asstr()[:]
                obs[c] = cats[node["codes"][:]]
            else:
                obs[c] = node[:]
        return {"X": h5["X"][:], "obs": pd.DataFrame(obs, index=h5["obs"]["_index"].asstr()[:]),
                "uns": h5["uns"]["dinoloc"].asstr()[()]}


# ---------------------------------------------------------------------------------------------------- end to end
TINY = ["backbone=timm", "backbone.arch=vit_tiny_patch16_224", "backbone.weights=", "allow_random_weights=true",
        "backbone.in_chans=3", "backbone.channels=[nucleus,protein,er]",
        "backbone.channel_map={protein: protein, nucleus: nucleus}", "backbone.preprocess.img_size=32",
        "backbone.preprocess.intensity=zscore", "backbone.preprocess.mean=null", "backbone.preprocess.std=null",
        "+backbone.model_kwargs.patch_size=8", "+backbone.model_kwargs.embed_dim=48",
        "+backbone.model_kwargs.depth=1", "+backbone.model_kwargs.num_heads=3", "classifier=mlp",
        "classifier.epochs=3", "extract.num_workers=0", "experiment_name=mine", "device=cpu",
        "report.embedding_maps=none", "strategy=mapping", "data.split.test_size=0.2", "data.split.n_folds=3"]


def run_layout(tmp_path: Path, data: list[str]) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """dinoloc-data, extraction + the MLP (one row) and the report, through the stage runners."""
    from dinoloc.classify.stage import run_classification
    from dinoloc.config import checked_spec, compose, report_spec
    from dinoloc.data.prepare import run_data
    from dinoloc.report.stage import run_report

    common = [f"paths.output_dir={tmp_path / 'out'}", *TINY, *data]
    cfg = compose(common)
    spec = checked_spec(cfg)
    manifest, split = run_data(spec.extract.data)
    result = run_classification(spec)
    run_report(report_spec(cfg))
    assert (tmp_path / "out" / "reports" / "mine" / "table3.csv").is_file()
    return result, manifest, split


def test_loaddata_end_to_end_no_plate_crosses_splits(tmp_path):
    write_loaddata(tmp_path / "cp")
    result, manifest, split = run_layout(tmp_path, [
        "data=loaddata", f"data.root={tmp_path / 'cp'}", "data.labels_column=Metadata_label",
        "data.group_column=Metadata_Group", "data.channel_roles={DNA: nucleus, AGP: protein, ER: er}",
        "data.split.test_size=0.3", "data.split.n_folds=2"])  # 3 plates: 1 to test, 2 folds of 1
    lab = split[split["split"] != "unlabeled"]
    assert lab["target"].nunique() == 3 and (split["split"] == "test").any()
    assert (lab.groupby("target")["split"].nunique() == 1).all()  # no plate in two sets
    assert (lab[lab["split"] == "train"].groupby("target")["fold"].nunique() == 1).all()
    assert result["data"]["channels"] == LD_CHANNELS and result["data"]["reader"] == "loaddata"
    assert result["data"]["channels_used"] == ["nucleus", "er", "protein"]  # RNA, Mito have no place: left out
    assert result["classes"] == CLASSES and 0 <= result["test_macro_f1_mean"] <= 1
    # the cached embeddings out as AnnData and Parquet, nothing recomputed (the console script, once)
    import subprocess
    import sys


    bin_dir = Path(sys.executable).parent
    args = [f"paths.output_dir={tmp_path / 'out'}", *TINY, "data=loaddata", f"data.root={tmp_path / 'cp'}",
            "data.labels_column=Metadata_label", "data.group_column=Metadata_Group",
            "data.channel_roles={DNA: nucleus, AGP: protein, ER: er}", "data.split.test_size=0.3",
            "data.split.n_folds=2"]
    out = subprocess.run([str(bin_dir / "dinoloc-extract"), *args, "export=h5ad"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cache hit" in out.stdout  # nothing recomputed
    from dinoloc.config import compose, extract_spec
    from dinoloc.extract.cache import lookup
    from dinoloc.extract.export import check_format, export_run

    entry = lookup(Path(result["cache_path"]).parent, result["cache_key"])
    export_run(extract_spec(compose(args)), entry, manifest, split, "parquet", tmp_path / "out" / "exports")
    exported = tmp_path / "out" / "exports" / "loaddata__vit_tiny_patch16_224__mapping"
    ad = read_h5ad(exported.with_suffix(".h5ad"))
    assert ad["X"].shape == (24, 48) and {"Metadata_Plate", "Metadata_Well", "split", "fold", *CLASSES} <= set(ad["obs"])
    emb = np.load(Path(result["cache_path"]) / "embeddings.npy")
    index = pd.read_csv(Path(result["cache_path"]) / "index.csv")["image_id"].tolist()
    np.testing.assert_array_equal(ad["X"], emb[[index.index(i) for i in ad["obs"]["image_id"]]])
    pq = pd.read_parquet(exported.with_suffix(".parquet"))
    assert len(pq) == 24 and pq.columns[-1] == "emb_0047"
    assert (pq["Metadata_Plate"].to_numpy() == ad["obs"]["Metadata_Plate"].to_numpy()).all()
    assert json.loads(ad["uns"])["key"] == result["cache_key"]
    try:  # scverse's own reader, where installed (it pins pandas < 3, so it is no dependency of dinoloc)
        import anndata
    except ImportError:
        return
    a = anndata.read_h5ad(exported.with_suffix(".h5ad"))
    assert a.shape == (24, 48) and list(a.obs.index) == list(ad["obs"]["image_id"])
    np.testing.assert_array_equal(a.X, ad["X"])
    assert (a.obs["Metadata_Plate"].astype(str).to_numpy() == ad["obs"]["Metadata_Plate"].to_numpy()).all()
    with pytest.raises(DinolocError, match="export='csv': use one of h5ad, parquet"):
        check_format("csv")


def test_hpa_end_to_end_maps_channels_by_name(tmp_path):
    write_hpa(tmp_path / "hpa")
    result, manifest, _ = run_layout(tmp_path, ["data=hpa_kaggle", f"data.root={tmp_path / 'hpa'}"])
    assert result["data"]["channels"] == ["microtubules", "protein", "nucleus", "er"]
    assert result["data"]["channels_used"] == ["protein", "nucleus", "er"]  # microtubules: no place in this backbone
    assert len(result["classes"]) == 28 and len(manifest) == 24


def test_ome_end_to_end(tmp_path):
    write_ome_folder(tmp_path / "ome")
    result, _, _ = run_layout(tmp_path, ["data=folder", f"data.root={tmp_path / 'ome'}",
                                         "data.channels=[DNA,actin,protein]", "data.channel_roles={DNA: nucleus}"])
    assert result["data"]["channels_used"] == ["nucleus", "protein"]
    pred = pd.read_csv(Path(result["run_dir"]) / "predictions.csv") if "run_dir" in result else None
    assert pred is None or len(pred) > 0
    assert json.dumps(result)  # the result is plain JSON


# ---------------------------------------------------------------------------------------------------- cells
def _cell_spec(tmp_path: Path, root: Path, masks: str | None, **cell):
    return _spec(reader="folder", root=str(root), annotations=str(root / "labels.csv"), out_dir=str(tmp_path / "dd"),
                 channels=("DNA", "protein"), unit="cell", masks=masks,
                 cell={"segmenter": "skimage", "expand_px": 2, "min_area_px": 20, "crop_px": 16, "mask_others": False,
                       "aggregate": "mean"} | cell)


@pytest.mark.parametrize("masks", ["masks", None], ids=["masks", "segmentation"])
def test_cells_found_from_masks_and_segmentation(tmp_path, masks):
    from dinoloc.data.cells import read_cells
    from dinoloc.data.prepare import run_data

    _, total = write_mask_folder(tmp_path / "m", n_groups=6)
    spec = _cell_spec(tmp_path, tmp_path / "m", masks)
    manifest, _ = run_data(spec)
    cells = read_cells(spec.out_dir)
    assert len(cells) == total == 6 * 2 * 4  # 3, 4, 5 cells per image in turn
    per = cells.groupby("image_id").size().reindex(manifest["image_id"])
    assert per.tolist() == [(3, 4, 5)[k % 3] for k in range(12)]
    meta = json.loads((Path(spec.out_dir) / "cells.json").read_text())
    assert meta["stats"] == {"images": 12, "cells": total, "median": 4.0, "min": 3, "max": 5, "no_cell": 0}
    if masks is None:  # segmented areas: the r=4 nucleus disc (49 px) grown by expand_px=2, under the r=6 mask
        assert cells["area"].between(49, 113).all()


def test_cells_no_cell_counted_and_mask_shape_checked(tmp_path, caplog):
    from dinoloc.data.cells import cells_summary
    from dinoloc.data.prepare import run_data

    write_mask_folder(tmp_path / "m", n_groups=6)
    tifffile.imwrite(tmp_path / "m" / "masks" / "g01_0.tif", np.zeros((40, 40), np.uint16))  # an empty mask
    spec = _cell_spec(tmp_path, tmp_path / "m", "masks")
    run_data(spec)
    assert "1 image(s) hold no cell" in caplog.text and "g01_0.tif" in caplog.text
    assert "images without a cell: 1" in cells_summary(spec.out_dir)
    tifffile.imwrite(tmp_path / "m" / "masks" / "g02_1.tif", np.zeros((30, 40), np.uint16))
    with pytest.raises(DinolocError, match=r"masks/g02_1.tif: mask of shape \(30, 40\) differs from its image "
                                           r".*/m/g02_1.tif \(40, 40\)"):
        run_data(_cell_spec(tmp_path / "again", tmp_path / "m", "masks"))


def test_crop_centered_pads_at_the_border():
    from dinoloc.data.cells import aggregate, crop_centered

    img = np.arange(2 * 10 * 10, dtype=np.float32).reshape(2, 10, 10) + 1
    c = crop_centered(img, 0.0, 9.0, 6)
    assert c.shape == (2, 6, 6)
    assert (c[:, :3] == 0).all() and (c[:, :, 4:] == 0).all()  # above and right of the image: zero
    np.testing.assert_array_equal(c[:, 3:, :4], img[:, :3, 6:])
    emb = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    out = aggregate(emb, ["a#1", "a#2", "c#1"], ["a", "b", "c"])
    np.testing.assert_allclose(out, [[2, 3], [0, 0], [5, 6]])  # b has no cell: zero, kept


def test_cell_level_end_to_end(tmp_path):
    write_mask_folder(tmp_path / "m")
    result, manifest, _ = run_layout(tmp_path, [
        "data=folder", f"data.root={tmp_path / 'm'}", "data.channels=[DNA,protein]",
        "data.channel_roles={DNA: nucleus}", "data.unit=cell", "data.masks=masks", "data.cell.crop_px=16"])
    assert result["data"]["unit"] == "cell" and result["data"]["n_cells"] == 12 * 2 * 4
    assert result["data"]["cells_per_image"] == {"median": 4.0, "min": 3, "max": 5, "no_cell": 0}
    meta = json.loads((Path(result["cache_path"]) / "meta.json").read_text())
    assert meta["n_images"] == len(manifest) and meta["n_cells"] == 96
    cells_entry = Path(result["cache_path"]).parent / meta["cells_entry"]
    ids = pd.read_csv(cells_entry / "index.csv")["image_id"]
    assert len(ids) == 96 and ids.iloc[0] == f"{manifest['image_id'].iloc[0]}#1"
    from dinoloc.config import compose, extract_spec
    from dinoloc.data.split import load_dataset
    from dinoloc.extract.cache import lookup
    from dinoloc.extract.export import export_run

    cfg = compose([f"paths.output_dir={tmp_path / 'out'}", *TINY, "data=folder", f"data.root={tmp_path / 'm'}",
                   "data.channels=[DNA,protein]", "data.channel_roles={DNA: nucleus}", "data.unit=cell",
                   "data.masks=masks", "data.cell.crop_px=16"])
    entry = lookup(Path(result["cache_path"]).parent, result["cache_key"])
    m, s = load_dataset(tmp_path / "out" / "data" / "folder")
    pq = pd.read_parquet(export_run(extract_spec(cfg), entry, m, s, "parquet", tmp_path / "exp"))
    assert len(pq) == 96 and {"image_id", "cell_id", "y", "x", "area", "target", "split"} <= set(pq.columns)
    notes = (tmp_path / "out" / "reports" / "mine" / "table3.md").read_text()
    assert "Single cells (data.unit=cell): 96 cells, per image median 4, min 3, max 5" in notes


def test_cell_extraction_resumes_after_a_kill(tmp_path, monkeypatch):
    """A killed cell-level extraction keeps its whole chunks and computes only the rest (as image extraction)."""
    from dinoloc.config import compose, extract_spec
    from dinoloc.data.cells import CellCrops
    from dinoloc.data.prepare import run_data
    from dinoloc.extract.stage import run_extraction

    write_mask_folder(tmp_path / "m", n_groups=3)  # 6 images, 24 cells
    args = [f"paths.output_dir={tmp_path / 'out'}", *TINY, "data=folder", f"data.root={tmp_path / 'm'}",
            "data.channels=[DNA,protein]", "data.channel_roles={DNA: nucleus}", "data.unit=cell", "data.masks=masks",
            "data.cell.crop_px=16", "extract.chunk_size=8", "extract.batch_size=4", "data.split.n_folds=2"]
    spec = extract_spec(compose(args))
    manifest, _ = run_data(spec.data)
    calls = {"n": 0, "die_after": 12}
    original = CellCrops.__call__

    def counted(self, item):
        calls["n"] += 1
        if calls["n"] > calls["die_after"]:
            raise KeyboardInterrupt
        return original(self, item)

    monkeypatch.setattr(CellCrops, "__call__", counted)
    with pytest.raises(KeyboardInterrupt, match="kept 8 of 24"):
        run_extraction(spec, manifest)
    calls.update(n=0, die_after=10**6)
    resumed = run_extraction(spec, manifest)
    assert calls["n"] == 16  # only the cells of the unfinished chunks
    whole = run_extraction(extract_spec(compose([*args, f"paths.cache_dir={tmp_path / 'fresh'}"])), manifest)
    assert calls["n"] == 16 + 24
    np.testing.assert_array_equal(resumed.load()[0], whole.load()[0])
    cells_entry = resumed.path.parent / resumed.meta["cells_entry"]
    assert len(np.load(cells_entry / "embeddings.npy")) == 24


def test_opencell_cells_segmented_from_its_nucleus_channel(tmp_path, write_opencell_tree):
    """data=opencell data.unit=cell: the nucleus is the file's channel 0 (the reader's channel 1); a protein
    channel full of discs elsewhere must not be segmented instead."""
    from dinoloc.data.cells import CellCrops, ensure_cells, read_cells, segmentation_file
    from dinoloc.data.opencell import read_image
    from dinoloc.data.reader import get_reader

    root, csv = write_opencell_tree(n_targets=4, images_per_target=1, size=40)
    rng = np.random.default_rng(0)
    for k, f in enumerate(sorted(root.rglob("*_proj.tif"))):
        nucleus, _, _ = cell_field(rng, 40, 3 + k % 2, 0)
        decoy, _, _ = cell_field(rng, 40, 9, 0)  # 9 discs in the protein channel
        tifffile.imwrite(f, (np.stack([nucleus, decoy]) * 60000).astype(np.uint16))
    spec = _spec(reader="opencell", root=str(root), annotations=str(csv), out_dir=str(tmp_path / "dd"), min_grade=1,
                 unit="cell", cell={"segmenter": "skimage", "expand_px": 2, "min_area_px": 20, "crop_px": 16,
                                    "mask_others": True, "aggregate": "mean"})
    manifest = get_reader("opencell").manifest(spec)  # 4 targets are too few to split: the cells are listed alone
    cells = ensure_cells(spec, manifest)
    assert len(cells) == 3 + 4 + 3 + 4 == len(read_cells(spec.out_dir))
    # mask_others: in a cell's crop, the other cells' pixels are zero, its own and the background kept
    image_id = manifest["image_id"].iloc[0]
    labels = tifffile.imread(segmentation_file(tmp_path / "dd", image_id))
    first = cells[cells["image_id"] == image_id].iloc[0]
    item = root / manifest["path"].iloc[0]
    crop = CellCrops(read_image, 40, True)((item, segmentation_file(tmp_path / "dd", image_id), 20.0, 20.0,
                                            int(first["cell_id"])))
    image = read_image(item)
    other = (labels > 0) & (labels != first["cell_id"])
    assert (crop[:, other] == 0).all() and (crop[:, labels == first["cell_id"]] == image[:, labels == first["cell_id"]]).all()
