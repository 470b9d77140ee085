"""Cell-level extraction (`data.unit=cell`): one embedding per cell crop, cached like image embeddings (same
engine: chunks, resume after a kill, one computation per key), then the cells of each image aggregated
(data.cell.aggregate) into an image-level cache entry that the classifier, the CV and the report read unchanged.

Two entries per run: `<key of the cells>` (index.csv ids `<image_id>#<cell_id>`) and `<key>` (the aggregate,
one row per manifest image, zero for an image without a cell); the aggregate's key is the one results record.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc.extract.cache import CACHE_VERSION, CacheEntry, cache_key, lookup
from dinoloc.io import file_sha256, write_csv, write_json, write_npy


def cell_fields(spec) -> dict[str, Any]:
    """The cache-key fields data.unit=cell adds: the cell list and how a crop is made and aggregated."""
    p = spec.data.cell
    cells_csv = Path(spec.data.out_dir) / "cells.csv"
    return {"unit": "cell", "cells": file_sha256(cells_csv) if cells_csv.is_file() else None,
            "cell": {"crop_px": p.crop_px, "mask_others": p.mask_others, "aggregate": p.aggregate}}


def extract_cells(spec, manifest: pd.DataFrame, fields: dict[str, Any], meta: dict[str, Any], run_engine) -> CacheEntry:
    """Embed every cell (or hit the cache), then aggregate per image. `run_engine(image_ids, items, read_fn, key,
    meta)` runs the extraction engine with the stage's model and strategy."""
    from dinoloc.data.cells import CellCrops, aggregate, cell_items, read_cells
    from dinoloc.data.reader import get_reader

    key = cache_key(fields)
    entry = lookup(spec.cache_dir, key)
    if entry is not None:
        return entry
    p = spec.data.cell
    reader = get_reader(spec.data.reader)
    cells = read_cells(spec.data.out_dir)
    ids, items = cell_items(spec.data, reader, manifest, cells)
    src_read = meta.pop("_read_fn")
    cell_key = cache_key({k: v for k, v in fields.items() if k != "cell"} | {"level": "cells",
                                                                            "crop": fields["cell"]})
    per_cell = run_engine(ids, items, CellCrops(src_read, p.crop_px, p.mask_others), cell_key,
                          meta | {"level": "cells", "n_cells": len(ids)})
    emb = np.load(per_cell.path / "embeddings.npy", mmap_mode="r")  # streamed by `aggregate`
    cell_ids = pd.read_csv(per_cell.path / "index.csv", dtype={"image_id": str})["image_id"].tolist()
    image_ids = manifest["image_id"].astype(str).tolist()
    agg = aggregate(emb, cell_ids, image_ids, p.aggregate)
    folder = Path(spec.cache_dir) / key
    n_per = pd.Series([c.rsplit("#", 1)[0] for c in cell_ids]).value_counts().reindex(image_ids, fill_value=0)
    write_npy(folder / "embeddings.npy", agg)
    write_csv(folder / "index.csv", pd.DataFrame({"image_id": image_ids}))
    from dinoloc.stats import embedding_health

    # the cells entry's record (model, weights) with this entry's own key, size and health
    write_json(folder / "meta.json", per_cell.meta | {
        "key": key, "cache_version": CACHE_VERSION, "level": "images (cells aggregated)",
        "cells_entry": per_cell.key, "n_images": len(image_ids), "n_cells": len(cell_ids), "dim": int(agg.shape[1]),
        "embedding_health": embedding_health(agg),
        "cells_per_image": {"median": float(np.median(n_per)), "min": int(n_per.min()), "max": int(n_per.max()),
                            "no_cell": int((n_per == 0).sum())},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })  # last: marks the entry complete
    return CacheEntry(key=key, path=folder, hit=per_cell.hit)
