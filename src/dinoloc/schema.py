"""Hydra structured-config schemas: which keys a config group has and their types. The YAMLs hold every value.

Importing this module registers the schemas in Hydra's ConfigStore (group `schema`); a group's YAMLs name theirs
in their defaults list (`- /schema/pretrain@_here_`), config.yaml names the `report` block's. A misspelt key in a
YAML or an override is then refused when the config is composed, naming the key, and so is removing one
(`~classifier.lr`). Schema fields have no values (MISSING), so a key a YAML forgets stays `???` and the stage
refuses it by name instead of falling back to a value in code. Each schema's keys and types are read from the
dataclass that consumes them (one list of keys). Only the config edge imports this (dinoloc.config, dinoloc.cli,
src/hydra_plugins/dinoloc_schema for any compose of dinoloc's configs).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dinoloc.backbones import spec as backbone
from dinoloc.classify.params import ClassifierParams, KNNParams
from dinoloc.data import prepare as data
from dinoloc.extract.stage import ExtractSpec
from dinoloc.pretrain.params import PretrainParams
from dinoloc.report.spec import ReportSpec
from dinoloc.synthetic.generate import GeneratorSpec

Field = tuple[str, Any]


def _fields(cls: type, keys: Sequence[str] | None = None, rename: Mapping[str, str] | None = None) -> list[Field]:
    """(YAML key, type) of cls's fields: all of them, or those named in `keys` (the consumer's field names);
    `rename` maps a field name to its YAML key where they differ. A name cls lacks fails at import."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)] if keys is None else list(keys)
    unknown = [n for n in names if n not in hints]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    rename = rename or {}
    return [(rename.get(n, n), hints[n]) for n in names]


def _schema(name: str, fields: Sequence[Field], base: type | None = None, optional: Sequence[str] = ()) -> type:
    """A dataclass with these fields, every one MISSING (the values live in the YAMLs) but the `optional` keys,
    which only some YAMLs have: None where a YAML has none. A nested spec (a dataclass field) gets its own schema."""
    inherited = {f.name for f in dataclasses.fields(base)} if base else set()
    spec = [(k, _node_type(t), dataclasses.field(default=None if k in optional else MISSING))
            for k, t in dict(fields).items() if k not in inherited]
    return dataclasses.make_dataclass(name, spec, bases=(base,) if base else ())


def _node_type(typ: Any) -> Any:
    """A field's type in a schema: a nested spec becomes that spec's schema. An optional mapping or nested spec
    (null where a YAML has none) is left untyped here, as OmegaConf can put nothing into a null typed node
    (data.channel_roles={DNA: nucleus}) and crashes on a key below one (data.labels.min_grade=2 under data=folder);
    the YAML that has the node names its schema (opencell.yaml: /schema/labels@labels)."""
    if dataclasses.is_dataclass(typ):
        return _nested(typ)
    args = typing.get_args(typ)
    if type(None) in args and any(typing.get_origin(a) is dict or dataclasses.is_dataclass(a) for a in args):
        return Any
    return typ


@functools.cache
def _nested(cls: type) -> type:
    return _schema(f"{cls.__name__}Schema", _fields(cls))


# configs/pretrain/*.yaml: the recipe (PretrainParams) and the two keys that choose the data.
PretrainSchema = _schema("PretrainSchema", [*_fields(PretrainParams), ("source", str), ("image_dir", str | None)])
# configs/classifier/mlp.yaml and linear.yaml (the trained heads): ClassifierParams and the head's name.
ClassifierSchema = _schema("ClassifierSchema", [("name", str), *_fields(ClassifierParams)])
# configs/classifier/knn.yaml: KNNParams on top of mlp.yaml's keys, which knn.yaml inherits so that one sweep
# (classifier=mlp,knn,linear classifier.epochs=...) can set them for every head.
KNNSchema = _schema("KNNSchema", _fields(KNNParams), base=ClassifierSchema)
# configs/extract/*.yaml: how extraction runs (ExtractSpec's batching fields; none enters the cache key).
ExtractSchema = _schema("ExtractSchema", _fields(ExtractSpec, ("batch_size", "num_workers", "chunk_size", "amp")))
# configs/strategy/*.yaml: the strategy's name and what mapping's unmapped channels hold.
StrategySchema = _schema("StrategySchema", _fields(ExtractSpec, ("strategy", "empty_channels"), {"strategy": "name"}))
# config.yaml's `report:` block (ReportSpec's statistics and figure settings; the YAML says ci_method).
ReportSchema = _schema("ReportSchema", _fields(
    ReportSpec, ("n_boot", "seed", "level", "method", "embedding_maps", "max_points", "display_percentiles"),
    {"method": "ci_method"}))
# configs/data/synthetic.yaml's `generator:` block (what dinoloc-synth writes).
# (the data schema's `generator` node: one class, so the two merge)
GeneratorSchema = _nested(GeneratorSpec)

# configs/data/*.yaml: DataSpec's keys; those only some readers read (and the synthetic generator) are null where
# a YAML has none, and the reader refuses one it does not read.
DataSchema = _schema("DataSchema", _fields(data.DataSpec, data.YAML_KEYS), optional=data.OPTIONAL_KEYS)
# configs/backbone/*.yaml: BackboneSpec's keys (display_name, label, family, random_seed, weights_from: null where
# absent); hpa.yaml's channel-order switch and SubCell's variant (its family's configure hook) on top.
BackboneSchema = _schema("BackboneSchema", _fields(backbone.BackboneSpec, backbone.YAML_KEYS),
                         optional=backbone.OPTIONAL_KEYS)
HpaBackboneSchema = _schema("HpaBackboneSchema", [("channel_orders", dict[str, list[str]]), ("channel_order", str)],
                            base=BackboneSchema)
SubCellBackboneSchema = _schema("SubCellBackboneSchema", [("variant", str), ("variants", list[str])],
                                base=BackboneSchema)

SCHEMAS: dict[str, type] = {
    "data": DataSchema, "labels": _nested(data.LabelSpec), "backbone/common": BackboneSchema, "backbone/hpa": HpaBackboneSchema,
    "backbone/subcell": SubCellBackboneSchema, "pretrain": PretrainSchema, "classifier/mlp": ClassifierSchema, "classifier/knn": KNNSchema,
    "extract": ExtractSchema, "strategy": StrategySchema, "report": ReportSchema, "generator": GeneratorSchema,
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore as schema/<name> (idempotent: storing again replaces)."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        group, _, leaf = f"schema/{name}".rpartition("/")
        cs.store(group=group, name=leaf, node=node)


def _where(key: str) -> str:
    """Where a key's values live, for the messages."""
    group = key.split(".")[0]
    if group == "report":
        return "configs/config.yaml (report:)"
    if key.startswith("data.generator"):
        return "configs/data/synthetic.yaml (generator:)"
    return f"configs/{group}/*.yaml"


def composition_error_line(exc: BaseException) -> str | None:
    """One clear line for Hydra refusing a key of a schema'd group, else None. Hydra's own text names the
    override but not the reason ("Error merging override ~pretrain.teacher_temp"); the reason is its cause."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cause = exc.__cause__ or exc.__context__  # an override's error is chained as the cause, a YAML's as context
    key = getattr(cause, "full_key", None)
    if not (isinstance(exc, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException) and key):
        return None
    group = key.rsplit(".", 1)[0]  # the node the key is in: data.split, backbone.preprocess, classifier
    reason = str(cause).splitlines()[0]
    # "In 'pretrain/bad': ..." names the YAML; an override's message does not
    where = f"in {str(exc).split(':')[0].removeprefix('In ')}" if str(exc).startswith("In '") else "on the command line"
    if "does not support deletion" in reason:
        return (f"{key} cannot be removed (~{key}): every {group} key needs a value, set in {_where(key)} "
                f"(no default in code); give it another value instead, e.g. {key}=<value>")
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        article = "an" if group[0] in "aeiou" else "a"
        return f"{key} is not {article} {group} setting ({where}); fix its spelling (the {group} keys: {_where(key)})"
    return f"{key}: {reason} ({where})"  # a value of the wrong type


register()
