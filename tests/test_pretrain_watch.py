"""Pretraining warns while it runs (after each epoch, not after the run) when the teacher collapses, naming the
knob to turn (dinoloc.pretrain.watch)."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest
import torch

from dinoloc.pretrain.watch import CollapseWatch, count_used, prototypes_hit


def test_prototypes_hit_marks_each_rows_argmax_across_iterations():
    q1 = torch.tensor([[0.1, 0.8, 0.1, 0.0], [0.7, 0.1, 0.1, 0.1]])
    q2 = torch.tensor([[0.1, 0.8, 0.1, 0.0]])
    seen = prototypes_hit(q2, prototypes_hit(q1, None))
    assert seen.tolist() == [True, True, False, False] and count_used(seen, world=1) == 2


@pytest.mark.parametrize(("row", "kind", "knob"), [
    ({"teacher_entropy": 0.97 * math.log(1024), "prototypes_used": 500}, "near uniform", "lower pretrain.teacher_temp"),
    ({"teacher_entropy": 0.02, "prototypes_used": 500}, "near one-hot", "raise pretrain.teacher_temp"),
    ({"teacher_entropy": 3.0, "prototypes_used": 7}, "only 7 of K = 1024", "lower pretrain.out_dim"),
])
def test_each_collapse_names_its_knob(row, kind, knob):
    watch = CollapseWatch(out_dim=1024, epochs=10, after_epoch=2)
    assert watch.check({"epoch": 2, **row}) == []  # the lr warmup: silent
    with pytest.warns(UserWarning, match=kind) as rec:
        watch.check({"epoch": 3, **row})
    assert knob in str(rec[0].message) and "epoch 3/10" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert watch.check({"epoch": 4, **row}) == []  # raised once while it lasts ...
    assert "still" in watch.check({"epoch": 10, **row})[0]  # ... and again at the end if still there


def test_a_healthy_teacher_is_silent():
    watch = CollapseWatch(out_dim=1024, epochs=5, after_epoch=0)
    assert watch.check({"epoch": 5, "teacher_entropy": 3.0, "prototypes_used": 200}) == []


def test_a_collapsing_run_warns_before_it_ends(tmp_path):
    """A real (tiny) pretraining: a very hot teacher (teacher_temp 1.0) is near uniform; the warning comes at the
    first epoch after the warmup, while epochs remain, and log.csv records the prototypes used."""
    from test_pretrain import run_tiny, tiny_images

    with pytest.warns(UserWarning, match=r"epoch 2/3: the teacher is near uniform") as rec:
        run_tiny(tmp_path / "run", tiny_images(), epochs=3, warmup_epochs=1, teacher_temp=1.0,
                 warmup_teacher_temp=1.0)
    first = next(str(w.message) for w in rec if "near uniform" in str(w.message))
    assert "pretrain.teacher_temp" in first
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert log["prototypes_used"].between(1, 64).all()
