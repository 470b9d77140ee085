"""The classifier stage: a 5-fold cross-validated head (the paper's MLP, or a k-NN / linear probe) on frozen
embeddings.

- `params`: ClassifierParams / KNNParams validated from configs/classifier/*.yaml; `params_from_config`.
- `trainer`: the K folds' MLPs trained as one batched model (sampling, schedules, AdamW, prediction).
- `cv`: folds, train-only standardisation, `cross_validate`, `cross_validate_seeds` -> CVResult.
- `probes`: DINO's weighted k-NN.
- `constant`: the trivial head (the best constant score per class).
- `stage`: the stage's entry point, `run_classification(ClassifySpec)`: data, embeddings, CV, result.json.
Scores are in dinoloc.metrics, the run folder's files in dinoloc.results.
Names are imported from the module that defines them (this file re-exports nothing, so importing a light
module such as `params` or `spec` does not import the heavy ones).
"""
