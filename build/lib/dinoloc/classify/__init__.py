"""The classifier stage: a 5-fold cross-validated head (the paper's MLP, or a k-NN / linear probe) on frozen
embeddings.

- `params`: ClassifierParams / KNNParams validated from configs/classifier/*.yaml; `params_from_config`.
- `trainer`: the K folds' MLPs trained as one batched model (sampling, schedules, AdamW, prediction).
- `cv`: folds, train-only standardisation, `cross_validate`, `cross_validate_seeds` -> CVResult.
- `probes`: DINO's weighted k-NN.
- `stage`: the stage's entry point, `run_classification(ClassifySpec)`: data, embeddings, CV, result.json.
Scores are in dinoloc.metrics, the run folder's files in dinoloc.results.
"""

from dinoloc.classify.cv import SPLITS, CVResult, cross_validate, cross_validate_seeds, fit_standardizer
from dinoloc.classify.params import (
    LOSS_CHOICES,
    LR_SCALING_CHOICES,
    RESAMPLE_CHOICES,
    SAMPLER_CHOICES,
    SCHEDULE_STEP_CHOICES,
    SCHEDULER_CHOICES,
    ClassifierParams,
    KNNParams,
    head_name,
    params_from_config,
    refuse_unknown_keys,
)
from dinoloc.classify.probes import knn_predict_proba, knn_vote
from dinoloc.classify.stage import ClassifySpec, run_classification, run_name
from dinoloc.classify.trainer import (
    ADAM_EPS,
    Hook,
    class_uniform_weights,
    epoch_lrs,
    fold_lr_schedules,
    fold_seed,
    init_mlp,
    predict_proba,
    rarest_label_weights,
    train_folds,
)

__all__ = [
    "ADAM_EPS", "ClassifySpec", "LOSS_CHOICES", "LR_SCALING_CHOICES", "RESAMPLE_CHOICES", "SAMPLER_CHOICES", "SCHEDULER_CHOICES",
    "SCHEDULE_STEP_CHOICES", "SPLITS", "CVResult", "ClassifierParams", "Hook", "KNNParams", "class_uniform_weights",
    "cross_validate", "cross_validate_seeds", "epoch_lrs", "fit_standardizer", "fold_lr_schedules", "fold_seed",
    "head_name", "init_mlp", "knn_predict_proba", "knn_vote", "params_from_config", "predict_proba",
    "rarest_label_weights", "refuse_unknown_keys", "run_classification", "run_name", "train_folds",
]
