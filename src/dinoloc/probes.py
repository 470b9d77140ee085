"""Probes beside the paper's MLP: DINO's weighted k-NN and a linear head, on the same folds and result files.

- `classifier=knn` is the k-NN of the official DINO evaluation (facebookresearch/dino `eval_knn.py`): cosine
  similarity of L2-normalised embeddings, the k = 20 most similar training images, each weighted by
  exp(similarity / T) with T = 0.07. DINO's ImageNet labels are single-label and it sums the weights per class
  and takes the argmax; the OpenCell labels are multi-label, so each class gets its own vote: the weighted share
  of the neighbours carrying it, sum_j w_j y_jc / sum_j w_j in [0, 1], thresholded like the MLP's sigmoid
  (`classifier.threshold`, 0.5 = a weighted majority of the neighbours).
- `classifier=linear` is the MLP without hidden layers (configs/classifier/linear.yaml: `hidden: []`,
  `dropout: 0`): one linear layer with BCE, trained by the same batched trainer and recipe, so the heads
  differ only in capacity.

Both go through `classify.cross_validate`: same folds, train-only standardisation (when `standardize`
is true), result.json / predictions.csv / per_class.csv, and report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dinoloc.classify import refuse_unknown_keys
from dinoloc.io import DinolocError

HEADS = ("mlp", "knn", "linear")
DEFAULT_HEAD = "mlp"
# Keys of the trained heads (configs/classifier/mlp.yaml) that mean nothing to the k-NN.
_TRAINING_KEYS = ("hidden", "dropout", "epochs", "batch_size", "lr", "weight_decay", "betas", "scheduler", "loss",
                  "resample", "unlabeled_weight", "lr_scaling", "schedule_step", "sampler", "n_seeds")
_QUERY_CHUNK = 2048  # query rows per similarity block: bounds the (rows, n_train) matrix


@dataclass(frozen=True)
class KNNParams:
    """configs/classifier/knn.yaml (values from the official DINO eval_knn.py unless noted)."""

    k: int
    temperature: float
    threshold: float
    standardize: bool
    seed: int = 0  # unused (k-NN is deterministic); kept so every head records a seed

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KNNParams:
        """Validated params; the MLP's training keys are ignored (a sweep preset may set them for every head,
        e.g. the demo's batch size), any other unknown key is an error naming it."""
        d = {k: v for k, v in dict(d).items() if k != "name" and k not in _TRAINING_KEYS}
        refuse_unknown_keys(d, [f.name for f in dataclasses.fields(cls)], "knn.yaml", " for classifier=knn")
        missing = [k for k in ("k", "temperature", "threshold", "standardize") if k not in d]
        if missing:
            raise DinolocError(f"missing classifier key(s) {['classifier.' + k for k in missing]} for classifier=knn")
        k = d["k"]
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise DinolocError(f"classifier.k={k!r}: must be an integer >= 1")
        out: dict[str, Any] = {"k": int(k)}
        for key in ("temperature", "threshold"):
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise DinolocError(f"classifier.{key}={v!r}: must be a finite number")
            out[key] = float(v)
        if out["temperature"] <= 0:
            raise DinolocError(f"classifier.temperature={d['temperature']!r}: must be > 0")
        if not 0 < out["threshold"] < 1:
            raise DinolocError(f"classifier.threshold={d['threshold']!r}: must satisfy 0 < threshold < 1")
        if not isinstance(d["standardize"], (bool, np.bool_)):
            raise DinolocError(f"classifier.standardize={d['standardize']!r}: must be true or false")
        out["standardize"] = bool(d["standardize"])
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise DinolocError(f"classifier.seed={seed!r}: must be an integer")
        out["seed"] = int(seed)
        return cls(**out)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def head_name(classifier_cfg: dict[str, Any]) -> str:
    """The head a classifier config describes (its `name`; `mlp` when absent)."""
    name = str(classifier_cfg.get("name") or DEFAULT_HEAD)
    if name not in HEADS:
        raise DinolocError(f"classifier.name={name!r} is unknown; use classifier=mlp, knn or linear")
    return name


def params_from_config(classifier_cfg: dict[str, Any]):
    """Validated parameters of any head: `KNNParams` for knn, `ClassifierParams` for mlp and linear."""
    from dinoloc.classify import ClassifierParams

    if head_name(classifier_cfg) == "knn":
        return KNNParams.from_dict(classifier_cfg)
    return ClassifierParams.from_dict(classifier_cfg)


def run_dir_name(backbone: str, strategy: str, head: str, variant: str = "baseline") -> str:
    """`<backbone>__<strategy>` for the paper's MLP (unchanged), plus `__<head>` for a probe head and
    `__<variant>` for a sensitivity variant other than the baseline."""
    name = f"{backbone}__{strategy}" if head == DEFAULT_HEAD else f"{backbone}__{strategy}__{head}"
    return name if variant == "baseline" else f"{name}__{variant}"


def result_run_name(result: dict[str, Any]) -> str:
    """run_dir_name of a finished run's result.json (runs older than the heads / variants: mlp / baseline)."""
    return run_dir_name(str(result.get("backbone")), str(result.get("strategy")),
                        str(result.get("head") or DEFAULT_HEAD), str(result.get("variant") or "baseline"))


# ----------------------------------------------------------------------------------------------------------
# k-NN
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def knn_vote(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, k: int,
             temperature: float) -> torch.Tensor:
    """Per-class weighted vote (n_query, C) in [0, 1] of the k training rows most cosine-similar to each query.

    As DINO's eval_knn.py: features L2-normalised, similarity = dot product, top-k, weight exp(sim / T).
    The vote for class c is sum_j w_j y_jc / sum_j w_j (multi-label; DINO's single-label argmax of
    sum_j w_j onehot_j is the same ranking without the normalisation)."""
    train = F.normalize(train_x.double(), dim=1)
    y = train_y.double()
    k = min(k, train.shape[0])
    out = []
    for lo in range(0, query_x.shape[0], _QUERY_CHUNK):
        q = F.normalize(query_x[lo : lo + _QUERY_CHUNK].double(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1, largest=True, sorted=True)
        # exp(sim / T) <= exp(1 / 0.07) ~ 1.6e6: no overflow in float64; subtracting the row max would not
        # change the normalised vote.
        w = (sim / temperature).exp()
        out.append((w[..., None] * y[idx]).sum(dim=1) / w.sum(dim=1, keepdim=True))
    return torch.cat(out)


def knn_predict_proba(X: torch.Tensor, Y: torch.Tensor, train_rows: list[np.ndarray], means: torch.Tensor,
                      stds: torch.Tensor, params: KNNParams) -> np.ndarray:
    """Every fold's k-NN vote on every row: (K, N, C) float64. Fold k's neighbours are its training rows,
    standardised (when asked) with fold k's statistics before the L2 normalisation."""
    out = []
    for k, rows in enumerate(train_rows):
        xs = (X - means[k]) / stds[k]
        idx = torch.as_tensor(rows, dtype=torch.long, device=X.device)
        out.append(knn_vote(xs[idx], Y[idx], xs, params.k, params.temperature).cpu().numpy())
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------------
# report: do the heads agree on the ranking?
# ----------------------------------------------------------------------------------------------------------
def ranking_notes(table: pd.DataFrame) -> list[str]:
    """One note per probe head whose ranking of the rows (backbone x strategy, by test macro F1) differs from
    the MLP's, over the rows both heads have. Empty when there is one head or they agree."""
    if "head" not in table or table["head"].nunique() < 2:
        return []
    key = table["backbone"].astype(str) + "__" + table["strategy"].astype(str)
    scores = {h: dict(zip(key[table["head"] == h], table.loc[table["head"] == h, "test_f1_mean"], strict=True))
              for h in table["head"].unique()}
    ref = DEFAULT_HEAD if DEFAULT_HEAD in scores else sorted(scores)[0]
    notes = []
    for head in sorted(h for h in scores if h != ref):
        common = [r for r in scores[ref] if r in scores[head]]
        if len(common) < 2:
            continue
        order_ref = sorted(common, key=lambda r: -scores[ref][r])
        order_head = sorted(common, key=lambda r: -scores[head][r])
        if order_ref != order_head:
            notes.append(
                f"{head} ranks the rows differently from {ref}: {ref} {' > '.join(order_ref)}; "
                f"{head} {' > '.join(order_head)}"
                + (" (the best row differs)" if order_ref[0] != order_head[0] else "")
            )
    return notes
