"""torchrun worker for tests/test_pretrain.py: a tiny 2-epoch DINO run on CPU (gloo) over .npy images.
The recipe comes from the test as JSON (the test builds it from configs/pretrain/demo.yaml)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

from dinoloc.pretrain.params import PretrainParams
from dinoloc.pretrain.train import PretrainModel, train_dino
from dinoloc.rules import typed


def main(data_dir: str, out_dir: str, params_json: str) -> None:
    images = [(p.stem, str(p)) for p in sorted(Path(data_dir).glob("*.npy"))]
    params = typed(PretrainParams, json.loads(params_json))
    ckpt = train_dino(
        images, functools.partial(np.load, allow_pickle=False), ["protein", "nucleus"], out_dir,
        model=PretrainModel(arch="vit_tiny_patch16_224",
                            model_kwargs={"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}, in_chans=2,
                            intensity="zscore", mean=None, std=None),
        params=params, device="cpu",
    )
    print(f"rank {os.environ['RANK']} done: {ckpt}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
