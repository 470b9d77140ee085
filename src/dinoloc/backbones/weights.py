"""Where weights come from: local files, URLs (downloaded once, sha256-checked), timm names, or a seeded random
init; their fingerprint for cache keys and their short name for tables."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
from pathlib import Path

from filelock import FileLock

from dinoloc.io import DinolocError, atomic_path, file_sha256, text_sha256

DEFAULT_CACHE_DIR = Path("~/.cache/dinoloc/weights")
TIMM_PREFIX = "timm:"
_URL_SCHEMES = ("http://", "https://", "file://")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# sha256 of weight files already hashed in this process, keyed by (path, size, mtime): the cache key and the
# model build both need it, and hashing a 350 MB file twice is wasted time.
_HASHES: dict[tuple[str, int, int], str] = {}


def is_url(weights: str) -> bool:
    return weights.lower().startswith(_URL_SCHEMES)


def check_sha256(sha256: str | None) -> str | None:
    if sha256 is None or sha256 == "":
        return None
    value = str(sha256).strip().lower()
    if not _SHA256_RE.match(value):
        raise DinolocError(f"backbone.weights_sha256={sha256!r} is not a sha256 hex digest (64 hex characters)")
    return value


def sha256_of(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)
    return _HASHES[key]


def cached_weights_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a URL's file lives in the cache: <cache_dir>/<hash of the URL>/<file name>.

    The URL hash keeps two different `checkpoint.pth` URLs apart; the file name keeps the folder readable.
    """
    root = Path(cache_dir if cache_dir else DEFAULT_CACHE_DIR).expanduser()
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "weights.pth"
    return root / text_sha256(url)[:16] / name


def fetch_weights(
    url: str, cache_dir: str | os.PathLike | None = None, sha256: str | None = None, progress: bool = True
) -> Path:
    """Download `url` once into the cache and return the local file; a pinned sha256 is checked every time."""
    sha256 = check_sha256(sha256)
    dest = cached_weights_path(url, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Parallel sweep jobs may want the same file: one downloads, the others wait and reuse it.
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            if sha256 is not None and (got := sha256_of(dest)) != sha256:
                raise DinolocError(
                    f"cached weights {dest} (from {url}) have sha256 {got}, but backbone.weights_sha256={sha256}. "
                    "Fix backbone.weights_sha256, or delete the cached file to download it again."
                )
            return dest
        with atomic_path(dest) as tmp:
            try:
                import torch  # only for a download: naming and fingerprinting weights needs no torch

                torch.hub.download_url_to_file(url, str(tmp), progress=progress)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise DinolocError(
                    f"could not download backbone.weights={url}: {e}. Download it by hand and set "
                    "backbone.weights=<local path>."
                ) from e
            if sha256 is not None and (got := file_sha256(tmp)) != sha256:
                raise DinolocError(
                    f"the download of {url} has sha256 {got}, but backbone.weights_sha256={sha256}; refused, nothing "
                    "was cached. Check the URL, or fix backbone.weights_sha256 if the file legitimately changed."
                )
    return dest


def local_weights(weights: str | os.PathLike, sha256: str | None) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DinolocError(
            f"backbone.weights={weights} does not exist (or is not a file). Point it at the checkpoint "
            "(.pth), a URL, or timm:<model name>."
        )
    if sha256 is not None and (got := sha256_of(path)) != sha256:
        raise DinolocError(f"{path} has sha256 {got}, but backbone.weights_sha256={sha256}; refused")
    return path


# The seed of a random init when no config names one (scripts, tests). Runs take the floor's seed from its YAML
# (backbone.random_seed in configs/backbone/random*.yaml), one no pretraining shares (docs/references.md).
RANDOM_INIT_SEED = 0


def weights_fingerprint(
    weights: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None,
    weights_sha256: str | None = None,
    random_seed: int | None = None,
) -> str:
    """What identifies the weights in cache keys: the file's sha256, `timm:<name>`, or "random:seed<N>" (random init is seeded).

    A URL is identified by its downloaded file's hash (downloaded now if not cached yet), or directly by
    `weights_sha256` when pinned, since a download with another hash would be refused anyway.
    """
    if weights is None or str(weights) == "":
        return f"random:seed{RANDOM_INIT_SEED if random_seed is None else int(random_seed)}"
    weights = str(weights)
    if weights.startswith(TIMM_PREFIX):
        return weights
    sha256 = check_sha256(weights_sha256)
    if is_url(weights):
        if sha256 is not None and not cached_weights_path(weights, cache_dir).exists():
            return sha256
        return sha256_of(fetch_weights(weights, cache_dir, sha256))
    return sha256_of(local_weights(weights, sha256))


def describe_weights(weights: str | os.PathLike | None) -> str:
    """Short human name of a weights source for display names: the timm tag, the file name, or 'random init'."""
    if weights is None or str(weights) == "":
        return "random init"
    weights = str(weights)
    if weights.startswith(TIMM_PREFIX):
        return weights
    if is_url(weights):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(weights).path)).name or weights
    return Path(weights).name


def display_name(display: str | None, label: str | None, arch: str, weights: str | os.PathLike | None) -> str:
    """A backbone's name in tables: `display` when the config sets one, else '<label or arch> (<weights>)', so a
    generic timm backbone always says which weights were used."""
    if display:
        return str(display)
    return f"{label or arch} ({describe_weights(weights)})"
