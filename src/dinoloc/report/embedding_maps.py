"""Embedding maps: one 2-D map per Table III row (backbone x strategy) of its train and test embeddings.

UMAP (umap-learn, cosine metric) when installed, else scikit-learn's t-SNE (cosine, PCA init). Points are
coloured by label, for multi-label images by their rarest positive label (the one the classifier's resampling
also favours); test points are drawn as outlined triangles. Above `max_points` labelled images, one seeded
subsample (the same images in every panel) is drawn and the figure says how many.

Reads only files the earlier stages wrote: result.json (`cache_path`, `data.manifest`, `data.split`,
`classes`), the embedding cache entry, the manifest and split.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinoloc.extract.cache import embedding_rows
from dinoloc.io import DinolocError
from dinoloc.report.runs import row_order
from dinoloc.results import result_classes

METHODS = ("auto", "umap", "tsne", "none")
# UMAP computes every pairwise distance below this many points (and searches approximately above it):
# below it, exact_cosine_knn hands it the same neighbours, faster.
UMAP_EXACT_BELOW = 4096
NO_LABEL = "(no positive label)"


def resolve_method(method: str) -> str:
    """auto -> umap when umap-learn imports, else tsne."""
    if method not in METHODS:
        raise DinolocError(f"report.embedding_maps={method!r}: use one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    try:
        import umap  # noqa: F401
    except ImportError:
        return "tsne"
    return "umap"


def rarest_label(y: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Per image: the name of its positive class that is rarest among these images; NO_LABEL when none."""
    y = np.asarray(y) > 0
    freq = y.sum(axis=0).astype(np.float64)
    masked = np.where(y, freq[None, :], np.inf)
    idx = masked.argmin(axis=1)  # ties: the first class in the data config's order
    names = np.array(list(classes), dtype=object)[idx]
    names[~y.any(axis=1)] = NO_LABEL
    return names


def project(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(n, D) -> (n, 2) with UMAP or t-SNE, cosine distance (the k-NN probe's geometry), seeded."""
    x = np.asarray(x, dtype=np.float32)
    if method == "umap":
        import umap

        n_neighbors = max(2, min(15, len(x) - 1))
        knn = exact_cosine_knn(x, n_neighbors) if len(x) < UMAP_EXACT_BELOW else None
        reducer = umap.UMAP(n_neighbors=n_neighbors, metric="cosine", random_state=seed, n_jobs=1,
                            precomputed_knn=(None, None, None) if knn is None else knn)
        with warnings.catch_warnings():  # no search index: transform() of new data, which is never used here
            warnings.filterwarnings("ignore", message="precomputed_knn")
            return reducer.fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)


def exact_cosine_knn(x: np.ndarray, k: int, margin: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours (each point itself included) that UMAP finds on its own below 4,096 points, to
    the bit, without its O(n^2) Python loop: UMAP scores every pair with its numba cosine distance through
    scikit-learn's pairwise_distances (one Python call per pair: ~1.3 s and a 7 s numba compile per map on 1,235
    points) and takes each row's first k of a stable sort, distances >= 2 cut to inf.

    Here numpy's float64 cosine picks, per row, the candidates within `margin` of the row's k-th distance (the
    float32 products UMAP sums err by < 1e-6 from it), and only those pairs go through UMAP's own distance,
    called as scikit-learn calls it (lower index first). Returns (indices int32, distances float32) (n, k)."""
    from umap.distances import named_distances

    cosine = named_distances["cosine"]
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    xd = x.astype(np.float64)
    norm = np.sqrt((xd * xd).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        approx = 1.0 - (xd @ xd.T) / np.outer(norm, norm)
    indices = np.empty((n, k), dtype=np.int32)
    dists = np.empty((n, k), dtype=np.float32)
    for i in range(n):
        row = approx[i]
        kth = np.partition(row, k - 1)[k - 1]
        if norm[i] == 0 or not np.isfinite(kth) or kth + margin >= 2.0:  # degenerate row: score every pair
            cand = np.arange(n)
        else:
            cand = np.flatnonzero(~(row > kth + margin))  # NaN (a zero vector) stays a candidate
        # float32 like scikit-learn's matrix for float32 input (rounding may tie two distances: the sort is stable)
        exact = np.array([cosine(x[min(i, j)], x[max(i, j)]) for j in cand], dtype=np.float32)
        exact[exact >= 2.0] = np.inf  # as UMAP (its disconnection distance for cosine)
        order = np.argsort(exact, kind="stable")[:k]
        indices[i], dists[i] = cand[order], exact[order]
    return indices, dists


def _row_data(result: dict) -> tuple[np.ndarray, pd.DataFrame]:
    """The row's embeddings of its labelled (train + test) images and a frame image_id, split, label."""
    run = Path(result.get("run_dir", "?")) / "result.json"
    cache = result.get("cache_path")
    if not cache or not (Path(cache) / "embeddings.npy").is_file():
        raise DinolocError(f"{run}: embedding cache {cache!r} not found; rerun the row (dinoloc-run) to refill it")
    data = result.get("data") or {}
    manifest_path, split_path = Path(str(data.get("manifest", ""))), Path(str(data.get("split", "")))
    for p in (manifest_path, split_path):
        if not p.is_file():
            raise DinolocError(f"{run}: {p} not found; the embedding maps need the manifest and split (dinoloc-data)")
    classes = result_classes(result)
    manifest = pd.read_csv(manifest_path, dtype={"image_id": str}, keep_default_na=False)
    split = pd.read_csv(split_path, dtype={"image_id": str, "split": str}, keep_default_na=False)
    emb = np.load(Path(cache) / "embeddings.npy")
    ids = pd.read_csv(Path(cache) / "index.csv", dtype={"image_id": str})["image_id"].tolist()
    frame = split[split["split"].isin(["train", "test"])][["image_id", "split"]].merge(
        manifest[["image_id", *classes]], on="image_id", how="left", validate="one_to_one")
    rows = embedding_rows(ids, frame["image_id"], cache)
    frame["label"] = rarest_label(frame[classes].to_numpy(), classes)
    return emb[rows], frame[["image_id", "split", "label"]]


def plot_embedding_maps(
    results: Sequence[dict], out_png: str | os.PathLike, *, method: str, max_points: int, seed: int,
) -> dict[str, Any]:
    """embedding_maps.png and .pdf: one panel per row (runs sharing embeddings, e.g. the heads of one row, share
    a panel). Returns {method, n_points, n_labelled, panels, seconds}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dinoloc.report.figures import SYNTHETIC_MARKER, _save

    t0 = time.perf_counter()
    method = resolve_method(method)
    rows, seen = [], set()
    for r in sorted(results, key=row_order):
        key = r.get("cache_key") or r.get("cache_path")
        if key in seen:
            continue
        seen.add(key)
        rows.append(r)
    if not rows:
        raise DinolocError("no finished runs to draw embedding maps for")
    panels = [(r, *_row_data(r)) for r in rows]
    # One seeded subsample of image ids, shared by every panel.
    all_ids = sorted(set().union(*(set(f["image_id"]) for _, _, f in panels)))
    n_labelled = len(all_ids)
    if n_labelled > max_points:
        keep = set(np.random.default_rng(seed).choice(all_ids, size=max_points, replace=False).tolist())
    else:
        keep = set(all_ids)
    labels = sorted({lab for _, _, f in panels for lab in f["label"]}, key=lambda s: (s == NO_LABEL, s))
    cmap = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    colour = {lab: ("lightgray" if lab == NO_LABEL else cmap(i % cmap.N)) for i, lab in enumerate(labels)}

    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.2 * nrows), squeeze=False)
    drawn = []
    for ax, (r, emb, frame) in zip(axes.flat, panels, strict=False):
        sel = frame["image_id"].isin(keep).to_numpy()
        xy = project(emb[sel], method, seed)
        f = frame[sel].reset_index(drop=True)
        for part, marker, size, edge in (("train", "o", 9, "none"), ("test", "^", 28, "black")):
            m = (f["split"] == part).to_numpy()
            ax.scatter(xy[m, 0], xy[m, 1], s=size, marker=marker, c=[colour[lab] for lab in f["label"][m]],
                       edgecolors=edge, linewidths=0.5, alpha=0.85 if part == "train" else 1.0)
        strategy = str(r["strategy"])
        ax.set_title(f"{r.get('backbone_display', r['backbone'])} · {strategy}\n{int(sel.sum())} images "
                     f"({int((f['split'] == 'test').sum())} test)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        drawn.append({"row": f"{r['backbone']}__{strategy}", "n_points": int(sel.sum())})
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=colour[lab], label=lab) for lab in labels]
    handles += [Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="black", label="train"),
                Line2D([], [], marker="^", linestyle="", markerfacecolor="white", markeredgecolor="black", label="test")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    n_points = len(keep)
    title = (f"Embedding maps ({'UMAP' if method == 'umap' else 't-SNE'}, cosine): {n_points} of {n_labelled} labelled "
             f"images drawn{' (seeded subsample)' if n_points < n_labelled else ''}; colour = rarest positive label")
    synthetic = any(bool(r.get("synthetic")) for r in rows)
    if synthetic:
        title = f"{SYNTHETIC_MARKER}\n{title}"
    fig.suptitle(title, color="red" if synthetic else "black", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    _save(fig, out_png, title)
    plt.close(fig)
    return {"method": method, "n_points": n_points, "n_labelled": n_labelled, "panels": drawn,
            "seconds": round(time.perf_counter() - t0, 2)}


def draw_or_skip(results: Sequence[dict], out_png: str | os.PathLike, method: str, max_points: int,
                 seed: int) -> dict[str, Any]:
    """plot_embedding_maps as the report calls it, possibly in a worker process: {"info": ...}, or {"skipped":
    the reason} for an error the user can fix (the report warns and goes on without the maps)."""
    try:
        return {"info": plot_embedding_maps(results, out_png, method=method, max_points=max_points, seed=seed)}
    except DinolocError as e:
        return {"skipped": str(e)}
