"""One source per value: each schema'd config group (dinoloc.schema) has the keys of the dataclass that consumes
them, every YAML of the group sets every one, and a misspelt or removed key is refused when the config is
composed, in one line naming the key."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dinoloc import CONFIG_DIR
from dinoloc.config import compose
from dinoloc.console import error_line
from dinoloc.io import DinolocError

BIN = Path(sys.executable).parent
# group node -> the choices whose YAMLs name a schema (each composed on its own)
CHOICES = {"classifier": ["mlp", "linear", "knn"], "extract": ["default"], "strategy": ["mapping", "native", "replication"],
           "report": [None], "data.generator": [None]}


def _refused(*overrides: str) -> str:
    """The console's one line for a compose that must fail."""
    with pytest.raises(Exception) as info:
        compose(list(overrides))
    line = error_line(info.value)
    assert line is not None and "\n" not in line, (overrides, info.value)
    return line


@pytest.mark.parametrize(("overrides", "key", "group"), [
    (["classifier.lrr=1"], "classifier.lrr", "classifier"),
    (["classifier=knn", "classifier.kk=20"], "classifier.kk", "classifier"),
    (["extract.batchsize=2"], "extract.batchsize", "extract"),
    (["report.nboot=3"], "report.nboot", "report"),
    (["strategy.empty_channel=zero_after_norm"], "strategy.empty_channel", "strategy"),
    (["data.generator.ntargets=3"], "data.generator.ntargets", "data.generator"),
])
def test_a_misspelt_key_is_refused_naming_it(overrides, key, group):
    line = _refused(*overrides)
    assert re.match(rf"{re.escape(key)} is not an? {re.escape(group)} setting \(on the command line\)", line), line


@pytest.mark.parametrize(("overrides", "key", "where"), [
    (["~classifier.lr"], "classifier.lr", "configs/classifier/*.yaml"),
    (["classifier=knn", "~classifier.k"], "classifier.k", "configs/classifier/*.yaml"),
    (["~extract.batch_size"], "extract.batch_size", "configs/extract/*.yaml"),
    (["~report.n_boot"], "report.n_boot", "configs/config.yaml (report:)"),
    (["~strategy.empty_channels"], "strategy.empty_channels", "configs/strategy/*.yaml"),
    (["~data.generator.n_targets"], "data.generator.n_targets", "configs/data/synthetic.yaml (generator:)"),
])
def test_a_removed_key_is_refused_naming_it(overrides, key, where):
    line = _refused(*overrides)
    assert line.startswith(f"{key} cannot be removed (~{key}): ") and where in line, line


def test_a_misspelt_key_in_a_yaml_is_refused_naming_it_and_the_file(tmp_path):
    """A preset or variant that misspells a key no longer composes (before: the typo was only caught by the
    classifier's own check, and not at all for extract or report)."""
    (tmp_path / "variant").mkdir()
    for group, key in (("classifier", "lrr"), ("extract", "batchsize"), ("report", "nboot")):
        (tmp_path / "variant" / "typo.yaml").write_text(f"# @package _global_\nvariant: typo\n{group}:\n  {key}: 1\n")
        line = _refused("variant=typo", f"hydra.searchpath=[file://{tmp_path}]")
        assert line.startswith(f"{group}.{key} is not a") and "in 'variant/typo'" in line, line


@pytest.mark.parametrize("node", sorted(CHOICES))
def test_schema_keys_are_the_consumers_fields_and_every_yaml_sets_them(node):
    """One list of keys: the schema's are the consuming dataclass's; no YAML of the group leaves one `???`."""
    from dinoloc.classify.params import ClassifierParams, KNNParams
    from dinoloc.report.spec import ReportSpec
    from dinoloc.schema import SCHEMAS
    from dinoloc.synthetic.generate import GeneratorSpec

    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    expected = {
        "classifier": {"mlp": names(ClassifierParams) | {"name"}, "knn": names(ClassifierParams) | names(KNNParams) | {"name"}},
        "extract": {None: {"batch_size", "num_workers", "chunk_size", "amp"}},
        "strategy": {None: {"name", "empty_channels"}},
        "report": {None: (names(ReportSpec) - {"runs_dir", "reports_dir", "figure2_colors", "expected", "method"})
                   | {"ci_method"}},
        "data.generator": {None: names(GeneratorSpec)},
    }[node]
    schema = {"classifier": None, "extract": "extract", "strategy": "strategy", "report": "report",
              "data.generator": "generator"}[node]
    for choice in CHOICES[node]:
        cfg = compose([f"{node}={choice}"] if choice else [])
        values = OmegaConf.select(cfg, node)
        keys = expected.get("knn" if choice == "knn" else "mlp") if node == "classifier" else expected[None]
        assert set(values) == keys, (node, choice)
        assert {f.name for f in dataclasses.fields(SCHEMAS[schema or f"classifier/{'knn' if choice == 'knn' else 'mlp'}"])} == keys
        assert not [k for k in values if OmegaConf.is_missing(values, k)], (node, choice)


def test_presets_and_variants_that_set_schema_keys_compose_with_every_head():
    """Every variant and experiment that sets a classifier/extract/report/strategy key composes under each head
    (knn has its own schema) and its value arrives."""
    setters = [p for g in ("variant", "experiment") for p in sorted((CONFIG_DIR / g).glob("*.yaml"))
               if re.search(r"^(classifier|extract|report|strategy):", p.read_text(), re.M)]
    assert {p.stem for p in setters} >= {"lr_linear", "lr2x_step", "sampler_class_uniform", "empty_after_norm", "demo"}
    for path in setters:
        for head in ("mlp", "knn", "linear"):
            cfg = compose([f"{path.parent.name}={path.stem}", f"classifier={head}", "data.root=/x"])
            assert cfg.classifier.name == head
    assert compose(["variant=lr2x_step", "classifier=knn"]).classifier.lr == 2.0e-4
    assert compose(["variant=empty_after_norm", "strategy=replication"]).strategy.empty_channels == "zero_after_norm"


def test_a_key_a_yaml_forgets_is_named_by_the_stage():
    """A YAML that names the schema but forgets a key leaves it `???`; the stage's check names it."""
    from dinoloc.config import checked_spec, extract_spec

    with pytest.raises(DinolocError, match=r"classifier\.lr is missing from the classifier config"):
        checked_spec(compose(["classifier.lr=???"]))
    with pytest.raises(Exception) as info:
        extract_spec(compose(["extract.chunk_size=???"]))
    assert error_line(info.value).startswith("extract.chunk_size is not set")


def test_dinoloc_run_with_a_misspelt_classifier_key_exits_2_naming_it(tmp_path):
    """The process-level path: one line on stderr, exit 2, nothing written."""
    out = tmp_path / "out"
    res = subprocess.run([str(BIN / "dinoloc-run"), "classifier.lrr=1", f"paths.output_dir={out}"], cwd=tmp_path,
                         env=os.environ | {"PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [
        "dinoloc: error: classifier.lrr is not a classifier setting (on the command line); fix its spelling "
        "(the classifier keys: configs/classifier/*.yaml)"]
    assert not out.exists()
