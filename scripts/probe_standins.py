"""Did DINO pretraining learn something? kNN and linear probes on the demo stand-ins vs the same ViT untrained.

For each stand-in backbone (pretrained by `make demo` / dinoloc-pretrain) the synthetic OpenCell images are embedded
twice, with the pretrained teacher and with random weights of the same architecture, and two cheap probes are fitted on
the train split and scored on the test split (macro F1, the classifier stage's definition):
a cosine kNN (k = 5) and a one-vs-rest logistic regression on standardised features. Ends with a one-line JSON.

    python scripts/probe_standins.py [paths.output_dir=outputs]
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from dinoloc.classify import macro_f1
from dinoloc.cli import CONFIG_PATH, prepare_data, run_extraction
from dinoloc.ontology import CATEGORIES

ROWS = [("imagenet_demo", "mapping"), ("hpa_demo", "mapping"), ("opencell_demo", "native")]


def probes(emb: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    scaler = StandardScaler().fit(emb[train])
    xtr, xte = scaler.transform(emb[train]), scaler.transform(emb[test])
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(xtr, y[train])
    keep = y[train].sum(0) > 0  # a class absent from training cannot be fitted by a linear probe
    lin = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=0.1)).fit(xtr, y[train][:, keep])
    pred_lin = np.zeros_like(y[test])
    pred_lin[:, keep] = lin.predict(xte)
    return {"knn": macro_f1(y[test], knn.predict(xte))[0], "linear": macro_f1(y[test], pred_lin)[0]}


def main(overrides: list[str]) -> None:
    results = []
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        for backbone, strategy in ROWS:
            for init in ("pretrained", "random"):
                extra = ["backbone.weights=", "allow_random_weights=true"] if init == "random" else []
                cfg = compose("config", overrides=[f"backbone={backbone}", f"strategy={strategy}", *extra, *overrides])
                torch.manual_seed(0)  # the random baseline is one fixed draw
                manifest, split = prepare_data(cfg)
                emb, ids = run_extraction(cfg, manifest).load()
                pos = {i: k for k, i in enumerate(ids)}
                rows = np.array([pos[i] for i in split["image_id"]])
                y = manifest.set_index("image_id").loc[split["image_id"], list(CATEGORIES)].to_numpy().astype(int)
                s = split["split"].to_numpy()
                r = probes(emb[rows], y, s == "train", s == "test")
                results.append({"backbone": backbone, "strategy": strategy, "init": init, **r})
                print(f"{backbone:14s} {strategy:12s} {init:10s} kNN F1 {r['knn']:.3f}  linear F1 {r['linear']:.3f}",
                      flush=True)
    gain = {}
    for backbone, _ in ROWS:
        p = next(r for r in results if r["backbone"] == backbone and r["init"] == "pretrained")
        q = next(r for r in results if r["backbone"] == backbone and r["init"] == "random")
        gain[backbone] = {k: round(p[k] - q[k], 4) for k in ("knn", "linear")}
    print("SYNTHETIC DEMO data. Pretrained minus random (macro F1):", gain)
    print(json.dumps({"bench": "probe_standins", "results": results, "gain": gain}))


if __name__ == "__main__":
    main(sys.argv[1:])
