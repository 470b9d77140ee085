"""Classifier-stage speed: the project's batched 5-fold trainer vs a straightforward per-fold DataLoader loop.

Both run the same settings (the YAML's classifier, with --epochs / --batch-size overriding) on the same
random-but-structured features: N images in ~N/4.7 targets, sparse multi-label labels with skewed class
frequencies, features = labels @ random projection + target offset + noise, a grouped test split and 5
grouped folds. (a) `dinoloc.classify.cross_validate`; (b) per fold: StandardScaler statistics, a
TensorDataset + WeightedRandomSampler (rarest-label weights) DataLoader, nn.Sequential MLP, AdamW,
CosineAnnealingLR, a per-batch Python loop. Prints both times, both test macro F1 means and the speedup,
and ends with a one-line JSON.

    python scripts/bench_classify.py --quick
    python scripts/bench_classify.py --device cuda                 # N=6120, D=768, 300 epochs
    python scripts/bench_classify.py --device cuda --dim 3072
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from dinoloc.classify.cv import CVData, cross_validate, fit_standardizer
from dinoloc.classify.params import ClassifierParams
from dinoloc.classify.trainer import rarest_label_weights
from dinoloc.metrics import macro_f1
from dinoloc.ontology import N_CLASSES
from dinoloc.rules import typed


def make_features(n: int, dim: int, seed: int = 0, test_fraction: float = 0.2):
    """(X, Y, split, fold, image_ids, targets): grouped by target, test_fraction of the targets test, 5 grouped
    folds on the rest."""
    rng = np.random.default_rng(seed)
    n_targets = max(20, round(n / 4.7))
    sizes = rng.multinomial(n - n_targets, np.full(n_targets, 1 / n_targets)) + 1  # every target >= 1 image
    class_p = 1.0 / np.arange(1, N_CLASSES + 1) ** 0.8
    class_p /= class_p.sum()
    labels_t = np.zeros((n_targets, N_CLASSES), dtype=np.int64)
    for t in range(n_targets):
        labels_t[t, rng.choice(N_CLASSES, size=rng.integers(1, 4), replace=False, p=class_p)] = 1
    tgt = np.repeat(np.arange(n_targets), sizes)
    Y = labels_t[tgt]
    proj = rng.normal(size=(N_CLASSES, dim)).astype(np.float32)
    offset = 0.7 * rng.normal(size=(n_targets, dim)).astype(np.float32)
    X = (Y @ proj + offset[tgt] + 1.5 * rng.normal(size=(n, dim)).astype(np.float32)).astype(np.float32)
    perm = rng.permutation(n_targets)
    is_test_t = np.zeros(n_targets, dtype=bool)
    n_test = int(n_targets * test_fraction + 1e-9)  # floor: test_fraction=0.2 keeps the earlier n_targets // 5
    is_test_t[perm[:n_test]] = True
    fold_t = np.full(n_targets, -1)
    fold_t[perm[n_test:]] = np.arange(n_targets - n_test) % 5
    split = np.where(is_test_t[tgt], "test", "train")
    return X, Y, split, fold_t[tgt], np.array([f"img{i}" for i in range(n)]), np.array([f"T{t}" for t in tgt])


def baseline(X, Y, split, fold, params: ClassifierParams, device: str, folds: list[int] | None = None) -> float:
    """The straightforward implementation; returns its test macro F1 mean over the folds (or only `folds`)."""
    test = split == "test"
    scores = []
    for k in sorted(np.unique(fold[split == "train"])) if folds is None else folds:
        tr = (split == "train") & (fold != k)
        mean, std = fit_standardizer(X[tr])
        xs = ((X - mean) / std).astype(np.float32)
        w, _ = rarest_label_weights(Y[tr], params.unlabeled_weight)
        g = torch.Generator().manual_seed(params.seed * 100 + int(k))
        sampler = WeightedRandomSampler(torch.as_tensor(w), num_samples=int(tr.sum()), replacement=True, generator=g)
        ds = TensorDataset(torch.as_tensor(xs[tr]), torch.as_tensor(Y[tr], dtype=torch.float32))
        loader = DataLoader(ds, batch_size=params.batch_size, sampler=sampler)
        torch.manual_seed(params.seed * 100 + int(k))
        layers: list[torch.nn.Module] = []
        dims = (X.shape[1], *params.hidden)
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Dropout(params.dropout)]
        model = torch.nn.Sequential(*layers, torch.nn.Linear(dims[-1], N_CLASSES)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=params.lr, betas=params.betas, weight_decay=params.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.epochs)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        model.train()
        for _ in range(params.epochs):
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                opt.zero_grad()
                loss_fn(model(xb), yb).backward()
                opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            p = torch.sigmoid(model(torch.as_tensor(xs[test]).to(device))).double().cpu().numpy()
        scores.append(macro_f1(Y[test], (p > params.threshold).astype(int))[0])
    return float(np.mean(scores))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6120)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the YAML's batch_size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="N=1200, 20 epochs (unless given)")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 1200 if args.n == 6120 else args.n
        args.epochs = 20 if args.epochs == 300 else args.epochs

    from dinoloc.config import compose, plain

    cfg = plain(compose().classifier)  # classifier/mlp.yaml's values (its `defaults:` is Hydra's, not a key)
    cfg.pop("name", None)
    cfg["epochs"] = args.epochs
    if args.batch_size:
        cfg["batch_size"] = args.batch_size
    params = typed(ClassifierParams, cfg)
    X, Y, split, fold, ids, targets = make_features(args.n, args.dim)
    print(f"data: N={args.n} D={args.dim} targets={len(set(targets))} test={int((split == 'test').sum())} "
          f"epochs={params.epochs} batch={params.batch_size} device={args.device}")

    # Warm-up (not timed): lazy torch imports, CUDA context and kernels would otherwise bill whichever runs first.
    warm = typed(ClassifierParams, {**cfg, "epochs": 1})
    cross_validate(CVData(X, Y, split, fold, ids, targets), warm, device=args.device, progress=False)
    if not args.skip_baseline:
        baseline(X, Y, split, fold, warm, args.device)
    _sync(args.device)
    t0 = time.perf_counter()
    res = cross_validate(CVData(X, Y, split, fold, ids, targets), params, device=args.device, progress=False)
    _sync(args.device)
    ours_s = time.perf_counter() - t0
    f1_ours = res.summary["test_macro_f1_mean"]
    print(f"ours     : {ours_s:8.2f} s   test macro F1 {f1_ours:.4f} ± {res.summary['test_macro_f1_std']:.4f}")

    base_s, f1_base = math.nan, math.nan
    if not args.skip_baseline:
        t0 = time.perf_counter()
        f1_base = baseline(X, Y, split, fold, params, args.device)
        _sync(args.device)
        base_s = time.perf_counter() - t0
        print(f"baseline : {base_s:8.2f} s   test macro F1 {f1_base:.4f}")
    speedup = base_s / ours_s
    print(f"speedup  : {speedup:.1f}x")
    out = {"bench": "classify", "n": args.n, "dim": args.dim, "epochs": params.epochs, "ours_s": round(ours_s, 3),
           "baseline_s": round(base_s, 3), "speedup": round(speedup, 2), "f1_ours": round(f1_ours, 4),
           "f1_baseline": round(f1_base, 4)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
