"""Prompt strings from the configured templates (data, not code): one template per direction.

A template holds ``{source}`` exactly once; it is replaced by plain string substitution (no
``str.format``), so braces or ``%`` in SMILES and captions are safe. The defaults are the Meditron
L+M-24 model-card prompts (data/templates.py, quoted from ALMOL.md).

``templates == "chat"``: the prompt is the tokenizer's chat template applied to one user message
(data/templates.CHAT_TEMPLATES with the source) with the generation prompt, as TRL's
``maybe_apply_chat_template`` does for conversational rows; the response stays plain text (EOS is
added by the tokenisation rule, data/tokenize.py).
"""

from __future__ import annotations

from typing import Any

from almol_jax.data.templates import CHAT, CHAT_TEMPLATES, SOURCE_PLACEHOLDER
from almol_jax.directions import DIRECTIONS
from almol_jax.errors import ConfigError


def template_for(templates: Any, direction: str) -> str:
    """The template string of a direction from a TemplatesSection (or a mapping)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not one of {DIRECTIONS}")
    if templates == CHAT:
        return CHAT_TEMPLATES[direction]
    return templates[direction] if isinstance(templates, dict) else getattr(templates, direction)


def _substitute(template: str, direction: str, source: str) -> str:
    if template.count(SOURCE_PLACEHOLDER) != 1:
        raise ValueError(
            f"template for {direction!r} must contain {SOURCE_PLACEHOLDER} exactly once: {template!r}"
        )
    head, tail = template.split(SOURCE_PLACEHOLDER)
    return head + source + tail


def chat_prompt(tokenizer: Any, message: str) -> str:
    """The tokenizer's chat template around one user message, ending with the generation prompt."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            "data.templates='chat' needs a tokenizer with a chat template; this one has none "
            "(set data.templates to per-direction strings)"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def format_prompt(templates: Any, direction: str, source: str, tokenizer: Any = None) -> str:
    """The prompt for ``source`` in ``direction`` (what the model sees before the response);
    ``tokenizer`` is needed for ``templates == "chat"``."""
    text = _substitute(template_for(templates, direction), direction, source)
    if templates == CHAT:
        if tokenizer is None:
            raise ValueError("data.templates='chat' needs the tokenizer to format a prompt")
        return chat_prompt(tokenizer, text)
    return text
