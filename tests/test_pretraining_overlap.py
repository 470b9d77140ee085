"""No test image in any backbone's pretraining (dinoloc.extract.overlap): a checkpoint's pretrain_images.csv is
compared with the run's test set before anything is embedded; an overlap is refused in one line."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from dinoloc import cli
from dinoloc.extract.overlap import IMAGES_NAME, check_pretraining
from dinoloc.io import DinolocError
from dinoloc.pretrain.checkpoint import IMAGES_NAME as WRITTEN_NAME


def _ckpt(tmp_path, ids):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "checkpoint.pth").write_bytes(b"x")
    pd.DataFrame({"image_id": ids}).to_csv(d / IMAGES_NAME, index=False)
    return str(d / "checkpoint.pth")


def test_the_list_name_is_the_one_pretraining_writes():
    assert IMAGES_NAME == WRITTEN_NAME


def test_overlap_is_refused_naming_checkpoint_count_and_command(tmp_path):
    weights = _ckpt(tmp_path, ["a", "b", "c"])
    with pytest.raises(DinolocError) as e:
        check_pretraining(weights, "opencell_demo", "opencell", {"b", "c", "d"}, "dinoloc-pretrain X")
    msg = str(e.value)
    assert weights in msg and "2 of this run's 3 test images" in msg and msg.endswith("dinoloc-pretrain X")
    rec = check_pretraining(weights, "opencell_demo", "opencell", {"d", "e"}, "cmd")
    assert rec["overlap"] == 0 and rec["n_images"] == 3 and rec["status"].startswith("checked")


def test_outside_checkpoints_are_labelled_never_silently_trusted():
    url = "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
    assert "disjoint by construction" in check_pretraining(url, "imagenet", "opencell", {"a"}, "")["status"]
    assert "disjoint by construction" in check_pretraining("/w/hpa.pth", "hpa", "opencell", {"a"}, "")["status"]
    # the same weights on a user's own folder data: nobody knows what they saw
    assert check_pretraining(url, "imagenet", "folder", {"a"}, "")["status"].startswith("unknown")
    assert check_pretraining("/w/x.pth", "mine", "opencell", {"a"}, "")["overlap"] is None
    assert check_pretraining("", "random", "opencell", {"a"}, "")["status"].startswith("no pretraining")


@pytest.mark.slow
def test_image_split_with_the_baseline_opencell_stand_in_is_refused(tmp_path, capsys, monkeypatch):
    """Done-when of issue 23: pretrain the OpenCell stand-in on a fixture (the baseline split's 90% side), run
    the image_split variant with it: refused in one line, exit 2, with the overlap count."""
    out, ckpt = tmp_path / "out", tmp_path / "ckpt" / "checkpoint.pth"
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    common = ["backbone=opencell_demo", "debug=tiny", f"paths.output_dir={out}", f"backbone.weights={ckpt}"]
    monkeypatch.setattr(sys, "argv", ["dinoloc-pretrain", *common, "pretrain=demo", "pretrain.epochs=1",
                                      "pretrain.batch_size_per_gpu=16", "pretrain.global_crop_size=32",
                                      "pretrain.local_crop_size=16", "pretrain.amp=none"])
    cli.pretrain_main()
    assert ckpt.is_file()
    seen = set(pd.read_csv(ckpt.parent / IMAGES_NAME, dtype=str)["image_id"])
    baseline = pd.read_csv(out / "data" / "synthetic" / "split.csv", dtype=str)
    assert not seen & set(baseline.loc[baseline["split"] == "test", "image_id"])  # pretrained on the 90% only
    capsys.readouterr()

    monkeypatch.setattr(sys, "argv", ["dinoloc-run", *common, "strategy=native", "variant=image_split"])
    with pytest.raises(SystemExit) as e:
        cli.run_main()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    variant = pd.read_csv(out / "data" / "synthetic__image_split" / "split.csv", dtype=str)
    test_ids = set(variant.loc[variant["split"] == "test", "image_id"])
    n = len(seen & test_ids)
    assert n > 0  # an image-level split puts images of pretrained-on targets into test
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"dinoloc: error: {ckpt}: {n} of this run's {len(test_ids)} test images were in")
    assert "variant=image_split paths.pretrain_dir=" in err[0]
    assert not (out / "runs").exists() or not any((out / "runs").rglob("result.json"))  # nothing written
