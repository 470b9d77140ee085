"""Helper process for tests/test_extract.py: extraction with a toy model, optionally under torchrun."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from dinoloc.extract.engine import EngineSettings, extract


def main() -> None:
    cache_dir, n, counter_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    slow = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    ids = [f"img{i:03d}" for i in range(n)]

    def read(p):
        import time

        time.sleep(slow)
        i = int(Path(p).name[3:])
        return np.full((2, 4, 4), float(i), dtype=np.float32)

    def factory():
        counter_dir.mkdir(parents=True, exist_ok=True)
        (counter_dir / f"built_{os.getpid()}").write_text("1")
        return torch.nn.Identity()

    entry = extract(
        image_ids=ids, paths=ids, read_fn=read, model_factory=factory,
        embed_fn=lambda m, x: x.flatten(1)[:, [0, 16]], cache_dir=cache_dir, key="k", meta={},
        settings=EngineSettings(batch_size=3, chunk_size=4, progress=False),
    )
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        print(json.dumps({"hit": entry.hit}))


if __name__ == "__main__":
    main()
