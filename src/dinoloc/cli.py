"""The command-line edge: one Hydra app per stage. Each turns the composed config into the stage's typed spec
(dinoloc.config), calls the stage's runner, and prints; errors become one line and an exit code
(dinoloc.console). Nothing else lives here: scripts and tests call the runners, not this module."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dinoloc import CONFIG_DIR
from dinoloc.config import checked_spec, data_spec, extract_spec, pretrain_spec, report_spec
from dinoloc.console import friendly, run_console
from dinoloc.io import DinolocError

CONFIG_PATH = str(CONFIG_DIR)


def refuse_sweep_without_multirun(hydra_cfg: Any, command: str) -> None:
    """A preset that defines a sweep (experiment=table3) run without -m would run one default job instead."""
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


def _skipped_in_sweep() -> bool:
    """A multirun job the sweep listed as skipped at its start (ValidateSweep): it runs nothing."""
    from dinoloc.sweep import is_skipped

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    hc = HydraConfig.get()
    if not is_skipped(hc.sweep.dir, list(hc.overrides.task)):
        return False
    print(f"[sweep] skipped: {' '.join(hc.overrides.task)}", file=sys.stderr)
    return True


def _hydra_cfg() -> Any:
    return HydraConfig.get() if HydraConfig.initialized() else None


def _refuse_sweep_without_multirun(command: str) -> None:
    if (hc := _hydra_cfg()) is not None:
        refuse_sweep_without_multirun(hc, command)


@_console("dinoloc-data")
def data_main(cfg: DictConfig) -> None:
    """dinoloc-data: build and validate the manifest and split; print a summary."""
    from dinoloc.data.prepare import check_root, run_data
    from dinoloc.data.split import summarize

    spec = data_spec(cfg)
    check_root(spec)
    manifest, split = run_data(spec)
    print(("SYNTHETIC DATA\n" if spec.synthetic else "") + summarize(manifest, split))
    if spec.unit == "cell":
        from dinoloc.data.cells import cells_summary

        print(cells_summary(spec.out_dir))
    print(f"written: {Path(spec.out_dir) / 'manifest.csv'}, {Path(spec.out_dir) / 'split.csv'}")


@_console("dinoloc-extract")
def extract_main(cfg: DictConfig) -> None:
    """dinoloc-extract: embed every manifest image with one backbone x strategy (cache hit = no forward pass)."""
    from dinoloc.data.prepare import run_data
    from dinoloc.device import rank_and_world, setup
    from dinoloc.extract.stage import check, run_extraction

    _refuse_sweep_without_multirun("dinoloc-extract")
    if _skipped_in_sweep():
        return
    setup(str(cfg.device))
    spec = extract_spec(cfg)
    check(spec)
    if cfg.get("export"):
        from dinoloc.extract.export import check_format

        check_format(str(cfg.export))  # before any work
    manifest, split = run_data(spec.data)
    entry = run_extraction(spec, manifest)
    if rank_and_world()[0] == 0:
        meta = entry.meta
        print(f"{'cache hit' if entry.hit else 'extracted'}: {meta['n_images']} x {meta['dim']} -> {entry.path}"
              + ("  [SYNTHETIC]" if meta.get("synthetic") else ""))
        if cfg.get("export"):
            from dinoloc.extract.export import export_run

            print(f"exported: {export_run(spec, entry, manifest, split, str(cfg.export), cfg.paths.exports_dir)}")


@_console("dinoloc-run")
def run_main(cfg: DictConfig) -> None:
    """dinoloc-run: extract (cached) + 5-fold CV classifier for one backbone x strategy."""
    from dinoloc.classify.stage import run_classification

    _refuse_sweep_without_multirun("dinoloc-run")
    if _skipped_in_sweep():
        return
    spec = checked_spec(cfg)
    if cfg.get("dry_run"):
        from dinoloc.sweep import describe_job

        print(f"1 job (dry_run=true: nothing is run):\n  {describe_job(spec)}")
        return
    run_classification(spec)


@_console("dinoloc-pretrain")
def pretrain_main(cfg: DictConfig) -> None:
    """dinoloc-pretrain: DINO from scratch for cfg.backbone; writes its checkpoint at backbone.weights."""
    from dinoloc.device import rank_and_world, setup
    from dinoloc.pretrain.stage import run_pretrain

    setup(str(cfg.device))
    spec = pretrain_spec(cfg)  # every config value is checked before the (possibly long) manifest and image scan
    ckpt = run_pretrain(spec)
    if rank_and_world()[0] == 0:
        print(f"checkpoint: {ckpt}" + ("  [SYNTHETIC]" if spec.synthetic else ""))


@_console("dinoloc-report")
def report_main(cfg: DictConfig) -> None:
    """dinoloc-report: aggregate the experiment's run folders into Table III and Figures 1 and 2."""
    from dinoloc.report.stage import run_report

    paths = run_report(report_spec(cfg))
    print(Path(paths["table3.md"]).read_text())
    if "sensitivity.md" in paths:
        print(Path(paths["sensitivity.md"]).read_text())
    for name, p in paths.items():
        print(f"{name}: {p}")
