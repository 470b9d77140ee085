"""Single cells (`data.unit=cell`): the cells of every image, listed once, and one crop per cell.

Cells come from the user's label images (`data.masks`: a column of the labels / LoadData CSV, 0 = background,
1..n = cells, as CellProfiler or Cellpose write them) or, with data.masks unset, from segmenting the nucleus
channel: scikit-image's Otsu threshold, a watershed of the distance transform that splits touching nuclei, and
`expand_labels` by data.cell.expand_px into the cytoplasm (CellProfiler's "propagate from nuclei" in its simplest
form); `data.cell.segmenter=cellpose` uses Cellpose when it and its weights are installed.

`<data dir>/cells.csv` lists every cell (image_id, cell_id, y, x, area); `cells.json` beside it records what it
was built from (manifest hash, cell parameters), the cells per image and the images without a cell (warned
about and counted, never dropped: their image embedding is zero). Segmented label images go to
`<data dir>/segmentation/` so extraction never segments twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from dinoloc.data.prepare import AGGREGATES
from dinoloc.io import DinolocError, atomic_path, frame_sha256, read_json, write_csv, write_json

log = logging.getLogger("dinoloc")
CELL_COLUMNS = ["image_id", "cell_id", "y", "x", "area"]
CELLS_VERSION = 1
CELL_SEP = "#"  # a cell's id in the embedding cache: <image_id>#<cell_id>


# ----------------------------------------------------------------------------------------------------------
# segmentation
# ----------------------------------------------------------------------------------------------------------
def segment_nuclei(nucleus: np.ndarray, expand_px: int, min_area_px: int) -> np.ndarray:
    """Label image (int32, 0 = background) of the cells seeded by the nuclei of a nucleus-channel image."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import expand_labels, watershed

    img = gaussian(np.asarray(nucleus, dtype=np.float32), sigma=1, preserve_range=True)
    if not np.isfinite(img).all() or img.max() <= img.min():
        return np.zeros(img.shape, np.int32)  # a flat image holds no nucleus
    comp, _ = ndi.label(img > threshold_otsu(img))
    comp = _drop_small(comp, min_area_px)  # specks below min_area_px are not nuclei
    fg = comp > 0
    dist = ndi.distance_transform_edt(fg)
    # one seed per nucleus: maxima of the distance map at least a nucleus radius apart
    radius = max(2, int(np.sqrt(max(min_area_px, 4) / np.pi)))
    peaks = peak_local_max(dist, min_distance=radius, labels=comp, exclude_border=False)
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg)
    labels = _drop_small(labels, min_area_px)
    return expand_labels(labels, distance=expand_px).astype(np.int32)


def segment_cellpose(nucleus: np.ndarray) -> np.ndarray:
    """Cellpose's nuclei model on the nucleus channel (optional dependency)."""
    try:
        from cellpose import models
    except ImportError as err:
        raise DinolocError("data.cell.segmenter=cellpose needs Cellpose: pip install cellpose (its weights download "
                           "on first use), or use data.cell.segmenter=skimage") from err
    model = models.Cellpose(model_type="nuclei")
    masks = model.eval(np.asarray(nucleus, np.float32), channels=[0, 0])[0]
    return np.asarray(masks, np.int32)


def _drop_small(labels: np.ndarray, min_area_px: int) -> np.ndarray:
    if min_area_px <= 1 or labels.max() == 0:
        return labels
    areas = np.bincount(labels.ravel())
    small = np.flatnonzero(areas < min_area_px)
    out = labels.copy()
    out[np.isin(out, small[small > 0])] = 0
    return out


def cell_rows(image_id: str, labels: np.ndarray) -> list[dict[str, Any]]:
    """One row per label of a label image: cell_id (the label), centroid y, x (px), area (px)."""
    from skimage.measure import regionprops

    return [{"image_id": image_id, "cell_id": int(r.label), "y": round(float(r.centroid[0]), 2),
             "x": round(float(r.centroid[1]), 2), "area": int(r.area)} for r in regionprops(labels)]


# ----------------------------------------------------------------------------------------------------------
# label images
# ----------------------------------------------------------------------------------------------------------
def read_labels(path: Path, image_file: str, shape: tuple[int, int]) -> np.ndarray:
    """A user's label image, checked against its image's (H, W)."""
    if not path.is_file():
        raise DinolocError(f"{path}: mask not found; fix the masks column (data.masks)")
    try:
        labels = np.asarray(tifffile.imread(path)) if path.suffix.lower() in (".tif", ".tiff") else _pil(path)
    except Exception as err:
        raise DinolocError(f"{path}: unreadable mask ({type(err).__name__}: {err}); replace it") from err
    labels = labels.reshape([s for s in labels.shape if s != 1]) if labels.ndim > 2 else labels
    if labels.shape != tuple(shape):
        raise DinolocError(f"{path}: mask of shape {labels.shape} differs from its image {image_file} "
                           f"{tuple(shape)}; the mask must label the image's own pixels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DinolocError(f"{path}: mask pixel type {labels.dtype} is not integer labels (0 = background, 1..n)")
    return labels.astype(np.int32)


def _pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def segmentation_file(out_dir: Path, image_id: str) -> Path:
    return out_dir / "segmentation" / (hashlib.sha1(image_id.encode()).hexdigest()[:16] + ".tif")


def label_file(spec, manifest_row: Mapping[str, Any]) -> Path:
    """Where an image's label image lives: the user's mask (data.masks) or dinoloc's segmentation."""
    if spec.masks:
        return Path(spec.root) / str(manifest_row["mask"])
    return segmentation_file(Path(spec.out_dir), str(manifest_row["image_id"]))


# ----------------------------------------------------------------------------------------------------------
# cells.csv
# ----------------------------------------------------------------------------------------------------------
def _fingerprint(spec, manifest: pd.DataFrame) -> dict[str, Any]:
    p = spec.cell
    return {"version": CELLS_VERSION, "manifest_sha256": frame_sha256(manifest), "masks": spec.masks,
            **({} if spec.masks else {k: getattr(p, k) for k in ("segmenter", "expand_px", "min_area_px")})}


def ensure_cells(spec, manifest: pd.DataFrame) -> pd.DataFrame:
    """cells.csv for `manifest` (built once; rebuilt when the manifest or the segmentation parameters change)."""
    from dinoloc.data.reader import get_reader

    out_dir = Path(spec.out_dir)
    csv, meta_path = out_dir / "cells.csv", out_dir / "cells.json"
    fp = _fingerprint(spec, manifest)
    if meta_path.is_file() and csv.is_file() and read_json(meta_path).get("fingerprint") == fp:
        return read_cells(out_dir)
    p = spec.cell
    reader = get_reader(spec.reader)
    read = reader.read_fn(spec)
    nucleus = None if spec.masks else reader.nucleus_channel(spec, _roles(spec))
    meta_path.unlink(missing_ok=True)  # the completion marker goes first
    # Segmented label images of the same parameters are reused: a killed listing resumes where it stopped.
    seg_params = out_dir / "segmentation" / "params.json"
    reuse = not spec.masks and seg_params.is_file() and read_json(seg_params) == fp
    if not spec.masks and not reuse:
        write_json(seg_params, fp)
    rows: list[dict[str, Any]] = []
    per_image: dict[str, int] = {}
    for rec in manifest.to_dict("records"):
        image = read(reader.item(spec.root, rec["path"]))
        if spec.masks:
            labels = read_labels(label_file(spec, rec), str(Path(spec.root) / str(rec["path"]).split(";")[0]),
                                 image.shape[-2:])
        elif reuse and (seg := segmentation_file(out_dir, rec["image_id"])).is_file():
            labels = np.asarray(tifffile.imread(seg)).astype(np.int32)
        else:
            labels = (segment_cellpose(image[nucleus]) if p.segmenter == "cellpose"
                      else segment_nuclei(image[nucleus], p.expand_px, p.min_area_px))
            with atomic_path(segmentation_file(out_dir, rec["image_id"])) as tmp:
                tifffile.imwrite(tmp, labels.astype(np.uint16 if labels.max() < 65536 else np.uint32),
                                 compression="zlib")
        found = cell_rows(str(rec["image_id"]), labels)
        per_image[str(rec["image_id"])] = len(found)
        rows += found
    cells = pd.DataFrame(rows, columns=CELL_COLUMNS)
    empty = [i for i, n in per_image.items() if n == 0]
    if empty:
        log.warning("%d image(s) hold no cell (kept, with a zero embedding), e.g. %s", len(empty), empty[:5])
    write_csv(csv, cells)
    write_json(meta_path, {"fingerprint": fp, "n_cells": len(cells), "stats": cell_stats(per_image),
                           "no_cell": empty})
    return cells


def _roles(spec) -> dict[str, str | None]:
    return dict(spec.channel_roles or {})


def read_cells(out_dir: str | os.PathLike) -> pd.DataFrame:
    path = Path(out_dir) / "cells.csv"
    if not path.is_file():
        raise DinolocError(f"{path}: not found; run dinoloc-data with data.unit=cell")
    cells = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)
    missing = [c for c in CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise DinolocError(f"{path}: missing column(s) {missing}; delete it and rerun dinoloc-data")
    return cells


def cell_stats(per_image: Mapping[str, int]) -> dict[str, Any]:
    """Cells per image: median, min, max, total, images without a cell."""
    n = np.array(list(per_image.values()), dtype=np.int64)
    if not len(n):
        return {"images": 0, "cells": 0, "median": 0, "min": 0, "max": 0, "no_cell": 0}
    return {"images": int(len(n)), "cells": int(n.sum()), "median": float(np.median(n)), "min": int(n.min()),
            "max": int(n.max()), "no_cell": int((n == 0).sum())}


def cells_summary(out_dir: str | os.PathLike) -> str:
    """The data summary's line on cells (from cells.json)."""
    s = read_json(Path(out_dir) / "cells.json")["stats"]
    return (f"cells: {s['cells']} in {s['images']} images; cells per image median {s['median']:g}, min {s['min']}, "
            f"max {s['max']}; images without a cell: {s['no_cell']} (kept with a zero embedding)")


# ----------------------------------------------------------------------------------------------------------
# crops
# ----------------------------------------------------------------------------------------------------------
def crop_centered(image: np.ndarray, y: float, x: float, size: int) -> np.ndarray:
    """The (C, size, size) window centred on (y, x); outside the image is zero (a border cell is padded)."""
    c, h, w = image.shape
    top, left = int(round(y)) - size // 2, int(round(x)) - size // 2
    out = np.zeros((c, size, size), dtype=image.dtype)
    y0, y1, x0, x1 = max(top, 0), min(top + size, h), max(left, 0), min(left + size, w)
    if y0 < y1 and x0 < x1:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = image[:, y0:y1, x0:x1]
    return out


class CellCrops:
    """read_fn for the extraction engine under data.unit=cell: an item is (image item, label file, y, x, cell_id);
    the last image read is kept, so a run of cells of one image reads it once (cells come grouped by image)."""

    def __init__(self, read_fn: Callable[[Any], np.ndarray], crop_px: int, mask_others: bool):
        self.read_fn, self.crop_px, self.mask_others = read_fn, int(crop_px), bool(mask_others)
        self._key: Any = None
        self._image: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def __call__(self, item: tuple) -> np.ndarray:
        image_item, labels_file, y, x, cell_id = item
        if self._key != image_item:
            self._image = self.read_fn(image_item)
            self._labels = np.asarray(tifffile.imread(labels_file)) if self.mask_others else None
            self._key = image_item
        image = self._image
        if self.mask_others:
            keep = (self._labels == cell_id) | (self._labels == 0)
            image = image * keep[None]
        return crop_centered(image, y, x, self.crop_px)


def cell_items(spec, reader, manifest: pd.DataFrame, cells: pd.DataFrame) -> tuple[list[str], list[tuple]]:
    """(cache ids `<image_id>#<cell_id>`, engine items) for every cell, grouped by image in manifest order."""
    rows = manifest.set_index("image_id")
    order = {i: k for k, i in enumerate(manifest["image_id"])}
    cells = cells.assign(_o=cells["image_id"].map(order)).sort_values(["_o", "cell_id"], kind="stable")
    if cells["_o"].isna().any():
        raise DinolocError(f"{Path(spec.out_dir) / 'cells.csv'}: lists images not in the manifest; delete it and "
                           "rerun dinoloc-data")
    ids, items = [], []
    label_of: dict[str, str] = {}
    item_of: dict[str, Any] = {}
    for image_id, cell_id, y, x in zip(cells["image_id"], cells["cell_id"], cells["y"], cells["x"], strict=True):
        if image_id not in item_of:
            rec = rows.loc[image_id]
            item_of[image_id] = reader.item(spec.root, rec["path"])
            label_of[image_id] = str(label_file(spec, {"image_id": image_id, **rec.to_dict()}))
        ids.append(f"{image_id}{CELL_SEP}{int(cell_id)}")
        items.append((item_of[image_id], label_of[image_id], float(y), float(x), int(cell_id)))
    return ids, items


def aggregate(cell_emb: np.ndarray, cell_ids: list[str], image_ids: list[str], how: str = "mean") -> np.ndarray:
    """One row per image: the mean of its cells' embeddings (zero for an image without a cell)."""
    if how not in AGGREGATES:
        raise DinolocError(f"data.cell.aggregate={how!r}: use one of {', '.join(AGGREGATES)}")
    owner = np.array([i.rsplit(CELL_SEP, 1)[0] for i in cell_ids], dtype=object)
    pos = {i: k for k, i in enumerate(image_ids)}
    idx = np.array([pos[o] for o in owner], dtype=np.int64)
    out = np.zeros((len(image_ids), cell_emb.shape[1]), dtype=np.float64)
    step = 1 << 15  # in blocks: a memory-mapped cell table is never read whole
    for lo in range(0, len(idx), step):
        np.add.at(out, idx[lo:lo + step], np.asarray(cell_emb[lo:lo + step], dtype=np.float64))
    counts = np.bincount(idx, minlength=len(image_ids))
    out[counts > 0] /= counts[counts > 0, None]
    return out.astype(np.float32)
