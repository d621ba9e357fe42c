"""Typed run configuration: the sections (dataclasses), the YAML loader with overrides, checks.

Files by concern: sections.py (the per-concern dataclasses), run.py (RunConfig, from_dict,
validate, field_docs), coerce.py (typed parsing with near-miss suggestions, config_to_dict),
checks.py (cross-field checks), loader.py (YAML files and key.sub=value overrides), templates.py
(the default prompt templates), reference.py (docs/configuration.md's field table: run
``python -m almol_jax.config.reference``). DIRECTIONS, directions_of and OBJECTIVES are
re-exported from their homes (almol_jax/directions.py, train/losses.py).
"""

from almol_jax.config.coerce import config_to_dict
from almol_jax.config.loader import apply_override, config_to_yaml, dump_config, load_config
from almol_jax.config.run import RunConfig, field_docs, validate
from almol_jax.directions import DIRECTIONS, directions_of
from almol_jax.objectives import OBJECTIVES

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
