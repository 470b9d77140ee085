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


# ----------------------------------------------------------------------------------------------------------
# the cheap commands run as written, on small files in each layout's real format at the README's paths
# ----------------------------------------------------------------------------------------------------------
def _write_layouts(tmp: Path) -> dict[str, Path]:
    """The README's example roots (/data/<name>) as tiny real-format datasets under tmp."""
    from conftest import make_opencell_tree
    from test_folder_data import write_folder_dataset
    from test_layouts import write_hpa, write_loaddata

    roots = {name: tmp / name for name in ("opencell", "imgs", "cp", "hpa")}
    make_opencell_tree(roots["opencell"], n_targets=40)
    write_folder_dataset(roots["imgs"], unlabelled_groups=0)
    csv = write_loaddata(roots["cp"], n_plates=12, sites=4)  # groups are plates: 5 folds + a test share
    import pandas as pd

    df = pd.read_csv(csv)  # the README's example column names (Metadata_moa), labelled sites only
    df[df.Metadata_label.notna()].rename(columns={"Metadata_label": "Metadata_moa"}).to_csv(csv, index=False)
    write_hpa(roots["hpa"])
    return roots


def _as_written(argv: list[str], roots: dict[str, Path], out: Path) -> list[str]:
    """argv with /data/<name> pointing at the written datasets and outputs under `out`."""
    def at(a: str) -> str:
        for name, root in roots.items():
            a = re.sub(rf"/data/{name}(?=/|$|\b)", str(root), a)
        return a
    return [at(a) for a in argv] + [f"paths.output_dir={out}"]


def _console(fn, argv: list[str], monkeypatch) -> int:
    import sys

    monkeypatch.setattr(sys, "argv", [fn.__name__, *argv])
    try:
        fn()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def test_cheap_readme_commands_run(tmp_path, monkeypatch, capsys):
    """Every `dinoloc-data` command of the README runs on its layout's fixture, and each multi-job `dinoloc-run`
    lists its jobs (dry_run=true) after it: the README's keys, layouts and sweeps work, not only compose."""
    from dinoloc import cli

    roots = _write_layouts(tmp_path)
    commands = shell_commands(README.read_text(encoding="utf-8"))
    data_cmds = [c for c in commands if c[0] == "dinoloc-data"]
    assert {a.split("=", 1)[1] for c in data_cmds for a in c if a.startswith("data=")} >= {
        "opencell", "folder", "loaddata", "hpa_kaggle"}
    for argv in data_cmds:
        out = tmp_path / "out" / next(a.split("=", 1)[1] for a in argv if a.startswith("data="))
        code = _console(cli.data_main, _as_written(argv[1:], roots, out), monkeypatch)
        assert code == 0, (argv, capsys.readouterr().err)
        assert (out / "data").is_dir() or any(out.rglob("split.csv")), argv
    runs = [c for c in commands if c[0] == "dinoloc-run" and "data=folder" in c]
    assert runs
    weights = tmp_path / "weights"  # the README's step: HPA's checkpoint downloaded into weights/ (a dry run
    weights.mkdir()                 # lists jobs without loading it)
    (weights / "DINO_FOV_checkpoint.pth").write_bytes(b"")
    for argv in runs:
        out = tmp_path / "out" / "folder"
        capsys.readouterr()
        code = _console(cli.run_main, _as_written(argv[1:], roots, out)
                        + [f"paths.weights_dir={weights}", "dry_run=true"], monkeypatch)
        captured = capsys.readouterr()
        listing = captured.out
        assert code == 0, (argv, captured.err)
        n_jobs = 1
        for a in argv:
            if "," in a.partition("=")[2] and not a.partition("=")[2].startswith(("[", "{")):
                n_jobs *= len(a.partition("=")[2].split(","))
        assert f"{n_jobs} jobs (dry_run=true: nothing is run)" in listing, listing
