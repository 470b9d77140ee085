"""Hydra structured-config schemas: which keys a config group has and their types. The YAMLs hold every value.

Importing this module registers the schemas in Hydra's ConfigStore (group `schema`); a group's YAMLs name theirs
first in their defaults list (`- /schema/pretrain@_here_`). A misspelt key in a YAML or an override is then
refused when the config is composed, naming the key. Schema fields have no values (MISSING), so a key a YAML
forgets stays `???` and the stage refuses it by name instead of falling back to a value in code.
Only the config edge imports this (dinoloc.cli, scripts that compose the config).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dinoloc.pretrain.params import PretrainParams


def _schema_of(name: str, cls: type, extra: Sequence[tuple[str, Any]] = ()) -> type:
    """A schema with cls's fields and types (the recipe dataclass is the one list of keys), all MISSING."""
    hints = typing.get_type_hints(cls)
    spec = [(f.name, hints[f.name], MISSING) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(name, [*spec, *((k, t, MISSING) for k, t in extra)])


# configs/pretrain/*.yaml: the recipe (PretrainParams) and the two keys that choose the data.
PretrainSchema = _schema_of("PretrainSchema", PretrainParams, [("source", str), ("image_dir", str | None)])


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent: storing again replaces)."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="pretrain", node=PretrainSchema)


def composition_error_line(exc: BaseException) -> str | None:
    """One clear line for Hydra refusing a key of a schema'd group, else None. Hydra's own text names the
    override but not the reason ("Error merging override ~pretrain.teacher_temp"); the reason is its cause."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cause = exc.__cause__ or exc.__context__  # an override's error is chained as the cause, a YAML's as context
    key = getattr(cause, "full_key", None)
    if not (isinstance(exc, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException) and key):
        return None
    group = key.split(".")[0]
    reason = str(cause).splitlines()[0]
    # "In 'pretrain/bad': ..." names the YAML; an override's message does not
    where = f"in {str(exc).split(':')[0].removeprefix('In ')}" if str(exc).startswith("In '") else "on the command line"
    if "does not support deletion" in reason:
        return (f"{key} cannot be removed (~{key}): every {group} key needs a value, set in configs/{group}/*.yaml "
                f"(no default in code); give it another value instead, e.g. {key}=<value>")
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return (f"{key} is not a {group} setting ({where}); fix its spelling "
                f"(the {group} keys: configs/{group}/*.yaml)")
    return f"{key}: {reason} ({where})"  # a value of the wrong type


register()
