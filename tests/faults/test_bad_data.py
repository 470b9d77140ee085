"""Fault suite, bad data: every case ends with one message naming the file (and row) and the fix, and no manifest
or split is written for it. In-process through the data stage (`run_data`); one case through `dinoloc-data` for
the exit code 2 and the single `dinoloc: error:` line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinoloc.config import compose, data_spec, extract_spec
from dinoloc.console import error_line
from dinoloc.data.prepare import run_data
from dinoloc.extract.stage import run_extraction

BIN = Path(sys.executable).parent


def _first_image(root: Path) -> Path:
    return sorted(root.glob("*/*_proj.tif"))[0]


def _replace_image(data):
    def corrupt(root: Path, csv: Path) -> str:
        p = _first_image(root)
        tifffile.imwrite(p, data, photometric="minisblack")
        return p.name
    return corrupt


def _truncate(root, csv):
    p = _first_image(root)
    p.write_bytes(p.read_bytes()[:-700])
    return p.name


def _zero_bytes(root, csv):
    p = _first_image(root)
    p.write_bytes(b"")
    return p.name


def _missing_images(root, csv):
    folder = sorted(root.glob("GENE003_*"))[0]
    for p in folder.iterdir():
        p.unlink()
    return "GENE003"


def _edit_csv(fn):
    def corrupt(root, csv):
        lines = csv.read_text().splitlines()
        csv.write_bytes(fn(lines))
        return csv.name
    return corrupt


CASES = {
    "truncated_tiff": _truncate,
    "zero_byte_tiff": _zero_bytes,
    "one_channel": _replace_image(np.zeros((32, 32), np.uint16)),
    "three_channels": _replace_image(np.zeros((3, 32, 32), np.uint16)),
    "four_channels": _replace_image(np.zeros((4, 32, 32), np.uint16)),
    "eight_bit": _replace_image(np.zeros((2, 32, 32), np.uint8)),
    "float": _replace_image(np.zeros((2, 32, 32), np.float32)),
    "far_too_small": _replace_image(np.zeros((2, 4, 4), np.uint16)),
    "annotated_target_without_images": _missing_images,
    "unknown_category": _edit_csv(lambda L: "\n".join([L[0], L[1].replace(L[1].split(",")[2], "nucleoli"), *L[2:]]).encode()),
    "duplicated_target": _edit_csv(lambda L: "\n".join([*L, L[1]]).encode()),
    "missing_columns": _edit_csv(lambda L: "\n".join(",".join(r.split(",")[:3]) for r in L).encode()),
    "empty_file": _edit_csv(lambda L: b""),
    "non_utf8": _edit_csv(lambda L: ("\n".join(L)).encode() + b"\n\xff\xfe,\xff\n"),
}


def _refusal(check) -> str:
    """The one line the console prints for the error `check()` raises (None would mean a traceback)."""
    with pytest.raises(Exception) as exc:  # noqa: PT011 - error_line maps each kind a user can fix
        check()
    line = error_line(exc.value)
    assert line is not None, f"{type(exc.value).__name__} would print a traceback: {exc.value}"
    return line


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_fails_loudly_and_writes_nothing(tmp_path, write_opencell_tree, case):
    root, csv = write_opencell_tree(n_targets=12, images_per_target=2, size=32)
    culprit = CASES[case](root, csv)
    out = tmp_path / "out"
    spec = data_spec(compose(["data=opencell", f"data.root={root}", f"paths.output_dir={out}"]))
    assert culprit in _refusal(lambda: run_data(spec))
    assert not list(out.rglob("manifest.csv")) and not list(out.rglob("split.csv"))


def test_bad_data_exits_2_with_one_line(tmp_path, write_opencell_tree):
    root, csv = write_opencell_tree(n_targets=12, images_per_target=2, size=32)
    culprit = _truncate(root, csv)
    out = tmp_path / "out"
    res = subprocess.run(
        [str(BIN / "dinoloc-data"), "data=opencell", f"data.root={root}", f"paths.output_dir={out}"],
        capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"}, timeout=120,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("dinoloc: error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert culprit in errors[0]
    assert not list(out.rglob("manifest.csv")) and not list(out.rglob("split.csv"))


def test_image_deleted_after_the_manifest_is_named_and_nothing_cached(tmp_path, write_opencell_tree):
    root, _ = write_opencell_tree(n_targets=12, images_per_target=2, size=32)
    out = tmp_path / "out"
    cfg = compose(["data=opencell", f"data.root={root}", f"paths.output_dir={out}", "backbone=opencell_demo",
                   "strategy=native", "backbone.weights=", "allow_random_weights=true", "extract.num_workers=0"])
    run_data(data_spec(cfg))
    gone = _first_image(root)
    gone.unlink()
    spec = extract_spec(cfg)
    # The data folder is rescanned: the stored split no longer fits and the removed image is named.
    line = _refusal(lambda: run_extraction(spec, run_data(spec.data)[0]))
    image_id = gone.name.removesuffix("_proj.tif")
    assert image_id in line and "removed" in line, line
    assert not list(out.rglob("meta.json")) and not list(out.rglob("embeddings.npy"))
