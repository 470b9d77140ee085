"""The classification stage: one typed spec in, `result.json` (and the predictions) out.

`run_classification(spec)` builds or reuses the data, extracts or reuses the embeddings, runs the 5-fold
cross-validation of the configured head on the 90% side, scores the untouched 10% test split, and writes
the run folder. A finished run with the same cache key and classifier settings is reused.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc import __version__
from dinoloc.backbones.families import family_label
from dinoloc.classify.spec import ClassifySpec
from dinoloc.data.manifest import class_columns
from dinoloc.data.prepare import run_data
from dinoloc.extract.cache import CacheEntry, embedding_rows
from dinoloc.extract.overlap import check_pretraining
from dinoloc.extract.stage import approach, key_of, run_extraction, source
from dinoloc.io import frame_sha256
from dinoloc.provenance import weights_record
from dinoloc.results import add_image_paths, load_result, row_role, run_dir_name, write_run
from dinoloc.stats import embedding_health

log = logging.getLogger("dinoloc")


def run_name(spec: ClassifySpec) -> str:
    """`<backbone>__<strategy>`, plus `__<head>` for a probe head and `__<variant>` for a variant."""
    ex = spec.extract
    return run_dir_name(ex.backbone.name, ex.strategy, spec.head, spec.variant)


def run_dir(spec: ClassifySpec) -> Path:
    return Path(spec.runs_dir) / run_name(spec)


def run_fingerprint(spec: ClassifySpec, manifest: pd.DataFrame, split: pd.DataFrame) -> dict[str, Any]:
    """What, besides the embeddings, decides a run's result: a finished run with the same is reused."""
    return {
        "classifier": {"name": spec.head, **spec.classifier.to_dict()},
        "split_sha256": frame_sha256(split),
        "labels_sha256": frame_sha256(manifest[["image_id", *class_columns(manifest)]]),
    }


def finished_result(spec: ClassifySpec, manifest: pd.DataFrame, split: pd.DataFrame) -> dict[str, Any] | None:
    """The stored result.json when it was made with this cache key and these settings (and force is off)."""
    previous = load_result(run_dir(spec))
    if previous is None or spec.force:
        return None
    if (previous.get("cache_key") == key_of(spec.extract, manifest)
            and previous.get("run_fingerprint") == run_fingerprint(spec, manifest, split)):
        return previous
    return None


def pretraining_check(spec: ClassifySpec, split: pd.DataFrame) -> dict[str, Any]:
    """dinoloc.extract.overlap for this run: the checkpoint's pretraining images against this split's test
    images; an overlap is refused naming the command that pretrains on this split's 90% side."""
    bb, data = spec.extract.backbone, spec.extract.data
    test_ids = set(split.loc[split["split"] == "test", "image_id"].astype(str))
    own = Path(data.out_dir) / "pretrain"
    variant = f" variant={spec.variant}" if spec.variant != "baseline" else ""
    command = (f"dinoloc-pretrain backbone={bb.name}{variant} paths.pretrain_dir={own} (with the pretrain= preset "
               f"the checkpoint was made with), then rerun with paths.pretrain_dir={own}")
    return check_pretraining(bb.weights, bb.name, data.reader, test_ids, command)


def run_classification(spec: ClassifySpec) -> dict[str, Any]:
    """Extract (cached) and run the 5-fold classifier for one backbone x strategy; returns result.json."""
    from dinoloc.classify.cv import CVData, cross_validate_seeds  # torch: only once the checks have passed
    from dinoloc.device import resolve_device

    params = spec.classifier
    manifest, split = run_data(spec.extract.data)
    pretraining = pretraining_check(spec, split)  # before any embedding: no test image in the pretraining
    previous = finished_result(spec, manifest, split)
    if previous is not None:
        log.info("%s: result exists for this config and cache key; skipping (force=true to redo)", run_dir(spec))
        return previous
    entry = run_extraction(spec.extract, manifest)
    emb, X, Y, s = _aligned(entry, manifest, split)
    classes = class_columns(manifest)  # from the data config (OpenCell's 17; a folder's data.classes)
    t0 = time.perf_counter()
    data = CVData(X, Y, s["split"].to_numpy(), s["fold"].to_numpy(), s["image_id"].to_numpy(), s["target"].to_numpy())
    cv = cross_validate_seeds(data, params, device=resolve_device(spec.extract.device), classes=classes,
                              head=spec.head)
    result = assemble_result(spec, entry, emb, manifest, split, params) | cv.summary
    result["pretraining"] = pretraining
    result["classifier_seconds"] = round(time.perf_counter() - t0, 3)
    write_run(run_dir(spec), result, add_image_paths(cv.predictions, manifest), cv.per_class)
    log.info(
        "%s: test macro F1 %.4f ± %.4f (train %.4f, val %.4f)%s", run_name(spec), result["test_macro_f1_mean"],
        result["test_macro_f1_std"], result["train_macro_f1_mean"], result["val_macro_f1_mean"],
        "  [SYNTHETIC]" if result["synthetic"] else "",
    )
    return result


def _aligned(entry: CacheEntry, manifest: pd.DataFrame, split: pd.DataFrame):
    """The cache's embeddings in split order, restricted to labelled images: (all embeddings, X, Y, split rows)."""
    emb, ids = entry.load()
    embedding_rows(ids, split["image_id"], entry.path)  # every split image, labelled or not, is in the cache
    labeled = split["split"].isin(["train", "test"]).to_numpy()
    s = split[labeled].assign(fold=split["fold"].fillna(-1).astype(int)[labeled])
    rows = embedding_rows(ids, s["image_id"], entry.path)
    Y = manifest.set_index("image_id").loc[s["image_id"], class_columns(manifest)].to_numpy().astype(int)
    return emb, emb[rows], Y, s.reset_index(drop=True)


def assemble_result(spec: ClassifySpec, entry: CacheEntry, emb: np.ndarray, manifest: pd.DataFrame,
                    split: pd.DataFrame, params: Any) -> dict[str, Any]:
    """result.json's description of the run: what was loaded (from the cache's record), what was configured,
    and the data it saw. The classifier's numbers are added by the caller."""

    ex, bb, data = spec.extract, spec.extract.backbone, spec.extract.data
    meta = entry.meta
    model = meta.get("model") or {}  # what the model said about itself at extraction (dinoloc.backbones.families)
    patch = model.get("patch_size") or bb.model_kwargs.get("patch_size") or "?"
    ckpt = meta.get("checkpoint") or {}
    if not ckpt and meta.get("checkpoint_epoch") is not None:
        ckpt = {"epoch": meta.get("checkpoint_epoch")}
    prov = weights_record(
        bb.weights, {"weights_sha256": _sha_of(meta.get("weights")), "random_init": meta.get("random_weights"),
                     "random_seed": meta.get("random_seed")}, ckpt, default=bb.weights_default,
    )
    prov["embedding_health"] = meta.get("embedding_health") or embedding_health(emb)
    src = source(ex)
    out = Path(data.out_dir)
    return {
        "experiment": spec.experiment,
        "variant": spec.variant,
        "backbone": bb.name,
        "backbone_display": bb.display,
        "arch": bb.arch,
        "model_label": bb.arch if bb.arch == "classical" else f"{bb.arch.split('_patch')[0]}/{patch}",
        "family": model.get("family") or family_label(bb.family),
        "embed_dim": model.get("embed_dim"),
        "approach": meta.get("approach") or approach(ex),
        "model_kwargs": dict(bb.model_kwargs),
        "strategy": ex.strategy,
        "head": spec.head,
        # pretrained | floor | trivial | classical (dinoloc.results.row_role; docs/references.md)
        "role": row_role(spec.head, bb.arch, bool(meta.get("random_weights", False))),
        # The checkpoint's own count wins; the config's value only where the file records none.
        "dino_epochs": ckpt.get("epoch") if ckpt.get("epoch") is not None else bb.dino_epochs,
        "dino_epochs_config": bb.dino_epochs,
        "provenance": prov,
        "resolved": {**resolved_config(spec, params), "used": used_values(params, bb, patch, ckpt)},
        "synthetic": bool(meta.get("synthetic")),
        "random_weights": bool(meta.get("random_weights", False)),
        "cache_key": entry.key,
        "cache_path": str(entry.path.resolve()),  # the report's embedding maps read it
        "cache_hit": entry.hit,
        "run_fingerprint": run_fingerprint(spec, manifest, split),
        "data": {
            "name": data.name,
            "root": str(Path(data.root).resolve()),
            "manifest": str((out / "manifest.csv").resolve()),
            "split": str((out / "split.csv").resolve()),
            "manifest_sha256": frame_sha256(manifest),
            "label_notes": manifest.attrs.get("label_notes", {}),
            "reader": data.reader,
            "channels": list(src.fields.get("data_channels") or []) or None,
            "channels_used": list(src.source_channels),  # after data.channel_roles (mapping: placed ones)
            "channel_roles": dict(data.channel_roles or {}) or None,
            "unit": data.unit,  # cell: embeddings per cell, averaged per image (dinoloc.extract.cells)
            **({"n_cells": meta.get("n_cells"), "cells_per_image": meta.get("cells_per_image")}
               if data.unit == "cell" else {}),
        },
        "versions": _versions(),
    }


def resolved_config(spec: ClassifySpec, params: Any) -> dict[str, Any]:
    """The values the paper's comparison depends on, as this run used them (diffed by dinoloc.provenance)."""
    d = spec.extract.data
    return {
        "classifier": params.to_dict(),
        "split": {"test_size": d.split.test_size, "n_folds": d.split.n_folds, "group_by": d.split.group_by,
                  "seed": d.split.seed},
        "labels": {"min_grade": d.labels.min_grade if d.labels else None},  # a labels-CSV folder has no grades
        "preprocess": spec.extract.backbone.preprocess.as_dict(),
    }


def used_values(params: Any, bb: Any, patch: Any, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The values that decide the number as they were actually used (not as configured): the lr after
    lr_scaling, the schedule step, the effective sampler (none when resample=none), standardisation, epochs,
    batch, architecture, patch size, input size and the DINO epochs of the checkpoint (else the config's).
    dinoloc.provenance diffs these against the paper's per row. A k-NN head has no lr/epochs/batch: None."""
    eff_lr = params.effective_lr() if hasattr(params, "effective_lr") else None
    sampler = getattr(params, "effective_sampler", None)  # a property
    return {
        "lr": eff_lr,
        "schedule_step": getattr(params, "schedule_step", None),
        "sampler": sampler,
        "standardize": getattr(params, "standardize", None),
        "epochs": getattr(params, "epochs", None),
        "batch_size": getattr(params, "batch_size", None),
        "arch": bb.arch,
        "patch_size": patch if isinstance(patch, int) else None,
        "img_size": bb.preprocess.img_size,
        "dino_epochs": ckpt.get("epoch") if ckpt.get("epoch") is not None else bb.dino_epochs,
    }


def _sha_of(fingerprint: Any) -> str | None:
    """The weights' sha256 from the cache's weights fingerprint (None for random init and timm names)."""
    text = str(fingerprint or "")
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def _versions() -> dict[str, str]:
    import sklearn
    import timm
    import torch

    return {"dinoloc": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__, "python": sys.version.split()[0]}
