"""Typed parsing of plain (YAML-loaded) data into the config dataclasses, and back.

:func:`build` checks a mapping against a dataclass's annotations, field by field: unknown keys
and wrong types are ConfigErrors (ValueErrors) that name the dotted key and suggest the nearest valid key
(:func:`suggest`); lists become tuples, ints become floats where a float is expected. A section's
own ``__post_init__`` check (the lora section's LoraConfig) is reported with the section's name.
:func:`config_to_dict` is the inverse (tuples become lists). Nothing here knows the sections: it
works from the annotations alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from almol_jax.errors import ConfigError


def suggest(name: str, candidates: list[str], prefix: str = "") -> str:
    """'; did you mean <nearest>?' (difflib), or the list of valid keys when nothing is close."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; valid keys: {sorted(prefix + c for c in candidates)}"


def build(cls: type, raw: Any, prefix: str) -> Any:
    """``cls(**raw)``, each value checked against its annotation; ``prefix``: the key path."""
    where = prefix.rstrip(".") or "<root>"
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {where!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(
                f"unknown config key {prefix + str(key)!r}" + suggest(str(key), names, prefix)
            )
        kwargs[key] = coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except ValueError as err:  # the section's own check (e.g. LoraConfig.__post_init__)
        raise ConfigError(f"config section {where!r}: {err}") from None


def type_name(tp: Any) -> str:
    """Readable type: int, str | None, "cpo" | "sft", list[str] (tuples shown as YAML lists)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(f'"{a}"' for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is tuple:
        inner = type_name(args[0]) if args[-1] is Ellipsis else ", ".join(map(type_name, args))
        return f"list[{inner}]"
    if origin is dict:
        return f"mapping[{type_name(args[0])}, {type_name(args[1])}]"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against type ``tp`` (converting lists to tuples, ints to floats)."""
    if dataclasses.is_dataclass(tp):  # a section; an empty YAML section (null) keeps defaults
        return build(tp, {} if value is None else value, key + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"config key {key!r}: expected {type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        # Try None first, then scalars, then containers, so "both" never becomes ("b","o",...).
        for arg in sorted(args, key=lambda a: typing.get_origin(a) is tuple):
            try:
                return coerce(value, arg, key)
            except ValueError:
                continue
        raise bad
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        raise ConfigError(
            f"config key {key!r}: {value!r} is not one of {list(args)}"
            + (suggest(value, [str(a) for a in args]) if isinstance(value, str) else "")
        )
    if origin is tuple:
        return _coerce_tuple(value, args, key, bad)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, tp, key, bad)


def _coerce_tuple(value: Any, args: tuple, key: str, bad: ConfigError) -> tuple:
    """A YAML list as ``tuple[X, ...]`` (any length) or ``tuple[X, Y]`` (that length)."""
    if not isinstance(value, (list, tuple)):
        raise bad
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise bad
    return tuple(
        coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
    )


def _coerce_scalar(value: Any, tp: Any, key: str, bad: ConfigError) -> Any:
    """null, bool, int, float (an int is accepted and converted) or str, strictly."""
    if tp is type(None):
        ok = value is None
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int or tp is float:
        ok = isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"config key {key!r}: unsupported annotation {tp!r}")
    if not ok:
        raise bad
    return float(value) if tp is float else value


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML/JSON-able data (tuples become lists) for a config or any of its sections."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg
