"""Extraction throughput: end-to-end images/s vs model-only forward images/s, side by side in one run.

End to end = reading 16-bit TIFFs, preprocessing, the strategy, the model and the cache writes, i.e. the real
`dinoloc.extract.extract`. Model only = the same model on the same batch size, fed a batch already on the device.
The ratio (goal >= 0.90) says how much the data path costs on top of the model. Ends with a one-line JSON.

    python scripts/bench_extract.py --quick                        # CPU, tiny ViT (the demo's stand-in size)
    python scripts/bench_extract.py --device cuda --arch vit_base_patch8_224 --img-size 224 --model-kwargs '{}'
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from dinoloc.backbones.spec import PreprocessSpec
from dinoloc.backbones.vit import create_vit
from dinoloc.data.opencell import read_image
from dinoloc.extract.engine import EngineSettings, extract
from dinoloc.ontology import OPENCELL_CHANNELS
from dinoloc.strategies import EmbedPlan, embed_batch


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """n random-but-structured 2-channel uint16 TIFFs in the OpenCell layout (nucleus first)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(100, 4000, size=(2, size, size), dtype=np.uint16)
    paths = []
    for i in range(n):
        p = folder / f"OC-FOV_B{i}_ENSG{i:011d}_CID000001_FID{i:08d}_proj.tif"
        tifffile.imwrite(p, np.roll(base, i, axis=-1))
        paths.append(p)
    return paths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_tiny_patch16_224")
    ap.add_argument("--model-kwargs", default='{"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}')
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--image-px", type=int, default=160, help="size of the TIFFs on disk")
    ap.add_argument("--n-images", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--strategy", default="mapping", choices=["mapping", "replication"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer images (CPU smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.n_images = min(args.n_images, 1024)  # fewer would mostly time the workers starting up
    device = torch.device(args.device)
    amp = not args.no_amp and device.type == "cuda"
    channels, cmap = ["R", "G", "B"], {"protein": "R", "nucleus": "G"}
    model = create_vit(args.arch, in_chans=3, img_size=args.img_size, **json.loads(args.model_kwargs)).to(device).eval()
    pp = PreprocessSpec(img_size=args.img_size, spatial="resize", crop_size=600, intensity="minmax",
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    embed_fn = functools.partial(embed_batch, plan=EmbedPlan(
        strategy=args.strategy, backbone_channels=tuple(channels), channel_map=cmap,
        source_channels=OPENCELL_CHANNELS, preprocess=pp))
    views = 2 if args.strategy == "replication" else 1

    # Model only: same model, same batch, input already on the device.
    x = torch.rand(args.batch_size * views, 3, args.img_size, args.img_size, device=device)
    n_batches = max(1, args.n_images // args.batch_size)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for _ in range(2):
            model(x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model(x)
        sync(device)
    model_ips = n_batches * args.batch_size / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        paths = write_images(tmp / "img", args.n_images, args.image_px)
        ids = [p.stem for p in paths]
        t0 = time.perf_counter()
        extract(image_ids=ids, paths=paths, read_fn=read_image, model_factory=lambda: model, embed_fn=embed_fn,
                cache_dir=tmp / "cache", key="bench", meta={},
                settings=EngineSettings(resize_to=args.img_size, batch_size=args.batch_size, num_workers=args.workers,
                                        chunk_size=256, device=device, amp=amp, progress=False))
        sync(device)
        e2e_ips = len(ids) / (time.perf_counter() - t0)

    ratio = e2e_ips / model_ips
    print(f"device {device}  arch {args.arch} @ {args.img_size}px  batch {args.batch_size}  workers {args.workers}"
          f"  strategy {args.strategy}  threads {torch.get_num_threads()}")
    print(f"model-only forward : {model_ips:10.1f} images/s")
    print(f"end-to-end extract : {e2e_ips:10.1f} images/s")
    print(f"ratio              : {ratio:10.3f}   (goal >= 0.90)")
    print(json.dumps({"bench": "extract", "device": str(device), "arch": args.arch, "img_size": args.img_size,
                      "n_images": args.n_images, "batch_size": args.batch_size, "workers": args.workers,
                      "strategy": args.strategy, "model_only_ips": round(model_ips, 2),
                      "end_to_end_ips": round(e2e_ips, 2), "ratio": round(ratio, 4)}))


if __name__ == "__main__":
    main()
