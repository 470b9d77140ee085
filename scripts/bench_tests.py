"""The default test suite's wall time at two commits, side by side in one run on this machine.

    python scripts/bench_tests.py --base acd52dc [--head HEAD] [--repeat 1]

Each commit is checked out into its own git worktree and installed (editable, no dependencies) into its own
virtual environment whose dependencies come from the running interpreter's site-packages, so both suites use
the same torch, numpy and Hydra and only dinoloc differs. The suites run one after the other (never together:
two suites on two cores would time each other's load), each as `python -m pytest -q -p no:cacheprovider` with the
commit's own pytest settings. Prints each run's time, test count and the ratio head / base.
"""

from __future__ import annotations

import argparse
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def prepare(rev: str, work: Path) -> tuple[Path, Path]:
    """A worktree of `rev` and a venv with dinoloc from that worktree (editable) on top of our dependencies."""
    sha = _git("rev-parse", "--short", rev)
    tree, venv = work / f"tree_{sha}", work / f"venv_{sha}"
    _git("worktree", "add", "--detach", str(tree), sha)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "_bench_deps.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(tree)], check=True)
    return tree, py


def run_suite(tree: Path, py: Path, extra: tuple[str, ...] = ()) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra], cwd=tree,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    summary = next((ln for ln in reversed(proc.stdout.splitlines()) if re.search(r"\d+ (passed|failed)", ln)), "?")
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
    return seconds, summary.strip("= ")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the earlier commit (e.g. the previous landing)")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--repeat", type=int, default=1, help="alternate base/head this many times")
    ap.add_argument("--serial-head", action="store_true",
                    help="also time the head's suite with -n0 (one process, no pytest-xdist workers)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_tests_"))
    try:
        trees = {name: prepare(rev, work) for name, rev in (("base", args.base), ("head", args.head))}
        times: dict[str, list[float]] = {"base": [], "head": []}
        for i in range(args.repeat):
            for name in ("base", "head"):
                seconds, summary = run_suite(*trees[name])
                times[name].append(seconds)
                print(f"[{i + 1}/{args.repeat}] {name:4s} {_git('rev-parse', '--short', getattr(args, name))}: "
                      f"{seconds:7.1f} s  ({summary})", flush=True)
        base, head = min(times["base"]), min(times["head"])
        print(f"default suite: base {base:.1f} s, head {head:.1f} s, head/base = {head / base:.2f}")
        if args.serial_head:
            seconds, summary = run_suite(*trees["head"], ("-n0",))
            print(f"head with -n0 (serial): {seconds:.1f} s ({summary}), head -n0 / base = {seconds / base:.2f}")
    finally:
        for tree, _ in locals().get("trees", {}).values():
            _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
