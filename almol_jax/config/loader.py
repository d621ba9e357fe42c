"""Loading run configs: YAML file + ``key.sub=value`` overrides -> a validated RunConfig.

Override values are parsed as YAML scalars or flow lists (``train.steps=20``,
``model.source=null``, ``data.buckets=[64,128]``); for a list-typed key a bare comma-separated
value is split (``data.train_files=a.jsonl,b.jsonl``). Keys inside mapping fields are reachable
too (``model.overrides.vocab_size=512``). Unknown keys, wrong types and bad values raise
ConfigError (almol_jax/errors.py: a user's mistake, and a ValueError) naming the key with the
nearest valid key suggested (RunConfig.from_dict does the checking); so do a missing, unreadable
or malformed config file and an override that is not YAML.

YAML floats: PyYAML follows YAML 1.1 and reads ``5e-5`` as a string; the loader here also
resolves exponent floats without a dot (``5e-5``, ``1e8``) as floats.

A list-typed key given one bare value is a one-item list (``data.train_files=prefs.jsonl``),
unless the key also accepts that scalar (``data.directions=both``).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from almol_jax.config.coerce import coerce, config_to_dict, suggest
from almol_jax.config.run import RunConfig
from almol_jax.errors import ConfigError

_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: ``5e-5`` is a float, and only true/false are booleans
    (so ``mesh.distributed=on`` or ``data.prefix_sharing: off`` stay the strings they name)."""


_Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_RE, list("tTfF"))


def parse_yaml(text: str) -> Any:
    """Parses YAML text with the exponent-float fix."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _field_type(path: list[str]) -> Any:
    """The annotation at a dotted path of RunConfig (None if the path leaves the schema)."""
    cls: Any = RunConfig
    for part in path:
        cls = _section_of(cls)
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def _is_sequence_type(tp: Any) -> bool:
    if typing.get_origin(tp) is tuple:
        return True
    return any(typing.get_origin(a) is tuple for a in typing.get_args(tp))


def _as_sequence(value: Any, tp: Any, key: str) -> Any:
    """A bare override value of a list-typed key: split at commas, or one item when the key's
    type does not accept the scalar itself (``data.directions=both`` stays a string)."""
    if not isinstance(value, str) or not _is_sequence_type(tp):
        return value
    if "," in value:
        return [parse_yaml(v.strip()) for v in value.split(",")]
    if typing.get_origin(tp) is tuple:
        return [value]
    try:
        coerce(value, tp, key)
    except ValueError:
        return [value]
    return value


def _section_of(tp: Any) -> Any:
    """The dataclass a union type names (``data.templates``: a section or "chat"), else tp."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), tp)
    return tp


def _schema_keys(cls: Any = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(_schema_keys(hints[f.name], prefix + f.name + "."))
    return keys


def apply_override(raw: dict[str, Any], override: str) -> dict[str, Any]:
    """Returns a copy of ``raw`` with one ``key.sub=value`` override applied."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, text = override.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r} has an empty key part")
    # Check the path against the schema, allowing free keys below a mapping-typed field.
    cls: Any = RunConfig
    for i, part in enumerate(parts):
        cls = _section_of(cls)
        if dataclasses.is_dataclass(cls):
            hints = typing.get_type_hints(cls)
            if part not in hints:
                raise ConfigError(
                    f"unknown config key {key!r} in override {override!r}"
                    + suggest(key, _schema_keys())
                )
            cls = hints[part]
        elif typing.get_origin(cls) is dict:
            cls = typing.get_args(cls)[1]
        else:
            raise ConfigError(
                f"override {override!r}: {'.'.join(parts[:i])!r} is not a section or mapping"
            )
    try:
        value = parse_yaml(text) if text.strip() else ""
        value = _as_sequence(value, _field_type(parts), key)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: the value is not YAML ({err})") from None
    out = copy.deepcopy(raw)
    node = out
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} holds {child!r}, not a mapping")
        node = child
    node[parts[-1]] = value
    return out


def _read_yaml_file(path: Path) -> Any:
    """The YAML of a config file; ConfigError when it is unreadable, not UTF-8 or not YAML."""
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} could not be read: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Reads a YAML config (None = all defaults), applies overrides, type-checks and validates."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        raw = _read_yaml_file(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(
                f"config file {str(path)!r} must hold a mapping, got {type(raw).__name__}"
            )
    for override in overrides:
        raw = apply_override(raw, override)
    try:
        return RunConfig.from_dict(raw)
    except ValueError as err:
        where = f" (in {str(path)!r})" if path is not None else ""
        raise ConfigError(f"{err}{where}") from None


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Writes the resolved config as YAML; ``load_config(path)`` reads back an equal RunConfig."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(config_to_yaml(cfg), encoding="utf-8")


def config_to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML text (sections in declaration order)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, width=100)
