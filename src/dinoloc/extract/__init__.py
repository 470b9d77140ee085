"""Cached feature extraction: every manifest image -> one embedding per backbone x strategy.

- `stage`: the stage's entry point, `run_extraction(ExtractSpec, manifest)`, and the cache key's fields;
- `engine`: chunked, resumable, torchrun-aware embedding (`extract`);
- `cache`: the on-disk layout, keys and lookup.
Names are imported from the module that defines them (this file re-exports nothing, so importing a light
module such as `params` or `spec` does not import the heavy ones).
"""
