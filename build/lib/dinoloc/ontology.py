"""The OpenCell localization ontology: the 17 public categories, in the portal's order.

Every file the pipeline writes names classes with these strings, in this order.
"""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = (
    "membrane",
    "vesicles",
    "er",
    "golgi",
    "mitochondria",
    "centrosome",
    "cytoskeleton",
    "chromatin",
    "nucleoplasm",
    "nuclear_membrane",
    "nucleolus_gc",
    "nucleolus_fc_dfc",
    "nuclear_punctae",
    "big_aggregates",
    "cell_contact",
    "focal_adhesions",
    "cytoplasmic",
)
N_CLASSES = len(CATEGORIES)

# Annotation-table columns, strongest grade first (3 = very prominent, 1 = weak).
GRADE_COLUMNS: dict[int, str] = {
    3: "annotations_grade_3",
    2: "annotations_grade_2",
    1: "annotations_grade_1",
}

# OpenCell image channels in the order every array in the pipeline uses (the files store nucleus first).
OPENCELL_CHANNELS: tuple[str, ...] = ("protein", "nucleus")


def label_columns() -> list[str]:
    """Manifest columns holding the 0/1 label of each category (the bare category name)."""
    return list(CATEGORIES)


def grade_columns() -> list[str]:
    """Manifest columns holding the grade (0 = absent, 1-3) of each category."""
    return [f"grade_{c}" for c in CATEGORIES]
