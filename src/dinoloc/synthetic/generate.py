"""SYNTHETIC demo data in the real on-disk formats (`dinoloc-synth`).

The whole set, each part built once per parameter set: out_dir/opencell/ (labelled, the real OpenCell
layout), hpa_like/ and natural_like/ (unlabelled stand-ins for the pretraining data), contact_sheet.png and
README.txt. The sizes come from configs/data/synthetic.yaml (`generator`) and the display stretch from
configs/config.yaml (`report.display_percentiles`): nothing here has a default of its own, so a missing
key fails with its name.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from dinoloc import CONFIG_DIR
from dinoloc.io import DinolocError, read_json, write_json, write_text
from dinoloc.rules import Checked, key, typed
from dinoloc.synthetic.files import SYNTHETIC_NOTE
from dinoloc.synthetic.opencell import ANNOTATIONS_NAME, generate_opencell, opencell_contact_sheet
from dinoloc.synthetic.standins import generate_hpa_like, generate_natural_like

# Bump when the images or labels a given set of parameters produces change, so stale folders regenerate.
GENERATOR_VERSION = 2  # 2: a few targets also carry OpenCell names outside the 17 (ignored)
COMPLETE_MARKER = ".complete"


@dataclasses.dataclass(frozen=True)
class GeneratorSpec(Checked):
    """What dinoloc-synth writes: the `generator` node of configs/data/synthetic.yaml (no defaults here)."""

    SECTION: ClassVar[str] = "data.generator"
    WHERE: ClassVar[str] = "configs/data/synthetic.yaml"

    seed: int = key()  # opencell/; hpa_like/ draws from seed + 1 and natural_like/ from seed + 2
    n_targets: int = key(ge=1)  # OpenCell-like targets (proteins)
    image_size: int = key(ge=1)  # OpenCell-like FOV side (px)
    images_per_target: tuple[int, int] = key(ge=1, ordered=True)  # FOVs per target, low and high (inclusive)
    n_unannotated: int = key(ge=0)  # targets with images but no annotation row
    n_pretrain_images: int = key(ge=0)  # images in hpa_like/ and natural_like/ each
    pretrain_image_size: int = key(ge=1)  # their side (px), capped at image_size


def packaged_spec() -> GeneratorSpec:
    """The generator sizes of the shipped configs/data/synthetic.yaml (dinoloc-synth's defaults)."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / "synthetic.yaml"))
    if "generator" not in node:
        raise DinolocError(f"{CONFIG_DIR / 'data' / 'synthetic.yaml'}: missing config key data.generator")
    return typed(GeneratorSpec, node["generator"])


def packaged_display_percentiles() -> tuple[float, float]:
    """report.display_percentiles of the shipped configs/config.yaml (the contact sheet's stretch)."""
    from omegaconf import OmegaConf

    report = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml")).get("report") or {}
    if "display_percentiles" not in report:
        raise DinolocError(f"{CONFIG_DIR / 'config.yaml'}: missing config key report.display_percentiles")
    low, high = report["display_percentiles"]
    return float(low), float(high)


def _ensure_part(folder: Path, params: dict, build: Callable[[Path], object]) -> bool:
    """Build `folder` unless its .complete marker holds these params; True when (re)built.

    The part is built in a hidden temporary folder beside it and renamed into place, so a killed run
    never leaves a half dataset under the final name.
    """
    marker = folder / COMPLETE_MARKER
    if marker.is_file():
        try:
            if read_json(marker) == params:
                return False
        except (OSError, ValueError):
            pass  # unreadable marker: rebuild
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        build(tmp)
        write_json(tmp / COMPLETE_MARKER, params)  # last: its presence means the folder is whole
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _build_parts(out: Path, parts: dict[str, tuple[dict, Callable[[Path], object]]],
                 after_first: Callable[[bool], None]) -> None:
    """_ensure_part for every part, then `after_first(built)` with whether the first part was (re)built.

    The parts draw from their own seeds, so they are built side by side in two worker processes (the first in
    one, the others in the other) and `after_first` runs here as soon as the first is done: the same files, byte
    for byte, as one after another (tests/test_synthetic.py), in about the longest part's time on 2 cores.
    One part or one core: one after another, in this process."""
    jobs = [(out / name, {"generator": "dinoloc-synth", "version": GENERATOR_VERSION, "synthetic": True,
                          "part": name, **params}, build) for name, (params, build) in parts.items()]
    if len(jobs) < 2 or (os.cpu_count() or 1) < 2:
        built = [_ensure_part(*job) for job in jobs]
        after_first(built[0])
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=2) as pool:
        first = pool.submit(_ensure_part, *jobs[0])
        rest = pool.submit(_ensure_all, jobs[1:])
        after_first(first.result())
        rest.result()


def _ensure_all(jobs: list[tuple[Path, dict, Callable[[Path], object]]]) -> list[bool]:
    return [_ensure_part(*job) for job in jobs]


def generate_all(
    out_dir: str | os.PathLike, spec: GeneratorSpec, *, display_percentiles: Sequence[float]
) -> dict[str, Path]:
    """Write (or reuse) out_dir/{opencell, hpa_like, natural_like}/ and out_dir/contact_sheet.png.

    A part whose `.complete` marker holds the same generation parameters is kept as is. The contact sheet
    stretches each channel by `display_percentiles` (config report.display_percentiles).
    """
    out = Path(out_dir)
    pre_size = min(spec.pretrain_image_size, spec.image_size)  # small test sets stay small
    # Each part's builder is a module-level function with its arguments (picklable: the parts are built in
    # worker processes, see _build_parts).
    parts: dict[str, tuple[dict, Callable[[Path], object]]] = {
        "opencell": (
            {"n_targets": spec.n_targets, "image_size": spec.image_size, "seed": spec.seed,
             "images_per_target": list(spec.images_per_target), "n_unannotated": spec.n_unannotated},
            functools.partial(generate_opencell, n_targets=spec.n_targets, image_size=spec.image_size,
                              seed=spec.seed, images_per_target=spec.images_per_target,
                              n_unannotated=spec.n_unannotated),
        ),
        "hpa_like": (
            {"n_images": spec.n_pretrain_images, "image_size": pre_size, "seed": spec.seed + 1},
            functools.partial(generate_hpa_like, n_images=spec.n_pretrain_images, image_size=pre_size,
                              seed=spec.seed + 1),
        ),
        "natural_like": (
            {"n_images": spec.n_pretrain_images, "image_size": pre_size, "seed": spec.seed + 2},
            functools.partial(generate_natural_like, n_images=spec.n_pretrain_images, image_size=pre_size,
                              seed=spec.seed + 2),
        ),
    }
    sheet = out / "contact_sheet.png"

    def contact_sheet(opencell_built: bool) -> None:
        if opencell_built or not sheet.is_file():
            opencell_contact_sheet(out / "opencell", sheet, display_percentiles)

    _build_parts(out, parts, after_first=contact_sheet)
    readme = (f"{SYNTHETIC_NOTE}\n\nopencell/: OpenCell-like labelled 2-channel images; hpa_like/ and natural_like/: "
              "unlabelled images for pretraining the stand-in backbones; contact_sheet.png: one example per category.\n")
    if not (out / "README.txt").is_file() or (out / "README.txt").read_text(encoding="utf-8") != readme:
        write_text(out / "README.txt", readme)  # unchanged files are left alone, so a rerun touches nothing
    return {
        "opencell": out / "opencell",
        "annotations": out / "opencell" / ANNOTATIONS_NAME,
        "hpa_like": out / "hpa_like",
        "natural_like": out / "natural_like",
        "contact_sheet": sheet,
    }


def _parser(spec: GeneratorSpec) -> argparse.ArgumentParser:
    """dinoloc-synth's options; their defaults are the shipped YAML's values."""
    p = argparse.ArgumentParser(prog="dinoloc-synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/synthetic", help="output folder (default: outputs/synthetic)")
    p.add_argument("--n-targets", type=int, default=spec.n_targets, help="OpenCell-like targets (proteins)")
    p.add_argument("--image-size", type=int, default=spec.image_size, help="OpenCell-like image side in px (32-2048)")
    p.add_argument("--seed", type=int, default=spec.seed)
    p.add_argument("--n-pretrain-images", type=int, default=spec.n_pretrain_images,
                   help="images in hpa_like/ and natural_like/ each")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """dinoloc-synth: write the SYNTHETIC demo dataset (OpenCell-like, HPA-like, natural-like)."""
    try:
        spec, percentiles = packaged_spec(), packaged_display_percentiles()
    except DinolocError as err:
        print(f"dinoloc-synth: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    args = _parser(spec).parse_args(None if argv is None else list(argv))
    spec = dataclasses.replace(spec, n_targets=args.n_targets, image_size=args.image_size, seed=args.seed,
                               n_pretrain_images=args.n_pretrain_images)
    try:
        paths = generate_all(args.out, spec, display_percentiles=percentiles)
    except DinolocError as err:
        print(f"dinoloc-synth: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    n_images = len(list(paths["opencell"].rglob("*_proj.tif")))
    print(f"SYNTHETIC data (not real microscopy) in {Path(args.out)}:")
    print(f"  opencell      {paths['opencell']}  ({args.n_targets} targets, {n_images} images)")
    print(f"  annotations   {paths['annotations']}")
    print(f"  hpa_like      {paths['hpa_like']}  ({args.n_pretrain_images} images, 4 channels)")
    print(f"  natural_like  {paths['natural_like']}  ({args.n_pretrain_images} images, RGB)")
    print(f"  contact sheet {paths['contact_sheet']}")


if __name__ == "__main__":
    main()
