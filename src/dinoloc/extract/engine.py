"""The extraction engine: embed images chunk by chunk, resumable, one computation per key across
processes (file lock), torchrun ranks sharing the chunks; rank 0 merges. Cache layout: dinoloc.extract.cache."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset

from dinoloc.device import barrier, loader_context, rank_and_world
from dinoloc.extract.cache import CACHE_VERSION, CacheEntry, chunk_path, lookup, merge
from dinoloc.io import DinolocError, write_npy
from dinoloc.progress import close_all
from dinoloc.progress import progress as bar_of


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


@dataclass(frozen=True)
class EngineSettings:
    """How the engine runs (configs/extract/*.yaml, the device, the backbone's resize); none enters the cache key."""

    batch_size: int = 64
    num_workers: int = 0
    chunk_size: int = 256              # images per chunk file (the unit of resume)
    device: str | torch.device = "cpu"
    amp: bool = True                   # bfloat16 autocast (CUDA only)
    resize_to: int | None = None       # resize in the loader's workers (spatial=resize), keeping transfers small
    progress: bool = True


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
    settings: EngineSettings = EngineSettings(),
) -> CacheEntry:
    """Embed every image (or hit the cache) and return the complete cache entry.

    `model_factory` is called only when something has to be computed, so a cache hit does no model work at all.
    `embed_fn(model, batch)` maps a (B, 2, H, W) float batch of raw intensities on `device` to (B, D) embeddings.
    """
    chunk_size, batch_size = settings.chunk_size, settings.batch_size
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
            model_info = _compute_chunks_or_report(
                # a tuple = one image's channel files (dinoloc.data.reader)
                paths=[p if isinstance(p, tuple) else Path(p) for p in paths], read_fn=read_fn,
                model_factory=model_factory, embed_fn=embed_fn, chunks_dir=folder / "chunks",
                settings=replace(settings, device=torch.device(settings.device),
                                 progress=settings.progress and rank == 0),
                rank=rank, world=world,
            )
            barrier()
            if rank == 0:
                merge(folder, list(image_ids), chunk_size,
                      meta | model_meta(model_info) | {"key": key, "cache_version": CACHE_VERSION})
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
               for c in range(n_chunks) if chunk_path(chunks_dir, c).exists())


def _compute_chunks_or_report(**kwargs: Any) -> dict[str, Any] | None:
    """_compute_chunks; a Ctrl-C becomes ExtractionInterrupted saying how much is kept for the resume."""
    try:
        return _compute_chunks(**kwargs)
    except ExtractionInterrupted:
        raise
    except KeyboardInterrupt:
        close_all()
        n = len(kwargs["paths"])
        raise ExtractionInterrupted(_kept_images(kwargs["chunks_dir"], n, kwargs["settings"].chunk_size), n) from None


def _remove_empty(folder: Path) -> None:
    """A failed or interrupted extraction leaves no empty `chunks/` or key folder behind (kept chunks stay)."""
    for d in (folder / "chunks", folder):
        try:
            d.rmdir()  # only succeeds when empty
        except OSError:
            pass


def _compute_chunks(
    *, paths: list[Path], read_fn, model_factory, embed_fn, chunks_dir: Path, settings: EngineSettings, rank: int,
    world: int,
) -> dict[str, Any] | None:
    """Embed this rank's unfinished chunks; returns the model's `dinoloc_info` (None when nothing was left)."""
    chunk_size, device, progress = settings.chunk_size, settings.device, settings.progress
    n = len(paths)
    n_chunks = (n + chunk_size - 1) // chunk_size
    mine = [c for c in range(n_chunks) if c % world == rank]
    todo = [c for c in mine if not chunk_path(chunks_dir, c).exists()]
    if not todo:
        return None
    chunks_dir.mkdir(parents=True, exist_ok=True)
    indices = [i for c in todo for i in range(c * chunk_size, min(n, (c + 1) * chunk_size))]
    loader = DataLoader(
        _ImageDataset(paths, indices, read_fn, settings.resize_to),
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        multiprocessing_context=loader_context(settings.num_workers),
    )
    model = model_factory().to(device).eval()
    use_amp = settings.amp and device.type == "cuda"
    done_before = n - len(indices) if world == 1 else None
    if done_before:
        print(f"resuming extraction in {chunks_dir.parent}: {done_before} of {n} images already embedded", flush=True)
    bar = bar_of(total=n, initial=done_before or 0, unit="img", desc="extract") if progress else None
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
                    write_npy(chunk_path(chunks_dir, c), np.stack(buffer.pop(c)).astype(np.float32))
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.set_postfix_str(f"{len(indices) / max(time.perf_counter() - t0, 1e-9):.1f} img/s")
        bar.close()
    if buffer:  # cannot happen unless the loader skipped rows
        raise DinolocError(f"extraction lost rows of chunks {sorted(buffer)}; rerun to resume")
    return dict(getattr(model, "dinoloc_info", {}))


def model_meta(info: dict[str, Any] | None) -> dict[str, Any]:
    """What the cache's meta.json records about the weights actually loaded (backbones' `dinoloc_info`)."""
    if info is None:  # resumed with every chunk already done: no model was built in this process
        return {}
    return {"checkpoint_epoch": info.get("checkpoint_epoch"), "checkpoint": info.get("checkpoint") or {},
            "random_weights": bool(info.get("random_init", False)), "random_seed": info.get("random_seed"),
            "model": info.get("model") or {}}
