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


# ------------------------------------------------------------------------------------------- data and backbone
DATA_CHOICES = ["synthetic", "opencell", "folder", "loaddata", "hpa_kaggle"]
BACKBONE_CHOICES = sorted(p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml"))


@pytest.mark.parametrize(("overrides", "key", "group"), [
    (["data.splt.seed=1"], "data.splt", "data"),
    (["data.split.sed=1"], "data.split.sed", "data.split"),
    (["data.cell.crop=8"], "data.cell.crop", "data.cell"),
    (["data.labels.mingrade=2"], "data.labels.mingrade", "data.labels"),
    (["backbone.in_chan=3"], "backbone.in_chan", "backbone"),
    (["backbone.preprocess.imgsize=3"], "backbone.preprocess.imgsize", "backbone.preprocess"),
    (["backbone=subcell", "backbone.variantt=rbg"], "backbone.variantt", "backbone"),
])
def test_a_misspelt_data_or_backbone_key_is_refused_naming_it(overrides, key, group):
    line = _refused(*overrides)
    assert re.match(rf"{re.escape(key)} is not an? {re.escape(group)} setting \(on the command line\)", line), line


@pytest.mark.parametrize(("override", "key", "expected"), [
    ("data.split.n_folds=five", "data.split.n_folds", "Integer"),
    ("data.split.test_size=a_tenth", "data.split.test_size", "Float"),
    ("data.resplit=maybe", "data.resplit", "bool"),
    ("data.cell.crop_px=big", "data.cell.crop_px", "Integer"),
    ("data.labels.min_grade=high", "data.labels.min_grade", "Integer"),
    ("backbone.in_chans=three", "backbone.in_chans", "Integer"),
    ("backbone.preprocess.img_size=large", "backbone.preprocess.img_size", "Integer"),
    ("backbone.dino_epochs=many", "backbone.dino_epochs", "Integer"),
])
def test_a_data_or_backbone_value_of_the_wrong_type_is_refused_at_compose_naming_it(override, key, expected):
    line = _refused(override)
    assert line.startswith(f"{key}: Value ") and re.search(rf"(converted to|not a valid) {expected}", line), line


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.split.test_size=1.5"], "data.split.test_size=1.5: must be 0 < test_size < 1"),
    (["data.split.n_folds=1"], "data.split.n_folds=1: must be >= 2"),
    (["data.split.group_by=plate"], "data.split.group_by='plate': must be one of ['target', 'none']"),
    (["data.unit=nucleus"], "data.unit='nucleus': must be one of ['image', 'cell']"),
    (["data.cell.segmenter=otsu"], "data.cell.segmenter='otsu': must be one of ['skimage', 'cellpose']"),
    (["data.cell.crop_px=0"], "data.cell.crop_px=0: must be >= 1"),
    (["data.labels.min_grade=4"], "data.labels.min_grade=4: must be 1 <= min_grade <= 3"),
    (["backbone.in_chans=-1"], "backbone.in_chans=-1: must be >= 0"),
    (["backbone.preprocess.spatial=zoom"], "backbone.preprocess.spatial='zoom': must be one of"),
    (["backbone.preprocess.intensity=log"], "backbone.preprocess.intensity='log': must be one of"),
    (["backbone.preprocess.std=[1,0,1]"], "backbone.preprocess.std=(1.0, 0.0, 1.0): must be > 0"),
    (["data=opencell", "data.root=/x", "data.labels_column=moa"],
     "data.labels_column is not read by data.reader=opencell"),
    (["data=folder", "data.root=/x", "data.channels=[a,b]", "data.group_column=plate"],
     "data.group_column is not read by data.reader=folder"),
])
def test_a_data_or_backbone_value_outside_its_rule_is_refused_by_the_spec_naming_it(overrides, message):
    """Ranges and choices (which a Hydra schema cannot hold) are checked when the spec is built, from the same
    declaration, before any work; the console prints the one line."""
    from dinoloc.config import extract_spec

    with pytest.raises(DinolocError) as info:
        extract_spec(compose(overrides))
    assert error_line(info.value).startswith(message), error_line(info.value)


@pytest.mark.parametrize("choice", DATA_CHOICES)
def test_the_data_schema_is_data_specs_keys_and_every_data_yaml_composes_to_a_spec(choice):
    """One list of keys: the data schema's are DataSpec's (less what dinoloc.config adds from paths/report); a
    reader's YAML leaves none `???` but the ones the user must give, and the spec it builds is the YAML's."""
    from dinoloc.config import data_spec
    from dinoloc.data.prepare import YAML_KEYS, DataSpec
    from dinoloc.schema import SCHEMAS

    assert {f.name for f in dataclasses.fields(SCHEMAS["data"])} == set(YAML_KEYS)
    assert set(YAML_KEYS) == {f.name for f in dataclasses.fields(DataSpec)} - {"out_dir", "synthetic_dir",
                                                                                 "display_percentiles"}
    given = {"opencell": ["data.root=/x"], "folder": ["data.root=/x", "data.channels=[DNA,protein]"],
             "loaddata": ["data.root=/x", "data.labels_column=moa"], "hpa_kaggle": ["data.root=/x"]}.get(choice, [])
    cfg = compose([f"data={choice}", *given])
    assert set(cfg.data) == set(YAML_KEYS)
    spec = data_spec(cfg)
    assert spec.split.n_folds == cfg.data.split.n_folds and spec.cell.crop_px == cfg.data.cell.crop_px
    assert (spec.labels is not None) == (choice in ("synthetic", "opencell"))
    assert (spec.generator is not None) == (choice == "synthetic")


@pytest.mark.parametrize("choice", BACKBONE_CHOICES)
def test_every_backbone_yaml_names_the_schema_and_builds_a_spec(choice):
    """Every backbone YAML composes under the backbone schema (its keys: BackboneSpec's, plus hpa's channel-order
    switch and SubCell's variant) and builds a spec from the same fields."""
    from dinoloc.backbones.spec import YAML_KEYS
    from dinoloc.config import backbone_spec

    cfg = compose([f"backbone={choice}"])
    assert set(YAML_KEYS) <= set(cfg.backbone) <= set(YAML_KEYS) | {"channel_orders", "channel_order", "variant",
                                                                    "variants"}
    if choice != "timm":  # timm.yaml leaves arch and weights to the command line
        spec = backbone_spec(cfg.backbone)
        assert spec.preprocess.img_size == cfg.backbone.preprocess.img_size and spec.name == cfg.backbone.name


def test_a_refused_data_or_backbone_config_imports_no_torch():
    """Config checking stays light: a bad data or backbone value is refused before torch is imported."""
    code = ("import sys\nfrom dinoloc.cli import run_main\n"
            "for bad in ('data.split.test_size=1.5', 'backbone.preprocess.spatial=zoom', 'backbone.in_chan=3'):\n"
            "    sys.argv = ['dinoloc-run', bad, 'paths.output_dir=/nonexistent/x']\n"
            "    try:\n        run_main()\n    except SystemExit as e:\n        assert e.code == 2, e.code\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False", proc.stdout
    assert proc.stderr.count("dinoloc: error: ") == 3, proc.stderr
