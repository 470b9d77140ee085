"""A new user's mistakes and interruptions: one line on stderr and a meaningful exit code, never a traceback;
sweeps checked before their first job, listed without running, with progress and a summary of failed jobs.

Most tests run the real console functions in-process (Hydra included) with sys.argv patched: the exit code
and stderr are exactly what the shell sees, without the ~4 s start-up of a subprocess per case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dinoloc import CONFIG_DIR, cli, config, sweep
from dinoloc.console import EXIT_INTERRUPTED, format_warning, run_console
from dinoloc.extract.engine import EngineSettings, ExtractionInterrupted, extract

BIN = Path(sys.executable).parent


def _console(fn, argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """Run console function `fn` as the shell would with `argv`; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [fn.__name__, *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code = 0
    try:
        fn()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# errors and interruptions
# ----------------------------------------------------------------------------------------------------------
def test_missing_mandatory_value_is_one_line_with_an_example(tmp_path, capsys, monkeypatch):
    code, _, err = _console(cli.run_main, ["data=opencell", f"paths.output_dir={tmp_path}"], capsys, monkeypatch)
    line = _one_line(err)
    assert code == 2
    assert line == ("dinoloc: error: data.root is not set (it is ??? in the config); add it to the command, "
                    "e.g. data.root=/data/opencell")


def test_group_choice_typo_lists_the_valid_choices(tmp_path, capsys, monkeypatch):
    code, _, err = _console(cli.data_main, ["backbone=imagnet", f"paths.output_dir={tmp_path}"], capsys, monkeypatch)
    line = _one_line(err)
    assert code == 2
    assert line.startswith("dinoloc: error: backbone=imagnet: no such backbone; valid choices: ")
    for choice in ("hpa", "imagenet", "opencell", "imagenet_demo"):
        assert choice in line


def _extract_with_ctrl_c(tmp_path: Path, interrupt_at_batch: int, chunk_size: int = 4, n: int = 10):
    """extract() whose model is 'interrupted' (KeyboardInterrupt, as Ctrl-C raises) at the given batch."""
    calls = {"n": 0}

    def embed(model, x):
        calls["n"] += 1
        if calls["n"] == interrupt_at_batch:
            raise KeyboardInterrupt
        return x.flatten(1)[:, :3]

    return extract(
        image_ids=[f"i{k}" for k in range(n)], paths=[str(k) for k in range(n)],
        read_fn=lambda p: np.full((2, 4, 4), float(Path(p).name), dtype=np.float32), model_factory=torch.nn.Identity,
        embed_fn=embed, cache_dir=tmp_path / "cache", key="k", meta={},
        settings=EngineSettings(batch_size=2, chunk_size=chunk_size, progress=False),
    )


def test_ctrl_c_during_extraction_keeps_finished_chunks_and_says_so(tmp_path):
    with pytest.raises(ExtractionInterrupted) as e:
        _extract_with_ctrl_c(tmp_path, interrupt_at_batch=4)  # batches 1-2 = chunk 0 written, batch 3 half chunk 1
    assert (e.value.kept, e.value.total) == (4, 10)
    assert str(e.value) == "interrupted: kept 4 of 10 images; rerun the same command to resume"
    assert sorted(p.name for p in (tmp_path / "cache" / "k" / "chunks").iterdir()) == ["chunk_000000.npy"]
    entry = _extract_with_ctrl_c(tmp_path, interrupt_at_batch=0)  # the rerun resumes and finishes
    assert entry.load()[0].shape == (10, 3)


def test_interrupted_before_any_chunk_leaves_no_empty_folders(tmp_path):
    with pytest.raises(ExtractionInterrupted) as e:
        _extract_with_ctrl_c(tmp_path, interrupt_at_batch=1)
    assert e.value.kept == 0
    assert not (tmp_path / "cache" / "k").exists()  # neither cache/<key>/chunks/ nor cache/<key>/


def test_ctrl_c_exits_130_with_one_line(capsys, monkeypatch):
    def interrupted_main():
        raise ExtractionInterrupted(256, 1000)

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as e:
        run_console(interrupted_main, "dinoloc-extract", argv=[])
    assert e.value.code == EXIT_INTERRUPTED == 130
    assert _one_line(capsys.readouterr().err) == "interrupted: kept 256 of 1000 images; rerun the same command to resume"
    assert "HYDRA_FULL_ERROR" not in os.environ  # restored


def test_sweep_preset_without_multirun_is_refused(tmp_path, capsys, monkeypatch):
    code, _, err = _console(cli.run_main, ["experiment=table3", f"data.root={tmp_path}",
                                           f"paths.output_dir={tmp_path / 'out'}"], capsys, monkeypatch)
    line = _one_line(err)
    assert code == 2
    assert "defines a sweep" in line and "add -m: dinoloc-run -m experiment=table3" in line
    assert not (tmp_path / "out" / "runs").exists()
    # One row of the preset is a legitimate single run: the swept key is given, so nothing is refused there.
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        hc = compose("config", overrides=["experiment=table3", "row=hpa_mapping"], return_hydra_config=True).hydra
    hc.overrides.task = ["experiment=table3", "row=hpa_mapping"]
    cli.refuse_sweep_without_multirun(hc, "dinoloc-run")


def test_real_data_root_under_the_synthetic_config_is_refused(tmp_path, capsys, monkeypatch):
    code, _, err = _console(cli.data_main, [f"data.root={tmp_path}", f"paths.output_dir={tmp_path / 'out'}"],
                            capsys, monkeypatch)
    line = _one_line(err)
    assert code == 2
    assert line == (f"dinoloc: error: data.root={tmp_path} is set but data=synthetic (the default) is selected; add "
                    f"data=opencell to read your OpenCell-format folder, e.g. data=opencell data.root={tmp_path}")
    assert not (tmp_path / "out" / "data").exists()


def test_warnings_print_the_message_only():
    text = format_warning(UserWarning("fold 3: class golgi has no positives"), UserWarning, "/x/classify.py", 12,
                          "    cv = cross_validate(")
    assert text == "warning: fold 3: class golgi has no positives\n"


def test_test_share_growth_is_a_message_only_warning(write_opencell_tree, tmp_path):
    """Through the real command (a warning's format is only visible in a process's stderr): requested vs
    actual test share, printed without the source line Python adds by default."""
    root, _ = write_opencell_tree(n_targets=24, images_per_target=1, size=16)
    res = subprocess.run([str(BIN / "dinoloc-data"), "data=opencell", f"data.root={root}",
                          f"paths.output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    warning_lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert warning_lines == ["warning: test share grew: split.test_size=0.1 asked for 3 of 24 targets (12%), but "
                             "putting every class with >= 2 targets into the test set took 9 of 24 (38%)"]
    assert "  test      images:      9   targets:     9" in res.stdout


# ----------------------------------------------------------------------------------------------------------
# sweeps
# ----------------------------------------------------------------------------------------------------------
def test_sweep_names_every_missing_weights_file_before_the_first_job(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, err = _console(cli.run_main, ["-m", "backbone=opencell_demo,hpa_demo", "strategy=mapping",
                                           f"paths.output_dir={out}"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == "dinoloc: error: invalid jobs in this sweep (nothing was run):"
    assert len(lines) == 3
    assert (f"weights file {out}/pretrain/opencell_demo/checkpoint.pth does not exist; to get it: "
            "dinoloc-pretrain backbone=opencell_demo pretrain=demo") in lines[1]
    assert (f"weights file {out}/pretrain/hpa_demo/checkpoint.pth does not exist; to get it: "
            "dinoloc-pretrain backbone=hpa_demo pretrain=hpa_demo") in lines[2]
    assert not (out / "data").exists() and not (out / "runs").exists()


def test_missing_opencell_checkpoint_names_the_pretrain_command_with_the_users_root(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["data=opencell", f"data.root={tmp_path}", "row=opencell_native",
                                           f"paths.output_dir={tmp_path}"])
    from dinoloc.extract.stage import missing_weights

    assert missing_weights(config.extract_spec(cfg)) == (
        f"backbone=opencell: weights file {tmp_path}/pretrain/opencell/checkpoint.pth does not exist; to get it: "
        f"dinoloc-pretrain backbone=opencell pretrain=opencell data=opencell data.root={tmp_path}")
    for ok in ("https://example.org/w.pth", "timm:vit_base_patch8_224.dino", ""):
        cfg.backbone.weights = ok
        assert missing_weights(config.extract_spec(cfg)) is None


def test_user_config_dir_on_the_search_path_adds_a_backbone(tmp_path, capsys, monkeypatch):
    """One's own backbone YAML outside the repository (hydra.searchpath), e.g. ImageNet weights from a local
    file next to the stock HPA backbone, in one sweep."""
    mine = tmp_path / "my_configs" / "backbone"
    mine.mkdir(parents=True)
    (mine / "imagenet_local.yaml").write_text(
        "defaults:\n  - imagenet\n  - _self_\nname: imagenet_local\nweights: /nowhere/dino_vitbase8_pretrain.pth\n")
    code, _, err = _console(cli.run_main, ["-m", f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]",
                                           "backbone=imagenet_local,hpa", "strategy=mapping", "data=opencell",
                                           f"data.root={tmp_path}", f"paths.output_dir={tmp_path / 'out'}"],
                            capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert "backbone=imagenet_local: weights file /nowhere/dino_vitbase8_pretrain.pth does not exist" in err
    assert "backbone=hpa: weights file" in err  # the stock backbone is still found


def test_sweep_skips_a_pair_the_backbone_cannot_run_listed_before_the_first_job(tmp_path, capsys, monkeypatch):
    """strategy=native for a backbone without the data's channels is skipped (issue 27), the rest runs."""
    out = tmp_path / "out"
    code, _, err = _console(cli.run_main, ["-m", "backbone=imagenet_demo,opencell_demo", "strategy=native",
                                           "debug=tiny", "backbone.model_kwargs.depth=1", "classifier.epochs=2",
                                           f"paths.output_dir={out}", "experiment_name=mixed"], capsys, monkeypatch)
    assert code == 0 and "Traceback" not in err, err
    listed = err.index("[sweep] skipping 1 of 2 jobs (a backbone that cannot run the strategy):")
    # each skipped job named by what the sweep varies, with the reason
    assert err[listed:].splitlines()[1].startswith("  backbone=imagenet_demo: strategy=native needs a backbone")
    assert listed < err.index("[sweep] job 1 of 2 starting")
    assert "[sweep] skipped: backbone=imagenet_demo strategy=native" in err
    assert sorted(p.name for p in (out / "runs" / "mixed").iterdir()) == ["opencell_demo__native"]


def test_a_sweep_of_only_impossible_pairs_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, err = _console(cli.run_main, ["-m", "backbone=imagenet_demo", "strategy=native", "debug=tiny",
                                           f"paths.output_dir={out}", "experiment_name=bad"], capsys, monkeypatch)
    assert code == 2 and "every job of this sweep is skipped" in err and "Traceback" not in err
    assert not (out / "runs").exists() and not (out / "data").exists()


def test_dry_run_lists_the_jobs_and_runs_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, stdout, err = _console(cli.run_main, ["-m", "row=imagenet_demo_mapping,hpa_demo_replication",
                                                "backbone.weights=", "allow_random_weights=true", "dry_run=true",
                                                f"paths.output_dir={out}"], capsys, monkeypatch)
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert lines[0] == "2 jobs (dry_run=true: nothing is run):"
    assert lines[1].strip() == f"1. row=imagenet_demo_mapping backbone.weights= allow_random_weights=True " \
                               f"dry_run=True paths.output_dir={out}"
    assert lines[2].strip().startswith(f"imagenet_demo__mapping -> {out}/runs/default/imagenet_demo__mapping")
    assert "data: build manifest + split | embeddings: compute | classifier: train" in lines[2]
    assert "hpa_demo__replication" in lines[4]
    assert not (out / "data").exists() and not (out / "runs").exists() and not (out / "cache").exists()


def test_sweep_progress_counts_jobs_and_estimates_the_rest(tmp_path, monkeypatch, capsys):
    clock = iter([1000.0, 1030.0, 1060.0])  # start, after job 1, after job 2
    monkeypatch.setattr(sweep.time, "time", lambda: next(clock))
    sweep.start(tmp_path, [["row=a"], ["row=b"], ["row=c"]])
    assert sweep.job_finished(tmp_path, 0) == "[sweep] 1 of 3 jobs done; elapsed 30s, about 1m00s left"
    assert sweep.job_finished(tmp_path, 1) == "[sweep] 2 of 3 jobs done; elapsed 1m00s, about 30s left"
    assert capsys.readouterr().err.count("[sweep]") == 2


def test_failed_job_is_recorded_and_the_sweep_exits_1_with_a_summary(tmp_path, capsys):
    """The pieces of a sweep with a failed job, in-process: in a multirun job the wrapped task records the
    error and returns (so the launcher goes on); at the end the summary names it and the exit code is 1."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from dinoloc.console import friendly
    from dinoloc.io import DinolocError

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["row=hpa_demo_mapping"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path)
        cfg.hydra.job.num = 1
        cfg.hydra.overrides.task = ["row=hpa_demo_mapping"]
        cfg.hydra.runtime.output_dir = str(tmp_path / "1")
    sweep.start(tmp_path, [["row=imagenet_demo_mapping"], ["row=hpa_demo_mapping"]])

    def failing(_cfg):
        raise DinolocError("hpa_demo checkpoint is truncated")

    HydraConfig.instance().set_config(cfg)
    try:
        assert friendly(failing)(cfg) is None  # returned: the launcher runs the next job
    finally:
        HydraConfig.instance().cfg = None
    assert _one_line(capsys.readouterr().err) == (
        "dinoloc: error: job 1 (row=hpa_demo_mapping) failed: hpa_demo checkpoint is truncated; the other jobs continue")
    with pytest.raises(SystemExit) as e:
        sweep.ValidateSweep().on_multirun_end(config=cfg)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("dinoloc: error: 1 of 2 jobs failed") and "lists the failed rows as missing" in err[0]
    assert err[1:] == ["  job 1 (row=hpa_demo_mapping): hpa_demo checkpoint is truncated"]


@pytest.mark.slow  # a real two-job sweep with extraction and training: ~15 s alone, more on a busy machine
def test_failed_job_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    """A real multirun whose first job fails at run time (too many folds for 30 targets, which only the
    split finds): the second job still runs, then a summary of the failed job and exit 1."""
    out = tmp_path / "out"
    code, _, err = _console(cli.run_main, [
        "-m", "data.split.n_folds=1000,2", f"paths.output_dir={out}", "data.generator.n_targets=30",
        "data.generator.image_size=32", "backbone.weights=", "allow_random_weights=true", "backbone.preprocess.img_size=32",
        "extract.num_workers=0", "classifier.epochs=1", "experiment_name=f"], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert (out / "runs" / "f" / "imagenet_demo__mapping" / "result.json").is_file()  # job 2 ran
    summary = err[err.index("dinoloc: error: 1 of 2 jobs failed"):].strip().splitlines()
    assert len(summary) == 2
    assert summary[1].startswith("  job 0 (data.split.n_folds=1000 ") and "too few labeled units" in summary[1]
    assert "[sweep] job 2 of 2 starting: data.split.n_folds=2" in err


@pytest.mark.parametrize("fn", [cli.run_main, cli.report_main])
def test_help_opens_with_what_the_command_does(fn, capsys, monkeypatch):
    command = {"run_main": "dinoloc-run", "report_main": "dinoloc-report"}[fn.__name__]
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as e:
        fn()
    assert e.value.code == 0
    out = capsys.readouterr().out
    first, _, rest = out.partition("\n")
    assert first.startswith(f"{command}: ") and "powered by Hydra" not in out
    assert rest.lstrip("\n").startswith("Most common:\n  " + command)


@pytest.mark.parametrize("command", ["dinoloc-run", "dinoloc-pretrain"])
def test_quick_help_is_hydras_page_without_the_internal_schema_groups(command, capsys, monkeypatch):
    """`--help` reads the folders instead of composing: the same page as Hydra's (which answers when the user adds
    a config folder), less the `schema` nodes, which are no choice a user makes."""
    fn = {"dinoloc-run": cli.run_main, "dinoloc-pretrain": cli.pretrain_main}[command]
    pages = []
    for extra in ([], ["hydra.searchpath=[]"]):
        monkeypatch.setattr(sys, "argv", [command, "--help", *extra])
        with pytest.raises(SystemExit) as e:
            fn()
        assert e.value.code == 0
        pages.append(capsys.readouterr().out)
    quick, hydras = pages
    assert "backbone: " in quick and "experiment: demo, " in quick and "schema" not in quick
    assert [ln for ln in hydras.splitlines() if not ln.startswith("schema")] == quick.splitlines()


def test_parallel_local_jobs_share_the_cores():
    """hydra/launcher=local (joblib, n_jobs=2) gives each job cores // n_jobs torch threads (issue 13)."""
    from omegaconf import OmegaConf

    from dinoloc.console import share_cores_between_jobs, threads_per_job

    assert threads_per_job(2, 2) == 1 and threads_per_job(16, 2) == 8 and threads_per_job(16, 3) == 5
    assert threads_per_job(8, -1) == 1  # joblib's -1: one job per core
    assert threads_per_job(8, 1) is None and threads_per_job(8, None) is None
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        basic = OmegaConf.create({"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}})
        share_cores_between_jobs(basic)
        assert torch.get_num_threads() == 2  # sequential jobs keep their threads
        joblib = OmegaConf.create({"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher"
                                                ".JoblibLauncher", "n_jobs": 1_000}})
        share_cores_between_jobs(joblib)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_sweep_jobs_are_the_product_of_each_keys_values_in_order():
    from omegaconf import OmegaConf

    from dinoloc.sweep import sweep_jobs

    config = OmegaConf.create({"hydra": {"overrides": {"task": ["strategy=mapping,native", "seed=1", "seed=2"]},
                                         "sweeper": {"params": {"row": "a,b", "strategy": "replication"}}}})
    # preset params first (a key the command line also sets is the command line's), a repeated key keeps its last
    assert sweep_jobs(config.hydra) == [["row=a", "strategy=mapping", "seed=2"], ["row=a", "strategy=native", "seed=2"],
                                  ["row=b", "strategy=mapping", "seed=2"], ["row=b", "strategy=native", "seed=2"]]


def test_one_dinoloc_run_builds_each_spec_once_and_hands_it_to_the_runner(tmp_path, capsys, monkeypatch):
    """The composed config becomes one typed spec, once: every spec class is constructed once per dinoloc-run,
    and the stage's runner receives that spec (nothing climbs back to the config)."""
    import collections

    from dinoloc.backbones.spec import BackboneSpec, PreprocessSpec
    from dinoloc.classify import stage
    from dinoloc.classify.params import ClassifierParams
    from dinoloc.data.prepare import CellSpec, DataSpec, LabelSpec, SplitSpec
    from dinoloc.extract.stage import ExtractSpec
    from dinoloc.synthetic.generate import GeneratorSpec

    built: collections.Counter[str] = collections.Counter()
    for cls in (DataSpec, SplitSpec, LabelSpec, CellSpec, GeneratorSpec, BackboneSpec, PreprocessSpec, ExtractSpec,
                ClassifierParams, stage.ClassifySpec):
        def counting(self, *args, _init=cls.__init__, _name=cls.__name__, **kwargs):
            built[_name] += 1
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    received = []
    monkeypatch.setattr(stage, "run_classification", received.append)
    code, _, err = _console(cli.run_main, ["debug=tiny", f"paths.output_dir={tmp_path}", "backbone.weights=",
                                           "allow_random_weights=true"], capsys, monkeypatch)
    assert code == 0, err
    assert dict(built) == {"DataSpec": 1, "SplitSpec": 1, "LabelSpec": 1, "CellSpec": 1, "GeneratorSpec": 1,
                           "BackboneSpec": 1, "PreprocessSpec": 1, "ExtractSpec": 1, "ClassifierParams": 1,
                           "ClassifySpec": 1}
    (spec,) = received
    assert isinstance(spec, stage.ClassifySpec) and isinstance(spec.classifier, ClassifierParams)
    assert spec.extract.data.generator is not None and spec.head == "mlp"
