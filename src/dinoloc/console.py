"""What a user sees when a command goes wrong: one line and a meaningful exit code, never a traceback.

Hydra prints its own multi-line messages (and, for errors in the task, a trimmed traceback) and exits 1.
The console scripts therefore run Hydra with HYDRA_FULL_ERROR=1, so every exception reaches
`run_console`, which turns the ones a user can fix (bad or missing config values, unknown group choices,
DinolocError) into `dinoloc: error: <one line>` and exit 2, and Ctrl-C into one line and exit 130.
A user who sets HYDRA_FULL_ERROR=1 themselves gets the full traceback, as Hydra documents.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import string
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dinoloc import CONFIG_DIR
from dinoloc.io import DinolocError

log = logging.getLogger("dinoloc")

EXIT_USAGE = 2  # a config or input the user can fix
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# An example value per `???` key, shown when the key is missing.
MISSING_EXAMPLES = {
    "data.root": "data.root=/data/opencell",
    "data.annotations": "data.annotations=/data/opencell/opencell-localization-annotations.csv",
    "backbone.weights": "backbone.weights=weights/checkpoint.pth",
}
_MISSING_RE = re.compile(r"Missing mandatory value: ?([\w.\[\]-]+)")


def format_warning(message: Any, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    """Warnings as `warning: <message>`: the source line Python adds by default means nothing to a user."""
    return f"warning: {message}\n"


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def error_line(exc: BaseException) -> str | None:
    """The one line a user needs for an error they can fix, or None for anything else (a bug: traceback)."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    if isinstance(exc, DinolocError):
        return _one_line(str(exc))
    found = _MISSING_RE.search(str(exc))
    if isinstance(exc, MissingMandatoryValue) or found:
        key = getattr(exc, "full_key", None) if isinstance(exc, MissingMandatoryValue) else None
        key = key or (found.group(1) if found else "?")
        example = MISSING_EXAMPLES.get(key, f"{key}=<value>")
        return f"{key} is not set (it is ??? in the config); add it to the command, e.g. {example}"
    if isinstance(exc, MissingConfigException) and exc.options:
        group, _, choice = str(exc.missing_cfg_file or "").rpartition("/")
        return (
            f"{group}={choice}: no such {group}; valid choices: {', '.join(sorted(exc.options))} "
            "(your own YAML: put it in <dir>/" + group + "/ and add hydra.searchpath=[file://<dir>])"
        )
    from dinoloc.schema import composition_error_line

    if (line := composition_error_line(exc)) is not None:  # a key a config group's schema refuses
        return line
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return _one_line(str(exc))
    return None


def interrupted_line(exc: KeyboardInterrupt) -> str:
    """ExtractionInterrupted carries how much was kept; any other Ctrl-C keeps finished work too."""
    text = str(exc)
    return text if text.startswith("interrupted:") else "interrupted; rerun the same command to resume (finished work is kept)"


def config_groups(config_dir: Path = CONFIG_DIR) -> str:
    """The app's config groups and their choices, as Hydra's `$APP_CONFIG_GROUPS` lists them (group: a, b, c), read
    from the folders; Hydra's own `hydra/` groups and the internal `schema/` nodes are left out."""
    groups: dict[str, list[str]] = {}
    for path in sorted(config_dir.rglob("*.yaml")):
        group = path.parent.relative_to(config_dir).as_posix()
        if group != "." and group.split("/")[0] not in ("hydra", "schema"):
            groups.setdefault(group, []).append(path.stem)
    return "".join(f"{g}: {', '.join(sorted(names))}\n" for g, names in sorted(groups.items()))


def quick_help(command: str, args: list[str]) -> str | None:
    """`<command> --help` from its help page (configs/hydra/help/<command>.yaml) without composing a config.

    Hydra's own page composes the config and deep-copies its config store once per group (~1.5 s); this reads the
    folders. None (Hydra answers) when the user adds config folders (hydra.searchpath) or picks another help page.
    """
    if not {"--help", "-h"} & set(args) or any(a.startswith(("hydra.searchpath", "hydra/help=")) for a in args):
        return None
    help_file = CONFIG_DIR / "hydra" / "help" / f"{command}.yaml"
    if not help_file.is_file():
        return None
    from omegaconf import OmegaConf

    page = OmegaConf.create({"hydra": {"help": OmegaConf.load(help_file)}}).hydra.help
    return string.Template(page.template).safe_substitute(APP_CONFIG_GROUPS=config_groups())


def run_console(hydra_main: Callable[[], Any], command: str, argv: list[str] | None = None) -> None:
    """Run a @hydra.main function as console script `command`, with one-line errors and exit codes.

    Adds `hydra.job.name=<command>` (log file `<command>.log` instead of `cli.log`) and the command's own
    `--help` page (configs/hydra/help/<command>.yaml) unless the user set them.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    page = quick_help(command, args)
    if page is not None:
        print(page)
        sys.exit(0)
    if not any(a.startswith("hydra.job.name=") for a in args):
        args.append(f"hydra.job.name={command}")
    help_file = CONFIG_DIR / "hydra" / "help" / f"{command}.yaml"
    if help_file.is_file() and not any(a.startswith("hydra/help=") for a in args):
        args.append(f"hydra/help={command}")
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    saved_argv, saved_format = sys.argv, warnings.formatwarning
    sys.argv = [command, *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let every exception reach us instead of Hydra's printer
    warnings.formatwarning = format_warning
    try:
        hydra_main()
    except KeyboardInterrupt as e:
        print(interrupted_line(e), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        line = None if user_full_error else error_line(e)
        if line is None:
            raise
        print(f"dinoloc: error: {line}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    finally:
        sys.argv, warnings.formatwarning = saved_argv, saved_format
        if not user_full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _multirun_job() -> Any:
    """This job's HydraConfig in a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc if hc.mode == RunMode.MULTIRUN else None


def threads_per_job(cores: int, n_jobs: Any) -> int | None:
    """Torch threads for one of `n_jobs` parallel jobs on `cores` cores (joblib: -1 = one job per core);
    None when jobs do not run side by side."""
    try:
        n = int(n_jobs)
    except (TypeError, ValueError):
        return None
    n = cores if n < 0 else n
    return max(1, cores // n) if n > 1 else None


def share_cores_between_jobs(job: Any) -> None:
    """hydra/launcher=local runs several jobs at once on one machine. Each gets cores // n_jobs torch threads:
    two 2-thread jobs on 2 cores spin in OpenMP barriers, and a demo pretraining that takes 7 s with 1 thread
    took 82 s with 2 threads beside one other busy process (measured on the 2-core development machine)."""
    from omegaconf import OmegaConf

    if job is None or "joblib" not in str(OmegaConf.select(job, "launcher._target_", default="")).lower():
        return
    threads = threads_per_job(os.cpu_count() or 1, OmegaConf.select(job, "launcher.n_jobs", default=None))
    if threads is not None:
        import torch

        torch.set_num_threads(min(threads, torch.get_num_threads()))


def friendly(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a stage's task function.

    Single run: an error the user can fix becomes one line and exit 2. Multirun job: any error is recorded
    for the sweep's summary (dinoloc.sweep) and the job returns, so the other jobs still run.
    """

    @functools.wraps(fn)
    def wrapper(cfg: Any) -> Any:
        warnings.formatwarning = format_warning  # also in launcher worker processes
        job = _multirun_job()
        share_cores_between_jobs(job)
        try:
            return fn(cfg)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            line = error_line(e)
            if job is None:
                if line is None:
                    raise
                print(f"dinoloc: error: {line}", file=sys.stderr)
                sys.exit(EXIT_USAGE)
            from dinoloc.sweep import record_failure

            if line is None:  # a bug: keep its traceback in the job's folder, one line on the console
                tb = Path(job.runtime.output_dir) / "traceback.txt"
                tb.parent.mkdir(parents=True, exist_ok=True)
                tb.write_text("".join(traceback.format_exception(e)))
                line = f"{type(e).__name__}: {_one_line(str(e))} (traceback: {tb})"
            record_failure(job, line)
            print(f"dinoloc: error: job {job.job.num} ({' '.join(job.overrides.task)}) failed: {line}; "
                  "the other jobs continue", file=sys.stderr)
            return None

    return wrapper
