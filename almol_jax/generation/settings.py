"""Decoding settings: one frozen, hashable dataclass, so it can be a static argument of jit.

`DecodeSettings` holds what changes the compiled decode program (method, lengths, sampling
filters, beam options); `validate()` names any bad value. Prompt buckets and the batch size live
here too because they fix the static shapes the text-level API compiles for.
"""

from __future__ import annotations

import dataclasses

from almol_jax.directions import DIRECTIONS

SMILES_DIRECTION = DIRECTIONS[1]  # caption2smiles: the direction whose outputs are SMILES
METHODS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How to decode; the defaults are the paper's (greedy, up to 300 new tokens)."""

    # "greedy" (argmax), "sample" (temperature / top-k / top-p), or "beam" (HF-style beam search).
    method: str = "greedy"
    # Upper bound on generated tokens per row (EOS included); each row stops at its first EOS.
    max_new_tokens: int = 300
    # Sampling only: logits are divided by the temperature, then top-k, then top-p filtering.
    temperature: float = 1.0
    # Sampling only: keep the k most likely tokens (0 = off).
    top_k: int = 0
    # Sampling only: keep the smallest set of tokens whose probability reaches top_p (1.0 = off).
    top_p: float = 1.0
    # Beam search only: number of beams, HF's length_penalty and early_stopping semantics.
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool = False
    # Mask tokens that would break the SMILES grammar (caption2smiles; generation/grammar_tables.py).
    smiles_grammar: bool = False
    # With the grammar on and beam search: keep each row's best-ranked finished beam whose SMILES
    # RDKit sanitises, else the best beam (host side, after decoding; generation/rdkit_check.py).
    smiles_rdkit_check: bool = True
    # Rows per compiled batch (padded with dummy rows; must divide by the mesh's batch shards).
    batch_size: int = 8
    # Prompts are left-padded to the smallest bucket that holds them (static shapes, few compiles).
    prompt_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024)

    def validate(self) -> DecodeSettings:
        """Returns self, or raises ValueError naming the bad value."""
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {METHODS}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 turns it off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.num_beams < 1:
            raise ValueError(f"num_beams={self.num_beams} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if not self.prompt_buckets or any(b < 1 for b in self.prompt_buckets):
            raise ValueError(f"prompt_buckets={self.prompt_buckets} must be positive lengths")
        if tuple(sorted(self.prompt_buckets)) != tuple(self.prompt_buckets):
            raise ValueError(f"prompt_buckets={self.prompt_buckets} must be increasing")
        return self

    def for_direction(self, direction: str) -> DecodeSettings:
        """These settings for one direction: the SMILES grammar applies to caption2smiles only."""
        if self.smiles_grammar and direction != SMILES_DIRECTION:
            return self.replace(smiles_grammar=False)
        return self

    @property
    def rdkit_check_applies(self) -> bool:
        """Whether the RDKit check picks among the beams: grammar on, beam search, 2+ beams."""
        return (
            self.smiles_rdkit_check
            and self.smiles_grammar
            and self.method == "beam"
            and self.num_beams > 1
        )

    def replace(self, **changes) -> DecodeSettings:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes).validate()
