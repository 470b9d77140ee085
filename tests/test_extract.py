"""Cached extraction: cache hits do no model work, killed runs resume, concurrent writers and torchrun ranks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dinoloc.extract.cache import CACHE_VERSION, cache_key, finished_chunks, images_fingerprint, lookup
from dinoloc.extract.engine import EngineSettings, extract
from dinoloc.io import DinolocError, read_json, write_json

WORKER = str(Path(__file__).with_name("_extract_worker.py"))


def _toy(n=10):
    ids = [f"img{i:03d}" for i in range(n)]
    reads = []

    def read(p):
        p = str(p)
        reads.append(p)
        return np.stack([np.full((4, 4), float(ids.index(p))), np.full((4, 4), -float(ids.index(p)))]).astype(np.float32)

    return ids, read, reads


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.flatten(1)[:, [0, 16]] * 2


def _embed(model, x):
    return model(x)


def test_extract_then_cache_hit_does_no_forward(tmp_path):
    ids, read, reads = _toy()
    built = []

    def factory():
        m = Counting()
        built.append(m)
        return m

    kw = dict(image_ids=ids, paths=ids, read_fn=read, model_factory=factory, embed_fn=_embed,
              cache_dir=tmp_path, key="abc", meta={"note": "x"},
              settings=EngineSettings(batch_size=3, chunk_size=4, progress=False))
    first = extract(**kw)
    assert not first.hit and len(built) == 1 and built[0].calls == 4
    emb, got_ids = first.load()
    assert got_ids == ids
    np.testing.assert_array_equal(emb, np.stack([[2 * i, -2 * i] for i in range(10)]).astype(np.float32))
    meta = first.meta
    assert meta["cache_version"] == CACHE_VERSION and meta["n_images"] == 10 and meta["dim"] == 2
    assert not (tmp_path / "abc" / "chunks").exists()
    reads.clear()
    second = extract(**kw)
    assert second.hit and len(built) == 1 and reads == []  # no model built, no image read


def test_killed_run_resumes_and_matches_uninterrupted(tmp_path):
    ids, read, _ = _toy(10)
    calls = {"n": 0}

    def flaky(p):
        calls["n"] += 1
        if calls["n"] > 6:  # dies while working on the second chunk
            raise KeyboardInterrupt
        return read(p)

    kw = dict(image_ids=ids, paths=ids, model_factory=Counting, embed_fn=_embed, key="k", meta={},
              settings=EngineSettings(batch_size=2, chunk_size=4, progress=False))
    with pytest.raises(KeyboardInterrupt):
        extract(read_fn=flaky, cache_dir=tmp_path / "a", **kw)
    chunks = sorted(p.name for p in (tmp_path / "a" / "k" / "chunks").iterdir())
    assert chunks == ["chunk_000000.npy"]  # only finished chunks are visible, under final names
    assert lookup(tmp_path / "a", "k") is None
    assert finished_chunks(tmp_path / "a", "k") == 1 and finished_chunks(tmp_path / "a", "other") == 0
    seen = []

    def counting_read(p):
        seen.append(str(p))
        return read(p)

    resumed = extract(read_fn=counting_read, cache_dir=tmp_path / "a", **kw)
    assert seen == ids[4:]  # the finished chunk was not redone
    whole = extract(read_fn=read, cache_dir=tmp_path / "b", **kw)
    np.testing.assert_array_equal(resumed.load()[0], whole.load()[0])


def test_nan_embeddings_refused_with_ids(tmp_path):
    ids, read, _ = _toy(5)

    def embed(model, x):
        out = x.flatten(1)[:, :2].clone()
        out[x[:, 0, 0, 0] == 3] = float("nan")
        return out

    with pytest.raises(DinolocError, match=r"img003"):
        extract(image_ids=ids, paths=ids, read_fn=read, model_factory=torch.nn.Identity, embed_fn=embed,
                cache_dir=tmp_path, key="k", meta={}, settings=EngineSettings(progress=False))
    assert lookup(tmp_path, "k") is None and not (tmp_path / "k" / "embeddings.npy").exists()


def test_entry_of_other_cache_version_is_not_reused(tmp_path):
    ids, read, _ = _toy(4)
    kw = dict(image_ids=ids, paths=ids, read_fn=read, model_factory=Counting, embed_fn=_embed,
              cache_dir=tmp_path, key="k", meta={}, settings=EngineSettings(progress=False))
    extract(**kw)
    meta = read_json(tmp_path / "k" / "meta.json")
    write_json(tmp_path / "k" / "meta.json", meta | {"cache_version": CACHE_VERSION - 1})
    assert lookup(tmp_path, "k") is None


def test_cache_key_changes_with_every_field():
    base = {"arch": "a", "weights": "w", "strategy": "mapping", "preprocess": {"img_size": 64}, "images": "h"}
    keys = {cache_key(base)}
    for k, v in [("arch", "b"), ("weights", "w2"), ("strategy", "replication"), ("preprocess", {"img_size": 32}),
                 ("images", "h2")]:
        keys.add(cache_key(base | {k: v}))
    assert len(keys) == 6
    assert cache_key(dict(reversed(list(base.items())))) == cache_key(base)


def test_images_fingerprint_sees_replaced_files(tmp_path):
    for name in ["a.tif", "b.tif"]:
        (tmp_path / name).write_bytes(b"12345")
    m = pd.DataFrame({"image_id": ["a", "b"], "path": ["a.tif", "b.tif"]})
    before = images_fingerprint(m, tmp_path)
    (tmp_path / "b.tif").write_bytes(b"123456")
    assert images_fingerprint(m, tmp_path) != before
    (tmp_path / "a.tif").unlink()
    with pytest.raises(DinolocError, match="a.tif"):
        images_fingerprint(m, tmp_path)


def test_two_processes_same_key_compute_once(tmp_path):
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, WORKER, str(tmp_path / "cache"), "12", str(tmp_path / "built"), "0.05"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len(list((tmp_path / "built").iterdir())) == 1  # one computation
    assert sorted('"hit": true' in o for o in outs) == [False, True]
    emb = np.load(tmp_path / "cache" / "k" / "embeddings.npy")
    np.testing.assert_array_equal(emb[:, 0], np.arange(12, dtype=np.float32))


@pytest.mark.slow
def test_torchrun_two_ranks_merge(tmp_path):
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", WORKER,
           str(tmp_path / "cache"), "11", str(tmp_path / "built")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "built").iterdir())) == 2  # both ranks worked
    emb = np.load(tmp_path / "cache" / "k" / "embeddings.npy")
    np.testing.assert_array_equal(emb[:, 0], np.arange(11, dtype=np.float32))
    assert pd.read_csv(tmp_path / "cache" / "k" / "index.csv")["image_id"].tolist() == [f"img{i:03d}" for i in range(11)]


def test_embedding_rows_line_a_cache_up_with_a_split_and_name_the_cache_when_short(tmp_path):
    from dinoloc.extract.cache import embedding_rows

    assert embedding_rows(["a", "b", "c"], ["c", "a"], tmp_path).tolist() == [2, 0]
    with pytest.raises(DinolocError, match=rf"cache {tmp_path} lacks 1 .*'z'"):
        embedding_rows(["a", "b"], ["a", "z"], tmp_path)


def _load_in_worker(num_workers: int) -> tuple:
    from torch.utils.data import DataLoader, TensorDataset

    from dinoloc.device import loader_context

    loader = DataLoader(TensorDataset(torch.arange(6)), batch_size=2, num_workers=num_workers,
                        multiprocessing_context=loader_context(num_workers))
    return loader_context(num_workers), [int(v) for (b,) in loader for v in b]


def test_loader_workers_start_inside_a_joblib_worker():
    """hydra/launcher=local runs jobs in joblib (loky) workers, whose default start method is loky's: a
    DataLoader with workers failed there ('Process' object has no attribute 'env') until extraction passed the
    platform's own start method (dinoloc.device.loader_context); outside such a worker torch's default stays."""
    import multiprocessing as mp

    from joblib import Parallel, delayed

    from dinoloc.device import loader_context

    assert loader_context(2) is None and loader_context(0) is None
    [(method, values)] = Parallel(n_jobs=2, backend="loky")(delayed(_load_in_worker)(1) for _ in range(1))
    assert method == mp.get_all_start_methods()[0]
    assert values == list(range(6))
