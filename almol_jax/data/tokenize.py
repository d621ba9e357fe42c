"""TRL-style tokenisation of (prompt, response) rows with an explicit truncation policy.

The rule (TRL CPOTrainer.build_tokenized_answer / tokenize_row):
- ``full = tok(prompt + response)``, ``p = tok(prompt)`` (no special tokens); the response tokens are
  ``full[len(p):]``; when the tokenizer merged the last prompt token with the response
  (``full[:len(p)] != p``), the boundary moves one token back and that token becomes a response
  token. The prompt row is ``full[:boundary]``.
- BOS is put in front of the prompt (when ``add_bos`` and not already there); EOS is appended to
  the response (when not already there). Labels are the response tokens only: prompt and padding
  positions are masked out of every loss.
Truncation (counted in the DataReport, never silent):
- a prompt longer than ``max_prompt_length`` (BOS included) keeps BOS and its END (the source
  text sits near the end of the ALMol templates, just before "### Response:");
- a response that does not fit ``max_length - len(prompt)`` is cut at its end (it may lose EOS,
  as in TRL); since max_prompt_length < max_length, a response always keeps >= 1 token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from almol_jax.data.prompts import format_prompt
from almol_jax.data.report import DataReport
from almol_jax.data.sources import Example, load_examples


@dataclasses.dataclass(frozen=True)
class Row:
    """One token row: prompt ids (BOS included) then response ids (the labels)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """A tokenised triplet (or a pair, rejected None) with its direction and origin."""

    chosen: Row
    rejected: Row | None
    direction: str
    origin: str

    @property
    def length(self) -> int:
        """The longest row (what decides the example's length bucket)."""
        return max(self.chosen.length, self.rejected.length if self.rejected else 0)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encode_many(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """One batched tokenizer call (the Rust tokenizers are much faster this way)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _split_ids(prompt_only: list[int], full: list[int]) -> tuple[list[int], list[int]]:
    start = min(len(prompt_only), len(full))
    if full[:start] != prompt_only:
        start = max(start - 1, 0)
    return full[:start], full[start:]


def split_prompt_response(
    tokenizer: Any, prompt: str, response: str
) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of ``prompt + response`` by TRL's rule; no BOS/EOS added."""
    return _split_ids(_encode(tokenizer, prompt), _encode(tokenizer, prompt + response))


def prompt_ids(tokenizer: Any, prompt: str, *, add_bos: bool = True) -> list[int]:
    """The ids a prompt is fed to the model as at generation time (BOS + prompt tokens)."""
    ids = _encode(tokenizer, prompt)
    return _with_bos(ids, tokenizer.bos_token_id, add_bos)


def _with_bos(ids: list[int], bos: int, add_bos: bool) -> list[int]:
    return [bos, *ids] if add_bos and (not ids or ids[0] != bos) else ids


def tokenize_row(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    max_length: int,
    max_prompt_length: int,
    add_bos: bool = True,
    report: DataReport | None = None,
    split: str = "train",
    kind: str = "chosen",
) -> Row:
    """One (prompt, response) row with BOS/EOS and the truncation policy applied."""
    return _finish_row(
        tokenizer,
        *split_prompt_response(tokenizer, prompt, response),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        add_bos=add_bos,
        report=report,
        split=split,
        kind=kind,
    )


def _finish_row(
    tokenizer: Any,
    p_ids: list[int],
    r_ids: list[int],
    *,
    max_length: int,
    max_prompt_length: int,
    add_bos: bool,
    report: DataReport | None,
    split: str,
    kind: str,
) -> Row:
    """BOS, EOS and truncation on split (prompt, response) ids."""
    if not 1 <= max_prompt_length < max_length:
        raise ValueError(f"need 1 <= {max_prompt_length=} < {max_length=}")
    p_ids = _with_bos(p_ids, tokenizer.bos_token_id, add_bos)
    eos = tokenizer.eos_token_id
    if not r_ids or r_ids[-1] != eos:
        r_ids = [*r_ids, eos]
    if len(p_ids) > max_prompt_length:
        keep_bos = add_bos and p_ids[0] == tokenizer.bos_token_id
        tail = max_prompt_length - 1 if keep_bos else max_prompt_length
        p_ids = ([p_ids[0]] if keep_bos else []) + p_ids[len(p_ids) - tail :]
        if report is not None and kind == "chosen":
            report.truncate(split, "prompt")
    room = max_length - len(p_ids)
    if len(r_ids) > room:
        r_ids = r_ids[:room]
        if report is not None:
            report.truncate(split, f"{kind}_response")
    return Row(tuple(p_ids), tuple(r_ids))


def tokenize_examples(
    examples: list[Example],
    tokenizer: Any,
    *,
    templates: Any,
    max_length: int,
    max_prompt_length: int,
    add_bos: bool = True,
    report: DataReport | None = None,
    split: str = "train",
    chunk_size: int = 2048,
) -> list[TokenizedExample]:
    """Formats prompts from the templates and tokenises chosen/rejected rows (batched calls)."""
    kw = dict(
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        add_bos=add_bos,
        report=report,
        split=split,
    )
    out: list[TokenizedExample] = []
    for lo in range(0, len(examples), chunk_size):
        chunk = examples[lo : lo + chunk_size]
        prompts = [format_prompt(templates, ex.direction, ex.source, tokenizer) for ex in chunk]
        prompt_only = _encode_many(tokenizer, prompts)
        full_w = _encode_many(
            tokenizer, [p + ex.chosen for p, ex in zip(prompts, chunk, strict=True)]
        )
        with_l = [i for i, ex in enumerate(chunk) if ex.rejected is not None]
        full_l = dict(
            zip(
                with_l,
                _encode_many(tokenizer, [prompts[i] + chunk[i].rejected for i in with_l]),
                strict=True,
            )
        )
        for i, ex in enumerate(chunk):
            chosen = _finish_row(
                tokenizer, *_split_ids(prompt_only[i], full_w[i]), kind="chosen", **kw
            )
            rejected = None
            if i in full_l:
                rejected = _finish_row(
                    tokenizer, *_split_ids(prompt_only[i], full_l[i]), kind="rejected", **kw
                )
            out.append(TokenizedExample(chosen, rejected, ex.direction, ex.origin))
            if report is not None:
                rows = [chosen.length] + ([rejected.length] if rejected else [])
                report.example(split, ex.direction, len(chosen.prompt_ids), rows)
    return out


def tokenize_example(ex: Example, tokenizer: Any, **kw: Any) -> TokenizedExample:
    """One example (see tokenize_examples for the keyword arguments)."""
    return tokenize_examples([ex], tokenizer, **kw)[0]


def prepare_split(
    cfg: Any, tokenizer: Any, split: str, report: DataReport
) -> list[TokenizedExample]:
    """Reads, formats and tokenises one split of a RunConfig ("train", "validation", "test")."""
    d = cfg.data
    out = tokenize_examples(
        load_examples(d, split, report),
        tokenizer,
        templates=d.templates,
        max_length=d.max_length,
        max_prompt_length=d.max_prompt_length,
        add_bos=cfg.tokenizer.add_bos,
        report=report,
        split=split,
    )
    if cfg.objective.name != "sft" and split != "test":
        missing = next((t for t in out if t.rejected is None), None)
        if missing is not None:
            raise ValueError(
                f"objective.name={cfg.objective.name!r} needs preference rows, but {missing.origin} "
                "is a (molecule, caption) pair without a rejected response"
            )
    return out
