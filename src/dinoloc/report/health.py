"""The report's health notes: what each pretrained row's network is, measured against the random-weights floor of
its own architecture (docs/references.md). Per row: the embeddings' effective rank beside the floor's, their
linear CKA with the floor's embeddings of the same images, and, where the checkpoint records them (pretraining
writes `dinoloc_info` into it), how far pretraining moved the weights from their init and the init's seed.

Why: a stand-in whose weights barely moved, or that starts from the floor's own init, is the floor under another
name (issue 24 measured CKA 0.998 and a median 1% weight change), and a paired test against the floor then
compares a network with itself. Flags (`health_flags`) go into the table notes' warnings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc.provenance import floor_of
from dinoloc.results import result_role, result_run_name

# A stand-in's embeddings with a linear CKA above this with the floor's are the floor's, for the table's purpose.
MAX_CKA_WITH_FLOOR = 0.95
# A median relative weight change from init below this means pretraining barely moved the network.
MIN_WEIGHT_CHANGE = 0.05
CKA_MAX_ROWS = 2000  # images compared (a seeded subsample above it; the same rows for both caches)


def _load(result: dict) -> tuple[np.ndarray, list[str]] | None:
    path = Path(str(result.get("cache_path") or ""))
    if not (path / "embeddings.npy").is_file() or not (path / "index.csv").is_file():
        return None
    emb = np.load(path / "embeddings.npy")
    ids = pd.read_csv(path / "index.csv", dtype={"image_id": str})["image_id"].tolist()
    return (emb, ids) if len(ids) == len(emb) else None


def cka_with(result: dict, other: dict, seed: int = 0) -> float | None:
    """Linear CKA of two runs' cached embeddings over the images both hold; None when a cache is gone."""
    from dinoloc.stats import linear_cka

    a, b = _load(result), _load(other)
    if a is None or b is None:
        return None
    pos_b = {i: k for k, i in enumerate(b[1])}
    rows = [(k, pos_b[i]) for k, i in enumerate(a[1]) if i in pos_b]
    if len(rows) < 3:
        return None
    if len(rows) > CKA_MAX_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), CKA_MAX_ROWS, replace=False))
        rows = [rows[k] for k in keep]
    ia, ib = np.array(rows).T
    return linear_cka(a[0][ia], b[0][ib])


def pretrain_log(result: dict) -> dict[str, Any]:
    """The last epoch of the pretraining log.csv beside the row's checkpoint (dinoloc-pretrain writes it), when
    there is one: the teacher's entropy and the prototypes it used at the end of pretraining."""
    weights = str((result.get("provenance") or {}).get("weights_path") or "")
    path = Path(weights).parent / "log.csv" if weights and "://" not in weights and not weights.startswith("timm:") else None
    if path is None or not path.is_file():
        return {}
    try:
        last = pd.read_csv(path).iloc[-1]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, IndexError, OSError):
        return {}
    out = {"teacher_entropy": last.get("teacher_entropy"), "prototypes_used": last.get("prototypes_used")}
    return {k: float(v) for k, v in out.items() if v is not None and pd.notna(v)}


def row_health(result: dict, results: Sequence[dict]) -> dict[str, Any]:
    """The diagnostics of one pretrained row (None where not measurable)."""
    prov = result.get("provenance") or {}
    ckpt = prov.get("checkpoint") or {}
    floor = floor_of(result, results)
    floor_prov = (floor or {}).get("provenance") or {}
    return {
        "run": result_run_name(result),
        "effective_rank": (prov.get("embedding_health") or {}).get("effective_rank"),
        "floor": result_run_name(floor) if floor is not None else None,
        "floor_rank": (floor_prov.get("embedding_health") or {}).get("effective_rank"),
        "floor_seed": floor_prov.get("random_seed"),
        "cka_with_floor": cka_with(result, floor) if floor is not None else None,
        "weight_change_from_init": ckpt.get("weight_change_from_init"),
        "init_seed": ckpt.get("init_seed"),
        **{f"pretrain_{k}": v for k, v in pretrain_log(result).items()},
    }


def health_rows(results: Sequence[dict]) -> list[dict[str, Any]]:
    """row_health of every pretrained row, in the given order."""
    return [row_health(r, results) for r in results if result_role(r) == "pretrained"]


def _fmt(x: Any, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def health_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per pretrained row: rank vs the floor's, CKA with the floor, weight change from init."""
    out = []
    for h in rows:
        floor = f"floor {h['floor']}: {_fmt(h['floor_rank'], '.2f')}" if h["floor"] else "no floor of this architecture"
        moved = ("weights moved " + _fmt(h["weight_change_from_init"], ".1%") + " from init (median relative L2 per "
                 f"tensor; init seed {_fmt(h['init_seed'], '')})") if h["weight_change_from_init"] is not None else \
            "weight change from init not recorded in the checkpoint"
        teacher = ""
        if h.get("pretrain_teacher_entropy") is not None:
            teacher = f"; last pretraining epoch: teacher entropy {h['pretrain_teacher_entropy']:.2f}"
            if h.get("pretrain_prototypes_used") is not None:
                teacher += f", {int(h['pretrain_prototypes_used'])} prototypes used"
        out.append(f"{h['run']}: effective rank {_fmt(h['effective_rank'], '.2f')} ({floor}); linear CKA with the "
                   f"floor's embeddings {_fmt(h['cka_with_floor'], '.3f')}; {moved}{teacher}")
    return out


def health_flags(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Warnings: a row that is the floor under another name (CKA, init seed) or whose weights barely moved."""
    out = []
    for h in rows:
        cka = h["cka_with_floor"]
        if cka is not None and np.isfinite(cka) and cka > MAX_CKA_WITH_FLOOR:
            out.append(f"{h['run']}: its embeddings are nearly the floor's (linear CKA {cka:.3f} > "
                       f"{MAX_CKA_WITH_FLOOR}): a comparison with the floor compares a network with itself")
        if h["init_seed"] is not None and h["floor_seed"] is not None and int(h["init_seed"]) == int(h["floor_seed"]):
            out.append(f"{h['run']}: pretraining started from the floor's own init (seed {h['init_seed']}); give "
                       "the floor (backbone.random_seed) or the pretraining a seed of its own")
        moved = h["weight_change_from_init"]
        if moved is not None and float(moved) < MIN_WEIGHT_CHANGE:
            out.append(f"{h['run']}: pretraining moved its weights by only {float(moved):.1%} from init (median "
                       f"per tensor, < {MIN_WEIGHT_CHANGE:.0%}): raise pretrain.lr or pretrain.epochs")
    return out
