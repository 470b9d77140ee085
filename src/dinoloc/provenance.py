"""What a Table III row was actually made with, and how that differs from the paper.

`resolved_config` (called by dinoloc-run) snapshots the values a reader needs into result.json;
`deviations_list` diffs them against `PAPER`, so the table's "Deviations from the paper" list is generated,
never written by hand; `choices_note` states the choices the paper leaves open. Pure Python (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dinoloc.results import result_run_name

# The paper's values, where it states them (Sec. "Classification head", Table I/III, "Datasets"). `used.*`
# are compared with the values a run actually used (classify/stage.py used_values), not the configured ones.
PAPER: dict[str, Any] = {
    "classifier.hidden": [512, 256],
    "classifier.dropout": 0.5,
    "classifier.weight_decay": 0.04,
    "classifier.betas": [0.9, 0.999],
    "classifier.scheduler": "cosine",
    "classifier.loss": "bce_with_logits",
    "split.test_size": 0.1,  # "trained on 90% ... holding out 10% as a test set"
    "split.n_folds": 5,
    "labels.min_grade": 1,  # "17 localization labels ... (grades 1-3)"
    "used.lr": 1.0e-4,  # "learning rate 1e-4", no scaling rule stated
    "used.epochs": 300,
    "used.batch_size": 512,
    # The paper says only "cosine annealing" and "resampling": the reproduction's readings (classifier/mlp.yaml:
    # per-epoch cosine, Dino4Cells' rarest-label weights, features standardised) count as the paper's here.
    "used.schedule_step": "epoch",
    "used.sampler": "rarest_label",
    "used.standardize": True,
    "used.arch": "vit_base_patch8_224",  # Table III: vit_base/8 for every row
    "used.patch_size": 8,
    "used.img_size": 224,  # DINO ViTs at 224 px
}
# Table III's DINO epochs per row (backbone family: the backbone's name before "_demo"); the floor has none.
PAPER_DINO_EPOCHS: dict[str, int] = {"imagenet": 300, "hpa": 100, "opencell": 300}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def paper_values(backbone: str | None = None) -> dict[str, Any]:
    """PAPER plus, for a backbone of one of Table III's rows, that row's DINO epochs."""
    family = str(backbone or "").removesuffix("_demo")
    extra = {"used.dino_epochs": PAPER_DINO_EPOCHS[family]} if family in PAPER_DINO_EPOCHS else {}
    return {**PAPER, **extra}


def deviations(resolved: dict[str, Any], backbone: str | None = None) -> dict[str, tuple[Any, Any]]:
    """{key: (this run's value, the paper's)} for every paper value (paper_values) the run's resolved or
    used value differs from."""
    flat = _flatten(resolved)
    # None: the choice does not exist for this data or head (a labels-CSV folder has no grades; k-NN no lr).
    return {k: (flat[k], v) for k, v in paper_values(backbone).items()
            if flat.get(k) is not None and not _same(flat[k], v)}


def _run_label(result: dict) -> str:
    return result_run_name(result)


def deviations_list(results: Sequence[dict]) -> list[str]:
    """One line per (key, value) deviating from the paper, naming the rows concerned (or "all rows"), plus
    one line per run without a recorded config."""
    found: dict[tuple[str, str, str], list[str]] = {}
    unknown = []
    for r in results:
        resolved = r.get("resolved")
        if not resolved:
            unknown.append(_run_label(r))
            continue
        for key, (value, paper) in deviations(resolved, r.get("backbone")).items():
            found.setdefault((key, repr(value), repr(paper)), []).append(_run_label(r))
    lines = []
    n = len(results)
    for (key, value, paper), rows in sorted(found.items()):
        where = "all rows" if len(rows) == n else ", ".join(rows)
        lines.append(f"`{key}` = {value} (paper: {paper}) — {where}")
    if unknown:
        lines.append(f"not recorded (run made before dinoloc recorded its config): {', '.join(unknown)}")
    return lines


_CHOICE_TEXT = {
    "split.group_by": lambda v: "the split is grouped by protein (no target in two sets)" if v == "target"
    else "the split is at image level (a protein may be in train and test)",
    "labels.min_grade": lambda v: "no grades (a labels CSV)" if v is None else f"a label counts from grade {v}",
}


def _describe_fov(pp: dict[str, Any]) -> str:
    spatial, size = pp.get("spatial"), pp.get("img_size")
    if spatial == "center_crop":
        return f"a centred {pp.get('crop_size')} px square of each FOV resized to {size} px"
    if spatial == "tile":
        return f"each FOV tiled into {size} px tiles, embeddings averaged"
    return f"the whole FOV resized to {size} px"


def _describe_intensity(pp: dict[str, Any]) -> str:
    text = {"minmax": "each channel divided by its image maximum", "percentile": "per-channel percentile scaling",
            "zscore": "per-image z-score"}.get(str(pp.get("intensity")), str(pp.get("intensity")))
    if pp.get("mean") is not None:
        text += f", then mean {pp.get('mean')} / std {pp.get('std')}"
    return text


def choices_note(results: Sequence[dict]) -> str:
    """The paper's open choices as these runs made them, one clause per choice (per row where rows differ)."""

    def per_row(fn) -> str:
        values: dict[str, list[str]] = {}
        for r in results:
            res = r.get("resolved") or {}
            values.setdefault(fn(res) if res else "not recorded", []).append(_run_label(r))
        if len(values) == 1:
            return next(iter(values))
        return "; ".join(f"{v} ({', '.join(rows)})" for v, rows in values.items())

    split = per_row(lambda res: _CHOICE_TEXT["split.group_by"](res.get("split", {}).get("group_by")))
    fov = per_row(lambda res: _describe_fov(res.get("preprocess", {})))
    grade = per_row(lambda res: _CHOICE_TEXT["labels.min_grade"](res.get("labels", {}).get("min_grade")))
    norm = per_row(lambda res: _describe_intensity(res.get("preprocess", {})))
    return (
        "Open choices (the paper does not fix these): split — " + split + ". FOV — " + fov + ". Labels — " + grade
        + ". Intensity — " + norm + ". Train F1 — the fold's real training rows (not the resampled loader), "
        "model in eval mode, so it is not directly comparable with Dino4Cells' train score."
    )


def epoch_mismatches(results: Sequence[dict]) -> list[str]:
    """Rows whose checkpoint records a DINO epoch count other than backbone.dino_epochs."""
    out = []
    for r in results:
        ckpt = ((r.get("provenance") or {}).get("checkpoint") or {}).get("epoch")
        cfg = r.get("dino_epochs_config")
        if ckpt is not None and cfg is not None and int(ckpt) != int(cfg):
            out.append(f"{_run_label(r)}: checkpoint epoch {ckpt}, backbone.dino_epochs={cfg}")
    return out


def embedding_warnings(results: Sequence[dict]) -> list[str]:
    """A warning per row whose embeddings look near-constant or collapsed (from the cache's meta.json).

    A network row is judged against the floor of its own architecture when the table has one (`floor_of`): it is
    flagged when its effective rank is clearly below the floor's (below FLOOR_RANK_RATIO x), since a random ViT's
    rank is itself low and varies with the architecture, so no fixed rank separates collapse from health. Without
    such a floor the fixed thresholds below are used, and the warning says so. Classical features and the
    trivial row are not embeddings of a network and are not judged."""
    from dinoloc.results import result_role

    out = []
    for r in results:
        if result_role(r) in ("trivial", "classical"):
            continue
        health = (r.get("provenance") or {}).get("embedding_health") or {}
        floor = floor_of(r, results) if result_role(r) != "floor" else None
        floor_health = ((floor or {}).get("provenance") or {}).get("embedding_health") or {}
        if result_role(r) == "floor":  # the floor is the calibration itself: only a constant input is a fault
            problem = _constant_problem(health)
        elif floor is not None and floor_health.get("effective_rank"):
            problem = _constant_problem(health) or _below_floor(health, floor_health, _run_label(floor))
        else:
            problem = health_problem(health)
            if problem:
                problem += " (no floor of this architecture in the table to calibrate against: fixed threshold)"
        if problem:
            out.append(f"{_run_label(r)}: {problem}; check the checkpoint and the channel order")
    return out


# A network row is flagged when its effective rank is below this share of the floor's (same architecture).
# Measured (issue 24, the old demo): a run collapsed to 3 of 1,024 prototypes fell from its init's 3.45 to 1.44
# (0.42x); healthy stand-ins sat at 0.7-1.0x of the floor. 0.5 separates the two; "clearly below", not "below".
FLOOR_RANK_RATIO = 0.5


def floor_of(result: dict, results: Sequence[dict]) -> dict | None:
    """The table's floor row of the same network (arch and model_kwargs), preferring the same input channels,
    strategy and head; None when there is none."""
    from dinoloc.results import result_role

    def same(a: dict, key: str) -> bool:
        return a.get(key) == result.get(key)

    floors = [f for f in results if result_role(f) == "floor" and same(f, "arch") and same(f, "model_kwargs")]
    if not floors:
        return None
    in_chans = ((result.get("provenance") or {}).get("checkpoint") or {}).get("in_chans")

    def score(f: dict) -> tuple:
        f_chans = ((f.get("provenance") or {}).get("checkpoint") or {}).get("in_chans")
        return (same(f, "strategy"), in_chans is not None and f_chans == in_chans, same(f, "head"),
                (f.get("variant") or "baseline") == (result.get("variant") or "baseline"))

    return max(floors, key=score)


def _constant_problem(health: dict[str, Any]) -> str | None:
    std = health.get("mean_std")
    return f"near-constant embeddings (mean feature std {std:.2e})" if std is not None and std < 1e-6 else None


def _below_floor(health: dict[str, Any], floor_health: dict[str, Any], floor_name: str) -> str | None:
    rank, floor_rank = health.get("effective_rank"), floor_health.get("effective_rank")
    if rank is None or floor_rank is None or rank >= FLOOR_RANK_RATIO * floor_rank:
        return None
    return (f"collapsed embeddings (effective rank {rank:.2f}, below {FLOOR_RANK_RATIO:g} x the rank "
            f"{floor_rank:.2f} of its architecture's random-weights floor {floor_name})")


# Thresholds for the health check: an effective rank below 2 or a first component holding over 90% of the
# variance means the embeddings carry almost one direction of information (DINO collapse, a dead channel, or
# channels in the wrong order feeding the model constant input).
MIN_EFFECTIVE_RANK = 2.0
MAX_TOP_SHARE = 0.9


def health_problem(health: dict[str, Any]) -> str | None:
    rank, top, std = health.get("effective_rank"), health.get("top_component_share"), health.get("mean_std")
    if std is not None and std < 1e-6:
        return f"near-constant embeddings (mean feature std {std:.2e})"
    if rank is not None and rank < MIN_EFFECTIVE_RANK:
        return f"collapsed embeddings (effective rank {rank:.2f})"
    if top is not None and top > MAX_TOP_SHARE:
        return f"collapsed embeddings (first component holds {top:.0%} of the variance)"
    return None


def weights_record(weights: str | None, info: dict[str, Any], checkpoint: dict[str, Any], default: bool) -> dict:
    """result.json's provenance of the weights: path, sha256, whether they are the preset's default (False:
    the user's own, set on the command line), and what the checkpoint file says about itself."""
    weights = str(weights or "")
    return {
        "weights_path": weights,
        "weights_file": Path(weights).name if weights else "",
        "weights_sha256": info.get("weights_sha256"),
        "weights_default": bool(default),
        "random_weights": bool(info.get("random_init", False)),
        "random_seed": info.get("random_seed"),
        "checkpoint": checkpoint,
    }
