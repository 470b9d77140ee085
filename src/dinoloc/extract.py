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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset

from dinoloc import __version__
from dinoloc.device import barrier, rank_and_world
from dinoloc.io import DinolocError, read_json, text_sha256, write_csv, write_json, write_npy

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


def images_fingerprint(manifest: pd.DataFrame, data_root: str | os.PathLike) -> str:
    """Hash of the image list the embeddings belong to: ids, paths, and each file's size and mtime.

    File size and mtime make a regenerated or replaced image set (same names, other pixels) a new key.
    """
    root = Path(data_root).resolve()
    rows = []
    for image_id, rel in zip(manifest["image_id"], manifest["path"], strict=True):
        p = root / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            raise DinolocError(f"image {p} (manifest row {image_id}) is missing; restore it or rebuild the manifest") from None
        rows.append(f"{image_id}\t{rel}\t{st.st_size}\t{st.st_mtime_ns}")
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


class _ImageDataset(Dataset):
    """Reads images by manifest position; resizing happens here (in the workers) to keep transfers small."""

    def __init__(self, paths: Sequence[Path], indices: Sequence[int], read_fn: Callable, resize_to: int | None):
        self.paths = paths
        self.indices = list(indices)
        self.read_fn = read_fn
        self.resize_to = resize_to

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        idx = self.indices[i]
        x = torch.from_numpy(np.ascontiguousarray(self.read_fn(self.paths[idx])))
        if self.resize_to is not None and tuple(x.shape[-2:]) != (self.resize_to, self.resize_to):
            x = torch.nn.functional.interpolate(
                x[None], size=(self.resize_to, self.resize_to), mode="bilinear", antialias=True, align_corners=False
            )[0]
        return idx, x


def extract(
    *,
    image_ids: Sequence[str],
    paths: Sequence[str | os.PathLike],
    read_fn: Callable[[str | os.PathLike], np.ndarray],
    model_factory: Callable[[], torch.nn.Module],
    embed_fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    cache_dir: str | os.PathLike,
    key: str,
    meta: dict[str, Any],
    resize_to: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    chunk_size: int = 256,
    device: str | torch.device = "cpu",
    amp: bool = True,
    progress: bool = True,
) -> CacheEntry:
    """Embed every image (or hit the cache) and return the complete cache entry.

    `model_factory` is called only when something has to be computed, so a cache hit does no model work at all.
    `embed_fn(model, batch)` maps a (B, 2, H, W) float batch of raw intensities on `device` to (B, D) embeddings.
    """
    if len(image_ids) != len(paths):
        raise DinolocError(f"{len(image_ids)} image ids but {len(paths)} paths")
    if len(set(image_ids)) != len(image_ids):
        raise DinolocError("duplicate image ids in the manifest; rebuild it with dinoloc-data")
    if chunk_size < 1 or batch_size < 1:
        raise DinolocError("extract.chunk_size and extract.batch_size must be >= 1")

    entry = lookup(cache_dir, key)
    if entry is not None:
        return entry
    rank, world = rank_and_world()
    folder = Path(cache_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    # One computation per key across processes: the second waits, then finds the finished entry.
    lock = FileLock(str(folder) + ".lock") if rank == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        barrier()
        entry = lookup(cache_dir, key)
        if entry is None:
            _compute_chunks_or_report(
                paths=[Path(p) for p in paths], read_fn=read_fn, model_factory=model_factory, embed_fn=embed_fn,
                chunks_dir=folder / "chunks", resize_to=resize_to, batch_size=batch_size, num_workers=num_workers,
                chunk_size=chunk_size, device=torch.device(device), amp=amp, progress=progress and rank == 0,
                rank=rank, world=world,
            )
            barrier()
            if rank == 0:
                _merge(folder, list(image_ids), chunk_size, meta | {"key": key, "cache_version": CACHE_VERSION})
            barrier()
            entry = CacheEntry(key=key, path=folder, hit=False)
    finally:
        if lock is not None:
            lock.release()
        if lookup(cache_dir, key) is None:
            _remove_empty(folder)
    return entry


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C during extraction, with how many images are kept (whole chunks) for the resume."""

    def __init__(self, kept: int, total: int) -> None:
        self.kept, self.total = kept, total
        super().__init__(f"interrupted: kept {kept} of {total} images; rerun the same command to resume")


def _kept_images(chunks_dir: Path, n: int, chunk_size: int) -> int:
    """Images in finished chunk files (a chunk is written whole, so its size follows from its number)."""
    n_chunks = (n + chunk_size - 1) // chunk_size
    return sum(min(n, (c + 1) * chunk_size) - c * chunk_size
               for c in range(n_chunks) if _chunk_path(chunks_dir, c).exists())


def _compute_chunks_or_report(**kwargs: Any) -> None:
    """_compute_chunks; a Ctrl-C becomes ExtractionInterrupted saying how much is kept for the resume."""
    try:
        _compute_chunks(**kwargs)
    except ExtractionInterrupted:
        raise
    except KeyboardInterrupt:
        _close_bars()
        n = len(kwargs["paths"])
        raise ExtractionInterrupted(_kept_images(kwargs["chunks_dir"], n, kwargs["chunk_size"]), n) from None


def _close_bars() -> None:
    """End any open progress bar's line, so the one-line message that follows starts on its own line."""
    from tqdm.auto import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _remove_empty(folder: Path) -> None:
    """A failed or interrupted extraction leaves no empty `chunks/` or key folder behind (kept chunks stay)."""
    for d in (folder / "chunks", folder):
        try:
            d.rmdir()  # only succeeds when empty
        except OSError:
            pass


def _chunk_path(chunks_dir: Path, c: int) -> Path:
    return chunks_dir / f"chunk_{c:06d}.npy"


def _compute_chunks(
    *, paths: list[Path], read_fn, model_factory, embed_fn, chunks_dir: Path, resize_to, batch_size, num_workers,
    chunk_size, device: torch.device, amp: bool, progress: bool, rank: int, world: int,
) -> None:
    n = len(paths)
    n_chunks = (n + chunk_size - 1) // chunk_size
    mine = [c for c in range(n_chunks) if c % world == rank]
    todo = [c for c in mine if not _chunk_path(chunks_dir, c).exists()]
    if not todo:
        return
    chunks_dir.mkdir(parents=True, exist_ok=True)
    indices = [i for c in todo for i in range(c * chunk_size, min(n, (c + 1) * chunk_size))]
    loader = DataLoader(
        _ImageDataset(paths, indices, read_fn, resize_to),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    model = model_factory().to(device).eval()
    use_amp = amp and device.type == "cuda"
    done_before = n - len(indices) if world == 1 else None
    if done_before:
        print(f"resuming extraction in {chunks_dir.parent}: {done_before} of {n} images already embedded", flush=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=done_before or 0, unit="img", desc="extract", dynamic_ncols=True)
    buffer: dict[int, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx, x in loader:
            x = x.to(device, non_blocking=True).float()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                emb = embed_fn(model, x)
            emb = emb.float().cpu().numpy()
            for i, row in zip(idx.tolist(), emb, strict=True):
                buffer.setdefault(i // chunk_size, []).append(row)
            # A chunk is saved as soon as all its rows are in; the loader walks chunks in order.
            for c in sorted(buffer):
                expected = min(n, (c + 1) * chunk_size) - c * chunk_size
                if len(buffer[c]) == expected:
                    write_npy(_chunk_path(chunks_dir, c), np.stack(buffer.pop(c)).astype(np.float32))
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.set_postfix_str(f"{len(indices) / max(time.perf_counter() - t0, 1e-9):.1f} img/s")
        bar.close()
    if buffer:  # cannot happen unless the loader skipped rows
        raise DinolocError(f"extraction lost rows of chunks {sorted(buffer)}; rerun to resume")


def _merge(folder: Path, image_ids: list[str], chunk_size: int, meta: dict[str, Any]) -> None:
    n = len(image_ids)
    n_chunks = (n + chunk_size - 1) // chunk_size
    chunks_dir = folder / "chunks"
    missing = [c for c in range(n_chunks) if not _chunk_path(chunks_dir, c).exists()]
    if missing:
        raise DinolocError(f"cache {folder}: chunks {missing[:10]} were not written by any rank; rerun to resume")
    parts = [np.load(_chunk_path(chunks_dir, c)) for c in range(n_chunks)]
    sizes = [p.shape[0] for p in parts]
    expected = [min(n, (c + 1) * chunk_size) - c * chunk_size for c in range(n_chunks)]
    if sizes != expected:
        raise DinolocError(f"cache {folder}: chunk sizes {sizes} do not cover the {n} images exactly once")
    emb = np.concatenate(parts).astype(np.float32, copy=False)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        ids = [image_ids[i] for i in np.flatnonzero(bad)[:10]]
        shutil.rmtree(chunks_dir, ignore_errors=True)
        raise DinolocError(
            f"{int(bad.sum())} embeddings are NaN or infinite (e.g. {ids}); nothing was cached. "
            "On GPU this is usually an fp16 overflow: rerun with extract.amp=false."
        )
    write_npy(folder / "embeddings.npy", emb)
    write_csv(folder / "index.csv", pd.DataFrame({"image_id": image_ids}))
    from dinoloc.stats import embedding_health

    meta = meta | {
        "n_images": n,
        "dim": int(emb.shape[1]),
        "embedding_health": embedding_health(emb),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "dinoloc_version": __version__,
        "torch_version": torch.__version__,
    }
    write_json(folder / "meta.json", meta)  # last: marks the entry complete
    shutil.rmtree(chunks_dir, ignore_errors=True)
