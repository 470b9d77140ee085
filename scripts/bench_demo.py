"""The demo's speed-ups, each as a ratio measured side by side in one run on the same inputs (CPU seconds).

  maps    the report's embedding maps: UMAP finding its own neighbours (every pair through its numba cosine in a
          Python loop) vs dinoloc.report.embedding_maps.project (exact_cosine_knn handed to UMAP), each in a fresh
          process (numba compiles once per process), on every embedding cache of a demo output; checks that the
          2-D maps are the same bits.
  adamw   the batched trainer's AdamW update at the demo's sizes (5 folds, 64 -> 512 -> 256 -> 17): one fused call
          per fold vs one call per learning rate (dinoloc.classify.trainer._adamw_step); checks the same bits.

    python scripts/bench_demo.py --demo outputs            # after `make demo` (or paths.output_dir=...)
    python scripts/bench_demo.py --only adamw
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_MAPS_CHILD = """
import json, sys, time, warnings
import numpy as np
warnings.filterwarnings("ignore")
mode, out = sys.argv[1], sys.argv[2]
files = sys.argv[3:]
t = time.process_time()
import umap
from dinoloc.report.embedding_maps import project
for i, f in enumerate(files):
    x = np.load(f).astype(np.float32)
    n_neighbors = max(2, min(15, len(x) - 1))
    if mode == "umap_own":
        y = umap.UMAP(n_neighbors=n_neighbors, metric="cosine", random_state=0, n_jobs=1).fit_transform(x)
    else:
        y = project(x, "umap", 0)
    np.save(f"{out}/{mode}_{i}.npy", y)
print(json.dumps({"cpu_s": time.process_time() - t}))
"""


def bench_maps(demo: Path) -> dict:
    files = sorted(glob.glob(str(demo / "cache" / "*" / "embeddings.npy")))
    if not files:
        raise SystemExit(f"no embedding caches under {demo / 'cache'}: run the demo first (make demo)")
    cpu = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("umap_own", "exact_knn"):
            proc = subprocess.run([sys.executable, "-c", _MAPS_CHILD, mode, tmp, *files], capture_output=True,
                                  text=True, check=True)
            cpu[mode] = json.loads(proc.stdout.strip().splitlines()[-1])["cpu_s"]
        same = all(np.array_equal(np.load(f"{tmp}/umap_own_{i}.npy"), np.load(f"{tmp}/exact_knn_{i}.npy"))
                   for i in range(len(files)))
    out = {"maps_panels": len(files), "maps_umap_own_cpu_s": round(cpu["umap_own"], 2),
           "maps_exact_knn_cpu_s": round(cpu["exact_knn"], 2),
           "maps_ratio": round(cpu["exact_knn"] / cpu["umap_own"], 3), "maps_same_bits": same}
    print(f"maps: {len(files)} panels, UMAP's own neighbours {out['maps_umap_own_cpu_s']} CPU s, exact_cosine_knn "
          f"{out['maps_exact_knn_cpu_s']} CPU s (ratio {out['maps_ratio']}), same maps: {same}")
    return out


def bench_adamw(steps: int = 600) -> dict:
    import torch
    from torch.optim.adamw import adamw as adamw_update

    from dinoloc.classify.trainer import ADAM_EPS, _adamw_step

    torch.set_num_threads(1)
    K, shapes = 5, [(5, 64, 512), (5, 512, 256), (5, 256, 17), (5, 1, 512), (5, 1, 256), (5, 1, 17)]

    def state():
        torch.manual_seed(0)
        tensors = [torch.randn(s) for s in shapes]
        m, v = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
        return tensors, [([t[k] for t in tensors], [a[k] for a in m], [b[k] for b in v],
                          [torch.zeros(()) for _ in shapes]) for k in range(K)]

    grads = tuple(torch.randn(s, generator=torch.Generator().manual_seed(1)) for s in shapes)
    active, lr = np.ones(K, dtype=bool), [6e-3] * K

    def per_fold(fold_state):
        with torch.no_grad():
            for k in range(K):
                p, m, v, st = fold_state[k]
                adamw_update(p, [g[k] for g in grads], m, v, [], st, fused=True, amsgrad=False, beta1=0.9,
                             beta2=0.999, lr=lr[k], weight_decay=0.04, eps=ADAM_EPS, maximize=False)

    def grouped(fold_state):
        _adamw_step(fold_state, grads, active, lr, 0.9, 0.999, 0.04)

    cpu, final = {}, {}
    for name, fn in (("per_fold", per_fold), ("grouped", grouped)) * 2:  # A B A B: the second pair counts
        tensors, fold_state = state()
        t = time.process_time()
        for _ in range(steps):
            fn(fold_state)
        cpu[name], final[name] = time.process_time() - t, tensors
    same = all(torch.equal(a, b) for a, b in zip(final["per_fold"], final["grouped"], strict=True))
    out = {"adamw_steps": steps, "adamw_per_fold_cpu_s": round(cpu["per_fold"], 3),
           "adamw_grouped_cpu_s": round(cpu["grouped"], 3), "adamw_ratio": round(cpu["grouped"] / cpu["per_fold"], 3),
           "adamw_same_bits": same}
    print(f"adamw: {steps} updates, one call per fold {out['adamw_per_fold_cpu_s']} CPU s, one per learning rate "
          f"{out['adamw_grouped_cpu_s']} CPU s (ratio {out['adamw_ratio']}), same weights: {same}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, default=Path("outputs"), help="a demo output folder (paths.output_dir)")
    p.add_argument("--only", choices=("maps", "adamw"), default=None)
    args = p.parse_args()
    out = {}
    if args.only in (None, "adamw"):
        out.update(bench_adamw())
    if args.only in (None, "maps"):
        out.update(bench_maps(args.demo))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
