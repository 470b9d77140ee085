"""`make demo`: the whole study on the embedded SYNTHETIC default, from nothing to Table III and figures.

Each step is the command a user would type, run in turn, so the demo doubles as a worked example:

    dinoloc-synth                                          generated OpenCell-like, HPA-like, natural-like data
    dinoloc-data                                           manifest + leakage-free split
    dinoloc-pretrain backbone=<x>_demo pretrain=<x>_demo   three tiny stand-in backbones (DINO from scratch)
    dinoloc-run -m experiment=demo                         the five Table III rows (extract + 5-fold CV)
    dinoloc-report experiment=demo                         table3.csv/.md, figure1.png, figure2.png

Extra arguments are Hydra overrides passed to every Hydra step, e.g. `python -m dinoloc.demo paths.output_dir=/tmp/x`.
Nothing is downloaded. A rerun reuses every finished step (data, checkpoints, cache, runs).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _command(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed; run `make demo` (it installs the package into .venv)")
    return [found]


def _output_dir(overrides: list[str]) -> Path:
    for o in overrides:
        if o.startswith("paths.output_dir="):
            return Path(o.split("=", 1)[1])
    return Path("outputs")


def _children_cpu() -> float:
    """user + sys seconds of every finished child process so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        return None


def main(argv: list[str] | None = None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    out = _output_dir(overrides)
    steps = [
        ("synthetic data", _command("dinoloc-synth") + ["--out", str(out / "synthetic")]),
        ("manifest + split", _command("dinoloc-data") + overrides),
        ("pretrain ImageNet-like stand-in", _command("dinoloc-pretrain")
         + ["backbone=imagenet_demo", "pretrain=imagenet_demo", *overrides]),
        ("pretrain HPA-like stand-in", _command("dinoloc-pretrain")
         + ["backbone=hpa_demo", "pretrain=hpa_demo", *overrides]),
        ("pretrain OpenCell stand-in", _command("dinoloc-pretrain")
         + ["backbone=opencell_demo", "pretrain=demo", *overrides]),
        ("Table III sweep (extract + 5-fold CV)", _command("dinoloc-run") + ["-m", "experiment=demo", *overrides]),
        ("report", _command("dinoloc-report") + ["experiment=demo", *overrides]),
    ]
    print("dinoloc demo: the whole study on SYNTHETIC data with tiny stand-in backbones (not the paper's data)\n")
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    load_start = _load()
    t_start = time.perf_counter()
    for i, (title, cmd) in enumerate(steps, 1):
        print(f"==> [{i}/{len(steps)}] {title}: {' '.join(Path(cmd[0]).name if j == 0 else c for j, c in enumerate(cmd))}",
              flush=True)
        t0, c0 = time.perf_counter(), _children_cpu()
        env = None
        if title.startswith("Table III sweep") and "OMP_NUM_THREADS" not in os.environ:
            # The sweep runs rows in parallel processes (hydra launcher n_jobs): one torch thread each, or the
            # 2 cores are oversubscribed. Measured on the shared machine: the sweep in 246 s one-threaded vs
            # 1,219 s with two threads per process (docs/demo.md).
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
        rc = subprocess.call(cmd, env=env)
        timings[title] = round(time.perf_counter() - t0, 1)
        cpu[title] = round(_children_cpu() - c0, 1)
        if rc != 0:
            raise SystemExit(f"demo step '{title}' failed with exit code {rc}")
        print(f"    done in {timings[title]:.1f} s (CPU {cpu[title]:.1f} s)\n", flush=True)
    total = round(time.perf_counter() - t_start, 1)
    report_dir = out / "reports" / "demo"
    report_dir.mkdir(parents=True, exist_ok=True)
    # CPU time (user + sys of each step's processes) beside wall time: on a shared machine the wall time
    # says how busy the machine was as much as how long the demo takes; the load average says how busy.
    record = {"total_s": total, "steps_s": timings, "total_cpu_s": round(sum(cpu.values()), 1), "steps_cpu_s": cpu,
              "cpu_count": os.cpu_count(), "loadavg_1min_start": load_start, "loadavg_1min_end": _load()}
    tmp = report_dir / ".timings.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, report_dir / "timings.json")
    print("Stage times (s): " + ", ".join(f"{k}: {v}" for k, v in timings.items()))
    print(f"CPU time (s): {record['total_cpu_s']} in all; load average {load_start} at start, {record['loadavg_1min_end']} "
          f"at end ({record['cpu_count']} CPUs)")
    print("What this shows: the whole comparison runs from nothing to Table III on SYNTHETIC data, and its table says "
          "whether each tiny stand-in beats the same ViT with random weights (the floor) and 'predict every class "
          "positive' (table3.md). What it does not show: the paper's numbers, backbones or data; and on the shipped "
          "settings the OpenCell stand-in's lead over the floor was not significant when last measured (docs/demo.md).")
    print(f"dinoloc demo finished in {total:.0f} s. Figures (PNG + PDF): {report_dir / 'figure1.png'}, "
          f"{report_dir / 'figure2.png'}, {report_dir / 'per_class_f1.png'}")


if __name__ == "__main__":
    main()
