"""Bad configs through the real commands: refused before any heavy work, the offending key named, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

CASES = {
    "unknown_backbone": (["backbone=nope"], "backbone"),
    "unknown_strategy": (["strategy=nope"], "strategy"),
    "strategy_does_not_fit_backbone": (["backbone=imagenet_demo", "strategy=native"], "native"),
    "missing_data_root": (["data=opencell", "data.root=/does/not/exist"], "data.root"),
    "zero_epochs": (["classifier.epochs=0"], "classifier.epochs"),
    "negative_lr": (["classifier.lr=-0.1"], "classifier.lr"),
    "unknown_classifier_key": (["+classifier.momentum=0.9"], "classifier.momentum"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_refused_before_work(tmp_path, case):
    overrides, key = CASES[case]
    out = tmp_path / "out"
    res = subprocess.run([str(BIN / "dinoloc-run"), f"paths.output_dir={out}", *overrides], cwd=tmp_path,
                         env=os.environ | {"PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert key in res.stderr, res.stderr[-2000:]
    # Refused before the data stage: no synthetic images, manifest, cache or run folder exists.
    made = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not [p for p in made if not p.startswith("hydra/")], made


@pytest.mark.parametrize(("overrides", "key"), [
    (["pretrain.epochs=0"], "pretrain.epochs"),
    (["pretrain.lr=-1"], "pretrain.lr"),
    (["data=opencell", "data.root=/does/not/exist", "backbone=opencell"], "data.root"),
])
def test_bad_pretrain_config_refused_before_work(tmp_path, overrides, key):
    out = tmp_path / "out"
    res = subprocess.run([str(BIN / "dinoloc-pretrain"), f"paths.output_dir={out}", "backbone=opencell_demo",
                          *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and key in res.stderr, res.stderr[-2000:]
    made = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not [p for p in made if not p.startswith("hydra/")], made
