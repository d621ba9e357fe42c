"""Typed run configuration: the schema (dataclasses) and the YAML loader with overrides."""

from almol_jax.config.loader import apply_override, config_to_yaml, dump_config, load_config
from almol_jax.config.schema import (
    DIRECTIONS,
    OBJECTIVES,
    RunConfig,
    config_to_dict,
    directions_of,
    field_docs,
    validate,
)

__all__ = [
    "DIRECTIONS",
    "OBJECTIVES",
    "RunConfig",
    "apply_override",
    "config_to_dict",
    "config_to_yaml",
    "directions_of",
    "dump_config",
    "field_docs",
    "load_config",
    "validate",
]
