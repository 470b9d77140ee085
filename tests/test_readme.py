"""The README is a page a user acts on: short enough to read, and every dinoloc command in its shell blocks composes
as written (each config group, choice and key exists), with each swept value tried."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dinoloc.config import compose

README = Path(__file__).resolve().parents[1] / "README.md"
HYDRA_APPS = {"dinoloc-data", "dinoloc-pretrain", "dinoloc-extract", "dinoloc-run", "dinoloc-report"}


def shell_commands(text: str) -> list[list[str]]:
    """Every dinoloc command of the README's ```bash blocks, as argv lists (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            argv = shlex.split(line.replace("$(which dinoloc-pretrain)", "dinoloc-pretrain"))
            app = next((a for a in argv if a in HYDRA_APPS), None)
            if app is not None:
                commands.append(argv[argv.index(app):])
    return commands


def override_sets(args: list[str]) -> list[list[str]]:
    """The overrides of one command (no -m, no hydra.* / hydra/ launcher keys, which only Hydra's own app reads);
    a swept key (a=x,y) is tried one value at a time, the other keys at their first value."""
    plain, swept = [], {}
    for a in args:
        if a in ("-m", "--multirun") or a.startswith(("hydra.", "hydra/")):
            continue
        key, _, value = a.partition("=")
        if "," in value and not value.startswith(("[", "{", "'")):
            swept[key] = value.split(",")
        else:
            plain.append(a)
    first = [f"{k}={v[0]}" for k, v in swept.items()]
    sets = [plain + first]
    for k, values in swept.items():
        for v in values[1:]:
            sets.append(plain + [o for o in first if not o.startswith(f"{k}=")] + [f"{k}={v}"])
    return sets


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8")) <= 15000


def test_readme_lists_commands_for_each_stage():
    apps = {argv[0] for argv in shell_commands(README.read_text(encoding="utf-8"))}
    assert {"dinoloc-data", "dinoloc-pretrain", "dinoloc-run", "dinoloc-report"} <= apps


@pytest.mark.parametrize("argv", shell_commands(README.read_text(encoding="utf-8")), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_composes(argv):
    for overrides in override_sets(argv[1:]):
        cfg = compose(overrides)
        for o in overrides:  # each override reached the config as written
            key, _, value = o.partition("=")
            if "." not in key or key.startswith(("+", "~")):  # a group choice, or a key added/removed
                continue
            node = cfg
            for part in key.split("."):
                node = node[part]
            if not value.startswith(("[", "{")):
                assert str(node) == value or str(node) == value.strip("'"), (o, node)


def test_the_parser_sees_sweeps_and_skips_hydra_keys():
    sets = override_sets(["-m", "experiment=table3", "backbone=imagenet,hpa", "hydra/launcher=slurm",
                          "data.channels=[a,b]"])
    assert sets == [["experiment=table3", "data.channels=[a,b]", "backbone=imagenet"],
                    ["experiment=table3", "data.channels=[a,b]", "backbone=hpa"]]
