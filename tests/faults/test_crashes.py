"""Crashes and concurrency: a real command SIGKILLed at a random moment, then the same work again.

Each killed stage must resume (redo at most one chunk / epoch), end with exactly the result of an uninterrupted
run, and never show a partial file under a final name; parallel jobs sharing the cache compute it once. The killed
run is the console script in its own process; the rerun and the uninterrupted reference go through the stage's
runner in-process (the resume logic lives there, and each saved process start is ~4 s of imports).
"""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dinoloc.classify.stage import run_classification
from dinoloc.config import classify_spec, compose, data_spec, extract_spec, pretrain_spec
from dinoloc.data.prepare import ensure_synthetic, run_data
from dinoloc.extract.stage import run_extraction
from dinoloc.pretrain.stage import run_pretrain

BIN = Path(sys.executable).parent
RNG = random.Random(20261125)  # "random moment", reproducibly
# Slow (subprocesses killed at random moments, ~45 s): CI runs them (`make test-slow`); the default suite has each
# resume in process (tests/test_extract.py, tests/test_pretrain.py, tests/test_cli.py).
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def _kill_when(cmd: list[str], cwd: Path, ready, max_delay: float, timeout: float = 300) -> None:
    """Start `cmd`, wait until `ready()` is true, sleep a random [0, max_delay) s, then SIGKILL the process group."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    t0 = time.monotonic()
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"{cmd} ended (rc {proc.returncode}) before the kill point:\n"
                                     f"{proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{cmd}: kill point not reached in {timeout} s")
            time.sleep(0.01)
        time.sleep(RNG.uniform(0, max_delay))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """One small synthetic dataset shared by every test (read-only for them), generated as `debug=tiny` does."""
    root = tmp_path_factory.mktemp("synth")
    ensure_synthetic(data_spec(compose(["debug=tiny", f"paths.synthetic_dir={root}"])))
    return root


def _common(synth: Path, out: Path) -> list[str]:
    return ["debug=tiny", f"paths.output_dir={out}", f"paths.synthetic_dir={synth}"]


def _no_partial_files(folder: Path) -> None:
    """Nothing under a final name is half-written: every .npy / .json / .csv parses completely."""
    for p in folder.rglob("*"):
        if p.suffix == ".npy":
            np.load(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".csv":
            pd.read_csv(p)


def test_extraction_sigkill_resumes_to_identical_embeddings(synth, tmp_path, capsys):
    # 224 px through the tiny ViT (784 tokens) in chunks of 4 (~19 chunks for debug=tiny's ~77 images) keeps the run
    # long enough after its first chunk (seconds, even with one thread per xdist worker) to be killed in the middle.
    chunk = 4
    extra = ["backbone=opencell_demo", "strategy=native", "backbone.preprocess.img_size=224",
             f"extract.chunk_size={chunk}", f"extract.batch_size={chunk}"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [str(BIN / "dinoloc-extract"), *_common(synth, killed), *extra]
    cache = killed / "cache"
    _kill_when(cmd, tmp_path, lambda: any(cache.glob("*/chunks/chunk_*.npy")), max_delay=0.5)

    entry = next(p for p in cache.iterdir() if p.is_dir())
    assert not (entry / "meta.json").exists(), "the run finished before it was killed"
    assert not (entry / "embeddings.npy").exists()
    _no_partial_files(entry)
    done = len(list((entry / "chunks").glob("chunk_*.npy")))
    assert done >= 1

    spec = extract_spec(compose([*_common(synth, killed), *extra]))  # the same command again: resume
    run_extraction(spec, run_data(spec.data)[0])
    resumed = capsys.readouterr().out
    assert f"{done * chunk} of" in resumed, resumed  # resumed after the saved chunks, redid none of them
    spec = extract_spec(compose([*_common(synth, clean), *extra]))  # the uninterrupted run
    reference = run_extraction(spec, run_data(spec.data)[0])
    assert reference.key == entry.name  # the same embeddings were asked for
    a = np.load(entry / "embeddings.npy")
    b = np.load(reference.path / "embeddings.npy")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # same numbers up to fp32 batch-composition noise
    assert not (entry / "chunks").exists()


# in-process resume: tests/test_pretrain.py::test_resume_equals_uninterrupted_run
def test_pretraining_sigkill_resumes_to_identical_weights(synth, tmp_path, capsys):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    EPOCHS = 6  # an epoch of the tiny data takes well under a second on an idle machine: room to be killed mid-run

    def overrides(out: Path) -> list[str]:
        return [*_common(synth, out), "backbone=opencell_demo", "pretrain=demo",
                f"backbone.weights={out / 'pretrain' / 'opencell_demo' / 'checkpoint.pth'}",  # where it writes
                f"pretrain.epochs={EPOCHS}", "pretrain.warmup_epochs=1"]

    ckpt = killed / "pretrain" / "opencell_demo" / "checkpoint.pth"
    _kill_when([str(BIN / "dinoloc-pretrain"), *overrides(killed)], tmp_path, ckpt.exists, max_delay=0.3)

    state = torch.load(ckpt, map_location="cpu", weights_only=False)  # a complete checkpoint, never a torn one
    assert 1 <= state["epoch"] < EPOCHS, "the run finished before it was killed"
    run_pretrain(pretrain_spec(compose(overrides(killed))))  # the same command again: resume
    assert f"at epoch {state['epoch']}/{EPOCHS}" in capsys.readouterr().out
    run_pretrain(pretrain_spec(compose(overrides(clean))))  # the uninterrupted run
    a = torch.load(ckpt, map_location="cpu", weights_only=False)
    b = torch.load(clean / "pretrain" / "opencell_demo" / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert a["epoch"] == b["epoch"] == EPOCHS
    for k in b["teacher"]:
        assert torch.equal(a["teacher"][k], b["teacher"][k]), k
    pd.testing.assert_frame_equal(
        pd.read_csv(ckpt.parent / "log.csv").drop(columns=["images_per_s", "seconds"]),
        pd.read_csv(clean / "pretrain" / "opencell_demo" / "log.csv").drop(columns=["images_per_s", "seconds"]),
    )


def test_sweep_killed_after_first_row_keeps_it_and_finishes_the_rest(synth, tmp_path, caplog):
    out = tmp_path / "out"
    cmd = [str(BIN / "dinoloc-run"), "-m", "row=imagenet_demo_mapping,hpa_demo_mapping", *_common(synth, out),
           "classifier.epochs=200", "experiment_name=k"]
    runs = out / "runs" / "k"
    first = runs / "imagenet_demo__mapping" / "result.json"
    _kill_when(cmd, tmp_path, first.exists, max_delay=0.5)
    assert not (runs / "hpa_demo__mapping" / "result.json").exists(), "the sweep finished before it was killed"
    _no_partial_files(runs)
    stamp = first.stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="dinoloc"):  # the same sweep again, row by row
        for row in ("imagenet_demo_mapping", "hpa_demo_mapping"):
            run_classification(classify_spec(compose([f"row={row}", *cmd[3:]])))
    assert first.stat().st_mtime_ns == stamp  # the finished row was kept, not redone
    assert "skipping" in caplog.text
    second = json.loads((runs / "hpa_demo__mapping" / "result.json").read_text())
    assert second["classifier"]["epochs"] == 200 and len(second["folds"]) == 5


# two processes, one key: tests/test_extract.py::test_two_processes_same_key_compute_once
def test_parallel_jobs_sharing_a_cache_compute_it_once(synth, tmp_path):
    out = tmp_path / "out"
    # Two jobs at once (joblib, 2 processes) need the same backbone x strategy embeddings.
    _run([str(BIN / "dinoloc-run"), "-m", "hydra/launcher=local", "experiment_name=a,b", *_common(synth, out),
          "backbone=opencell_demo", "strategy=native", "classifier.epochs=2"],
         tmp_path)
    entries = [p for p in (out / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 1
    results = [json.loads((out / "runs" / e / "opencell_demo__native" / "result.json").read_text()) for e in "ab"]
    assert sorted(r["cache_hit"] for r in results) == [False, True]  # one computed, the other waited and reused
    assert results[0]["cache_key"] == results[1]["cache_key"] == entries[0].name
    emb = np.load(entries[0] / "embeddings.npy")
    assert emb.shape[0] == len(pd.read_csv(entries[0] / "index.csv")) and np.isfinite(emb).all()
