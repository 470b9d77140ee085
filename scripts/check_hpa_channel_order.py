"""Which channel order does the HPA FOV checkpoint expect? A check to run with the real weights.

Dino4Cells' code does not say how its HPA FOV images were stacked (configs/backbone/hpa.yaml has the evidence):
protein is index 1 for sure, and the nucleus is either index 0 (Dino4Cells' config comments, dinoloc's default)
or index 2 (HPA's red/green/blue/yellow order: microtubules, protein, nucleus, ER). Under channel mapping only
the nucleus's index differs between the two.

For each candidate order this embeds the labelled OpenCell images (mapping strategy, cached like any run) and
reports, per order:
- collapse: mean pairwise cosine similarity of the embeddings (higher = more collapsed) and their effective rank
  (dinoloc.stats.embedding_health, the number every cache's meta.json records; lower = more collapsed). A
  nucleus in a channel the model reads as microtubules should give the less structured embedding;
- knn_macro_f1: the package's k-NN (classifier=knn, configs/classifier/knn.yaml), fitted leaving one
  target-grouped fold out at a time (the split's 5 train folds and its test split) and scored by the classifier's
  macro F1.
The order with the higher kNN F1 and the less collapsed embeddings is the one the checkpoint was trained on.
`--max-images N` embeds a random, fixed subset (e.g. 300 images) for a quick answer.

    python scripts/check_hpa_channel_order.py data=opencell data.root=/data/opencell \
        backbone.weights=weights/DINO_FOV_checkpoint.pth [--max-images=300]

Ends with one JSON line. (The demo's stand-in runs too, as a smoke test: `backbone=hpa_demo`; its numbers mean
nothing about the real checkpoint.)
"""

from __future__ import annotations

import json
import sys

import numpy as np
from hydra import compose, initialize_config_dir

from dinoloc import CONFIG_DIR
from dinoloc.classify.cv import knn_leave_group_out
from dinoloc.classify.params import KNNParams, params_from_config
from dinoloc.config import extract_spec, given
from dinoloc.data.prepare import run_data
from dinoloc.extract.cache import embedding_rows
from dinoloc.extract.stage import check, run_extraction
from dinoloc.metrics import macro_f1
from dinoloc.ontology import CATEGORIES
from dinoloc.stats import embedding_health

CANDIDATES = ("dino4cells_config", "rgby")  # the keys of backbone.channel_orders in configs/backbone/hpa.yaml


def collapse_stats(emb: np.ndarray) -> dict[str, float]:
    """Mean pairwise cosine similarity (off-diagonal) and effective rank (dinoloc.stats.embedding_health)."""
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = e @ e.T
    n = len(e)
    mean_cos = float((sim.sum() - np.trace(sim)) / max(n * (n - 1), 1))
    return {"mean_cosine": mean_cos, "effective_rank": embedding_health(emb)["effective_rank"]}


def knn_macro_f1(emb: np.ndarray, y: np.ndarray, group: np.ndarray, knn: KNNParams) -> float:
    """The package's k-NN, each target-grouped fold predicted from the others; pooled macro F1."""
    return macro_f1(y, knn_leave_group_out(emb, y, group, knn))[0]


def main(argv: list[str]) -> None:
    max_images = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--max-images=")), None)
    overrides = [a for a in argv if not a.startswith("--")]
    results = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for order in CANDIDATES:
            cfg = compose("config", overrides=["backbone=hpa", "strategy=mapping", "classifier=knn", *overrides,
                                               f"backbone.channel_order={order}"])
            spec = extract_spec(cfg)
            check(spec)
            knn = params_from_config(given(cfg.classifier))
            manifest, split = run_data(spec.data)
            labelled = split[split["split"].isin(["train", "test"])]
            if max_images is not None and len(labelled) > max_images:
                labelled = labelled.sample(n=max_images, random_state=0)
            keep = manifest["image_id"].isin(set(labelled["image_id"]))
            entry = run_extraction(spec, manifest[keep].reset_index(drop=True))
            emb, ids = entry.load()
            rows = embedding_rows(ids, labelled["image_id"], entry.path)
            m = manifest.set_index("image_id").loc[labelled["image_id"]]
            y = m[list(CATEGORIES)].to_numpy().astype(int)
            group = np.where(labelled["split"] == "test", -1, labelled["fold"].fillna(-1)).astype(int)
            res = {"order": order, "channels": list(cfg.backbone.channels), "n_images": len(rows),
                   **collapse_stats(emb[rows]),
                   "knn_macro_f1": knn_macro_f1(emb[rows], y, group, knn)}
            results.append(res)
            print(f"{order:18s} {res['channels']}: kNN macro F1 {res['knn_macro_f1']:.4f}, mean cosine "
                  f"{res['mean_cosine']:.4f}, effective rank {res['effective_rank']:.1f} ({len(rows)} images)")
    best = max(results, key=lambda r: r["knn_macro_f1"])
    agree = best is min(results, key=lambda r: r["mean_cosine"])
    print(f"higher kNN F1: {best['order']}" + ("" if agree else " (but the collapse measure disagrees: inconclusive)"))
    print(json.dumps({"results": results, "best_by_knn": best["order"], "collapse_agrees": agree}))


if __name__ == "__main__":
    main(sys.argv[1:])
