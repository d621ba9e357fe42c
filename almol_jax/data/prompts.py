"""Prompt strings from the configured templates (data, not code): one template per direction.

A template holds ``{source}`` exactly once; it is replaced by plain string substitution (no
``str.format``), so braces or ``%`` in SMILES and captions are safe. The defaults are the Meditron
L+M-24 model-card prompts (data/templates.py, quoted from ALMOL.md).
"""

from __future__ import annotations

from typing import Any

from almol_jax.data.templates import SOURCE_PLACEHOLDER
from almol_jax.directions import DIRECTIONS


def template_for(templates: Any, direction: str) -> str:
    """The template string of a direction from a TemplatesSection (or a mapping)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not one of {DIRECTIONS}")
    return templates[direction] if isinstance(templates, dict) else getattr(templates, direction)


def format_prompt(templates: Any, direction: str, source: str) -> str:
    """The prompt for ``source`` in ``direction`` (what the model sees before the response)."""
    template = template_for(templates, direction)
    if template.count(SOURCE_PLACEHOLDER) != 1:
        raise ValueError(
            f"template for {direction!r} must contain {SOURCE_PLACEHOLDER} exactly once: {template!r}"
        )
    head, tail = template.split(SOURCE_PLACEHOLDER)
    return head + source + tail
