"""scripts/gpu_check.py: the dry run (every section at toy size on the CPU) ends with a JSON of numeric figures,
so the one-shot GPU script cannot rot between the sessions that get a GPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
NUMERIC = {
    "vit": ["flops_per_image", "batch", "images_per_s_eager", "mfu_eager", "images_per_s_compiled", "mfu_compiled",
            "compile_s", "peak_mem_gib"],
    "extract": ["n_images", "workers", "batch", "model_only_ips", "e2e_ips", "ratio"],
    "pretrain": ["flops_per_image", "batch", "step_s", "images_per_s", "mfu", "peak_mem_gib", "loader_ips",
                 "projection_images", "projected_hours", "projected_hours_gpu_only"],
    "classify": ["train_rows_per_fold", "dim", "epochs", "ours_s", "baseline_s", "speedup", "f1_ours", "f1_baseline"],
    "demo": ["gpu_sweep_s", "cpu_sweep_s", "max_abs_delta_f1", "speedup"],
}


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# Its tests share one module-scoped run: keep them on one pytest-xdist worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("gpu_check")

@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--peak-tflops", "1", "--json-out", str(out / "gpu.json")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc, out, time.perf_counter() - t0


@pytest.mark.slow  # the script's --dry-run in a subprocess (~13 s for the three); CI: make test-slow
def test_dry_run_reports_every_section_with_numbers(dry_run):
    proc, out, _ = dry_run
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((out / "gpu.json").read_text()) == last
    assert last["dry_run"] is True and set(last["sections"]) == set(NUMERIC)
    for name, keys in NUMERIC.items():
        sec = last["sections"][name]
        assert "error" not in sec and "timed_out" not in sec, (name, sec)
        bad = {k: sec.get(k) for k in keys if not _number(sec.get(k))}
        assert not bad, f"{name}: not numbers: {bad}"


@pytest.mark.slow  # the script's --dry-run in a subprocess (~13 s for the three); CI: make test-slow
def test_dry_run_figures_hang_together(dry_run):
    sec = json.loads(dry_run[0].stdout.strip().splitlines()[-1])["sections"]
    vit, ext, pre, clf = sec["vit"], sec["extract"], sec["pretrain"], sec["classify"]
    # MFU = FLOPs/image x images/s / peak (1 TFLOP/s given on the command line)
    assert vit["mfu_eager"] == pytest.approx(vit["flops_per_image"] * vit["images_per_s_eager"] / 1e12, rel=1e-2)
    assert pre["mfu"] == pytest.approx(pre["flops_per_image"] * pre["images_per_s"] / 1e12, rel=1e-2)
    # a ViT forward is at least 2 x parameters x tokens FLOPs; the training step (student fwd + bwd) far more
    assert vit["flops_per_image"] > 2 * 20_000 * 17 and pre["flops_per_image"] > 3 * vit["flops_per_image"]
    # the batch reported is the fastest one of the search
    assert vit["images_per_s_eager"] == max(r["images_per_s"] for r in vit["eager_by_batch"].values())
    assert vit["eager_by_batch"][str(vit["batch"])]["images_per_s"] == vit["images_per_s_eager"]
    assert ext["ratio"] == pytest.approx(ext["e2e_ips"] / ext["model_only_ips"], rel=2e-2, abs=1e-3)
    assert ext["n_images"] >= 1 and ext["workers"] >= 1
    # pretraining reports the largest batch that ran, and projects the paper's 300 epochs over 90% of 6,301 images
    assert pre["batch"] == max(int(b) for b in pre["by_batch"])
    assert pre["projection_images"] == 5671 and pre["projection_epochs"] == 300
    hours = 300 * (5671 // pre["batch"]) * pre["step_s"] / 3600
    assert pre["projected_hours_gpu_only"] == pytest.approx(hours, rel=1e-2)
    assert pre["projected_hours"] >= pre["projected_hours_gpu_only"]
    assert clf["speedup"] == pytest.approx(clf["baseline_s"] / clf["ours_s"], rel=5e-2)
    assert clf["baseline_folds_run"] == 5 and 0 <= clf["f1_ours"] <= 1
    assert set(sec["demo"]["rows"]) and sec["demo"]["within_noise"] is True  # CPU vs CPU in the dry run


@pytest.mark.slow  # the script's --dry-run in a subprocess (~13 s for the three); CI: make test-slow
def test_dry_run_writes_the_readme_table(dry_run):
    proc, out, _ = dry_run
    md = (out / "gpu.md").read_text()
    assert "| figure | measured | goal |" in md and "MFU" in md and "DataLoader loop" in md
    assert md.strip() in proc.stdout


def test_peak_table_matches_device_names():
    gc = _load_script()
    assert gc.peak_tflops_for("NVIDIA H200") == 989.0
    assert gc.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert gc.peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert gc.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert gc.peak_tflops_for("NVIDIA A10") == 125.0
    assert gc.peak_tflops_for("NVIDIA A10G") is None  # not the A10: ask for --peak-tflops rather than guess
    assert gc.peak_tflops_for("Tesla V100-SXM2-32GB") == 125.0


def test_a_section_out_of_time_or_failing_keeps_its_figures():
    gc = _load_script()
    run = gc.Run(sizes=gc.DRY, device=gc.torch.device("cpu"), work=ROOT, peak_tflops=None, compile_backend="eager",
                 local_crops=10, workers=1)

    def slow(run, out, budget):
        out["first"] = 1.0
        while True:  # never ends by itself: the hard deadline has to stop it
            time.sleep(0.01)

    with gc.hard_deadline(0.2), pytest.raises(gc.SectionTimeout):
        slow(run, {}, gc.Budget(0.1))

    def runs_out(run, out, budget):
        out["first"] = 1.0
        raise gc.SectionTimeout

    def fails(run, out, budget):
        out["first"] = 2.0
        raise RuntimeError("boom")

    timed = gc.run_section("x", runs_out, run, 60)
    assert timed["first"] == 1.0 and timed["timed_out"] is True
    failed = gc.run_section("y", fails, run, 60)
    assert failed["first"] == 2.0 and "boom" in failed["error"]
    assert gc.signal.getitimer(gc.signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left behind


def test_unknown_section_is_refused():
    gc = _load_script()
    with pytest.raises(SystemExit) as e:
        gc.main(["--dry-run", "--sections", "vit,bogus"])
    assert e.value.code == 2
