"""Hydra imports every module under `hydra_plugins` when it builds its config search path, so importing
dinoloc.schema here registers dinoloc's config schemas for any compose of dinoloc's configs (the CLI,
`hydra.compose` in a script or test) without each caller importing it first."""

import dinoloc.schema  # noqa: F401
