"""Bad configs: refused before any heavy work, the offending key named, nothing written.

In-process through the config edge and the stage checks (what every command runs before its work); one case per
command goes through the real console script for the exit code and the single `dinoloc: error:` line.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dinoloc.config import checked_spec, compose, pretrain_spec
from dinoloc.console import error_line

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
PRETRAIN_CASES = [
    (["pretrain.epochs=0"], "pretrain.epochs"),
    (["pretrain.lr=-1"], "pretrain.lr"),
    (["data=opencell", "data.root=/does/not/exist", "backbone=opencell"], "data.root"),
]


def _refusal(check) -> str:
    """The one line the console prints for the error `check()` raises (None would mean a traceback)."""
    with pytest.raises(Exception) as exc:  # noqa: PT011 - Hydra, OmegaConf or DinolocError: error_line maps each
        check()
    line = error_line(exc.value)
    assert line is not None, f"{type(exc.value).__name__} would print a traceback: {exc.value}"
    return line


def _written(out: Path) -> list[str]:
    made = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] if out.exists() else []
    return [p for p in made if not p.startswith("hydra/")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_refused_before_work(tmp_path, case):
    overrides, key = CASES[case]
    out = tmp_path / "out"
    line = _refusal(lambda: checked_spec(compose([f"paths.output_dir={out}", *overrides])))
    assert key in line
    assert not _written(out)  # refused before the data stage: no images, manifest, cache or run folder


@pytest.mark.parametrize(("overrides", "key"), PRETRAIN_CASES)
def test_bad_pretrain_config_refused_before_work(tmp_path, overrides, key):
    out = tmp_path / "out"

    def check():
        cfg = compose([f"paths.output_dir={out}", "backbone=opencell_demo", *overrides])
        pretrain_spec(cfg)  # what dinoloc-pretrain checks before any work (recipe, source, data root)

    assert key in _refusal(check)
    assert not _written(out)


@pytest.mark.parametrize(("command", "overrides", "key"), [
    ("dinoloc-run", CASES["zero_epochs"][0], "classifier.epochs"),
    ("dinoloc-run", CASES["unknown_backbone"][0], "backbone"),
    ("dinoloc-pretrain", ["backbone=opencell_demo", *PRETRAIN_CASES[0][0]], "pretrain.epochs"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, command, overrides, key):
    out = tmp_path / "out"
    res = subprocess.run([str(BIN / command), f"paths.output_dir={out}", *overrides], cwd=tmp_path,
                         env=os.environ | {"PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("dinoloc: error:")]
    assert len(errors) == 1 and key in errors[0] and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not _written(out)
