"""One benchmark command: every performance figure of the pipeline as a ratio measured side by side in one run.

Sections (each prints its rows; the run ends with a table and a one-line JSON of every figure):

  extract   end-to-end extraction images/s (TIFF reading, preprocessing, model, cache writes) / model-only forward
            images/s, same model and batch (scripts/bench_extract.py)                                goal >= 0.90
  gpu       CUDA only: ViT-B/8 @ 224, bf16 autocast + SDPA: images/s and model FLOP utilisation against the card's
            bf16 peak, FLOPs counted from the model with torch.utils.flop_counter                  goal >= 40% MFU
  pretrain  DINO pretraining images/s (full step: data loading, multi-crop augmentation, student + teacher,
            loss, optimizer, EMA) / bare student+teacher forward-backward images/s on ready-made crops of the same
            shapes. ViT-B/8 with 2x224 + 8x96 crops on CUDA; the demo's tiny ViT on CPU             goal >= 0.90
  cache     the demo sweep (5 rows) run twice in one process: second run time / first run time, and the number of
            backbone forward passes in the second run (and in a force=true rerun, which retrains but must reuse
            the embeddings)                                                       goal <= 5 %, 0 forward passes
  classify  the project's 5-fold classifier vs a plain DataLoader loop, same settings and features
            (scripts/bench_classify.py)                                                       goal >= 3x, F1 equal
  scaling   extraction and classifier time at 1x, 2x, 4x the images: t(2x)/t(1x) and t(4x)/t(1x)   linear: 2, 4
  bf16      the demo's embeddings computed again under bf16 autocast (on CUDA when present, else CPU bf16): relative
            difference to the fp32 cache and the change of the classifier's test macro F1 (needs `make demo` first)
  cells     data.unit=cell: cell listing and cell-level extraction cells/s beside image-level images/s on the same
            SYNTHETIC images (tiny ViT, 16 px crops), peak RSS at two sizes (scripts/bench_cells.py)   bounded RSS
  demo      `make demo` stage times from outputs/reports/demo/timings.json (run `make demo` first)  goal <= 300 s

    python scripts/bench.py --quick            # CPU: small sizes, a few minutes on 2 cores
    python scripts/bench.py                    # real sizes (classifier: 6,120 x 768 and x 3,072, 300 epochs)
    python scripts/bench.py --only extract,gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from dinoloc import CONFIG_DIR  # noqa: E402
from dinoloc.rules import typed  # noqa: E402

SECTIONS = ("extract", "gpu", "pretrain", "cache", "classify", "scaling", "bf16", "cells", "demo")
# Dense bf16 tensor-core peaks (TFLOP/s, multiply and add counted separately), from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.0}


def _script(name: str, *args: str) -> dict:
    """Run scripts/<name> and return its last-line JSON (its own printout is passed through)."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------------
def bench_extract(quick: bool, device: str) -> dict:
    args = ["--device", device]
    if device.startswith("cuda"):
        args += ["--arch", "vit_base_patch8_224", "--img-size", "224", "--model-kwargs", "{}", "--image-px", "1024",
                 "--workers", str(min(8, os.cpu_count() or 1)), "--n-images", "512" if quick else "2048"]
    elif quick:
        args += ["--quick"]
    return _script("bench_extract.py", *args)


def _peak_tflops(name: str) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return peak
    return None


def bench_gpu(quick: bool, peak_override: float | None, compile_model: bool) -> dict:
    if not torch.cuda.is_available():
        print("gpu: no CUDA device here; skipped (run on a GPU server for images/s and MFU)")
        return {"skipped": "no CUDA device"}
    from torch.utils.flop_counter import FlopCounterMode

    from dinoloc.backbones.vit import create_vit

    device = torch.device("cuda")
    model = create_vit("vit_base_patch8_224", in_chans=3, img_size=224).to(device).eval()
    with FlopCounterMode(display=False) as counter:  # FLOPs of one image, from the model itself
        with torch.inference_mode():
            model(torch.zeros(1, 3, 224, 224, device=device))
    flops_per_image = counter.get_total_flops()
    if compile_model:
        model = torch.compile(model)
    name = torch.cuda.get_device_name()
    peak = peak_override or _peak_tflops(name)
    rows = {}
    for bs in (64, 128, 256):
        x = torch.randn(bs, 3, 224, 224, device=device)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                model(x)
            torch.cuda.synchronize()
            n = 5 if quick else 20
            t0 = time.perf_counter()
            for _ in range(n):
                model(x)
            torch.cuda.synchronize()
        ips = n * bs / (time.perf_counter() - t0)
        mfu = ips * flops_per_image / (peak * 1e12) if peak else None
        rows[bs] = {"images_per_s": round(ips, 1), "mfu": None if mfu is None else round(mfu, 4)}
        print(f"gpu: {name} ViT-B/8 bf16 batch {bs}: {ips:8.1f} images/s"
              + (f", MFU {100 * mfu:.1f}% of {peak:.0f} TFLOP/s" if mfu else " (peak unknown: --peak-tflops)"))
    best = max(rows.values(), key=lambda r: r["images_per_s"])
    return {"device": name, "gflops_per_image": round(flops_per_image / 1e9, 2), "peak_tflops": peak,
            "compiled": compile_model, "by_batch": rows, **best}


# ------------------------------------------------------------------------------------------------------------
def bench_pretrain(quick: bool, device: str) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    from omegaconf import OmegaConf

    from bench_extract import write_images  # type: ignore[import-not-found]
    from dinoloc.config import compose as compose_config
    from dinoloc.data.opencell import read_image
    from dinoloc.pretrain.loss import DINOLoss
    from dinoloc.pretrain.params import DATA_KEYS, PretrainParams
    from dinoloc.pretrain.step import build_dino_model
    from dinoloc.pretrain.train import PretrainModel, train_dino

    cuda = device.startswith("cuda")
    if cuda:  # the paper's OpenCell run: ViT-B/8, official multi-crop
        arch, kwargs, recipe = "vit_base_patch8_224", {}, "opencell"
        n_images, px, overrides = (256 if quick else 1024), 1024, {"batch_size_per_gpu": 32, "epochs": 2}
    else:  # the demo's stand-in recipe
        arch, kwargs, recipe = "vit_tiny_patch16_224", {"patch_size": 8, "embed_dim": 96, "depth": 4,
                                                        "num_heads": 3}, "demo"
        n_images, px, overrides = (128 if quick else 512), 160, {"epochs": 2}
    cfg = OmegaConf.to_container(compose_config([f"pretrain={recipe}"]).pretrain, resolve=True)
    cfg = {k: v for k, v in cfg.items() if k not in DATA_KEYS} | overrides
    cfg["num_workers"] = min(cfg["num_workers"], os.cpu_count() or 1) if cuda else cfg["num_workers"]
    p = typed(PretrainParams, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        paths = write_images(tmp / "img", n_images, px)
        train_dino([(q.stem, str(q)) for q in paths], read_image, ["protein", "nucleus"], tmp / "run",
                   model=PretrainModel(arch=arch, model_kwargs=kwargs, in_chans=2, intensity="zscore", mean=None,
                                       std=None), params=p, device=device)
        log = (tmp / "run" / "log.csv").read_text().strip().splitlines()
        header, last = log[0].split(","), log[-1].split(",")
        full_ips = float(last[header.index("images_per_s")])  # the second epoch: warm caches, workers running

    dev = torch.device(device)
    student = build_dino_model(arch, kwargs, 2, p, p.drop_path_rate).to(dev).train()
    teacher = build_dino_model(arch, kwargs, 2, p, 0.0).to(dev).eval()
    loss_fn = DINOLoss(p.out_dim, 2 + p.local_crops_number, p.warmup_teacher_temp, p.teacher_temp,
                       p.warmup_teacher_temp_epochs, p.epochs, student_temp=p.student_temp,
                       center_momentum=p.center_momentum, centering=p.centering).to(dev)
    b = p.batch_size_per_gpu
    crops = [torch.randn(b, 2, p.global_crop_size, p.global_crop_size, device=dev) for _ in range(2)]
    crops += [torch.randn(b, 2, p.local_crop_size, p.local_crop_size, device=dev) for _ in range(p.local_crops_number)]
    amp = cuda and p.amp != "none"
    dtype = torch.bfloat16 if p.amp == "bf16" else torch.float16

    def bare_step() -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=amp):
            with torch.no_grad():
                t_out = teacher(crops[:2])
            s_out = student(crops)
        loss_fn(s_out, t_out, 0).backward()

    for _ in range(2):
        bare_step()
    n = 3 if quick else 10
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        bare_step()
    if cuda:
        torch.cuda.synchronize()
    bare_ips = n * b / (time.perf_counter() - t0)
    ratio = full_ips / bare_ips
    print(f"pretrain: {arch} {2}x{p.global_crop_size}+{p.local_crops_number}x{p.local_crop_size} crops, batch {b}: "
          f"full step {full_ips:.1f} images/s, bare fwd/bwd {bare_ips:.1f} images/s, ratio {ratio:.2f} (goal >= 0.90)")
    return {"arch": arch, "device": device, "batch": b, "full_step_ips": round(full_ips, 2),
            "bare_fwd_bwd_ips": round(bare_ips, 2), "ratio": round(ratio, 4)}


def bench_cache(quick: bool) -> dict:
    """The demo sweep twice, in-process, counting backbone forward passes through build_backbone."""
    from hydra import compose, initialize_config_dir

    import dinoloc.backbones.build as backbones  # run_extraction looks build_backbone up here at each call
    from dinoloc.classify.stage import run_classification
    from dinoloc.config import classify_spec, data_spec
    from dinoloc.data.prepare import run_data

    forwards = {"n": 0}
    original = backbones.build_backbone

    def counting_build(*args, **kwargs):
        model = original(*args, **kwargs)
        model.register_forward_hook(lambda *_: forwards.__setitem__("n", forwards["n"] + 1))
        return model

    backbones.build_backbone = counting_build
    rows = ["imagenet_demo_mapping", "imagenet_demo_replication", "hpa_demo_mapping", "hpa_demo_replication",
            "opencell_demo_native"]
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"paths.output_dir={tmp}", "experiment=demo", "backbone.weights=", "allow_random_weights=true",
                  "extract.num_workers=0", "data.generator.n_targets=40", "data.generator.image_size=96"]
        # The paper's 300 classifier epochs even with --quick: the rerun's fixed cost is compared to a real first run.

        def sweep(extra: list[str]) -> float:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfgs = [compose("config", overrides=[*common, f"row={r}", *extra]) for r in rows]
            t0 = time.perf_counter()
            for cfg in cfgs:
                run_classification(classify_spec(cfg))
            return time.perf_counter() - t0

        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            run_data(data_spec(compose("config", overrides=common)))  # data generation is not part of the sweep
        first = sweep([])
        n_first = forwards["n"]
        forwards["n"] = 0
        second = sweep([])
        n_second = forwards["n"]
        forwards["n"] = 0
        forced = sweep(["force=true"])
        n_forced = forwards["n"]
    backbones.build_backbone = original
    frac = second / first
    print(f"cache: first sweep {first:.1f} s ({n_first} forward passes), rerun {second:.2f} s = {100 * frac:.2f}% "
          f"({n_second} forward passes); force=true rerun {forced:.1f} s ({n_forced} forward passes)")
    return {"first_s": round(first, 2), "rerun_s": round(second, 3), "rerun_fraction": round(frac, 4),
            "forward_passes_first": n_first, "forward_passes_rerun": n_second,
            "forward_passes_forced_rerun": n_forced, "forced_rerun_s": round(forced, 2)}


# ------------------------------------------------------------------------------------------------------------
def bench_classify(quick: bool, device: str) -> dict:
    out = {}
    for dim in (768, 3072):
        args = ["--device", device, "--dim", str(dim)] + (["--quick"] if quick else [])
        out[f"d{dim}"] = _script("bench_classify.py", *args)
    return out


def bench_scaling(quick: bool, device: str) -> dict:
    """Extraction and classifier wall time at 1x, 2x, 4x the images (same everything else)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import functools

    from bench_classify import make_features  # type: ignore[import-not-found]
    from bench_extract import write_images  # type: ignore[import-not-found]
    from dinoloc.backbones.spec import PreprocessSpec
    from dinoloc.backbones.vit import create_vit
    from dinoloc.classify.cv import CVData, cross_validate
    from dinoloc.classify.params import ClassifierParams
    from dinoloc.data.opencell import read_image
    from dinoloc.extract.engine import EngineSettings, extract
    from dinoloc.ontology import OPENCELL_CHANNELS
    from dinoloc.strategies import EmbedPlan, embed_batch

    base_n = 256 if quick else 1024
    model = create_vit("vit_tiny_patch16_224", in_chans=3, img_size=64, patch_size=8, embed_dim=96, depth=4,
                       num_heads=3).eval()
    pp = PreprocessSpec(img_size=64, spatial="resize", crop_size=600, intensity="minmax", mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225))
    embed_fn = functools.partial(embed_batch, plan=EmbedPlan(
        strategy="mapping", backbone_channels=("R", "G", "B"), channel_map={"protein": "R", "nucleus": "G"},
        source_channels=OPENCELL_CHANNELS, preprocess=pp))
    from dinoloc.config import compose, plain

    cfg = plain(compose().classifier)  # classifier/mlp.yaml's values (its `defaults:` is Hydra's, not a key)
    cfg.pop("name", None)
    cfg["epochs"] = 20 if quick else 100
    params = typed(ClassifierParams, cfg)
    times: dict[str, list[float]] = {"extract": [], "classify": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        paths = write_images(tmp / "img", 4 * base_n, 160)
        for k, mult in enumerate((1, 2, 4)):
            n = mult * base_n
            t0 = time.perf_counter()
            extract(image_ids=[p.stem for p in paths[:n]], paths=paths[:n], read_fn=read_image,
                    model_factory=lambda: model, embed_fn=embed_fn, cache_dir=tmp / "cache", key=f"s{k}", meta={},
                    settings=EngineSettings(resize_to=64, batch_size=64, num_workers=2, device=device, progress=False))
            times["extract"].append(time.perf_counter() - t0)
            X, Y, split, fold, ids, targets = make_features(mult * (300 if quick else 1530), 768)
            t0 = time.perf_counter()
            cross_validate(CVData(X, Y, split, fold, ids, targets), params, device=device, progress=False)
            times["classify"].append(time.perf_counter() - t0)
    out = {}
    for stage, t in times.items():
        # Marginal slope: the extra 2x images (2x -> 4x) cost twice the extra 1x (1x -> 2x) when cost is linear;
        # unlike t(4x)/t(1x) it is not bent by fixed start-up costs (worker processes, model build).
        slope = (t[2] - t[1]) / max(t[1] - t[0], 1e-9)
        out[stage] = {"seconds": [round(x, 2) for x in t], "x2": round(t[1] / t[0], 2), "x4": round(t[2] / t[0], 2),
                      "marginal": round(slope, 2)}
        print(f"scaling: {stage:8s} 1x {t[0]:.2f} s, 2x {t[1]:.2f} s ({t[1] / t[0]:.2f}), "
              f"4x {t[2]:.2f} s ({t[2] / t[0]:.2f}); marginal (t4-t2)/(t2-t1) {slope:.2f}   linear = 2, 4, 2")
    return out


def bench_bf16(quick: bool, device: str) -> dict:
    """fp32 (the demo's cache) vs bf16-autocast embeddings of the demo rows, and the classifier on both."""
    import functools

    from hydra import compose, initialize_config_dir

    from dinoloc.backbones.build import LoadOptions, build_backbone
    from dinoloc.classify.cv import CVData, cross_validate
    from dinoloc.classify.params import ClassifierParams
    from dinoloc.config import data_spec, extract_spec, plain
    from dinoloc.data.opencell import read_image
    from dinoloc.data.prepare import run_data
    from dinoloc.extract.cache import embedding_rows
    from dinoloc.extract.stage import embed_plan, run_extraction
    from dinoloc.ontology import CATEGORIES
    from dinoloc.strategies import embed_batch

    if not (ROOT / "outputs" / "runs" / "demo").is_dir():
        print("bf16: no demo results under outputs/; run `make demo` first")
        return {"skipped": "run make demo first"}
    out = {}
    dev = torch.device(device)
    rows = ("imagenet_demo_mapping", "hpa_demo_replication", "opencell_demo_native")
    for row in rows[-1:] if quick else rows:  # CPU bf16 kernels are slow without native bf16 support
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["experiment=demo", f"row={row}"])
        manifest, split = run_data(data_spec(cfg))
        emb32, ids = run_extraction(extract_spec(cfg), manifest).load()
        spec = extract_spec(cfg)
        bb, pp = spec.backbone, spec.backbone.preprocess
        model = build_backbone(bb.arch, bb.in_chans, bb.weights, bb.preprocess.img_size,
                               load=LoadOptions(checkpoint_key=bb.checkpoint_key),
                               **bb.model_kwargs).to(dev)
        embed = functools.partial(embed_batch, plan=embed_plan(spec))
        root = Path(cfg.data.root)
        path_of = dict(zip(manifest["image_id"], manifest["path"], strict=True))
        rows16 = []
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
            for lo in range(0, len(ids), 64):
                x = torch.stack([torch.from_numpy(read_image(root / path_of[i])) for i in ids[lo:lo + 64]])
                x = torch.nn.functional.interpolate(x, size=(pp.img_size, pp.img_size), mode="bilinear",
                                                    antialias=True, align_corners=False)
                rows16.append(embed(model, x.to(dev)).float().cpu().numpy())
        emb16 = np.concatenate(rows16)
        rel = float(np.linalg.norm(emb16 - emb32) / np.linalg.norm(emb32))
        lab = split["split"].isin(["train", "test"]).to_numpy()
        order = embedding_rows(ids, split["image_id"], "the bf16 check's embeddings")[lab]
        y = manifest.set_index("image_id").loc[split["image_id"], list(CATEGORIES)].to_numpy()[lab]
        args = (y, split["split"].to_numpy()[lab], split["fold"].fillna(-1).astype(int).to_numpy()[lab],
                split["image_id"].to_numpy()[lab], split["target"].to_numpy()[lab])
        params = typed(ClassifierParams, plain(cfg.classifier))
        f1 = [cross_validate(CVData(e[order], *args), params, device=device, progress=False).summary["test_macro_f1_mean"]
              for e in (emb32, emb16)]
        out[row] = {"relative_difference": round(rel, 5), "f1_fp32": round(f1[0], 4), "f1_bf16": round(f1[1], 4),
                    "delta_f1": round(f1[1] - f1[0], 4)}
        print(f"bf16: {row:24s} |bf16 - fp32| / |fp32| = {rel:.2e}; test macro F1 fp32 {f1[0]:.4f}, "
              f"bf16 {f1[1]:.4f} ({f1[1] - f1[0]:+.4f})")
    return out


def bench_demo() -> dict:
    path = ROOT / "outputs" / "reports" / "demo" / "timings.json"
    if not path.exists():
        print("demo: no outputs/reports/demo/timings.json; run `make demo` first")
        return {"skipped": "run make demo first"}
    t = json.loads(path.read_text())
    slowest = max(t["steps_s"], key=t["steps_s"].get)
    print(f"demo: total {t['total_s']:.0f} s (goal <= 300); slowest stage: {slowest} {t['steps_s'][slowest]:.0f} s")
    for k, v in t["steps_s"].items():
        print(f"      {k:40s} {v:6.1f} s")
    return {**t, "slowest": slowest}


# ------------------------------------------------------------------------------------------------------------
def summary_rows(res: dict) -> list[tuple[str, str, str]]:
    rows = []
    if "extract" in res:
        r = res["extract"]
        rows.append((f"extraction e2e / model-only ({r['device']}, {r['arch']})", f"{r['ratio']:.2f}", ">= 0.90"))
    if "gpu" in res and "skipped" not in res["gpu"]:
        g = res["gpu"]
        rows.append((f"ViT-B/8 bf16 MFU ({g['device']})", "n/a" if g["mfu"] is None else f"{100 * g['mfu']:.1f}%",
                     ">= 40%"))
    if "pretrain" in res:
        r = res["pretrain"]
        rows.append((f"pretraining full step / bare fwd+bwd ({r['device']}, {r['arch']})", f"{r['ratio']:.2f}",
                     ">= 0.90"))
    if "cache" in res:
        c = res["cache"]
        rows.append(("cached sweep rerun / first run", f"{100 * c['rerun_fraction']:.2f}%", "<= 5%"))
        rows.append(("backbone forward passes on rerun", str(c["forward_passes_rerun"]), "0"))
    if "classify" in res:
        for k, c in res["classify"].items():
            rows.append((f"classifier speedup vs DataLoader loop (D={k[1:]})", f"{c['speedup']:.2f}x", ">= 3x"))
            rows.append((f"  test macro F1 ours / loop (D={k[1:]})", f"{c['f1_ours']:.3f} / {c['f1_baseline']:.3f}",
                         "within noise"))
    if "scaling" in res:
        for stage, s in res["scaling"].items():
            rows.append((f"{stage} time at 2x / 4x images; marginal slope", f"{s['x2']:.2f} / {s['x4']:.2f}; "
                         f"{s['marginal']:.2f}", "2 / 4; 2"))
    if "bf16" in res and "skipped" not in res["bf16"]:
        for row, r in res["bf16"].items():
            rows.append((f"bf16 vs fp32 embeddings ({row}): rel. diff; delta test F1",
                         f"{r['relative_difference']:.1e}; {r['delta_f1']:+.4f}", "small; within noise"))
    if "cells" in res:
        for r in res["cells"]["sizes"]:
            rows.append((f"cells/s (images/s) at {r['cells']} cells; peak RSS", f"{r['cells_per_s']:.0f} "
                         f"({r['images_per_s']:.1f}); {r['peak_rss_mib']:.0f} MiB", "RSS flat in size"))
    if "demo" in res and "skipped" not in res["demo"]:
        rows.append((f"make demo total (slowest: {res['demo']['slowest']})", f"{res['demo']['total_s']:.0f} s",
                     "<= 300 s"))
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a CPU run")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 peak if not in the table")
    ap.add_argument("--compile", action="store_true", help="torch.compile the ViT-B/8 in the gpu section")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
               + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))
    print(f"dinoloc benchmark on {machine}; threads {torch.get_num_threads()}; {'quick' if args.quick else 'full'}")
    res: dict = {}
    for name in chosen:
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        if name == "extract":
            res[name] = bench_extract(args.quick, args.device)
        elif name == "gpu":
            res[name] = bench_gpu(args.quick, args.peak_tflops, args.compile)
        elif name == "pretrain":
            res[name] = bench_pretrain(args.quick, args.device)
        elif name == "cache":
            res[name] = bench_cache(args.quick)
        elif name == "classify":
            res[name] = bench_classify(args.quick, args.device)
        elif name == "scaling":
            res[name] = bench_scaling(args.quick, args.device)
        elif name == "bf16":
            res[name] = bench_bf16(args.quick, args.device)
        elif name == "cells":
            res[name] = _script("bench_cells.py", "--sizes", "2000,10000" if args.quick else "10000,100000")
        elif name == "demo":
            res[name] = bench_demo()
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = summary_rows(res)
    print("\n| figure | measured | goal |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    out = {"bench": "dinoloc", "machine": machine, "quick": args.quick, **res}
    print(json.dumps(out, default=lambda o: o if not isinstance(o, np.generic) else o.item()))
    return out


if __name__ == "__main__":
    main()
