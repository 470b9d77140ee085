"""Each config key's rule (its type, range and choices) declared once, beside the dataclass field that receives
it, e.g. ``lr: float = key(gt=0)`` or ``scheduler: str = key(choices=SCHEDULER_CHOICES)``.

- `typed(cls, values)` turns a config node (a plain mapping) into `cls`: every key present (no default in code),
  none unknown, each value converted to its field's type; an error names `<section>.<key>` and the YAML.
- A `Checked` dataclass checks its fields' rules when it is constructed (also by `dataclasses.replace`), so a
  spec that exists is valid.
- dinoloc.schema builds Hydra's structured schema from the same fields (their names and types).
Plain Python: importing this (or a params module) imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from dinoloc.io import DinolocError

_RULE = "dinoloc_rule"


@dataclasses.dataclass(frozen=True)
class Rule:
    """Bounds and choices of one key; for a list or pair they hold for every element."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    ordered: bool = False  # a [low, high] pair: low <= high

    def describe(self, name: str) -> str:
        """What the value must be, e.g. `> 0`, `0 <= dropout < 1`, `one of ['cosine', 'none']`."""
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        low = f"{self.ge} <= " if self.ge is not None else f"{self.gt} < " if self.gt is not None else ""
        high = f" <= {self.le}" if self.le is not None else f" < {self.lt}" if self.lt is not None else ""
        if self.ordered:
            return f"[low, high] with {low}low <= high{high}"
        if low and high:
            return f"{low}{name}{high}"
        if self.ge is not None:
            return f">= {self.ge}"
        return f"> {self.gt}" if self.gt is not None else high.strip()

    def holds(self, value: Any) -> bool:
        items = list(value) if isinstance(value, tuple) else [value]
        if self.ordered and list(items) != sorted(items):
            return False
        for v in items:
            if self.choices is not None and v not in self.choices:
                return False
            if v is None or isinstance(v, (str, bool)):
                continue
            if ((self.ge is not None and not v >= self.ge) or (self.gt is not None and not v > self.gt)
                    or (self.le is not None and not v <= self.le) or (self.lt is not None and not v < self.lt)):
                return False
        return True


def key(*, default: Any = dataclasses.MISSING, **rule: Any) -> Any:
    """A dataclass field with its rule (Rule's keywords); no default unless one is given."""
    return dataclasses.field(default=default, metadata={_RULE: Rule(**rule)})


def rule_of(field: dataclasses.Field) -> Rule | None:
    return field.metadata.get(_RULE)


class Checked:
    """A dataclass whose fields' rules are checked at construction. SECTION names its config node (for the
    messages: `classifier.lr=0: must be > 0`), WHERE the YAML its values live in, IGNORED keys of that node
    that belong to someone else (e.g. a head's `name`), NOT_IN_YAML its fields that are no key of that node."""

    SECTION: ClassVar[str] = ""
    WHERE: ClassVar[str] = ""
    IGNORED: ClassVar[tuple[str, ...]] = ()
    NOT_IN_YAML: ClassVar[tuple[str, ...]] = ()  # fields dinoloc.config fills from elsewhere (paths, the command line)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rule, value = rule_of(f), getattr(self, f.name)
            if rule is not None and not rule.holds(value):
                raise DinolocError(f"{self.SECTION}.{f.name}={value!r}: must be {rule.describe(f.name)}")


C = typing.TypeVar("C")


def typed(cls: type[C], values: Mapping[str, Any], where: str | None = None) -> C:
    """`cls` from a config node's values: a missing key, an unknown key or a value of the wrong type or outside
    its rule raises DinolocError naming `<SECTION>.<key>` and the YAML (`where`, else cls.WHERE)."""
    section, where = getattr(cls, "SECTION", ""), where or getattr(cls, "WHERE", "")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields]
    ignored = set(getattr(cls, "IGNORED", ()))
    unknown = sorted(str(k) for k in values if k not in names and k not in ignored)
    if unknown:
        raise DinolocError(
            f"{section}.{unknown[0]} is not a {section} setting (unknown keys: {unknown}); valid keys: "
            f"{list(yaml_keys(cls))}. "
            f"Fix the spelling in {where} or the override."
        )
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in values]
    if missing:
        also = f" (also missing: {missing[1:]})" if missing[1:] else ""
        raise DinolocError(
            f"{section}.{missing[0]} is missing from the {section} config ({where}); every {section} value is set "
            f"there and has no default in code: add `{missing[0]}: <value>` to it{also}"
        )
    hints = typing.get_type_hints(cls)
    return cls(**{n: _as(hints[n], values[n], f"{section}.{n}") for n in names if n in values})


def yaml_keys(cls: type) -> tuple[str, ...]:
    """The keys of cls's config node: its fields but those dinoloc.config fills from elsewhere (NOT_IN_YAML)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in getattr(cls, "NOT_IN_YAML", ()))


def _as(typ: Any, value: Any, name: str) -> Any:
    """`value` as `typ` (int, float, bool, str, X | None, tuple[T, ...], tuple[T1, T2], dict[str, T], Any, or a
    dataclass: a nested node built by `typed`); ints pass as floats and lists as tuples, nothing else is converted."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is Any:
        return value
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, Mapping):
            raise _bad(name, value, "a mapping of its keys")
        return typed(typ, value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _bad(name, value, "a mapping, e.g. {a: b}")
        return {_as(args[0], k, name): _as(args[1], v, f"{name}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _as(inner, value, name)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _bad(name, value, f"a list of {_type_name(args[0])}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_as(args[0], v, name) for v in value)
        if len(value) != len(args):
            raise _bad(name, value, f"{len(args)} values, e.g. [0.5, 1.0]")
        return tuple(_as(t, v, name) for t, v in zip(args, value, strict=True))
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, numbers.Integral) and not isinstance(value, bool),
          float: isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)),
          str: isinstance(value, str)}
    if typ not in ok:
        raise AssertionError(f"{name}: no conversion to {typ}")
    if not ok[typ]:
        raise _bad(name, value, {bool: "true or false", int: "an integer", float: "a finite number",
                                 str: "a string"}[typ])
    return typ(value)


def _type_name(typ: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(typ, str(typ))


def _bad(name: str, value: Any, expected: str) -> DinolocError:
    return DinolocError(f"{name}={value!r}: must be {expected}")
