"""Documented dataclass fields: a default plus its one-line doc in ``metadata["doc"]``.

The run config's sections (config/sections.py) and the model's LoraConfig (whose fields are also
the config's ``lora`` section) declare every field with :func:`doc_field`, so each field is typed,
defaulted and documented once; docs/configuration.md is generated from these docs
(config/reference.py). A module of its own, importing nothing, so that the model can use it
without importing the config package.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _frozen(value: Any) -> Any:
    """Lists (nested too) as tuples, so defaults equal what the parser makes of the same YAML."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def doc_field(default: Any, doc: str) -> Any:
    """A dataclass field with a default (lists become tuples) and its one-line documentation."""
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda d=default: dict(d), metadata={"doc": doc})
    return dataclasses.field(default=_frozen(default), metadata={"doc": doc})


def section_field(cls: type, doc: str) -> Any:
    """A documented field holding a sub-config (a dataclass), defaulting to ``cls()``."""
    return dataclasses.field(default_factory=cls, metadata={"doc": doc})
