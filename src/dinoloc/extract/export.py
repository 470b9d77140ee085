"""Cached embeddings out to the field's tools, without recomputing (`dinoloc-extract ... export=h5ad|parquet`).

- `h5ad`: an AnnData file for scanpy / scverse: X = the embeddings, obs = the manifest's columns (image_id, path,
  group as `target`, labeled, one 0/1 column per class, a reader's own columns such as LoadData's Metadata_*) and
  the split (`split`, `fold`); uns = the cache entry's record (backbone, strategy, weights, key).
- `parquet`: one row per image with the same columns, then the embedding as `emb_0000`, ... (pycytominer-style
  profiles: metadata columns, then features).

Under data.unit=cell the rows are the cells: cells.csv's columns (image_id, cell_id, y, x, area) joined to their
image's columns. Both are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dinoloc.extract.cache import CacheEntry
from dinoloc.io import DinolocError, atomic_path

FORMATS = ("h5ad", "parquet")


def _text(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def _put(group, name: str, col: pd.Series) -> None:
    """One obs column in AnnData's on-disk encoding: numbers and booleans as arrays, text as categoricals."""
    import h5py

    if pd.api.types.is_bool_dtype(col) or (pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype)):
        if str(col.dtype) == "Int64":  # the nullable fold: -1 = test / unlabelled
            col = col.fillna(-1)
        ds = group.create_dataset(name, data=col.to_numpy(dtype=bool if pd.api.types.is_bool_dtype(col) else None))
        ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        return
    cat = pd.Categorical(_text(col))
    g = group.create_group(name)
    g.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
    g.create_dataset("codes", data=cat.codes.astype(np.int32))
    g.create_dataset("categories", data=_text(cat.categories), dtype=h5py.string_dtype())
    g["categories"].attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})


def _frame(h5, name: str, frame: pd.DataFrame, index: np.ndarray) -> None:
    import h5py

    g = h5.create_group(name)
    g.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index"})
    g.attrs.create("column-order", data=_text(frame.columns), dtype=h5py.string_dtype())
    g.create_dataset("_index", data=index, dtype=h5py.string_dtype())
    g["_index"].attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
    for c in frame.columns:
        _put(g, str(c), frame[c])


def write_h5ad(path: str | Path, X: np.ndarray, obs: pd.DataFrame, meta: dict) -> None:
    """An AnnData (.h5ad) file written with h5py in AnnData's on-disk format (anndata.readthedocs.io, "on-disk
    format"): X, obs, var (emb_0000, ...), uns["dinoloc"] = the cache record as JSON text. Written directly because
    anndata pins pandas < 3, which this project does not; `anndata.read_h5ad` and scanpy read it."""
    import h5py

    index = _text(obs["image_id"].astype(str) + ("#" + obs["cell_id"].astype(str) if "cell_id" in obs else ""))
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = h5.create_dataset("X", data=np.asarray(X, dtype=np.float32))
        x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        _frame(h5, "obs", obs.reset_index(drop=True), index)
        _frame(h5, "var", pd.DataFrame(index=range(X.shape[1])), _text(f"emb_{i:04d}" for i in range(X.shape[1])))
        for name in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            h5.create_group(name).attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        d = h5["uns"].create_dataset("dinoloc", data=json.dumps(meta, default=str), dtype=h5py.string_dtype())
        d.attrs.update({"encoding-type": "string", "encoding-version": "0.2.0"})


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DinolocError(f"export={fmt!r}: use one of {', '.join(FORMATS)} (or leave export unset)")


def export_table(entry: CacheEntry, manifest: pd.DataFrame, split: pd.DataFrame,
                 cells: pd.DataFrame | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """(obs, X): one row per cached embedding with its manifest (and cell) columns, in the cache's order."""
    emb, ids = entry.load()
    images = manifest.merge(split[["image_id", "split", "fold"]], on="image_id", how="left")
    images["fold"] = images["fold"].astype("Int64")
    if cells is None:
        obs = images.set_index("image_id").loc[ids].reset_index()
    else:
        key = pd.DataFrame({"_id": ids})
        parts = key["_id"].str.rsplit("#", n=1, expand=True)
        key["image_id"], key["cell_id"] = parts[0], parts[1].astype(np.int64)
        obs = key.merge(cells, on=["image_id", "cell_id"], how="left").merge(images, on="image_id", how="left")
        obs = obs.drop(columns="_id")
    if len(obs) != emb.shape[0]:
        raise DinolocError(f"cache {entry.path}: {emb.shape[0]} embeddings but {len(obs)} rows to label them; "
                           "delete the entry and rerun dinoloc-extract")
    return obs, emb


def export(entry: CacheEntry, manifest: pd.DataFrame, split: pd.DataFrame, fmt: str, out: str | Path,
           cells: pd.DataFrame | None = None) -> Path:
    """Write the entry as `fmt` (h5ad | parquet) to `out`; returns the path."""
    check_format(fmt)
    obs, emb = export_table(entry, manifest, split, cells)
    out = Path(out)
    if fmt == "parquet":
        features = pd.DataFrame(emb, columns=[f"emb_{i:04d}" for i in range(emb.shape[1])])
        table = pd.concat([obs.reset_index(drop=True), features], axis=1)
        with atomic_path(out) as tmp:
            table.to_parquet(tmp, index=False)
        return out
    with atomic_path(out) as tmp:
        write_h5ad(tmp, emb, obs, entry.meta)
    return out


def export_run(spec, entry: CacheEntry, manifest: pd.DataFrame, split: pd.DataFrame, fmt: str,
               exports_dir: str | Path) -> Path:
    """dinoloc-extract's export: `<exports_dir>/<data>__<backbone>__<strategy>[__cells].<fmt>`; under
    data.unit=cell the per-cell entry with cells.csv's columns."""
    check_format(fmt)
    cells = None
    if spec.data.unit == "cell":
        from dinoloc.data.cells import read_cells
        from dinoloc.extract.cache import lookup

        cells = read_cells(spec.data.out_dir)
        entry = lookup(spec.cache_dir, entry.meta["cells_entry"]) or entry
    name = f"{spec.data.name}__{spec.backbone.name}__{spec.strategy}{'__cells' if cells is not None else ''}.{fmt}"
    return export(entry, manifest, split, fmt, Path(exports_dir) / name, cells)
