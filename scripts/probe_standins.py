"""Did DINO pretraining learn something? kNN and linear probes on the demo stand-ins vs the same ViT untrained.

For each stand-in backbone (pretrained by `make demo` / dinoloc-pretrain) the synthetic OpenCell images are embedded
twice, with the pretrained teacher and with random weights of the same architecture, and two cheap probes are scored by macro F1
(the classifier stage's definition):
the package's k-NN (classifier=knn, configs/classifier/knn.yaml) and a one-vs-rest logistic regression on
standardised features, each fitted 5 times
(leave one of the split's 5 target-grouped train folds out) and scored on the pooled held-out predictions.
The test split is never used: it stays untouched for Table III. Ends with a one-line JSON.

    python scripts/probe_standins.py [--only=opencell_demo] [paths.output_dir=outputs]
"""

from __future__ import annotations

import json
import sys

import numpy as np
from hydra import compose, initialize_config_dir
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from dinoloc import CONFIG_DIR
from dinoloc.classify.cv import knn_leave_group_out
from dinoloc.classify.params import KNNParams, params_from_config
from dinoloc.config import data_spec, extract_spec, given
from dinoloc.data.prepare import run_data
from dinoloc.extract.cache import embedding_rows
from dinoloc.extract.stage import run_extraction
from dinoloc.metrics import macro_f1
from dinoloc.ontology import CATEGORIES

ROWS = [("imagenet_demo", "mapping"), ("hpa_demo", "mapping"), ("opencell_demo", "native")]


def _linear_predict(emb: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    scaler = StandardScaler().fit(emb[train])
    xtr, xte = scaler.transform(emb[train]), scaler.transform(emb[test])
    keep = y[train].sum(0) > 0  # a class absent from training cannot be fitted by a linear probe
    lin = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=0.1)).fit(xtr, y[train][:, keep])
    pred_lin = np.zeros_like(y[test])
    pred_lin[:, keep] = lin.predict(xte)
    return pred_lin


def probes(emb: np.ndarray, y: np.ndarray, group: np.ndarray, knn: KNNParams) -> dict[str, float]:
    """Macro F1 of predictions pooled over the grouped folds: every image is predicted once by a probe that
    never saw its target. Pass training rows only (see `probe_rows`)."""
    pred = {"knn": knn_leave_group_out(emb, y, group, knn), "linear": np.zeros_like(y)}
    for g in np.unique(group):
        held = group == g
        pred["linear"][held] = _linear_predict(emb, y, ~held, held)
    return {name: macro_f1(y, p)[0] for name, p in pred.items()}
def probe_rows(split_col: np.ndarray, fold_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, group): the rows the probes may use (the train split only; test rows are kept out, as every
    stage keeps them out of model fitting and selection) and their target-grouped fold."""
    mask = np.asarray(split_col) == "train"
    return mask, np.asarray(fold_col)[mask]


def main(argv: list[str]) -> None:
    only = [a.split("=", 1)[1] for a in argv if a.startswith("--only=")]  # e.g. --only=opencell_demo
    overrides = [a for a in argv if not a.startswith("--only=")]
    selected = [r for r in ROWS if not only or r[0] in only]
    results = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for backbone, strategy in selected:
            for init in ("pretrained", "random"):
                extra = ["backbone.weights=", "allow_random_weights=true"] if init == "random" else []
                cfg = compose("config", overrides=[f"backbone={backbone}", f"strategy={strategy}", "classifier=knn",
                                                   *extra, *overrides])
                manifest, split = run_data(data_spec(cfg))
                entry = run_extraction(extract_spec(cfg), manifest)
                emb, ids = entry.load()
                rows = embedding_rows(ids, split["image_id"], entry.path)
                y = manifest.set_index("image_id").loc[split["image_id"], list(CATEGORIES)].to_numpy().astype(int)
                lab, group = probe_rows(split["split"].to_numpy(), split["fold"].fillna(-1).astype(int).to_numpy())
                r = probes(emb[rows][lab], y[lab], group, params_from_config(given(cfg.classifier)))
                results.append({"backbone": backbone, "strategy": strategy, "init": init, **r})
                print(f"{backbone:14s} {strategy:12s} {init:10s} kNN F1 {r['knn']:.3f}  linear F1 {r['linear']:.3f}",
                      flush=True)
    gain = {}
    for backbone, _ in selected:
        p = next(r for r in results if r["backbone"] == backbone and r["init"] == "pretrained")
        q = next(r for r in results if r["backbone"] == backbone and r["init"] == "random")
        gain[backbone] = {k: round(p[k] - q[k], 4) for k in ("knn", "linear")}
    print("SYNTHETIC DEMO data. Pretrained minus random (macro F1):", gain)
    print(json.dumps({"bench": "probe_standins", "results": results, "gain": gain}))


if __name__ == "__main__":
    main(sys.argv[1:])
