"""OpenCell data: reader (opencell), your own images (folder, folders), manifest, leakage-free split."""
