"""Cell-level extraction at scale (data.unit=cell): cells/s beside images/s, and peak memory at two sizes.

Writes a SYNTHETIC folder dataset (2-channel 16-bit TIFFs, DNA + protein, `--cells-per-image` round nuclei on a
grid), then in a fresh process per size runs the real stage runners: dinoloc-data's cell listing (scikit-image
segmentation of the nucleus channel, cells.csv), the cell-level extraction (crops, a tiny ViT, chunked cache,
aggregation per image) and, for comparison, the image-level extraction of the same images. Prints cells/s,
images/s and the child's peak RSS (ru_maxrss), and ends with a one-line JSON.

    python scripts/bench_cells.py --sizes 10000,100000          # cells; CPU, tiny ViT, 16 px crops
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

TINY = ["backbone=timm", "backbone.arch=vit_tiny_patch16_224", "backbone.weights=", "allow_random_weights=true",
        "backbone.in_chans=3", "backbone.channels=[nucleus,protein,er]",
        "backbone.channel_map={protein: protein, nucleus: nucleus}", "backbone.preprocess.intensity=zscore",
        "backbone.preprocess.mean=null", "backbone.preprocess.std=null", "+backbone.model_kwargs.patch_size=8",
        "+backbone.model_kwargs.embed_dim=48", "+backbone.model_kwargs.depth=1", "+backbone.model_kwargs.num_heads=3",
        "extract.num_workers=0", "device=cpu", "strategy=mapping", "data=folder", "data.channels=[DNA,protein]",
        "data.channel_roles={DNA: nucleus}", "data.split.n_folds=2", "data.split.test_size=0.2"]


def write_dataset(root: Path, n_images: int, cells_per_image: int, size: int, seed: int = 0) -> None:
    """SYNTHETIC: n_images 2-channel TIFFs with cells_per_image discs (radius 4) on a jittered grid."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    side = int(np.ceil(np.sqrt(cells_per_image)))
    step = size // side
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for i in range(n_images):
        nucleus = 0.05 * rng.random((size, size))
        protein = 0.05 * rng.random((size, size))
        for k in range(cells_per_image):
            cy, cx = step // 2 + (k // side) * step, step // 2 + (k % side) * step
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            nucleus[d2 <= 16] = 0.9
            protein[(d2 > 16) & (d2 <= 36)] += 0.5 + 0.3 * (i % 3)
        rel = f"i{i:06d}.tif"
        tifffile.imwrite(root / rel, (np.stack([nucleus, protein]) * 60000).astype(np.uint16))
        rows.append({"image": rel, "labels": ["a", "b", "c"][i % 3]})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)


def child(root: str, out: str, crop: int, chunk: int) -> dict:
    """One size, in this process: cell listing, cell-level and image-level extraction; peak RSS at the end."""
    from dinoloc.config import compose, extract_spec
    from dinoloc.data.prepare import run_data
    from dinoloc.extract.stage import run_extraction

    common = [f"paths.output_dir={out}", f"data.root={root}", *TINY, f"backbone.preprocess.img_size={crop}",
              f"extract.chunk_size={chunk}", "extract.batch_size=256"]
    import dinoloc.backbones.build  # noqa: F401  (torch and timm imported before any clock starts)
    import dinoloc.extract.engine  # noqa: F401

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cell_spec = extract_spec(compose([*common, "data.unit=cell", f"data.cell.crop_px={crop}"]))
    t0 = time.perf_counter()
    manifest, _ = run_data(cell_spec.data)
    t_list = time.perf_counter() - t0
    n_cells = len(pd.read_csv(Path(cell_spec.data.out_dir) / "cells.csv"))
    rss_after_listing = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    run_extraction(cell_spec, manifest)
    t_cells = time.perf_counter() - t0
    image_spec = extract_spec(compose(common))
    t0 = time.perf_counter()
    run_extraction(image_spec, manifest)
    t_images = time.perf_counter() - t0
    return {"images": len(manifest), "cells": n_cells, "listing_s": t_list, "cell_extract_s": t_cells,
            "image_extract_s": t_images, "cells_per_s": n_cells / t_cells, "images_per_s": len(manifest) / t_images,
            "listing_cells_per_s": n_cells / t_list, "peak_rss_mib_after_imports": rss_imports,
            "peak_rss_mib_after_listing": rss_after_listing,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="numbers of cells, comma-separated")
    ap.add_argument("--cells-per-image", type=int, default=100)
    ap.add_argument("--image-px", type=int, default=256)
    ap.add_argument("--crop", type=int, default=16, help="data.cell.crop_px = the tiny ViT's input")
    ap.add_argument("--chunk", type=int, default=4096, help="extract.chunk_size")
    ap.add_argument("--child", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = child(*args.child, args.crop, args.chunk)
        print(json.dumps(res))
        return res
    results = []
    with tempfile.TemporaryDirectory(prefix="dinoloc-bench-cells-") as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            root, out = Path(tmp) / f"data{n}", Path(tmp) / f"out{n}"
            write_dataset(root, max(1, n // args.cells_per_image), args.cells_per_image, args.image_px)
            proc = subprocess.run([sys.executable, __file__, "--child", str(root), str(out), "--crop", str(args.crop),
                                   "--chunk", str(args.chunk)], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"cells {r['cells']:>7} in {r['images']:>5} images: listing {r['listing_cells_per_s']:8.0f} cells/s, "
                  f"extraction {r['cells_per_s']:8.0f} cells/s (images {r['images_per_s']:6.1f} /s), "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r['peak_rss_mib_after_imports']:.0f} after imports)", flush=True)
            results.append(r)
    out = {"bench": "cells", "crop_px": args.crop, "chunk_size": args.chunk, "sizes": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
