"""Modules found by name: a strategy, a head (and a reader) is one module of its package, or an import path to a
lab's own module. One lookup serves them all."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from types import ModuleType

from dinoloc.io import DinolocError


def known_modules(package: str, path: Iterable[str]) -> list[str]:
    """The modules of `package` (its `__path__`), in their own ORDER, then by name."""
    names = [m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (getattr(importlib.import_module(f"{package}.{n}"), "ORDER", 99), n))


def find_module(package: str, name: str, unknown: Callable[[], str]) -> ModuleType:
    """`package.<name>`, or a top-level/dotted module `name` (a lab's own); else DinolocError(`unknown()`: the
    message is built only then, as listing the known modules imports them)."""
    paths = [name] if "." in name else [f"{package}.{name}", name]  # ours first, then a lab's top-level module
    for path in paths:
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as e:
            if e.name not in (path, path.rsplit(".", 1)[0]):
                raise  # the module exists but one of its own imports is missing
    raise DinolocError(unknown()) from None
