"""Sweep bookkeeping shared by the launcher's processes: progress (job i of n, elapsed, remaining),
failed jobs (recorded, summarised at the end, non-zero exit) and the job listing of `dry_run=true`.

Jobs may run in other processes (joblib) or on other machines (SLURM), so the state lives in files under
`<hydra.sweep.dir>/.dinoloc/`, not in memory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dinoloc.io import write_json

STATE_DIR = ".dinoloc"


def _state(sweep_dir: str | os.PathLike) -> Path:
    return Path(sweep_dir) / STATE_DIR


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def start(sweep_dir: str | os.PathLike, jobs: list[list[str]]) -> None:
    """Called once before the first job: the number of jobs and the start time."""
    state = _state(sweep_dir)
    state.mkdir(parents=True, exist_ok=True)
    write_json(state / "sweep.json", {"n_jobs": len(jobs), "start": time.time(), "jobs": jobs})


def _read_sweep(sweep_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = _state(sweep_dir) / "sweep.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_started(sweep_dir: str | os.PathLike, num: int, overrides: list[str]) -> str | None:
    info = _read_sweep(sweep_dir)
    if info is None:
        return None
    line = (f"[sweep] job {num + 1} of {info['n_jobs']} starting: {' '.join(overrides)} "
            f"(elapsed {_fmt_seconds(time.time() - info['start'])})")
    print(line, file=sys.stderr, flush=True)
    return line


def job_finished(sweep_dir: str | os.PathLike, num: int) -> str | None:
    """Mark job `num` done and print `[sweep] i of n jobs done, elapsed, about T left` (mean job time so far)."""
    info = _read_sweep(sweep_dir)
    if info is None:
        return None
    done_dir = _state(sweep_dir) / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    (done_dir / str(num)).touch()
    n_done, n = len(list(done_dir.iterdir())), int(info["n_jobs"])
    elapsed = time.time() - float(info["start"])
    n_failed = len(failures(sweep_dir))
    left = elapsed / n_done * (n - n_done) if n_done else float("nan")
    line = (f"[sweep] {n_done} of {n} jobs done{f' ({n_failed} failed)' if n_failed else ''}; "
            f"elapsed {_fmt_seconds(elapsed)}" + (f", about {_fmt_seconds(left)} left" if n_done < n else ""))
    print(line, file=sys.stderr, flush=True)
    return line


def record_failure(job: Any, message: str) -> Path:
    """Record a failed job (its HydraConfig) so the sweep can summarise it and exit non-zero."""
    path = _state(job.sweep.dir) / "failed" / f"{job.job.num}.json"
    write_json(path, {"num": int(job.job.num), "overrides": list(job.overrides.task), "error": message})
    return path


def failures(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    folder = _state(sweep_dir) / "failed"
    if not folder.is_dir():
        return []
    out = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(out, key=lambda f: f["num"])


def summary(sweep_dir: str | os.PathLike) -> tuple[str, bool]:
    """The end-of-sweep line(s) and whether every job succeeded."""
    info = _read_sweep(sweep_dir) or {}
    failed = failures(sweep_dir)
    n = info.get("n_jobs", "?")
    elapsed = _fmt_seconds(time.time() - float(info["start"])) if "start" in info else "?"
    if not failed:
        return f"[sweep] all {n} jobs finished in {elapsed}", True
    lines = [f"dinoloc: error: {len(failed)} of {n} jobs failed (the others finished in {elapsed}; "
             "dinoloc-report lists the failed rows as missing). Fix and rerun the same command: finished jobs "
             "are skipped."]
    lines += [f"  job {f['num']} ({' '.join(f['overrides'])}): {f['error']}" for f in failed]
    return "\n".join(lines), False


# ----------------------------------------------------------------------------------------------------------
# dry_run=true: what each job would compute and reuse
# ----------------------------------------------------------------------------------------------------------
def describe_job(cfg: Any) -> str:
    """One line per job: its run folder and, for data, embeddings and classifier, `reuse` or what is computed.

    Reads only what is on disk (manifest, split, cache, result.json); builds, downloads and writes nothing.
    """
    from dinoloc.backbones import _is_url, cached_weights_path
    from dinoloc.cli import extraction_fields, run_fingerprint, run_name
    from dinoloc.data.split import load_dataset
    from dinoloc.extract import cache_key, lookup
    from dinoloc.io import DinolocError
    from dinoloc.results import load_result

    bb = cfg.backbone
    name = run_name(cfg)  # the folder dinoloc-run writes: head and variant included
    run_dir = Path(cfg.paths.runs_dir) / name
    parts = [f"{name} -> {run_dir}"]
    try:
        manifest, split = load_dataset(cfg.paths.data_dir)
    except DinolocError:
        return " ".join(parts + ["| data: build manifest + split | embeddings: compute | classifier: train"])
    parts.append(f"| data: reuse ({len(manifest)} images)")
    weights = str(bb.weights or "")
    if _is_url(weights) and not cached_weights_path(weights, cfg.paths.weights_dir).exists() and not bb.weights_sha256:
        return " ".join(parts + ["| embeddings: download weights, compute | classifier: train"])
    key = cache_key(extraction_fields(cfg, manifest))
    if lookup(cfg.paths.cache_dir, key) is not None:
        parts.append(f"| embeddings: reuse cache/{key}")
    else:
        chunks = Path(cfg.paths.cache_dir) / key / "chunks"
        n_chunks = len(list(chunks.glob("chunk_*.npy"))) if chunks.is_dir() else 0
        resume = f" (resume after {n_chunks} finished chunks)" if n_chunks else ""
        parts.append(f"| embeddings: compute {len(manifest)} images{resume} -> cache/{key}")
    previous = load_result(run_dir)
    if (previous is not None and not cfg.force and previous.get("cache_key") == key
            and previous.get("run_fingerprint") == run_fingerprint(cfg, manifest, split)):
        parts.append("| classifier: reuse result.json (skip)")
    else:
        c = cfg.classifier
        what = "fit the k-NN" if c.get("name") == "knn" else f"train {cfg.data.split.n_folds} folds x {c.epochs} epochs"
        parts.append(f"| classifier: {what}")
    return " ".join(parts)
