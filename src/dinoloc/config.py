"""The config edge: the composed Hydra config -> the stages' typed specs, and the checks that refuse a bad
config before any heavy work (naming the key). Only this module, `cli` and `sweep` read DictConfigs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

import dinoloc.schema  # noqa: F401  (registers the config groups' schemas before Hydra composes)
from dinoloc import CONFIG_DIR
from dinoloc.backbones.spec import BackboneSpec
from dinoloc.classify.params import head_name, params_from_config
from dinoloc.classify.spec import ClassifySpec
from dinoloc.data.prepare import DataSpec, check_root
from dinoloc.extract.stage import ExtractSpec, check
from dinoloc.io import DinolocError
from dinoloc.pretrain.params import DATA_KEYS, PretrainParams, missing_key
from dinoloc.report.spec import ReportSpec
from dinoloc.rules import typed
from dinoloc.sweep import expected_runs


def plain(node: DictConfig, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    d = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in d.items() if k not in drop}


def given(node: DictConfig) -> dict[str, Any]:
    """The node's keys that have a value: a key its YAML forgot stays `???` under a schema and is left out, so the
    stage's own check names it as missing."""
    return {k: v for k, v in plain(node).items() if not OmegaConf.is_missing(node, k)}


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed config for `overrides` outside a Hydra app (scripts and tests)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


# ----------------------------------------------------------------------------------------------------------
# config -> specs
# ----------------------------------------------------------------------------------------------------------
def values(node: DictConfig) -> dict[str, Any]:
    """The node's values, resolved. One of its own keys left `???` raises MissingMandatoryValue naming it
    (dinoloc.console: one line with an example, e.g. data.root); one in a block below (data.generator) is left
    out, so the spec's own check names it as missing."""
    for k in node:
        if OmegaConf.is_missing(node, k):
            node[k]  # raises, naming the key
    return _known(node)


def _known(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return {k: _known(node[k]) for k in node if not OmegaConf.is_missing(node, k)}
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, ListConfig) else node


def data_spec(cfg: DictConfig) -> DataSpec:
    """The `data` node as a DataSpec (each key's rule in dinoloc.data.prepare), with where its outputs go."""
    d = cfg.data
    if "channels" in d and OmegaConf.is_missing(d, "channels"):
        raise DinolocError(f"data={d.name} needs data.channels: the images' channel names in file order, e.g. "
                           "'data.channels=[DNA,actin,protein]'")
    synthetic = bool(d.synthetic)
    return typed(DataSpec, {
        **values(d), "out_dir": str(cfg.paths.data_dir),
        # only the synthetic data is generated (debug=tiny's generator sizes stay unread under data=folder)
        **({} if synthetic else {"generator": None}),
        "synthetic_dir": str(cfg.paths.synthetic_dir) if synthetic else None,
        "display_percentiles": tuple(cfg.report.display_percentiles) if synthetic else (),
    }, where=f"configs/data/{d.name}.yaml")


def backbone_spec(bb: DictConfig | dict[str, Any]) -> BackboneSpec:
    """The `backbone` node (or its values after a family's `configure` hook) as a BackboneSpec (each key's rule in
    dinoloc.backbones.spec)."""
    node = values(bb) if isinstance(bb, DictConfig) else dict(bb)
    return typed(BackboneSpec, {**node, "weights_default": _weights_are_default()},
                 where=f"configs/backbone/{node.get('name')}.yaml")


def configured_backbone(cfg: DictConfig, data: DataSpec) -> dict[str, Any] | DictConfig:
    """cfg.backbone after its family's `configure` hook saw the data's channels (SubCell picks its variant)."""
    from dinoloc.backbones.families import configure, load_family

    family = cfg.backbone.get("family")
    if not family or not callable(getattr(load_family(str(family)), "configure", None)):
        return cfg.backbone
    from dinoloc.data.folder import data_channel_names

    return configure(str(family), values(cfg.backbone), data_channel_names(data, data.channel_roles))


def extract_spec(cfg: DictConfig) -> ExtractSpec:
    ex, strategy = cfg.extract, str(cfg.strategy.name)
    data = data_spec(cfg)
    return ExtractSpec(
        data=data, backbone=backbone_spec(configured_backbone(cfg, data)), strategy=strategy,
        cache_dir=str(cfg.paths.cache_dir), weights_dir=str(cfg.paths.weights_dir), device=str(cfg.device),
        allow_random_weights=bool(cfg.allow_random_weights),
        empty_channels=str(cfg.strategy.empty_channels),
        batch_size=int(ex.batch_size), num_workers=int(ex.num_workers), chunk_size=int(ex.chunk_size),
        amp=bool(ex.amp),
    )


def classify_spec(cfg: DictConfig) -> ClassifySpec:
    classifier = given(cfg.classifier)
    return ClassifySpec(extract=extract_spec(cfg), head=head_name(classifier), classifier=params_from_config(classifier),
                        runs_dir=str(cfg.paths.runs_dir), experiment=str(cfg.experiment_name),
                        variant=str(cfg.get("variant") or "baseline"), force=bool(cfg.force))


def report_spec(cfg: DictConfig) -> ReportSpec:
    rep = cfg.report
    return ReportSpec(
        runs_dir=Path(cfg.paths.runs_dir), reports_dir=Path(cfg.paths.reports_dir), n_boot=int(rep.n_boot),
        seed=int(rep.seed), level=float(rep.level), method=str(rep.ci_method),
        figure2_colors=str(cfg.figure2_colors), embedding_maps=str(rep.embedding_maps),
        max_points=int(rep.max_points), display_percentiles=tuple(rep.display_percentiles), expected=expected_rows(cfg),
    )


def expected_rows(cfg: DictConfig) -> tuple[str, ...]:
    """The run names the report expects: `expected_rows` when given, else the ones the preset's sweep makes."""
    if cfg.get("expected_rows"):
        return tuple(cfg.expected_rows)
    hydra_node = cfg.hydra if "hydra" in cfg else HydraConfig.get() if HydraConfig.initialized() else None
    return () if hydra_node is None else expected_runs(hydra_node)


def pretrain_spec(cfg: DictConfig):
    """cfg.pretrain + cfg.backbone -> the pretraining stage's PretrainSpec. Every recipe key is checked here
    (missing, unknown, bad value: DinolocError naming pretrain.<key>), before any data is read."""
    from dinoloc.pretrain.stage import PretrainSpec

    bb, pt = backbone_spec(cfg.backbone), cfg.pretrain
    pp = bb.preprocess
    if not bb.weights:
        raise DinolocError(f"backbone={bb.name} names no weights path for the checkpoint to write")
    # which YAML the recipe came from, for the messages: the config's own hydra node when composed with one (the
    # HydraConfig singleton may still hold an earlier app's run in the same process), else the running app's
    choice = OmegaConf.select(cfg, "hydra.runtime.choices.pretrain")
    if choice is None and HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("pretrain")
    origin = f"configs/pretrain/{choice or '<name>'}.yaml"
    given = {k: v for k, v in plain(pt).items() if not OmegaConf.is_missing(pt, k)}  # `???`: absent
    params = typed(PretrainParams, given, where=origin)
    for key in DATA_KEYS:
        if key not in given:
            raise missing_key(key, origin)
    root = OmegaConf.select(cfg, "data.root", throw_on_missing=False)
    spec = PretrainSpec(
        params=params, backbone=bb.name, arch=bb.arch, model_kwargs=dict(bb.model_kwargs), in_chans=bb.in_chans,
        channels=bb.channels, intensity=pp.intensity, mean=pp.mean, std=pp.std,
        source=str(given["source"]), image_dir=None if given["image_dir"] is None else str(given["image_dir"]),
        data_root=None if root is None or OmegaConf.is_missing(cfg.data, "root") else str(root),
        out_dir=str(Path(bb.weights).parent), device=str(cfg.device),
        synthetic=bool(cfg.data.synthetic or bb.synthetic),
        data=data_spec(cfg) if given["source"] == "opencell" or cfg.data.synthetic else None,
    )
    check_root(spec.data if spec.data is not None else data_spec(cfg))
    return spec


def _weights_are_default() -> bool:
    """False when backbone.weights was overridden on the command line (the user's own weights)."""
    if not HydraConfig.initialized():  # composed outside a Hydra app (scripts, tests)
        return True
    overrides = list(HydraConfig.get().overrides.task)
    return not any(o.lstrip("+~").split("=")[0] == "backbone.weights" for o in overrides)


# ----------------------------------------------------------------------------------------------------------
# the whole run's check, before any heavy work
# ----------------------------------------------------------------------------------------------------------
def checked_spec(cfg: DictConfig) -> ClassifySpec:
    """dinoloc-run's spec, built once (each value checked on the way) and checked as a whole
    (`dinoloc.extract.stage.check`); the constant head's params keep only its own keys, so a probe sweep's three
    trivial jobs are one run."""
    spec = classify_spec(cfg)
    check(spec.extract)
    return spec
