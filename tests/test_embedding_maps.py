"""Embedding maps: rarest-label colouring, one panel per row (heads of a row share one), seeded subsample,
PNG + PDF written by the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dinoloc.io import DinolocError
from dinoloc.report import embedding_maps as em

CLASSES = ["a", "b", "c"]


def test_rarest_label():
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 0]])
    # frequencies a 4, b 2, c 1
    assert em.rarest_label(y, CLASSES).tolist() == ["b", "a", "c", em.NO_LABEL, "b"]


def _study(tmp: Path, n: int = 60, rows: tuple[str, ...] = ("x", "y"), heads: tuple[str, ...] = ("mlp",)) -> list[dict]:
    rng = np.random.default_rng(0)
    ids = [f"im{i:03d}" for i in range(n)]
    y = np.zeros((n, 3), dtype=int)
    y[np.arange(n), np.arange(n) % 3] = 1
    manifest = pd.DataFrame({"image_id": ids, "path": ids, "target": ids, "labeled": True})
    manifest[CLASSES] = y
    manifest.loc[n - 1, "labeled"] = False
    split = pd.DataFrame({"image_id": ids, "target": ids, "split": ["test" if i % 5 == 0 else "train" for i in range(n)],
                          "fold": 0})
    split.loc[n - 1, "split"] = "unlabeled"
    manifest.to_csv(tmp / "manifest.csv", index=False)
    split.to_csv(tmp / "split.csv", index=False)
    results = []
    for b in rows:
        cache = tmp / f"cache_{b}"
        cache.mkdir()
        np.save(cache / "embeddings.npy", (y @ rng.normal(size=(3, 8)) + 0.2 * rng.normal(size=(n, 8))).astype(np.float32))
        pd.DataFrame({"image_id": ids}).to_csv(cache / "index.csv", index=False)
        for h in heads:
            results.append({"backbone": b, "strategy": "mapping", "head": h, "backbone_display": b.upper(),
                            "cache_key": f"k{b}", "cache_path": str(cache), "classes": CLASSES, "synthetic": True,
                            "data": {"manifest": str(tmp / "manifest.csv"), "split": str(tmp / "split.csv")},
                            "run_dir": str(tmp / f"{b}__mapping__{h}")})
    return results


def test_maps_one_panel_per_row_and_files(tmp_path):
    results = _study(tmp_path, heads=("mlp", "knn"))
    info = em.plot_embedding_maps(results, tmp_path / "maps.png", method="tsne", max_points=2000, seed=0)
    assert info["method"] == "tsne" and [p["row"] for p in info["panels"]] == ["x__mapping", "y__mapping"]
    assert info["n_labelled"] == 59 and info["n_points"] == 59  # the unlabelled image is not drawn
    assert (tmp_path / "maps.png").stat().st_size > 0 and (tmp_path / "maps.pdf").stat().st_size > 0
    from PIL import Image

    assert "SYNTHETIC" in Image.open(tmp_path / "maps.png").info.get("Title", "")


def test_maps_subsample_is_seeded_and_said(tmp_path, monkeypatch):
    results = _study(tmp_path, rows=("x",))
    seen = []
    real = em.project
    monkeypatch.setattr(em, "project", lambda x, method, seed: (seen.append(x.copy()), real(x, method, seed))[1])
    info = em.plot_embedding_maps(results, tmp_path / "a.png", method="tsne", max_points=20, seed=1)
    em.plot_embedding_maps(results, tmp_path / "b.png", method="tsne", max_points=20, seed=1)
    em.plot_embedding_maps(results, tmp_path / "c.png", method="tsne", max_points=20, seed=2)
    assert info["n_points"] == 20 and info["panels"][0]["n_points"] == 20 and len(seen[0]) == 20
    assert np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[0], seen[2])
    from PIL import Image

    assert "20 of 59 labelled images drawn (seeded subsample)" in Image.open(tmp_path / "a.png").info["Title"]


def test_maps_refuse_a_missing_cache_naming_the_run(tmp_path):
    results = _study(tmp_path, rows=("x",))
    (Path(results[0]["cache_path"]) / "embeddings.npy").unlink()
    with pytest.raises(DinolocError, match="embedding cache .* not found; rerun the row"):
        em.plot_embedding_maps(results, tmp_path / "m.png", method="tsne", max_points=2000, seed=0)
    with pytest.raises(DinolocError, match="report.embedding_maps"):
        em.resolve_method("pca")


@pytest.mark.slow
def test_umap_map(tmp_path):
    pytest.importorskip("umap")
    info = em.plot_embedding_maps(_study(tmp_path, rows=("x",)), tmp_path / "u.png", method="auto", max_points=2000, seed=0)
    assert info["method"] == "umap" and (tmp_path / "u.png").is_file()
    json.dumps(info)


def _umap_own_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What UMAP does below 4,096 points: every pair through its numba cosine via scikit-learn, distances >= 2
    cut to inf, each row's first k of a stable sort."""
    from sklearn.metrics import pairwise_distances
    from umap.distances import named_distances

    dmat = pairwise_distances(x, metric=named_distances["cosine"])
    dmat[dmat >= 2] = np.inf
    idx = np.argsort(dmat, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(dmat, idx, axis=1)


def test_exact_cosine_knn_is_umaps_own_neighbours_to_the_bit():
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 24))
    x = (centres[rng.integers(0, 6, 240)] + 0.05 * rng.normal(size=(240, 24))).astype(np.float32)
    x[10] = x[11] = x[12]  # exact ties: the stable order (lowest index first) must survive
    x[20] = 0.0  # a zero vector: distance 1 to everyone, 0 to itself
    x[30] = -x[31]  # opposite vectors: distance 2, cut to inf
    x[40] = x[41] * 3.0  # the same direction: distance ~0 but not exactly
    for k in (2, 15):
        idx, dist = em.exact_cosine_knn(x, k)
        ref_idx, ref_dist = _umap_own_knn(x, k)
        assert idx.dtype == np.int32 and dist.dtype == np.float32
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(dist, ref_dist)  # bit for bit, not approximately
    assert list(idx[11][:3]) == [10, 11, 12]  # ties in index order (the point itself is not first)


@pytest.mark.slow
def test_umap_map_with_exact_neighbours_is_umaps_own_map():
    """project() hands UMAP the neighbours it would find itself: the same layout, bit for bit."""
    umap = pytest.importorskip("umap")
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(4, 16))[rng.integers(0, 4, 300)] + 0.1 * rng.normal(size=(300, 16))).astype(np.float32)
    ours = em.project(x, "umap", 0)
    theirs = umap.UMAP(n_neighbors=15, metric="cosine", random_state=0, n_jobs=1).fit_transform(x)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow  # spawns a worker that imports the plotting stack (~8 s)
def test_report_draws_the_maps_in_a_worker_process_with_the_same_files(tmp_path, monkeypatch):
    """With a second core the report draws the maps in a spawned worker while it makes the tables: the same PNG
    as drawn in the report's own process (one core), and a fixable error still becomes the skip warning."""
    from dinoloc.report import stage

    results = _study(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "here").mkdir()
    monkeypatch.setattr(stage.os, "cpu_count", lambda: 2)
    worker = stage._Maps((results, tmp_path / "w" / "m.png", "tsne", 2000, 0))
    assert worker.pool is not None
    try:
        drawn = worker.result()
    finally:
        worker.close()
    monkeypatch.setattr(stage.os, "cpu_count", lambda: 1)
    inline = stage._Maps((results, tmp_path / "here" / "m.png", "tsne", 2000, 0))
    assert inline.pool is None
    assert drawn["info"]["panels"] == inline.result()["info"]["panels"]
    assert (tmp_path / "w" / "m.png").read_bytes() == (tmp_path / "here" / "m.png").read_bytes()
    broken = [dict(r, cache_path=str(tmp_path / "gone")) for r in results]
    monkeypatch.setattr(stage.os, "cpu_count", lambda: 2)
    maps = stage._Maps((broken, tmp_path / "b.png", "tsne", 2000, 0))
    try:
        with pytest.warns(UserWarning, match=r"embedding maps skipped: .*gone.*not found"):
            assert stage._embedding_maps_done(tmp_path, maps.result()) == {}
    finally:
        maps.close()
