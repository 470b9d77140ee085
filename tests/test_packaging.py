"""The package as a user installs it: a wheel built from this checkout carries every module and the config tree
(configs/ at the repository root, shipped as dinoloc.configs) and composes its config from another directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # builds a wheel and installs it (~10 s)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the venv's own setuptools, so the build needs no network
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, cwd=out, capture_output=True)
    (whl,) = out.glob("dinoloc-*.whl")
    return whl


def test_wheel_carries_every_module_and_the_config_tree_but_no_local_paths(wheel, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src").rglob("*.py")}
    assert modules - names == set(), "a package under src/ is missing from pyproject.toml [tool.setuptools] packages"
    yamls = {f"dinoloc/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")
             if p.parent.name != "local"}
    assert yamls and yamls - names == set()
    assert not [n for n in names if n.startswith("dinoloc/configs/local/") and n.endswith(".yaml")]


def test_installed_wheel_composes_its_config_from_another_directory(wheel, tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import dinoloc; from dinoloc.config import compose; "
            "cfg = compose(['backbone=hpa_demo', 'strategy=mapping']); "
            "print(dinoloc.CONFIG_DIR); print(cfg.backbone.name, cfg.strategy.name, cfg.classifier.lr)")
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy only, not this checkout's src/
    res = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    config_dir, composed = res.stdout.splitlines()
    assert Path(config_dir) == target / "dinoloc" / "configs"
    assert composed.split()[:2] == ["hpa_demo", "mapping"]
