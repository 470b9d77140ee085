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
    import anndata

    obs = obs.copy()
    index = obs["image_id"].astype(str) + ("#" + obs["cell_id"].astype(str) if "cell_id" in obs else "")
    obs.index = pd.Index(index.to_numpy(), name="id")
    for c in obs.columns:  # h5ad stores text, numbers and booleans; the nullable fold becomes -1 = test / none
        if str(obs[c].dtype) == "Int64":
            obs[c] = obs[c].fillna(-1).astype(np.int64)
        elif obs[c].dtype == object:
            obs[c] = obs[c].astype(str)
    adata = anndata.AnnData(X=emb.astype(np.float32), obs=obs,
                            var=pd.DataFrame(index=[f"emb_{i:04d}" for i in range(emb.shape[1])]))
    adata.uns["dinoloc"] = json.dumps(entry.meta, default=str)  # the entry's record, as JSON text
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
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
