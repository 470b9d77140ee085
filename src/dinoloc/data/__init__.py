"""OpenCell data: reader (opencell), manifest, leakage-free split, synthetic generator."""
