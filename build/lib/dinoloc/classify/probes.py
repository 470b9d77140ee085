"""Probes beside the paper's MLP: DINO's weighted k-NN and a linear head, on the same folds and result files.

- `classifier=knn` is the k-NN of the official DINO evaluation (facebookresearch/dino `eval_knn.py`): cosine
  similarity of L2-normalised embeddings, the k = 20 most similar training images, each weighted by
  exp(similarity / T) with T = 0.07. DINO's ImageNet labels are single-label and it sums the weights per class
  and takes the argmax; the OpenCell labels are multi-label, so each class gets its own vote: the weighted share
  of the neighbours carrying it, sum_j w_j y_jc / sum_j w_j in [0, 1], thresholded like the MLP's sigmoid
  (`classifier.threshold`, 0.5 = a weighted majority of the neighbours). Its parameters: `params.KNNParams`.
- `classifier=linear` is the MLP without hidden layers (configs/classifier/linear.yaml: `hidden: []`,
  `dropout: 0`): one linear layer with BCE, trained by the same batched trainer and recipe, so the heads
  differ only in capacity.

Both go through `cv.cross_validate`: same folds, train-only standardisation (when `standardize` is true),
result.json / predictions.csv / per_class.csv (dinoloc.results), and report.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dinoloc.classify.params import KNNParams

_QUERY_CHUNK = 2048  # query rows per similarity block: bounds the (rows, n_train) matrix


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
