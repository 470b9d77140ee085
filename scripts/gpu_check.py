"""GPU figures in one shot: the real-scale pipeline measured on one GPU in one bounded command (<= ~8 minutes).

Sections (each has a time budget; one that runs out keeps what it measured so far and the script moves on):

  vit       ViT-B/8 @ 224, bf16 autocast, model only: images/s and MFU (FLOPs counted by torch.utils.flop_counter,
            peak from PEAK_TFLOPS or --peak-tflops), eager and torch.compile, at the batch that runs fastest in an
            upward search (until OOM or the cap); peak GPU memory                                   goal MFU >= 40%
  extract   end to end extraction (dinoloc.extract.extract, the ImageNet mapping row) of ~2,000 1,024 px 16-bit
            TIFFs in the OpenCell layout written to local disk, one loader worker per core, vs the same per-batch
            device work (strategy + model) on a batch already on the GPU                          goal ratio >= 0.90
  pretrain  DINO steps at the paper's recipe: ViT-B/8, 2 x 224 global + 10 x 96 local crops, bf16, the largest batch
            that fits; step time, images/s, MFU, peak memory; the multi-crop loader's images/s on the TIFFs; the
            projected wall time of the paper's 300-epoch OpenCell run on this one GPU
  classify  the paper's classifier at paper scale (~4,400 training rows x 1,536 features per fold, 300 epochs, batch
            512, 5 folds): dinoloc.classify.cross_validate vs a plain per-fold DataLoader loop      goal >= 3x
  demo      `make demo`'s sweep (the five rows: extraction + 5-fold classifier) on the GPU and on the CPU: times and
            test macro F1 per row                                                     goal |dF1| within fold noise

    python scripts/gpu_check.py --json-out gpu.json        # on the GPU machine: gpu.json + gpu.md (README table)
    python scripts/gpu_check.py --dry-run                  # every section at toy size on the CPU (the test runs it)
    python scripts/gpu_check.py --sections vit,pretrain

The last line printed is the JSON; before it, the Markdown table that goes into the README's "GPU" subsection.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":  # tqdm reads it once, when torch imports it: dinoloc's progress bars would bury the figures
    os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from dinoloc import CONFIG_DIR
from dinoloc.io import write_text  # noqa: E402
from dinoloc.rules import typed  # noqa: E402

if TYPE_CHECKING:
    from dinoloc.pretrain.params import PretrainParams

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # bench_classify's features and baseline loop

SECTIONS = ("vit", "extract", "pretrain", "classify", "demo")
# Soft budget per section in seconds (the section stops measuring more); a hard alarm fires 10% + 5 s later.
# They sum to 420 s, so the whole run stays under 8 minutes with imports and start-up.
BUDGET_S = {"vit": 100.0, "extract": 60.0, "pretrain": 100.0, "classify": 60.0, "demo": 100.0}
# Dense (no sparsity) tensor-core peak in TFLOP/s for the autocast dtype (bf16; fp16 on V100), from the vendors'
# data sheets. Matched against the words of torch.cuda.get_device_name(); the first entry whose words all occur wins.
PEAK_TFLOPS = [
    (("H200", "NVL"), 835.0), (("H200",), 989.0), (("H100", "PCIe"), 756.0), (("H100", "NVL"), 835.0),
    (("H100",), 989.0), (("A100",), 312.0), (("L40S",), 362.0), (("A10",), 125.0), (("V100",), 125.0),
]
# The paper's OpenCell pretraining set: Table I's 6,301 images, of which "we trained on 90% of the available data"
# (the 10% test split is held out), i.e. ~5,671 images per epoch, for Table III's 300 DINO epochs.
OPENCELL_IMAGES, PRETRAIN_FRACTION, PRETRAIN_EPOCHS = 6301, 0.9, 300
DEMO_ROWS = ("imagenet_demo_mapping", "imagenet_demo_replication", "hpa_demo_mapping", "hpa_demo_replication",
             "opencell_demo_native")  # configs/experiment/demo.yaml's sweep


# ------------------------------------------------------------------------------------------------------------
# sizes: the real run and the dry run differ only here
@dataclass(frozen=True)
class Sizes:
    label: str
    arch: str
    model_kwargs: dict[str, Any]
    img_size: int
    vit_batches: tuple[int, ...]  # upward search; stops at the first OOM
    n_tiffs: int
    tiff_px: int
    pretrain_batches: tuple[int, ...]  # upward search; the largest that fits is reported
    global_px: int
    local_px: int
    head: dict[str, int]  # DINO head sizes (out_dim, hidden_dim, bottleneck_dim)
    clf_n: int  # labelled images: 10% test, 5 folds on the rest
    clf_dim: int
    clf_epochs: int
    demo_rows: tuple[str, ...]
    demo_targets: int
    demo_px: int
    demo_overrides: tuple[str, ...]
    measure_s: float  # how long one throughput measurement runs


FULL = Sizes(
    label="ViT-B/8", arch="vit_base_patch8_224", model_kwargs={}, img_size=224, vit_batches=(64, 128, 256, 512, 1024),
    n_tiffs=2000, tiff_px=1024, pretrain_batches=(16, 32, 64, 96, 128, 160, 192, 256), global_px=224, local_px=96,
    head={"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256},
    # 6,120 labelled images (Table I) -> 5,508 train rows, ~4,406 per fold; 1,536 = ViT-B's 768 x 2 replication views.
    clf_n=6120, clf_dim=1536, clf_epochs=300,
    demo_rows=DEMO_ROWS, demo_targets=80, demo_px=160, demo_overrides=(),  # the demo's data.generator values
    measure_s=2.0,
)
DRY = Sizes(
    label="toy ViT", arch="vit_tiny_patch16_224", model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    img_size=32, vit_batches=(2, 4), n_tiffs=8, tiff_px=64, pretrain_batches=(2, 4), global_px=32, local_px=16,
    head={"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}, clf_n=150, clf_dim=16, clf_epochs=2,
    demo_rows=("imagenet_demo_replication", "opencell_demo_native"), demo_targets=20, demo_px=64,
    demo_overrides=("classifier.epochs=2", "extract.num_workers=0"), measure_s=0.02,
)


@dataclass
class Run:
    sizes: Sizes
    device: torch.device
    work: Path  # TIFFs and caches, on local disk
    peak_tflops: float | None
    compile_backend: str
    local_crops: int
    workers: int
    tiffs: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------------
# helpers
class SectionTimeout(Exception):
    """The hard alarm of a section's budget."""


@contextlib.contextmanager
def hard_deadline(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in the main thread after `seconds` (SIGALRM; forked loader workers do not inherit it)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise SectionTimeout

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.total = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since reset_peak; on CPU the process's peak resident set (the dry run)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def seconds_per_call(fn: Callable[[], Any], device: torch.device, min_s: float, budget: Budget) -> float:
    """One warm-up call, one timed call to size the loop, then enough calls to fill min_s (within the budget)."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    one = time.perf_counter() - t0
    n = max(2, min(math.ceil(min_s / max(one, 1e-9)), int(max(budget.left(), 0) / max(one, 1e-9))))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def autocast_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16  # V100: no bf16 tensor cores
    return torch.bfloat16


def peak_tflops_for(name: str) -> float | None:
    words = set(name.replace("-", " ").split())
    return next((peak for keys, peak in PEAK_TFLOPS if all(k in words for k in keys)), None)


def mfu(flops_per_image: float, images_per_s: float, peak: float | None) -> float | None:
    return None if not peak else flops_per_image * images_per_s / (peak * 1e12)


def write_opencell_tiffs(root: Path, n: int, px: int, threads: int) -> list[Path]:
    """n 2-channel uint16 (2, px, px) TIFFs, nucleus first, in OpenCell's layout: 5 FOVs per target folder
    `<gene>_<ensg>/OC-FOV_<gene>_<ensg>_<cell line>_<fov>_proj.tif` (as tests/conftest.py make_opencell_tree).
    Uncompressed, like the test data; shifted copies of one random image, so writing is quick."""
    base = np.random.default_rng(0).integers(100, 4000, size=(2, px, px), dtype=np.uint16)

    def one(i: int) -> Path:
        gene, ensg = f"GENE{i // 5:04d}", f"ENSG{i // 5:011d}"
        path = root / f"{gene}_{ensg}" / f"OC-FOV_{gene}_{ensg}_CID{i // 5:06d}_FID{i:08d}_proj.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, np.roll(base, 7 * i, axis=-1))
        return path

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def tiffs(run: Run, out: dict[str, Any]) -> list[Path]:
    """The TIFF tree, written once per run (extract and pretrain share it)."""
    if not run.tiffs:
        t0 = time.perf_counter()
        run.tiffs = write_opencell_tiffs(run.work / "opencell", run.sizes.n_tiffs, run.sizes.tiff_px, run.workers)
        out["write_tiffs_s"] = round(time.perf_counter() - t0, 2)
    out["n_images"], out["image_px"] = len(run.tiffs), run.sizes.tiff_px
    return run.tiffs


# ------------------------------------------------------------------------------------------------------------
# 1. ViT-B/8 model-only throughput and MFU
def section_vit(run: Run, out: dict[str, Any], budget: Budget) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from dinoloc.backbones.vit import create_vit

    s, dev = run.sizes, run.device
    dtype = autocast_dtype(dev)
    model = create_vit(s.arch, in_chans=3, img_size=s.img_size, **s.model_kwargs).to(dev).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 3, s.img_size, s.img_size, device=dev))
    flops = counter.get_total_flops()
    out.update(model=s.label, arch=s.arch, img_size=s.img_size, dtype=DTYPE_NAMES[dtype],
               flops_per_image=flops, gflops_per_image=round(flops / 1e9, 3), peak_tflops=run.peak_tflops)

    def measure(m: torch.nn.Module, x: torch.Tensor) -> float:
        def call() -> None:
            with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype):
                m(x)
        return x.shape[0] / seconds_per_call(call, dev, s.measure_s, budget)

    by_batch: dict[str, dict[str, float]] = {}
    out["eager_by_batch"] = by_batch
    for b in s.vit_batches:
        if by_batch and budget.left() < 0.5 * budget.total:
            break  # keep half the budget for torch.compile
        reset_peak(dev)
        try:
            ips = measure(model, torch.randn(b, 3, s.img_size, s.img_size, device=dev))
        except torch.OutOfMemoryError:
            out["oom_batch"] = b
            break
        finally:
            free_memory(dev)
        by_batch[str(b)] = {"images_per_s": round(ips, 1), "peak_mem_gib": round(peak_gib(dev), 2)}
        print(f"vit: eager batch {b:5d}: {ips:9.1f} images/s, peak memory {peak_gib(dev):.2f} GiB", flush=True)
    best = max(by_batch, key=lambda k: by_batch[k]["images_per_s"])
    ips = by_batch[best]["images_per_s"]
    out.update(batch=int(best), images_per_s_eager=ips, mfu_eager=mfu(flops, ips, run.peak_tflops),
               peak_mem_gib=by_batch[best]["peak_mem_gib"])

    x = torch.randn(int(best), 3, s.img_size, s.img_size, device=dev)
    compiled = torch.compile(model, backend=run.compile_backend)
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype):
        compiled(x)  # the compilation
    sync(dev)
    out["compile_s"] = round(time.perf_counter() - t0, 1)
    ips_c = measure(compiled, x)
    out.update(compile_backend=run.compile_backend, images_per_s_compiled=round(ips_c, 1),
               mfu_compiled=mfu(flops, ips_c, run.peak_tflops))
    print(f"vit: torch.compile ({run.compile_backend}, {out['compile_s']} s to compile) batch {best}: "
          f"{ips_c:.1f} images/s", flush=True)


# ------------------------------------------------------------------------------------------------------------
# 2. end-to-end extraction from 16-bit TIFFs vs the device work alone
def section_extract(run: Run, out: dict[str, Any], budget: Budget) -> None:
    from dinoloc.backbones.spec import PreprocessSpec
    from dinoloc.backbones.vit import create_vit
    from dinoloc.data.opencell import read_image
    from dinoloc.extract.engine import EngineSettings, extract
    from dinoloc.ontology import OPENCELL_CHANNELS
    from dinoloc.rules import typed
    from dinoloc.strategies import EmbedPlan, embed_batch

    s, dev = run.sizes, run.device
    bb = yaml.safe_load((CONFIG_DIR / "backbone" / "imagenet.yaml").read_text())  # the Table III row
    ex = yaml.safe_load((CONFIG_DIR / "extract" / "default.yaml").read_text())
    pp = bb["preprocess"]
    paths = tiffs(run, out)
    model = create_vit(s.arch, in_chans=bb["in_chans"], img_size=s.img_size, **s.model_kwargs).to(dev).eval()
    embed_fn = functools.partial(embed_batch, plan=EmbedPlan(
        strategy="mapping", backbone_channels=tuple(bb["channels"]), channel_map=bb["channel_map"],
        source_channels=OPENCELL_CHANNELS, preprocess=typed(PreprocessSpec, pp | {"img_size": s.img_size})))
    batch = ex["batch_size"]
    out.update(arch=s.arch, batch=batch, workers=run.workers, amp=dev.type == "cuda")

    # Device side alone: what extract() does per batch once the loader has delivered it (B, 2, 224, 224).
    x = 4000 * torch.rand(batch, 2, s.img_size, s.img_size, device=dev)

    def device_work() -> None:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            embed_fn(model, x).float().cpu()

    out["model_only_ips"] = round(batch / seconds_per_call(device_work, dev, s.measure_s, budget), 1)
    print(f"extract: strategy + model on a ready batch of {batch}: {out['model_only_ips']:.1f} images/s", flush=True)

    cache = run.work / "extract_cache"
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    extract(image_ids=[p.stem for p in paths], paths=paths, read_fn=read_image, model_factory=lambda: model,
            embed_fn=embed_fn, cache_dir=cache, key="gpu_check", meta={},
            settings=EngineSettings(resize_to=s.img_size, batch_size=batch, num_workers=run.workers,
                                    chunk_size=ex["chunk_size"], device=dev, amp=True, progress=False))
    sync(dev)
    out["e2e_ips"] = round(len(paths) / (time.perf_counter() - t0), 1)
    out["ratio"] = round(out["e2e_ips"] / out["model_only_ips"], 3)
    print(f"extract: end to end, {len(paths)} TIFFs of {s.tiff_px} px, {run.workers} workers: {out['e2e_ips']:.1f} "
          f"images/s = {out['ratio']:.2f} of the device work alone (goal >= 0.90)", flush=True)


# ------------------------------------------------------------------------------------------------------------
# 3. DINO pretraining at the paper's multi-crop
def measure_dino_steps(run: Run, p: PretrainParams, out: dict[str, Any], budget: Budget) -> None:
    """dinoloc's own training iteration (dinoloc.pretrain.step.train_step: schedules, clipping, EMA, loss
    scaling with fp16), on crops already on the device, at growing batch sizes until one does not fit."""
    from torch.utils.flop_counter import FlopCounterMode

    from dinoloc.device import Dist
    from dinoloc.pretrain.schedules import build_schedules
    from dinoloc.pretrain.step import build_trainer, train_step

    s, dev = run.sizes, run.device
    if dev.type == "cuda" and autocast_dtype(dev) == torch.float16:
        p = dataclasses.replace(p, amp="fp16")  # V100: no bf16 tensor cores; fp16 with loss scaling as training
    trainer = build_trainer(s.arch, s.model_kwargs, 2, p, Dist(0, 1, dev, owned=False))
    epoch = min(p.freeze_last_layer, p.epochs - 1)  # past the frozen last layer: every gradient flows
    schedules = build_schedules(p, 1, s.pretrain_batches[0])

    def step(crops: list[torch.Tensor]) -> None:
        train_step(trainer, crops, epoch, 0, epoch, schedules, p)  # one sync per step: the finite-loss check

    def crops_for(b: int) -> list[torch.Tensor]:
        return ([torch.randn(b, 2, p.global_crop_size, p.global_crop_size, device=dev) for _ in range(2)]
                + [torch.randn(b, 2, p.local_crop_size, p.local_crop_size, device=dev)
                   for _ in range(p.local_crops_number)])

    b0 = s.pretrain_batches[0]
    with FlopCounterMode(display=False) as counter:  # forward and backward of both networks
        step(crops_for(b0))
    flops = counter.get_total_flops() / b0
    out.update(flops_per_image=round(flops), tflops_per_image=round(flops / 1e12, 4))

    by_batch: dict[str, dict[str, float]] = {}
    out["by_batch"] = by_batch
    for b in s.pretrain_batches:
        if by_batch and budget.left() < 0.3 * budget.total:
            break  # keep time for the loader
        reset_peak(dev)
        try:
            crops = crops_for(b)
            sec = seconds_per_call(lambda: step(crops), dev, s.measure_s, budget)  # noqa: B023 (used right here)
        except torch.OutOfMemoryError:
            sec = None
        crops = []
        if sec is None:
            trainer.optimizer.zero_grad(set_to_none=True)
            free_memory(dev)
            out["oom_batch"] = b
            break
        by_batch[str(b)] = {"step_s": round(sec, 4), "images_per_s": round(b / sec, 2),
                            "peak_mem_gib": round(peak_gib(dev), 2)}
        print(f"pretrain: batch {b:4d}: {sec:.3f} s/step, {b / sec:8.1f} images/s, peak memory "
              f"{peak_gib(dev):.2f} GiB", flush=True)
        free_memory(dev)
        largest = by_batch[str(b)]
        out.update(batch=b, step_s=largest["step_s"], images_per_s=largest["images_per_s"],
                   peak_mem_gib=largest["peak_mem_gib"], mfu=mfu(flops, largest["images_per_s"], run.peak_tflops))


def measure_multicrop_loader(run: Run, p: PretrainParams, out: dict[str, Any], budget: Budget) -> None:
    """dinoloc's PretrainDataset (read, z-score, 2 + N augmented crops) on the TIFFs, one worker per core, no GPU.
    Batches of 8 give a steady stream; the clock starts once every worker has delivered its first batch."""
    from torch.utils.data import DataLoader

    from dinoloc.data.opencell import read_image
    from dinoloc.pretrain.augment import MultiCropAugment
    from dinoloc.pretrain.data import PretrainDataset

    paths = tiffs(run, out)
    dataset = PretrainDataset([(q.stem, str(q)) for q in paths], read_image, 2, "zscore",
                              MultiCropAugment(p.crop_spec(), ["protein", "nucleus"], None, None), p.seed)
    loader = DataLoader(dataset, batch_size=8 if len(paths) >= 64 else 2, shuffle=True, num_workers=run.workers,
                        pin_memory=run.device.type == "cuda", drop_last=True)
    n, t0 = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        if i < run.workers:
            t0 = time.perf_counter()
        else:
            n += len(batch[0])
        if budget.left() < 0.05 * budget.total:
            break
    out["loader_workers"] = run.workers
    out["loader_ips"] = round(n / (time.perf_counter() - t0), 2) if n else None


def section_pretrain(run: Run, out: dict[str, Any], budget: Budget) -> None:
    from omegaconf import OmegaConf

    from dinoloc.config import compose as compose_config
    from dinoloc.pretrain.params import PretrainParams

    s = run.sizes
    cfg = OmegaConf.to_container(compose_config(["pretrain=opencell"]).pretrain, resolve=True)  # the paper's recipe
    cfg |= {"local_crops_number": run.local_crops, "global_crop_size": s.global_px, "local_crop_size": s.local_px,
            **s.head}
    p = typed(PretrainParams, cfg)
    cuda = run.device.type == "cuda"  # the training loop runs fp32 on the CPU, as here
    out.update(model=s.label, arch=s.arch, dtype=DTYPE_NAMES[autocast_dtype(run.device)] if cuda else "fp32",
               crops=f"2 × {p.global_crop_size} + {p.local_crops_number} × {p.local_crop_size}")
    measure_dino_steps(run, p, out, budget)
    free_memory(run.device)
    measure_multicrop_loader(run, p, out, budget)

    n_images = round(OPENCELL_IMAGES * PRETRAIN_FRACTION)
    iters = n_images // out["batch"]  # drop_last, as the training loop
    step_s = max(out["step_s"], out["batch"] / out["loader_ips"]) if out["loader_ips"] else out["step_s"]
    out.update(projection_images=n_images, projection_epochs=PRETRAIN_EPOCHS,
               projection_source="paper Table I: 6,301 OpenCell images; 90% used for pretraining; Table III: 300 epochs",
               projected_hours_gpu_only=round(PRETRAIN_EPOCHS * iters * out["step_s"] / 3600, 2),
               projected_hours=round(PRETRAIN_EPOCHS * iters * step_s / 3600, 2))
    print(f"pretrain: loader {out['loader_ips']} images/s ({run.workers} workers); 300 epochs x {n_images} images at "
          f"batch {out['batch']}: {out['projected_hours']} h ({out['projected_hours_gpu_only']} h if the loader kept "
          "up)", flush=True)


# ------------------------------------------------------------------------------------------------------------
# 4. the classifier at paper scale: batched 5-fold trainer vs a plain DataLoader loop
def section_classify(run: Run, out: dict[str, Any], budget: Budget) -> None:
    from bench_classify import baseline, make_features  # type: ignore[import-not-found]
    from dinoloc.classify.cv import CVData, cross_validate
    from dinoloc.classify.params import ClassifierParams

    s, dev = run.sizes, str(run.device)
    from dinoloc.config import compose, plain

    cfg = plain(compose().classifier)  # classifier/mlp.yaml's values (its `defaults:` is Hydra's, not a key)
    cfg.pop("name", None)
    params = typed(ClassifierParams, {**cfg, "epochs": s.clf_epochs})
    X, Y, split, fold, ids, targets = make_features(s.clf_n, s.clf_dim, test_fraction=0.1)
    folds = sorted(int(k) for k in np.unique(fold[split == "train"]))
    train_rows = [int(((split == "train") & (fold != k)).sum()) for k in folds]
    out.update(n=s.clf_n, dim=s.clf_dim, epochs=params.epochs, batch=params.batch_size, folds=len(folds),
               train_rows_per_fold=round(float(np.mean(train_rows))))

    warm = typed(ClassifierParams, {**cfg, "epochs": 1})  # CUDA context, kernels, lazy imports: not timed
    cross_validate(CVData(X, Y, split, fold, ids, targets), warm, device=dev, progress=False)
    baseline(X, Y, split, fold, warm, dev, folds=folds[:1])
    sync(run.device)
    t0 = time.perf_counter()
    res = cross_validate(CVData(X, Y, split, fold, ids, targets), params, device=dev, progress=False)
    sync(run.device)
    out["ours_s"] = round(time.perf_counter() - t0, 2)
    out["f1_ours"] = round(res.summary["test_macro_f1_mean"], 4)
    print(f"classify: dinoloc 5-fold trainer {out['ours_s']:.2f} s, test macro F1 {out['f1_ours']:.4f}", flush=True)

    fold_s, fold_f1 = [], []
    for k in folds:  # fold by fold, so a budget that runs out still gives a per-fold time
        t0 = time.perf_counter()
        fold_f1.append(baseline(X, Y, split, fold, params, dev, folds=[k]))
        sync(run.device)
        fold_s.append(time.perf_counter() - t0)
        out.update(baseline_folds_run=len(fold_s), baseline_s=round(float(np.mean(fold_s)) * len(folds), 2),
                   f1_baseline=round(float(np.mean(fold_f1)), 4))
        out["speedup"] = round(out["baseline_s"] / out["ours_s"], 2)
        if budget.left() < 1.5 * fold_s[-1]:
            break
    print(f"classify: DataLoader loop {out['baseline_s']:.2f} s ({out['baseline_folds_run']} of {len(folds)} folds "
          f"run, scaled to all), test macro F1 {out['f1_baseline']:.4f}; speedup {out['speedup']:.2f}x "
          "(goal >= 3x)", flush=True)


# ------------------------------------------------------------------------------------------------------------
# 5. make demo's sweep on the GPU and on the CPU

def section_demo(run: Run, out: dict[str, Any], budget: Budget) -> None:
    from hydra import compose, initialize_config_dir

    from dinoloc import CONFIG_DIR
    from dinoloc.classify.stage import run_classification
    from dinoloc.config import classify_spec, data_spec
    from dinoloc.data.prepare import run_data
    from dinoloc.synthetic.generate import packaged_spec
    from dinoloc.synthetic.opencell import generate_opencell

    s = run.sizes
    # The demo's SYNTHETIC OpenCell-like data (same generator and seed as `make demo`); the HPA- and natural-like
    # pretraining images are not needed, so data.synthetic=false skips generating them.
    synth = run.work / "demo_synthetic"
    if not (synth / "opencell").is_dir():
        gen = packaged_spec()  # the shipped generator values; this check's own size
        generate_opencell(synth / "opencell", n_targets=s.demo_targets, image_size=s.demo_px, seed=gen.seed,
                          images_per_target=gen.images_per_target, n_unannotated=gen.n_unannotated)
    # The stand-ins pretrained by `make demo` when they exist here, else the same tiny ViTs with random weights.
    pretrained = all((ROOT / "outputs" / "pretrain" / f"{b}_demo" / "checkpoint.pth").is_file()
                     for b in ("imagenet", "hpa", "opencell"))
    weights = ([f"paths.pretrain_dir={ROOT / 'outputs' / 'pretrain'}"] if pretrained
               else ["backbone.weights=", "allow_random_weights=true"])
    common = ["experiment=demo", f"paths.synthetic_dir={synth}", "data.synthetic=false",
              f"paths.data_dir={run.work / 'demo_data'}", *weights, *s.demo_overrides]
    out["weights"] = "make demo's pretrained stand-ins" if pretrained else "random (no make demo checkpoints here)"

    def compose_cfg(extra: list[str]) -> Any:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=[*common, *extra])

    t0 = time.perf_counter()
    run_data(data_spec(compose_cfg([])))  # data and split: not part of the sweep's time
    out["data_s"] = round(time.perf_counter() - t0, 2)
    devices = {"gpu": str(run.device), "cpu": "cpu"}
    seconds = {"gpu": 0.0, "cpu": 0.0}
    rows: dict[str, dict[str, float]] = {}
    out["rows"] = rows
    for row in s.demo_rows:  # row by row, GPU then CPU: a budget that runs out still leaves complete pairs
        for tag, dev in devices.items():
            if tag == "cpu" and dev == devices["gpu"]:  # the dry run: the "GPU" is the CPU already
                seconds["cpu"] = seconds["gpu"]
                rows[row] |= {"f1_cpu": rows[row]["f1_gpu"], "fold_std_cpu": rows[row]["fold_std_gpu"]}
                continue
            cfg = compose_cfg([f"row={row}", f"device={dev}", f"paths.output_dir={run.work / f'demo_{tag}'}"])
            t0 = time.perf_counter()
            res = run_classification(classify_spec(cfg))  # extraction (a fresh cache) + the 5-fold classifier: one `dinoloc-run` job
            seconds[tag] += time.perf_counter() - t0
            rows.setdefault(row, {}).update({f"f1_{tag}": round(res["test_macro_f1_mean"], 4),
                                             f"fold_std_{tag}": round(res["test_macro_f1_std"], 4)})
        r = rows[row]
        print(f"demo: {row:26s} test macro F1 GPU {r['f1_gpu']:.4f}, CPU {r['f1_cpu']:.4f} "
              f"(fold std {r['fold_std_cpu']:.4f})", flush=True)
        deltas = [abs(v["f1_gpu"] - v["f1_cpu"]) for v in rows.values()]
        out.update(rows_done=len(rows), gpu_sweep_s=round(seconds["gpu"], 2), cpu_sweep_s=round(seconds["cpu"], 2),
                   speedup=round(seconds["cpu"] / seconds["gpu"], 2), max_abs_delta_f1=round(max(deltas), 4),
                   # noise: the CPU run's fold-to-fold std of the test macro F1 (a seed moves the mean about as much)
                   within_noise=all(abs(v["f1_gpu"] - v["f1_cpu"]) <= 2 * v["fold_std_cpu"] + 1e-9
                                    for v in rows.values()))
    print(f"demo: sweep of {len(rows)} rows: GPU {out['gpu_sweep_s']:.1f} s, CPU {out['cpu_sweep_s']:.1f} s; max "
          f"|F1 GPU - F1 CPU| {out['max_abs_delta_f1']:.4f}; within 2 fold std: {out['within_noise']}", flush=True)


# ------------------------------------------------------------------------------------------------------------
# report
def fmt(v: Any, spec: str = ".1f", suffix: str = "") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:{spec}}{suffix}"


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def markdown_table(res: dict[str, Any]) -> str:
    sec, rows = res["sections"], []
    if v := sec.get("vit"):
        rows += [(f"{v.get('model')} @ {v.get('img_size')} px {v.get('dtype')}, model only, batch {v.get('batch')}: "
                  "eager / torch.compile", f"{fmt(v.get('images_per_s_eager'))} / "
                  f"{fmt(v.get('images_per_s_compiled'))} images/s", ""),
                 (f"MFU eager / compiled ({fmt(v.get('gflops_per_image'))} GFLOP/image, peak "
                  f"{fmt(v.get('peak_tflops'), '.0f')} TFLOP/s)",
                  f"{pct(v.get('mfu_eager'))} / {pct(v.get('mfu_compiled'))}", "≥ 40 %"),
                 ("peak memory at that batch (GPU; in a dry run the process's CPU peak)", fmt(v.get("peak_mem_gib"), ".1f", " GiB"), "")]
    if v := sec.get("extract"):
        rows += [(f"extraction end to end / strategy + model alone ({fmt(v.get('n_images'), ',')} TIFFs of "
                  f"{v.get('image_px')} px, {v.get('workers')} workers, batch {v.get('batch')})",
                  f"{fmt(v.get('e2e_ips'))} / {fmt(v.get('model_only_ips'))} images/s = {fmt(v.get('ratio'), '.2f')}",
                  "≥ 0.90")]
    if v := sec.get("pretrain"):
        rows += [(f"DINO step, {v.get('model')}, {v.get('crops')} crops, {v.get('dtype')}, largest batch that fits "
                  f"({v.get('batch')})", f"{fmt(v.get('step_s'), '.3f')} s/step, {fmt(v.get('images_per_s'))} "
                  f"images/s, MFU {pct(v.get('mfu'))}, {fmt(v.get('peak_mem_gib'), '.1f')} GiB", ""),
                 (f"multi-crop loader ({v.get('loader_workers')} workers)",
                  f"{fmt(v.get('loader_ips'))} images/s", "≥ the step's images/s"),
                 (f"projected 300-epoch OpenCell pretraining ({fmt(v.get('projection_images'), ',')} images), "
                  "one GPU", f"{fmt(v.get('projected_hours'))} h ({fmt(v.get('projected_hours_gpu_only'))} h "
                  "GPU-bound)", "")]
    if v := sec.get("classify"):
        rows += [(f"classifier, {fmt(v.get('train_rows_per_fold'), ',')} × {fmt(v.get('dim'), ',')} per fold, "
                  f"{v.get('epochs')} epochs, batch {v.get('batch')}, 5 folds: dinoloc / DataLoader loop",
                  f"{fmt(v.get('ours_s'))} s / {fmt(v.get('baseline_s'))} s = {fmt(v.get('speedup'), '.1f', '×')}",
                  "≥ 3×"),
                 ("  test macro F1 dinoloc / loop", f"{fmt(v.get('f1_ours'), '.3f')} / "
                  f"{fmt(v.get('f1_baseline'), '.3f')}", "within noise")]
    if v := sec.get("demo"):
        rows += [(f"`make demo` sweep ({v.get('rows_done')} of {len(DEMO_ROWS)} rows: extraction + classifier) on "
                  "the GPU / on the CPU",
                  f"{fmt(v.get('gpu_sweep_s'))} s / {fmt(v.get('cpu_sweep_s'))} s", ""),
                 ("  largest difference in test macro F1, GPU − CPU, over the rows", fmt(v.get("max_abs_delta_f1"), ".4f"),
                  "≤ 2 fold std")]
    for name, v in sec.items():
        if v.get("timed_out") or v.get("error"):
            rows.append((f"({name}: {'ran out of its time budget' if v.get('timed_out') else v['error']})", "", ""))
    head = f"Measured on {res['machine']['device']}, torch {res['machine']['torch']}, `{res['command']}`:\n\n"
    cells = [[str(c).replace("|", "\\|") for c in row] for row in rows]  # a '|' in an error text would split a cell
    return head + "| figure | measured | goal |\n|---|---|---|\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in cells)


def run_section(name: str, fn: Callable[[Run, dict[str, Any], Budget], None], run: Run, budget_s: float
                ) -> dict[str, Any]:
    """Run one section under its budget; whatever it measured before running out or failing is kept."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        with hard_deadline(1.1 * budget_s + 5):
            fn(run, out, Budget(budget_s))
    except SectionTimeout:
        out["timed_out"] = True
        print(f"{name}: out of time after {time.perf_counter() - t0:.0f} s; keeping what it measured", flush=True)
    except Exception as e:  # one failed section must not cost the others (a GPU lease is short)
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"{name}: FAILED {out['error']}", flush=True)
    if name == "vit":
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
    free_memory(run.device)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="every section at toy size on the CPU (< 1 minute)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--json-out", type=Path, help="write the JSON here (and the Markdown table next to it, .md)")
    ap.add_argument("--md-out", type=Path, help="write the Markdown table here (default: --json-out with .md)")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in PEAK_TFLOPS")
    ap.add_argument("--device", help="default: cuda (cpu with --dry-run)")
    ap.add_argument("--local-crops", type=int, default=10,
                    help="local crops per image (official DINO's ViT-B runs: 10; configs/pretrain/opencell.yaml: 8)")
    ap.add_argument("--work-dir", type=Path, help="local disk for the TIFFs and caches (default: a temporary "
                    "folder under outputs/, removed at the end)")
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiply every section's time budget")
    args = ap.parse_args(argv)
    chosen = [x.strip() for x in args.sections.split(",") if x.strip()]
    if unknown := sorted(set(chosen) - set(SECTIONS)):
        ap.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device visible: run on the GPU machine, or --dry-run (toy sizes on the CPU)")
    sizes = DRY if args.dry_run else FULL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    cores = len(os.sched_getaffinity(0))
    (ROOT / "outputs").mkdir(exist_ok=True)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check_", dir=ROOT / "outputs"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(sizes=sizes, device=device, work=work,
              peak_tflops=args.peak_tflops or (peak_tflops_for(name) if device.type == "cuda" else None),
              compile_backend="eager" if args.dry_run else "inductor",  # the dry run checks the path, not inductor
              local_crops=args.local_crops, workers=min(cores, 2) if args.dry_run else cores)
    # Small synthetic sets leave a rare class out of some folds' training parts; the figures do not depend on it.
    warnings.filterwarnings("ignore", message=".*no positive in the training part")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (the classifier) as a user would run them
        torch.backends.cudnn.benchmark = True
    command = "python scripts/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"gpu_check on {name}, {cores} CPU cores, torch {torch.__version__}; {'DRY RUN' if args.dry_run else 'full'}"
          f"; peak {run.peak_tflops} TFLOP/s; work dir {work}", flush=True)

    functions = {"vit": section_vit, "extract": section_extract, "pretrain": section_pretrain,
                 "classify": section_classify, "demo": section_demo}
    t_start = time.perf_counter()
    res: dict[str, Any] = {
        "gpu_check": 1, "dry_run": args.dry_run, "command": command.strip(),
        "machine": {"device": name, "cpu_cores": cores, "torch": torch.__version__, "python": platform.python_version(),
                    # loader workers hand batches over in shared memory: a small /dev/shm fails extract and pretrain
                    "dev_shm_gib": round(shutil.disk_usage("/dev/shm").total / 2**30, 1) if Path("/dev/shm").is_dir()
                    else None},
        "sections": {},
    }
    try:
        for sec in chosen:
            print(f"\n== {sec} (budget {BUDGET_S[sec] * args.time_scale:.0f} s)", flush=True)
            res["sections"][sec] = run_section(sec, functions[sec], run, BUDGET_S[sec] * args.time_scale)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    res["seconds"] = round(time.perf_counter() - t_start, 1)

    md = markdown_table(res)
    print("\n" + md)
    line = json.dumps(res, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    md_out = args.md_out or (args.json_out.with_suffix(".md") if args.json_out else None)
    if args.json_out:
        write_text(args.json_out, line + "\n")
    if md_out:
        write_text(md_out, md)
    print(line, flush=True)
    return res


if __name__ == "__main__":
    main()
