"""Thin Hydra entry points, one per stage. They turn the composed config into plain arguments for the
library functions (data, extract, classify, pretrain, report) and do nothing else of substance."""

from __future__ import annotations

import functools
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from filelock import FileLock
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import dinoloc.schema  # noqa: F401  (registers the config groups' schemas before Hydra composes)
from dinoloc import CONFIG_DIR
from dinoloc.console import friendly, run_console
from dinoloc.device import rank_and_world, resolve_device, setup
from dinoloc.io import DinolocError

if TYPE_CHECKING:
    from dinoloc.pretrain import PretrainSpec

CONFIG_PATH = str(CONFIG_DIR)
log = logging.getLogger("dinoloc")


# ----------------------------------------------------------------------------------------------------------
# config -> plain arguments
# ----------------------------------------------------------------------------------------------------------
def validate(cfg: DictConfig, *, classifier: bool = False) -> None:
    """Refuse a bad config before any heavy work, naming the offending key."""
    from dinoloc.strategies import check_strategy

    bb = cfg.backbone
    if len(bb.channels) != bb.in_chans:
        raise DinolocError(
            f"backbone.channels has {len(bb.channels)} names but backbone.in_chans={bb.in_chans} (backbone={bb.name})"
        )
    src = source(cfg)  # a folder's channels by name (data.channel_roles); OpenCell's (protein, nucleus)
    check_strategy(cfg.strategy.name, list(bb.channels), src["channel_map"], src["source_channels"])
    if not bb.weights and not cfg.allow_random_weights:
        raise DinolocError(
            f"backbone={bb.name} has no weights (backbone.weights is empty); set backbone.weights=<path or URL> "
            "or allow_random_weights=true to embed with a randomly initialised model (marked in every output)"
        )
    if classifier:
        from dinoloc.probes import params_from_config

        params_from_config(_plain(cfg.classifier))
    validate_root(cfg)
    problem = missing_weights(cfg)
    if problem:
        raise DinolocError(problem)


def missing_weights(cfg: DictConfig) -> str | None:
    """A local weights file that does not exist, with the command (or download) that makes it; else None.
    URLs and timm names are fetched when the job starts, empty weights are the random baseline."""
    from dinoloc.backbones import TIMM_PREFIX, _is_url

    bb = cfg.backbone
    weights = str(bb.weights or "")
    if not weights or weights.startswith(TIMM_PREFIX) or _is_url(weights) or Path(weights).expanduser().is_file():
        return None
    how = str(bb.get("weights_from") or "point backbone.weights at the checkpoint file, a URL or timm:<name>")
    root = OmegaConf.select(cfg, "data.root", throw_on_missing=False)
    if root is not None and not cfg.data.synthetic:
        how = how.replace("data.root=…", f"data.root={root}")
    return f"backbone={bb.name}: weights file {weights} does not exist; to get it: {how}"


def validate_root(cfg: DictConfig) -> None:
    """The real data's root must exist (the synthetic default is generated on demand)."""
    if cfg.data.synthetic:
        expected = Path(str(cfg.paths.synthetic_dir)) / "opencell"
        if Path(str(cfg.data.root)).resolve() != expected.resolve():
            # Reading a user's real-format folder under the synthetic config would label it SYNTHETIC.
            raise DinolocError(
                f"data.root={cfg.data.root} is set but data=synthetic (the default) is selected; add data=opencell "
                f"to read your OpenCell-format folder, e.g. data=opencell data.root={cfg.data.root}"
            )
        return
    root = Path(str(cfg.data.root))
    if not root.is_dir() and _reader(cfg) == "folder":
        raise DinolocError(
            f"data.root={root} does not exist. Point it at your image folder (with labels.csv: image, group, labels)"
        )
    if not root.is_dir():
        raise DinolocError(
            f"data.root={root} does not exist. Point it at the OpenCell download (per-target folders of "
            "OC-FOV_*_proj.tif), e.g. data.root=/data/opencell, or use data=synthetic for the demo."
        )


def _reader(cfg: DictConfig) -> str:
    reader = str(cfg.data.get("reader") or "opencell")
    if reader == "folder" and OmegaConf.is_missing(cfg.data, "channels"):
        raise DinolocError("data=folder needs data.channels: the images' channel names in file order, e.g. "
                           "'data.channels=[DNA,actin,protein]'")
    return reader


def source(cfg: DictConfig) -> dict[str, Any]:
    """How cfg.data's images enter cfg.backbone under cfg.strategy (dinoloc.data.folder.source_setup)."""
    from dinoloc.data.folder import source_setup

    _reader(cfg)
    data = {k: cfg.data.get(k) for k in ("reader", "channels")}
    data["channel_roles"] = _plain(cfg.data.channel_roles) if cfg.data.get("channel_roles") else {}
    return source_setup(data, list(cfg.backbone.channels), _plain(cfg.backbone.channel_map), cfg.strategy.name)


def backbone_display(bb: DictConfig) -> str:
    """The backbone's table name; derived from the arch and the weights when the config sets none (timm presets)."""
    from dinoloc.backbones import display_name

    return display_name(bb.get("display_name"), bb.get("label"), str(bb.arch), bb.weights or None)


def _plain(node: DictConfig, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    d = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in d.items() if k not in drop}


def ensure_synthetic(cfg: DictConfig) -> None:
    """Generate the synthetic demo data (all parts) when the embedded default is used and it is missing."""
    from dinoloc.data.synthetic import generate_all

    gen = cfg.data.generator
    with FileLock(str(Path(cfg.paths.synthetic_dir)) + ".lock"):
        generate_all(cfg.paths.synthetic_dir, n_targets=gen.n_targets, image_size=gen.image_size, seed=gen.seed)


def prepare_data(cfg: DictConfig):
    """Manifest and split for cfg.data (built once, then reused; a stale split is refused)."""
    from dinoloc.data.split import prepare_dataset

    if cfg.data.synthetic:
        ensure_synthetic(cfg)
    out_dir = Path(cfg.paths.data_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    s = cfg.data.split
    # Parallel sweep jobs share the data folder: one builds, the others wait and reuse.
    builder = None
    if _reader(cfg) == "folder":
        from dinoloc.data.folder import build_folder_manifest

        d = cfg.data
        builder = functools.partial(
            build_folder_manifest, d.root, d.annotations, list(d.channels),
            None if d.get("classes") is None else list(d.classes), group_by=s.group_by,
        )
    with FileLock(str(out_dir) + ".lock"):
        if builder is not None:
            return prepare_dataset(d.root, d.annotations, out_dir, test_size=s.test_size, n_folds=s.n_folds,
                                   group_by=s.group_by, seed=s.seed, resplit=bool(d.get("resplit", False)),
                                   builder=builder)
        manifest, split = prepare_dataset(
            cfg.data.root, cfg.data.annotations, out_dir, min_grade=cfg.data.labels.min_grade,
            test_size=s.test_size, n_folds=s.n_folds, group_by=s.group_by, seed=s.seed,
            resplit=bool(cfg.data.get("resplit", False)),
            classes=list(cfg.data.labels.classes), ignore=list(cfg.data.labels.ignore),
        )
    return manifest, split


def extraction_fields(cfg: DictConfig, manifest) -> dict[str, Any]:
    """Everything that determines the embeddings: the cache key is a hash of this."""
    from dinoloc.backbones import weights_fingerprint
    from dinoloc.extract import images_fingerprint

    bb = cfg.backbone
    src = source(cfg)
    return {
        "arch": bb.arch,
        "model_kwargs": _plain(bb.model_kwargs),
        "in_chans": bb.in_chans,
        "channels": list(bb.channels),
        "weights": weights_fingerprint(bb.weights or None, cache_dir=cfg.paths.weights_dir, weights_sha256=bb.weights_sha256),
        "checkpoint_key": bb.checkpoint_key,
        "strategy": cfg.strategy.name,
        "channel_map": src["channel_map"] if cfg.strategy.name == "mapping" else None,
        **src["fields"],  # a folder dataset's channels (nothing for OpenCell: its keys are unchanged)
        # only when not the default, so the default's cache keys stay what they were
        **({"empty_channels": ec} if (ec := _empty_channels(cfg)) != "zero_before_norm" else {}),
        # crop_size only acts under spatial=center_crop: elsewhere it stays out, so other keys do not move.
        "preprocess": _plain(bb.preprocess, drop=() if bb.preprocess.spatial == "center_crop" else ("crop_size",)),
        "images": images_fingerprint(manifest, cfg.data.root),
    }


def _empty_channels(cfg: DictConfig) -> str:
    """strategy.empty_channels for mapping (what the unmapped channels hold); the default for other strategies."""
    return str(cfg.strategy.get("empty_channels", "zero_before_norm")) if cfg.strategy.name == "mapping" \
        else "zero_before_norm"


def run_extraction(cfg: DictConfig, manifest):
    """Embed every manifest image with cfg.backbone x cfg.strategy, or hit the cache."""
    from dinoloc.backbones import build_backbone
    from dinoloc.extract import cache_key, extract
    from dinoloc.strategies import embed_batch

    bb, pp = cfg.backbone, cfg.backbone.preprocess
    fields = extraction_fields(cfg, manifest)
    key = cache_key(fields)
    meta: dict[str, Any] = {
        "backbone": bb.name, "backbone_display": backbone_display(bb), "weights_path": str(bb.weights or ""),
        "synthetic": bool(cfg.data.synthetic or bb.synthetic), "data": cfg.data.name, **fields,
    }

    def factory():
        model = build_backbone(
            bb.arch, bb.in_chans, bb.weights or None, bb.checkpoint_key, pp.img_size,
            weights_sha256=bb.weights_sha256, cache_dir=cfg.paths.weights_dir,
            allow_random=bool(cfg.allow_random_weights), **_plain(bb.model_kwargs),
        )
        info = getattr(model, "dinoloc_info", {})
        meta["checkpoint_epoch"] = info.get("checkpoint_epoch")
        meta["checkpoint"] = info.get("checkpoint") or {}
        meta["random_weights"] = bool(info.get("random_init", False))
        meta["random_seed"] = info.get("random_seed")
        return model

    src = source(cfg)
    if src["left_out"]:
        log.warning("strategy=mapping: data channel(s) %s have no place in backbone=%s and are left out",
                    src["left_out"], bb.name)
    embed_fn = functools.partial(
        embed_batch, strategy=cfg.strategy.name, backbone_channels=list(bb.channels),
        channel_map=src["channel_map"], source_channels=src["source_channels"], img_size=pp.img_size,
        intensity=pp.intensity,
        mean=None if pp.mean is None else list(pp.mean), std=None if pp.std is None else list(pp.std),
        spatial=pp.spatial, empty_channels=_empty_channels(cfg), crop_size=int(pp.get("crop_size", 600)),
    )
    root = Path(cfg.data.root)
    ex = cfg.extract
    return extract(
        image_ids=manifest["image_id"].tolist(),
        paths=[root / p for p in manifest["path"]],
        read_fn=src["read_fn"],
        model_factory=factory,
        embed_fn=embed_fn,
        cache_dir=cfg.paths.cache_dir,
        key=key,
        meta=meta,
        resize_to=pp.img_size if pp.spatial == "resize" else None,
        batch_size=ex.batch_size,
        num_workers=ex.num_workers,
        chunk_size=ex.chunk_size,
        device=resolve_device(cfg.device),
        amp=ex.amp,
        progress=True,
    )


def run_fingerprint(cfg: DictConfig, manifest, split) -> dict[str, Any]:
    """What, besides the embeddings, decides a run's result: a finished run with the same is reused."""
    from dinoloc.data.manifest import class_columns
    from dinoloc.io import frame_sha256

    return {
        "classifier": _plain(cfg.classifier),
        "split_sha256": frame_sha256(split),
        "labels_sha256": frame_sha256(manifest[["image_id", *class_columns(manifest)]]),
    }


def run_classifier(cfg: DictConfig) -> dict[str, Any]:
    """Extract (cached) and run the 5-fold classifier for one backbone x strategy; returns result.json."""
    import time

    import numpy as np

    from dinoloc.classify import cross_validate_seeds, load_result, save_run
    from dinoloc.data.manifest import class_columns
    from dinoloc.extract import cache_key
    from dinoloc.io import frame_sha256
    from dinoloc.probes import head_name, params_from_config
    from dinoloc.provenance import weights_record
    from dinoloc.stats import embedding_health

    manifest, split = prepare_data(cfg)
    classes = class_columns(manifest)  # from the data config (OpenCell's 17; a folder's data.classes)
    bb = cfg.backbone
    head = head_name(_plain(cfg.classifier))
    src = source(cfg)
    run_dir = Path(cfg.paths.runs_dir) / run_name(cfg)
    params = params_from_config(_plain(cfg.classifier))
    fingerprint = run_fingerprint(cfg, manifest, split)
    previous = load_result(run_dir)
    if previous is not None and not cfg.force:
        key = cache_key(extraction_fields(cfg, manifest))
        if previous.get("cache_key") == key and previous.get("run_fingerprint") == fingerprint:
            log.info("%s: result exists for this config and cache key; skipping (force=true to redo)", run_dir)
            return previous

    entry = run_extraction(cfg, manifest)
    emb, ids = entry.load()
    meta = entry.meta
    pos = {i: k for k, i in enumerate(ids)}
    missing = [i for i in split["image_id"] if i not in pos]
    if missing:
        raise DinolocError(f"cache {entry.path} lacks {len(missing)} manifest images (e.g. {missing[:5]}); delete it")
    rows = np.array([pos[i] for i in split["image_id"]])
    labeled = split["split"].isin(["train", "test"]).to_numpy()
    m = manifest.set_index("image_id").loc[split["image_id"]]
    fold = split["fold"].fillna(-1).astype(int).to_numpy()
    t0 = time.perf_counter()
    cv = cross_validate_seeds(
        emb[rows][labeled], m[classes].to_numpy()[labeled].astype(int),
        split["split"].to_numpy()[labeled], fold[labeled],
        split["image_id"].to_numpy()[labeled], split["target"].to_numpy()[labeled],
        params, device=resolve_device(cfg.device), classes=classes,
    )
    arch = str(bb.arch)
    found = re.search(r"patch(\d+)", arch)
    patch = bb.model_kwargs.get("patch_size") or (int(found.group(1)) if found else "?")
    ckpt = meta.get("checkpoint") or {}
    if not ckpt and meta.get("checkpoint_epoch") is not None:
        ckpt = {"epoch": meta.get("checkpoint_epoch")}
    prov = weights_record(
        bb.weights or None, {"weights_sha256": _sha_of(meta.get("weights")), "random_init": meta.get("random_weights"),
                             "random_seed": meta.get("random_seed")}, ckpt, default=_weights_are_default(),
    )
    prov["embedding_health"] = meta.get("embedding_health") or embedding_health(emb)
    result = {
        "experiment": cfg.experiment_name,
        "variant": str(cfg.get("variant") or "baseline"),
        "backbone": bb.name,
        "backbone_display": backbone_display(bb),
        "arch": arch,
        "model_label": f"{arch.split('_patch')[0]}/{patch}",
        "model_kwargs": _plain(bb.model_kwargs),
        "strategy": cfg.strategy.name,
        "head": head,
        # The checkpoint's own count wins; the config's value only where the file records none.
        "dino_epochs": ckpt.get("epoch") if ckpt.get("epoch") is not None else bb.dino_epochs,
        "dino_epochs_config": bb.dino_epochs,
        "provenance": prov,
        "resolved": resolved_config(cfg, params),
        "synthetic": bool(meta.get("synthetic")),
        "random_weights": bool(meta.get("random_weights", False)),
        "cache_key": entry.key,
        "cache_path": str(entry.path.resolve()),  # the report's embedding maps read it
        "cache_hit": entry.hit,
        "run_fingerprint": fingerprint,
        "data": {
            "name": cfg.data.name,
            "root": str(Path(cfg.data.root).resolve()),
            "manifest": str((Path(cfg.paths.data_dir) / "manifest.csv").resolve()),
            "split": str((Path(cfg.paths.data_dir) / "split.csv").resolve()),
            "manifest_sha256": frame_sha256(manifest),
            "label_notes": manifest.attrs.get("label_notes", {}),
            "reader": _reader(cfg),
            "channels": list(src["fields"].get("data_channels") or []) or None,
            "channels_used": src["source_channels"],  # after data.channel_roles (mapping: placed ones)
            "channel_roles": _plain(cfg.data.channel_roles) if cfg.data.get("channel_roles") else None,
        },
        **cv.summary,
        "classifier_seconds": round(time.perf_counter() - t0, 3),
        "versions": _versions(),
    }
    save_run(run_dir, result, cv.predictions, cv.per_class)
    log.info(
        "%s: test macro F1 %.4f ± %.4f (train %.4f, val %.4f)%s", run_dir.name, result["test_macro_f1_mean"],
        result["test_macro_f1_std"], result["train_macro_f1_mean"], result["val_macro_f1_mean"],
        "  [SYNTHETIC]" if result["synthetic"] else "",
    )
    return result


def run_name(cfg: DictConfig) -> str:
    """`<backbone>__<strategy>`, plus `__<head>` for a probe head (knn, linear) and `__<variant>` for a
    sensitivity variant other than the baseline."""
    from dinoloc.probes import head_name, run_dir_name

    return run_dir_name(cfg.backbone.name, cfg.strategy.name, head_name(_plain(cfg.classifier)),
                        str(cfg.get("variant") or "baseline"))


def resolved_config(cfg: DictConfig, params: Any) -> dict[str, Any]:
    """The values the paper's comparison depends on, as this run used them (diffed by dinoloc.provenance)."""
    s = cfg.data.split
    return {
        "classifier": params.to_dict(),
        "split": {"test_size": s.test_size, "n_folds": s.n_folds, "group_by": s.group_by, "seed": s.seed},
        # A labels-CSV folder has no grades, hence no min_grade.
        "labels": {"min_grade": OmegaConf.select(cfg, "data.labels.min_grade", default=None)},
        "preprocess": _plain(cfg.backbone.preprocess),
    }


def _sha_of(fingerprint: Any) -> str | None:
    """The weights' sha256 from the cache's weights fingerprint (None for random init and timm names)."""
    text = str(fingerprint or "")
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def _weights_are_default() -> bool:
    """False when backbone.weights was overridden on the command line (the user's own weights)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not inside a Hydra app (a test calling run_classifier directly)
        return True
    return not any(o.lstrip("+~").split("=")[0] == "backbone.weights" for o in overrides)


def _versions() -> dict[str, str]:
    import numpy
    import sklearn
    import timm
    import torch

    from dinoloc import __version__

    return {"dinoloc": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__, "python": sys.version.split()[0]}


# ----------------------------------------------------------------------------------------------------------
# sweeps: everything checked before the first job; progress; failed jobs summarised at the end
# ----------------------------------------------------------------------------------------------------------
def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override list of every job of the multirun `config` would launch (sweeper params + command line)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task_overrides = list(config.hydra.overrides.task)
    sweep_params = config.hydra.sweeper.get("params") or {}
    overrides = [f"{k}={v}" for k, v in sweep_params.items() if not any(o.split("=")[0] == k for o in task_overrides)]
    overrides += task_overrides
    parser = OverridesParser.create()
    batches = BasicSweeper.split_arguments(parser.parse_overrides(overrides), max_batch_size=None)
    return [list(j) for b in batches for j in b]


def refuse_sweep_without_multirun(hydra_cfg: Any, command: str) -> None:
    """A preset that defines a sweep (experiment=table3) run without -m would run one default job instead."""
    from hydra.types import RunMode

    if hydra_cfg.mode == RunMode.MULTIRUN:
        return
    params = hydra_cfg.sweeper.get("params") or {}
    given = {o.split("=")[0].lstrip("+~") for o in hydra_cfg.overrides.task}
    swept = [f"{k}={v}" for k, v in params.items() if k not in given]
    if swept:
        raise DinolocError(
            f"this preset defines a sweep ({'; '.join(swept)}) but -m is missing, so it would run one default job; "
            f"add -m: {command} -m {' '.join(hydra_cfg.overrides.task)}"
        )


class ValidateSweep(Callback):
    """Compose every job of a multirun up front and validate it (pairs, values, weights files), so a bad
    job fails before any work; `dry_run=true` lists the jobs and exits. While the sweep runs: job i of n,
    elapsed and remaining time; a failed job is recorded, the others run, and the sweep exits 1 at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra import compose

        from dinoloc import sweep
        from dinoloc.console import error_line

        jobs = sweep_jobs(config)
        # The user's config directories (hydra.searchpath) must be seen by this compose too.
        searchpath = list(config.hydra.get("searchpath") or [])
        extra = [f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else []
        bad, composed = [], []
        for job in jobs:
            # Hydra turns an exception in a callback into a warning and runs the sweep anyway: exit here.
            try:
                cfg = compose(config_name="config", overrides=job + extra)
                composed.append(cfg)
                validate(cfg, classifier=True)
            except DinolocError as e:
                bad.append(f"  {' '.join(job)}: {e}")
            except Exception as e:
                line = error_line(e)
                if line is None:
                    raise
                print(f"dinoloc: error: {line}", file=sys.stderr)
                sys.exit(2)
        if bad:
            print("dinoloc: error: invalid jobs in this sweep (nothing was run):\n" + "\n".join(bad), file=sys.stderr)
            sys.exit(2)
        if config.get("dry_run"):
            print(f"{len(jobs)} jobs (dry_run=true: nothing is run):")
            for i, (job, cfg) in enumerate(zip(jobs, composed, strict=True), 1):
                print(f"  {i}. {' '.join(job)}\n     {sweep.describe_job(cfg)}")
            sys.exit(0)
        sweep.start(config.hydra.sweep.dir, jobs)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from dinoloc import sweep

        if _is_multirun(config):
            sweep.job_started(config.hydra.sweep.dir, int(config.hydra.job.num), list(config.hydra.overrides.task))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from dinoloc import sweep

        if _is_multirun(config):
            sweep.job_finished(config.hydra.sweep.dir, int(config.hydra.job.num))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dinoloc import sweep

        text, ok = sweep.summary(config.hydra.sweep.dir)
        print(text, file=sys.stderr)
        if not ok:
            sys.exit(1)


def _is_multirun(config: DictConfig) -> bool:
    from hydra.types import RunMode

    return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN


# ----------------------------------------------------------------------------------------------------------
# entry points: `<command> --help` (configs/hydra/help/<command>.yaml), one-line errors (dinoloc.console)
# ----------------------------------------------------------------------------------------------------------
def _console(command: str):
    """Turn a task function into console script `command` (a Hydra app; errors as one line, exit 2)."""

    def decorate(task):
        task = friendly(task)
        hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")(task)

        @functools.wraps(task)
        def main(cfg_passthrough: DictConfig | None = None) -> Any:
            if cfg_passthrough is not None:
                return task(cfg_passthrough)
            return run_console(hydra_main, command)

        return main

    return decorate


def _hydra_cfg() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


@_console("dinoloc-data")
def data_main(cfg: DictConfig) -> None:
    """dinoloc-data: build and validate the manifest and split; print a summary."""
    from dinoloc.data.split import summarize

    validate_root(cfg)
    manifest, split = prepare_data(cfg)
    print(("SYNTHETIC DATA\n" if cfg.data.synthetic else "") + summarize(manifest, split))
    print(f"written: {Path(cfg.paths.data_dir) / 'manifest.csv'}, {Path(cfg.paths.data_dir) / 'split.csv'}")


@_console("dinoloc-extract")
def extract_main(cfg: DictConfig) -> None:
    """dinoloc-extract: embed every manifest image with one backbone x strategy (cache hit = no forward pass)."""
    if (hc := _hydra_cfg()) is not None:
        refuse_sweep_without_multirun(hc, "dinoloc-extract")
    setup(str(cfg.device))
    validate(cfg)
    manifest, _ = prepare_data(cfg)
    entry = run_extraction(cfg, manifest)
    if rank_and_world()[0] == 0:
        meta = entry.meta
        print(f"{'cache hit' if entry.hit else 'extracted'}: {meta['n_images']} x {meta['dim']} -> {entry.path}"
              + ("  [SYNTHETIC]" if meta.get("synthetic") else ""))


@_console("dinoloc-run")
def run_main(cfg: DictConfig) -> None:
    """dinoloc-run: extract (cached) + 5-fold CV classifier for one backbone x strategy."""
    if (hc := _hydra_cfg()) is not None:
        refuse_sweep_without_multirun(hc, "dinoloc-run")
    validate(cfg, classifier=True)
    if cfg.get("dry_run"):
        from dinoloc.sweep import describe_job

        print(f"1 job (dry_run=true: nothing is run):\n  {describe_job(cfg)}")
        return
    run_classifier(cfg)


def pretrain_spec(cfg: DictConfig) -> PretrainSpec:
    """cfg.pretrain + cfg.backbone -> the pretraining stage's PretrainSpec. Every recipe key is checked here
    (missing, unknown, bad value: DinolocError naming pretrain.<key>), before any data is read."""
    from dinoloc.pretrain import DATA_KEYS, PretrainParams, PretrainSpec
    from dinoloc.pretrain.params import missing_key

    bb, pt, pp = cfg.backbone, cfg.pretrain, cfg.backbone.preprocess
    if not bb.weights:
        raise DinolocError(f"backbone={bb.name} names no weights path for the checkpoint to write")
    hc = _hydra_cfg()  # which YAML the recipe came from, for the messages (a Hydra app, or a composed hydra node)
    choice = hc.runtime.choices.get("pretrain") if hc is not None else OmegaConf.select(cfg, "hydra.runtime.choices.pretrain")
    origin = f"configs/pretrain/{choice or '<name>'}.yaml"
    given = {k: v for k, v in _plain(pt).items() if not OmegaConf.is_missing(pt, k)}  # `???`: absent
    params = PretrainParams.from_dict(given, origin=origin)
    for key in DATA_KEYS:
        if key not in given:
            raise missing_key(key, origin)
    root = OmegaConf.select(cfg, "data.root", throw_on_missing=False)
    spec = PretrainSpec(
        params=params, backbone=str(bb.name), arch=str(bb.arch), model_kwargs=_plain(bb.model_kwargs),
        in_chans=int(bb.in_chans), channels=tuple(bb.channels), intensity=str(pp.intensity),
        mean=None if pp.mean is None else tuple(pp.mean), std=None if pp.std is None else tuple(pp.std),
        source=str(given["source"]), image_dir=None if given["image_dir"] is None else str(given["image_dir"]),
        data_root=None if root is None or OmegaConf.is_missing(cfg.data, "root") else str(root),
        out_dir=str(Path(str(bb.weights)).parent), device=str(cfg.device),
        synthetic=bool(cfg.data.synthetic or bb.synthetic),
    )
    spec.check()
    return spec


@_console("dinoloc-pretrain")
def pretrain_main(cfg: DictConfig) -> None:
    """dinoloc-pretrain: DINO from scratch for cfg.backbone; writes its checkpoint at backbone.weights."""
    from dinoloc.pretrain import run_pretrain

    setup(str(cfg.device))
    spec = pretrain_spec(cfg)  # every config value is checked before the (possibly long) manifest and image scan
    validate_root(cfg)
    manifest = split = None
    if spec.source == "opencell":
        manifest, split = prepare_data(cfg)
    elif cfg.data.synthetic:
        ensure_synthetic(cfg)  # the generated stand-in folders (pretrain.image_dir)
    ckpt = run_pretrain(spec, manifest, split)
    if rank_and_world()[0] == 0:
        print(f"checkpoint: {ckpt}" + ("  [SYNTHETIC]" if spec.synthetic else ""))


@_console("dinoloc-report")
def report_main(cfg: DictConfig) -> None:
    """dinoloc-report: aggregate the experiment's run folders into Table III and Figures 1 and 2."""
    from dinoloc.report import write_report

    expected = list(cfg.get("expected_rows") or []) or None
    rep = cfg.report
    paths = write_report(cfg.paths.runs_dir, cfg.paths.reports_dir, expected=expected, n_boot=int(rep.n_boot),
                         seed=int(rep.seed), level=float(rep.level), method=str(rep.ci_method),
                         figure2_colors=str(cfg.figure2_colors), embedding_maps=str(rep.embedding_maps),
                         max_points=int(rep.max_points))
    print(Path(paths["table3.md"]).read_text())
    if "sensitivity.md" in paths:
        print(Path(paths["sensitivity.md"]).read_text())
    for name, p in paths.items():
        print(f"{name}: {p}")
