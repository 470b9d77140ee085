"""Cached feature extraction: every image of the manifest -> one embedding per backbone x strategy.

Cache layout (DESIGN.md), one folder per key under the cache root::

    <cache_dir>/<key>/embeddings.npy   float32, one row per image, in index.csv order
    <cache_dir>/<key>/index.csv        image_id (manifest order)
    <cache_dir>/<key>/meta.json        written last: its presence marks a complete entry
    <cache_dir>/<key>/chunks/          partial work of an unfinished run (removed when complete)

The key hashes what changes the numbers (backbone arch and weights, strategy, preprocessing, the image list
and a cache version), never batch size, workers or device. Work is saved chunk by chunk, so a killed run
redoes at most one chunk; a file lock makes a second process asking for the same key wait and then hit the
cache instead of computing it again. Under ``torchrun`` every rank takes every world_size-th chunk and rank 0
merges them after checking that every image is covered exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc import __version__
from dinoloc.io import DinolocError, atomic_path, read_json, text_sha256, write_csv, write_json

CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheEntry:
    """A complete cache entry: embeddings aligned with image ids."""

    key: str
    path: Path
    hit: bool  # True when nothing had to be computed

    @property
    def meta(self) -> dict[str, Any]:
        return read_json(self.path / "meta.json")

    def load(self) -> tuple[np.ndarray, list[str]]:
        emb = np.load(self.path / "embeddings.npy", mmap_mode=None)
        ids = pd.read_csv(self.path / "index.csv", dtype={"image_id": str})["image_id"].tolist()
        if len(ids) != emb.shape[0]:
            raise DinolocError(
                f"cache entry {self.path} is inconsistent: {emb.shape[0]} embeddings, {len(ids)} ids. "
                "Delete the folder and rerun the extraction."
            )
        return emb, ids


def embedding_rows(ids: list[str], wanted: Iterable[str], cache: str | os.PathLike) -> np.ndarray:
    """The rows of a cache entry's embeddings (ids: its index.csv order) holding the `wanted` images, in wanted's
    order: `emb[embedding_rows(ids, split["image_id"], entry.path)]` lines the embeddings up with a split."""
    pos = {image_id: k for k, image_id in enumerate(ids)}
    wanted = list(wanted)
    missing = [i for i in wanted if i not in pos]
    if missing:
        raise DinolocError(f"cache {cache} lacks {len(missing)} of the images asked for (e.g. {missing[:5]}); "
                           "delete that folder and rerun, or rebuild the manifest (dinoloc-data)")
    return np.array([pos[i] for i in wanted], dtype=np.int64)


def images_fingerprint(manifest: pd.DataFrame, data_root: str | os.PathLike) -> str:
    """Hash of the image list the embeddings belong to: ids, paths, and each file's size and mtime.

    File size and mtime make a regenerated or replaced image set (same names, other pixels) a new key.
    """
    root = Path(data_root).resolve()
    rows = []
    for image_id, rel in zip(manifest["image_id"], manifest["path"], strict=True):
        sizes = []
        for part in str(rel).split(";"):  # a one-file-per-channel image: its files (dinoloc.data.reader)
            p = root / part
            try:
                st = p.stat()
            except FileNotFoundError:
                raise DinolocError(f"image {p} (manifest row {image_id}) is missing; restore it or rebuild the manifest") from None
            sizes.append(f"{st.st_size}\t{st.st_mtime_ns}")
        rows.append(f"{image_id}\t{rel}\t" + "\t".join(sizes))
    return text_sha256(f"{root}\n" + "\n".join(rows))


def cache_key(fields: dict[str, Any]) -> str:
    """Stable short key from everything that determines the embeddings (plus the cache version)."""
    payload = json.dumps({**fields, "cache_version": CACHE_VERSION}, sort_keys=True, default=str)
    return text_sha256(payload)[:20]


def lookup(cache_dir: str | os.PathLike, key: str) -> CacheEntry | None:
    """The complete entry for `key`, or None. An entry of another cache version is never returned."""
    path = Path(cache_dir) / key
    meta_path = path / "meta.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    if meta.get("cache_version") != CACHE_VERSION or meta.get("key") != key:
        return None
    return CacheEntry(key=key, path=path, hit=True)


def chunk_path(chunks_dir: Path, c: int) -> Path:
    return chunks_dir / f"chunk_{c:06d}.npy"


def finished_chunks(cache_dir: str | os.PathLike, key: str) -> int:
    """How many chunks an unfinished extraction of `key` has saved (what a rerun resumes after)."""
    chunks = Path(cache_dir) / key / "chunks"
    return len(list(chunks.glob("chunk_*.npy"))) if chunks.is_dir() else 0


def merge(folder: Path, image_ids: list[str], chunk_size: int, meta: dict[str, Any]) -> None:
    n = len(image_ids)
    n_chunks = (n + chunk_size - 1) // chunk_size
    chunks_dir = folder / "chunks"
    missing = [c for c in range(n_chunks) if not chunk_path(chunks_dir, c).exists()]
    if missing:
        raise DinolocError(f"cache {folder}: chunks {missing[:10]} were not written by any rank; rerun to resume")
    # Streamed chunk by chunk into the final file (memory: one chunk, whatever the number of images or cells).
    sizes = [np.load(chunk_path(chunks_dir, c), mmap_mode="r").shape[0] for c in range(n_chunks)]
    expected = [min(n, (c + 1) * chunk_size) - c * chunk_size for c in range(n_chunks)]
    if sizes != expected:
        raise DinolocError(f"cache {folder}: chunk sizes {sizes} do not cover the {n} images exactly once")
    dim = int(np.load(chunk_path(chunks_dir, 0), mmap_mode="r").shape[1])
    bad: list[int] = []
    with atomic_path(folder / "embeddings.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for c in range(n_chunks):
            part = np.load(chunk_path(chunks_dir, c)).astype(np.float32, copy=False)
            bad += [c * chunk_size + int(i) for i in np.flatnonzero(~np.isfinite(part).all(axis=1))]
            out[c * chunk_size:c * chunk_size + len(part)] = part
        out.flush()
        del out
        if bad:
            ids = [image_ids[i] for i in bad[:10]]
            shutil.rmtree(chunks_dir, ignore_errors=True)
            raise DinolocError(
                f"{len(bad)} embeddings are NaN or infinite (e.g. {ids}); nothing was cached. "
                "On GPU this is usually an fp16 overflow: rerun with extract.amp=false."
            )
    emb = np.load(folder / "embeddings.npy", mmap_mode="r")
    write_csv(folder / "index.csv", pd.DataFrame({"image_id": image_ids}))
    from dinoloc.stats import embedding_health

    meta = meta | {
        "n_images": n,
        "dim": int(emb.shape[1]),
        "embedding_health": embedding_health(emb[:20000]),  # its own cap, applied before any copy
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "dinoloc_version": __version__,
        "torch_version": _torch_version(),
    }
    write_json(folder / "meta.json", meta)  # last: marks the entry complete
    shutil.rmtree(chunks_dir, ignore_errors=True)


def _torch_version() -> str:
    import torch  # only when an entry is written: reading the cache needs no torch

    return torch.__version__
