"""Cached feature extraction: every manifest image -> one embedding per backbone x strategy.

- `stage`: the stage's entry point, `run_extraction(ExtractSpec, manifest)`, and the cache key's fields;
- `engine`: chunked, resumable, torchrun-aware embedding (`extract`);
- `cache`: the on-disk layout, keys and lookup.
"""

from typing import Any

from dinoloc.extract.cache import CACHE_VERSION, CacheEntry, cache_key, images_fingerprint, lookup
from dinoloc.extract.stage import BackboneSpec, ExtractSpec, cache_fields, key_of, run_extraction


def __getattr__(name: str) -> Any:
    """The engine (torch) loads on first use, so composing and checking a config does not import torch."""
    if name in ("extract", "ExtractionInterrupted"):
        from dinoloc.extract import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'dinoloc.extract' has no attribute {name!r}")

__all__ = ["CACHE_VERSION", "BackboneSpec", "CacheEntry", "ExtractSpec", "ExtractionInterrupted", "cache_fields",
           "cache_key", "extract", "images_fingerprint", "key_of", "lookup", "run_extraction"]
