"""The config tree composes for every choice, presets select the right rows, bad configs are refused early."""

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dinoloc import CONFIG_DIR
from dinoloc.config import checked_spec, expected_rows
from dinoloc.io import DinolocError
from dinoloc.rules import typed
from dinoloc.sweep import expected_runs

CONFIG_PATH = str(CONFIG_DIR)

GROUPS = Path(CONFIG_PATH)


def _compose(*overrides, hydra=False):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("backbone", sorted(p.stem for p in (GROUPS / "backbone").glob("*.yaml")))
def test_every_backbone_composes_with_consistent_channels(backbone):
    cfg = _compose(f"backbone={backbone}", "data.root=/nonexistent")
    bb = cfg.backbone
    assert len(bb.channels) == bb.in_chans
    assert set(bb.channel_map.values()) <= set(bb.channels)
    assert bb.preprocess.spatial in {"resize", "tile", "center_crop", "full"}


@pytest.mark.parametrize(
    ("row", "backbone", "strategy"),
    [("imagenet_mapping", "imagenet", "mapping"), ("hpa_replication", "hpa", "replication"),
     ("opencell_native", "opencell", "native"), ("hpa_demo_mapping", "hpa_demo", "mapping")],
)
def test_rows_select_backbone_and_strategy(row, backbone, strategy):
    cfg = _compose(f"row={row}")
    assert (cfg.backbone.name, cfg.strategy.name) == (backbone, strategy)


def test_table3_preset_sweeps_the_papers_five_rows_and_the_references():
    cfg = _compose("experiment=table3", "data.root=/x", hydra=True)
    rows = cfg.hydra.sweeper.params.row.split(",")
    assert len(rows) == 8 and cfg.data.name == "opencell" and cfg.experiment_name == "table3"
    assert rows[5:] == ["random_mapping", "classical_native", "trivial"]  # floor, classical, trivial
    floor = _compose("experiment=table3", f"row={rows[5]}", "data.root=/x")
    imagenet = _compose("experiment=table3", f"row={rows[0]}", "data.root=/x")
    assert floor.allow_random_weights and not floor.backbone.weights
    assert floor.backbone.arch == imagenet.backbone.arch and floor.strategy.name == imagenet.strategy.name
    pairs = []
    for r in rows:
        c = _compose("experiment=table3", f"row={r}", "data.root=/x")
        head = "" if c.classifier.name == "mlp" else f"__{c.classifier.name}"
        pairs.append(f"{c.backbone.name}__{c.strategy.name}{head}")
    assert pairs == list(expected_runs(cfg.hydra)) == list(expected_rows(cfg))  # the report's, from the sweep
    assert pairs[-2:] == ["classical__native", "classical__native__constant"]


def test_demo_rows_are_synthetic_standins():
    cfg = _compose("experiment=demo", hydra=True)
    for r in cfg.hydra.sweeper.params.row.split(","):
        c = _compose("experiment=demo", f"row={r}")
        # every network row is a synthetic stand-in; the classical features (and the trivial row on them) are
        # computed, not pretrained, and read the synthetic data
        assert c.data.synthetic and (c.backbone.synthetic or c.backbone.arch == "classical")


PAPER_CLASSIFIER = {"lr": 1e-4, "weight_decay": 0.04, "betas": [0.9, 0.999], "epochs": 300, "batch_size": 512,
                    "dropout": 0.5, "hidden": [512, 256], "scheduler": "cosine", "loss": "bce_with_logits"}


def _classifier_settings(path: Path) -> dict[str, object]:
    """The classifier keys a YAML file sets, wherever it sets them: top level of a classifier/ file, a nested
    `classifier:` block, or a dotted `classifier.<key>` (e.g. in an experiment or variant's overrides)."""
    node = yaml.safe_load(path.read_text()) or {}
    found: dict[str, object] = {}

    def walk(d, prefix):
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(d, list) and prefix.endswith("defaults"):
            for item in d:
                walk(item, prefix)
        else:
            parts = prefix.split(".")
            if "classifier" in parts[:-1] or parts[0].startswith("/classifier") or path.parent.name == "classifier":
                found[parts[-1]] = d

    walk(node, "")
    # string overrides inside sweeper params or override lists, e.g. "classifier.lr=2e-4"
    for k, v in re.findall(r"classifier\.(\w+)=([^,\s\]]+)", path.read_text()):
        found.setdefault(k, yaml.safe_load(v))
    return found


def test_paper_classifier_values_live_in_one_yaml():
    """Each paper value is set by exactly one file (classifier/mlp.yaml), has no default in code, and a YAML
    without it is refused by name."""
    import dataclasses

    from dinoloc.classify.params import ClassifierParams

    cfg = _compose()
    assert {k: OmegaConf.to_container(cfg.classifier)[k] for k in PAPER_CLASSIFIER} == PAPER_CLASSIFIER
    for key, value in PAPER_CLASSIFIER.items():
        setters = sorted(p.relative_to(GROUPS).as_posix() for p in GROUPS.rglob("*.yaml")
                         if _classifier_settings(p).get(key) == value)
        assert setters == ["classifier/mlp.yaml"], (key, setters)
    assert not [f.name for f in dataclasses.fields(ClassifierParams)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    full = OmegaConf.to_container(cfg.classifier)
    assert set(full) - {"name"} == {f.name for f in dataclasses.fields(ClassifierParams)}
    for key in full.keys() - {"name"}:
        with pytest.raises(DinolocError, match=f"classifier.{key}"):
            typed(ClassifierParams, {k: v for k, v in full.items() if k != key})


def test_the_paper_classifier_test_sees_a_second_setter(tmp_path):
    """The scan above finds a paper value repeated in another group's file (what the test exists to catch)."""
    (tmp_path / "experiment").mkdir()
    twin = tmp_path / "experiment" / "twin.yaml"
    twin.write_text("# @package _global_\nclassifier:\n  weight_decay: 0.04\n")
    assert _classifier_settings(twin) == {"weight_decay": 0.04}
    swept = tmp_path / "experiment" / "swept.yaml"
    swept.write_text("hydra:\n  sweeper:\n    params:\n      classifier.lr: 1e-4\nx: [classifier.epochs=300]\n")
    assert _classifier_settings(swept)["epochs"] == 300


def test_invalid_pair_refused_naming_the_key():
    with pytest.raises(DinolocError, match="native"):
        checked_spec(_compose("backbone=imagenet_demo", "strategy=native"))


def test_bad_classifier_values_refused_naming_the_key():
    with pytest.raises(DinolocError, match="classifier.epochs"):
        checked_spec(_compose("classifier.epochs=0"))
    with pytest.raises(DinolocError, match="classifier.lr"):
        checked_spec(_compose("classifier.lr=-1"))


def test_missing_data_root_refused():
    with pytest.raises(DinolocError, match="data.root"):
        checked_spec(_compose("data=opencell", "data.root=/does/not/exist"))


def test_random_weights_need_explicit_flag():
    with pytest.raises(DinolocError, match="allow_random_weights"):
        checked_spec(_compose("backbone.weights="))
    checked_spec(_compose("backbone.weights=", "allow_random_weights=true"))


def test_launchers_compose():
    slurm = _compose("hydra/launcher=slurm", hydra=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition and slurm.gpus_per_node == 1
    local = _compose("hydra/launcher=local", hydra=True).hydra.launcher
    assert local._target_.endswith("JoblibLauncher") and local.n_jobs == 2


def test_demo_preset_keeps_the_paper_classifier_except_its_listed_deviations():
    demo, paper = _compose("experiment=demo").classifier, _compose().classifier
    deviations = {"batch_size", "lr", "dropout", "weight_decay"}  # experiment/demo.yaml says why
    assert (paper.batch_size, paper.lr, paper.dropout, paper.weight_decay) == (512, 1.0e-4, 0.5, 0.04)
    assert all(demo[k] != paper[k] for k in deviations)
    assert {k: v for k, v in demo.items() if k not in deviations} == \
        {k: v for k, v in paper.items() if k not in deviations}


def test_demo_sweep_runs_two_rows_at_a_time_one_thread_each():
    from dinoloc.console import threads_per_job

    launcher = _compose("experiment=demo", hydra=True).hydra.launcher
    assert "joblib" in launcher._target_.lower() and launcher.n_jobs == 2
    assert threads_per_job(2, launcher.n_jobs) == 1  # what each job's torch gets on the 2-core machine
    assert "joblib" not in _compose(hydra=True).hydra.launcher._target_.lower()  # only the demo's sweep


def test_demo_has_the_floor_row():
    cfg = _compose("experiment=demo", hydra=True)
    rows = cfg.hydra.sweeper.params.row.split(",")
    assert rows[-3:] == ["classical_demo_native", "random_demo_mapping", "trivial_demo"]  # the longest row earlier
    floor = _compose("experiment=demo", f"row={rows[-2]}")
    assert floor.allow_random_weights and not floor.backbone.weights and floor.backbone.name == "random_demo"
    assert "random_demo__mapping" in expected_runs(cfg.hydra)


def test_probe_presets_expect_every_row_with_every_head_and_a_given_list_wins():
    rows = expected_runs(_compose("experiment=demo", hydra=True).hydra)
    probes = expected_runs(_compose("experiment=demo_probes", hydra=True).hydra)
    # the trivial row keeps its constant head under every classifier choice: its three jobs are one run
    assert probes == tuple(dict.fromkeys(r if r.endswith("__constant") else f"{r}{h}"
                                         for r in rows for h in ("", "__knn", "__linear")))
    assert rows[-1] == "classical_demo__native__constant" and probes.count(rows[-1]) == 1
    sens = expected_runs(_compose("experiment=demo_sensitivity", "row=hpa_demo_mapping", hydra=True).hydra)
    assert sens[0] == "hpa_demo__mapping" and "hpa_demo__mapping__crop600" in sens and len(sens) == 7
    assert expected_rows(_compose("experiment=demo", "expected_rows=[a__b]", hydra=True)) == ("a__b",)
    assert expected_runs(_compose("row=hpa_demo_mapping", hydra=True).hydra) == ()  # no sweep: nothing expected


@pytest.mark.parametrize("preset", ["table3_sensitivity", "demo_sensitivity"])
def test_sensitivity_presets_sweep_rows_by_variants_into_separate_folders(preset):
    from dinoloc.classify.stage import run_name
    from dinoloc.config import classify_spec

    cfg = _compose(f"experiment={preset}", "data.root=/x", hydra=True)
    variants = cfg.hydra.sweeper.params.variant.split(",")
    assert variants[:4] == ["baseline", "image_split", "crop600", "min_grade2"]
    # Dino4Cells' choices (issue 17) join the study; every listed variant is a file of the group.
    assert {"sampler_class_uniform", "empty_after_norm"} <= set(variants)
    assert ("lr_linear" if preset == "table3_sensitivity" else "lr2x_step") in variants
    assert all((GROUPS / "variant" / f"{v}.yaml").is_file() for v in variants)
    row = cfg.hydra.sweeper.params.row.split(",")[0]
    made = {v: _compose(f"experiment={preset}", f"row={row}", f"variant={v}", "data.root=/x") for v in variants}
    base = made["baseline"]
    assert run_name(classify_spec(base)) == f"{base.backbone.name}__{base.strategy.name}"
    assert run_name(classify_spec(made["crop600"])) == f"{base.backbone.name}__{base.strategy.name}__crop600"
    assert made["image_split"].data.split.group_by == "none" and base.data.split.group_by == "target"
    assert made["crop600"].backbone.preprocess.spatial == "center_crop"
    assert made["min_grade2"].data.labels.min_grade == 2
    # a variant with another manifest or split gets its own data folder; one with the same shares it
    assert len({made[v].paths.data_dir for v in ("baseline", "image_split", "min_grade2")}) == 3
    assert made["crop600"].paths.data_dir == base.paths.data_dir


def test_dry_run_names_the_folder_the_run_writes(tmp_path):
    """The sweep listing (dry_run=true) shows the same run folder as dinoloc-run: head and variant included."""
    from dinoloc.classify.stage import run_name
    from dinoloc.config import classify_spec
    from dinoloc.sweep import describe_job

    for extra, folder in (([], "imagenet_demo__mapping"), (["variant=crop600"], "imagenet_demo__mapping__crop600"),
                          (["classifier=knn"], "imagenet_demo__mapping__knn")):
        cfg = _compose("experiment=demo", "row=imagenet_demo_mapping", f"paths.output_dir={tmp_path}", *extra)
        assert run_name(classify_spec(cfg)) == folder
        assert describe_job(classify_spec(cfg)).startswith(f"{folder} -> "), describe_job(classify_spec(cfg))
