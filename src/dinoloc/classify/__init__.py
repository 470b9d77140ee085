"""The classifier stage: a 5-fold cross-validated head (the paper's MLP, or a k-NN / linear probe) on frozen
embeddings.

- `params`: ClassifierParams / KNNParams validated from configs/classifier/*.yaml; `params_from_config`.
- `trainer`: the K folds' MLPs trained as one batched model (sampling, schedules, AdamW, prediction).
- `cv`: folds, train-only standardisation, `cross_validate`, `cross_validate_seeds` -> CVResult.
- `probes`: DINO's weighted k-NN.
- `stage`: the stage's entry point, `run_classification(ClassifySpec)`: data, embeddings, CV, result.json.
Scores are in dinoloc.metrics, the run folder's files in dinoloc.results.
"""

from __future__ import annotations

from dinoloc.lazy import lazy_exports

# The names below load their module on first use (PEP 562): `dinoloc.classify.params` (read by the config schema at
# every command's start) does not pull in torch.
_WHERE = {
    "ADAM_EPS": "trainer",
    "CVResult": "cv",
    "ClassifierParams": "params",
    "ClassifySpec": "stage",
    "Hook": "trainer",
    "KNNParams": "params",
    "LOSS_CHOICES": "params",
    "LR_SCALING_CHOICES": "params",
    "RESAMPLE_CHOICES": "params",
    "SAMPLER_CHOICES": "params",
    "SCHEDULER_CHOICES": "params",
    "SCHEDULE_STEP_CHOICES": "params",
    "SPLITS": "cv",
    "class_uniform_weights": "trainer",
    "cross_validate": "cv",
    "cross_validate_seeds": "cv",
    "epoch_lrs": "trainer",
    "fit_standardizer": "cv",
    "fold_lr_schedules": "trainer",
    "fold_seed": "trainer",
    "head_name": "params",
    "init_mlp": "trainer",
    "knn_predict_proba": "probes",
    "knn_vote": "probes",
    "params_from_config": "params",
    "predict_proba": "trainer",
    "rarest_label_weights": "trainer",
    "run_classification": "stage",
    "run_name": "stage",
    "train_folds": "trainer",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
