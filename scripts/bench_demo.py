"""The demo report's speed-up as a ratio measured side by side in one run on the same inputs (CPU seconds).

  maps    the report's embedding maps: UMAP finding its own neighbours (every pair through its numba cosine in a
          Python loop) vs dinoloc.report.embedding_maps.project (exact_cosine_knn handed to UMAP), each in a fresh
          process (numba compiles once per process), on every embedding cache of a demo output; checks that the
          2-D maps are the same bits.

    python scripts/bench_demo.py --demo outputs            # after `make demo` (or paths.output_dir=...)
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, default=Path("outputs"), help="a demo output folder (paths.output_dir)")
    args = p.parse_args()
    print(json.dumps(bench_maps(args.demo)))


if __name__ == "__main__":
    main()
