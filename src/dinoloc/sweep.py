"""Sweeps: the launcher callback that validates every job before the first starts (`ValidateSweep`), and the
bookkeeping shared by the launcher's processes: progress (job i of n, elapsed, remaining),
failed jobs (recorded, summarised at the end, non-zero exit) and the job listing of `dry_run=true`.

Jobs may run in other processes (joblib) or on other machines (SLURM), so the state lives in files under
`<hydra.sweep.dir>/.dinoloc/`, not in memory.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dinoloc.backbones.weights import cached_weights_path, is_url
from dinoloc.channel_strategies import CannotRun
from dinoloc.classify.params import head_name
from dinoloc.extract.cache import finished_chunks, lookup
from dinoloc.extract.stage import key_of
from dinoloc.heads import head_module
from dinoloc.io import DinolocError, write_json
from dinoloc.results import run_dir_name

STATE_DIR = ".dinoloc"


def _state(sweep_dir: str | os.PathLike) -> Path:
    return Path(sweep_dir) / STATE_DIR


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def start(sweep_dir: str | os.PathLike, jobs: list[list[str]], skipped: list[list[str]] | None = None) -> None:
    """Called once before the first job: the number of jobs, the start time, the jobs to skip."""
    state = _state(sweep_dir)
    state.mkdir(parents=True, exist_ok=True)
    write_json(state / "sweep.json", {"n_jobs": len(jobs), "start": time.time(), "jobs": jobs,
                                      "skipped": skipped or []})


def is_skipped(sweep_dir: str | os.PathLike, overrides: list[str]) -> bool:
    """Whether this job is one the sweep skips (a backbone x strategy that cannot run, listed at the start)."""
    info = _read_sweep(sweep_dir) or {}
    return list(overrides) in [list(j) for j in info.get("skipped", [])]


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
# the launcher callback: every job composed and validated before the first starts
# ----------------------------------------------------------------------------------------------------------
def sweep_jobs(hydra_node: Any) -> list[list[str]]:
    """The override list of every job a multirun would launch (the preset's sweeper params + the command line),
    from the config's `hydra` node."""
    task_overrides = list(hydra_node.overrides.task)
    sweep_params = hydra_node.sweeper.get("params") or {}
    overrides = [f"{k}={v}" for k, v in sweep_params.items() if not any(o.split("=")[0] == k for o in task_overrides)]
    overrides += task_overrides
    # Hydra's basic sweeper: the cartesian product of each key's values, a key given twice keeping its last value
    choices: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise DinolocError(f"{key}: only a list of values can be swept (got {o.input_line})")
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices[key] = [f"{key}={v}" for v in values]
    return [list(job) for job in itertools.product(*choices.values())]


def compose_job(job: list[str], hydra_node: Any) -> DictConfig:
    """One job's composed config, seeing the user's config directories (hydra.searchpath) too."""
    searchpath = list(hydra_node.get("searchpath") or [])
    overrides = job + ([f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else [])
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app
        return compose(config_name="config", overrides=overrides)
    from dinoloc.config import compose as compose_outside_an_app

    return compose_outside_an_app(overrides)


def expected_runs(hydra_node: Any) -> tuple[str, ...]:
    """The run folders a preset's sweep makes, one per job in sweep order (what dinoloc-report expects): the
    preset lists what it sweeps (rows, heads, variants) and the names follow from it. () without a sweep."""
    if not hydra_node.sweeper.get("params"):
        return ()
    names = []
    for job in sweep_jobs(hydra_node):
        cfg = compose_job(job, hydra_node)
        head = head_name(OmegaConf.to_container(cfg.classifier))
        names.append(run_dir_name(str(cfg.backbone.name), str(cfg.strategy.name), head, str(cfg.get("variant") or "baseline")))
    return tuple(dict.fromkeys(names))


class ValidateSweep(Callback):
    """Compose every job of a multirun up front and validate it (pairs, values, weights files), so a bad
    job fails before any work; `dry_run=true` lists the jobs and exits. While the sweep runs: job i of n,
    elapsed and remaining time; a failed job is recorded, the others run, and the sweep exits 1 at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from dinoloc.config import checked_spec
        from dinoloc.console import error_line

        jobs = sweep_jobs(config.hydra)
        bad, specs, skipped = [], [], []
        for job in jobs:
            # Hydra turns an exception in a callback into a warning and runs the sweep anyway: exit here.
            try:
                specs.append(checked_spec(compose_job(job, config.hydra)))  # each job's spec, built once
            except CannotRun as e:  # e.g. strategy=native for a backbone without the data's channels
                specs.append(None)
                skipped.append((job, str(e)))
            except DinolocError as e:
                bad.append(f"  {' '.join(job)}: {e}")
            except Exception as e:
                line = error_line(e)
                if line is None:
                    raise
                print(f"dinoloc: error: {line}", file=sys.stderr)
                sys.exit(2)
        if skipped:
            shared = set.intersection(*(set(j) for j in jobs))  # name a job by what the sweep varies
            print(f"[sweep] skipping {len(skipped)} of {len(jobs)} jobs (a backbone that cannot run the strategy):\n"
                  + "\n".join(f"  {' '.join(o for o in job if o not in shared) or ' '.join(job)}: {why}"
                               for job, why in skipped), file=sys.stderr)
        if bad:
            print("dinoloc: error: invalid jobs in this sweep (nothing was run):\n" + "\n".join(bad), file=sys.stderr)
            sys.exit(2)
        if len(skipped) == len(jobs):
            print("dinoloc: error: every job of this sweep is skipped; nothing to run", file=sys.stderr)
            sys.exit(2)
        if config.get("dry_run"):
            print(f"{len(jobs)} jobs (dry_run=true: nothing is run):")
            for i, (job, spec) in enumerate(zip(jobs, specs, strict=True), 1):
                what = "skipped (listed above)" if spec is None else describe_job(spec)
                print(f"  {i}. {' '.join(job)}\n     {what}")
            sys.exit(0)
        start(config.hydra.sweep.dir, jobs, [job for job, _ in skipped])

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _is_multirun(config):
            job_started(config.hydra.sweep.dir, int(config.hydra.job.num), list(config.hydra.overrides.task))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if _is_multirun(config):
            job_finished(config.hydra.sweep.dir, int(config.hydra.job.num))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        text, ok = summary(config.hydra.sweep.dir)
        print(text, file=sys.stderr)
        if not ok:
            sys.exit(1)


def _is_multirun(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN


# ----------------------------------------------------------------------------------------------------------
# dry_run=true: what each job would compute and reuse
# ----------------------------------------------------------------------------------------------------------
def describe_job(spec: Any) -> str:
    """One line per job (a ClassifySpec): its run folder and, for data, embeddings and classifier, `reuse` or
    what is computed.

    Reads only what is on disk (manifest, split, cache, result.json); builds, downloads and writes nothing.
    """
    from dinoloc.classify.stage import finished_result, run_dir, run_name
    from dinoloc.data.split import load_dataset

    ex = spec.extract
    parts = [f"{run_name(spec)} -> {run_dir(spec)}"]
    try:
        manifest, split = load_dataset(ex.data.out_dir)
    except DinolocError:
        return " ".join(parts + ["| data: build manifest + split | embeddings: compute | classifier: train"])
    parts.append(f"| data: reuse ({len(manifest)} images)")
    weights = str(ex.backbone.weights or "")
    if is_url(weights) and not cached_weights_path(weights, ex.weights_dir).exists() and not ex.backbone.weights_sha256:
        return " ".join(parts + ["| embeddings: download weights, compute | classifier: train"])
    key = key_of(ex, manifest)
    if lookup(ex.cache_dir, key) is not None:
        parts.append(f"| embeddings: reuse cache/{key}")
    else:
        n_chunks = finished_chunks(ex.cache_dir, key)
        resume = f" (resume after {n_chunks} finished chunks)" if n_chunks else ""
        parts.append(f"| embeddings: compute {len(manifest)} images{resume} -> cache/{key}")
    if finished_result(spec, manifest, split) is not None:
        parts.append("| classifier: reuse result.json (skip)")
    else:
        parts.append(f"| classifier: {head_module(spec.head).describe(spec.classifier, ex.data.split.n_folds)}")
    return " ".join(parts)
