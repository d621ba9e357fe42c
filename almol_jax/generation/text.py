"""Text in, text out: prompt encoding, bucketing into static batches, decoding, detokenising.

`generate_texts(model, tokenizer, prompts, settings, key=...)` encodes each prompt TRL-style
(BOS + tokens, keeping the END of prompts longer than the largest bucket), groups prompts by the
smallest bucket that holds them, left-pads them into `[batch_size, bucket]` arrays (a short last
batch is filled with copies of its first row, whose outputs are dropped), decodes every batch with
one compiled program per bucket, and returns the outputs in the prompts' order (EOS and special
tokens removed). With a mesh, each batch is placed sharded along the batch axis (data parallel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from almol_jax.generation import rdkit_check
from almol_jax.generation.beam import beam_pool
from almol_jax.generation.decode import decode_tokens
from almol_jax.generation.kv_steps import eos_ids_of, pad_id_of, split_model
from almol_jax.generation.settings import DecodeSettings


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], *, add_bos: bool, max_length: int
) -> list[list[int]]:
    """Prompt ids exactly as training sees them (data.tokenize.prompt_ids: BOS + tokens); a
    prompt longer than `max_length` keeps its BOS and its last tokens (the training policy)."""
    from almol_jax.data.tokenize import prompt_ids

    if max_length < 2:
        raise ValueError(f"max_length={max_length} leaves no room for prompt tokens")
    out = []
    for text in prompts:
        ids = prompt_ids(tokenizer, text, add_bos=add_bos)
        if len(ids) > max_length:
            keep_bos = add_bos and ids[0] == tokenizer.bos_token_id
            tail = max_length - 1 if keep_bos else max_length
            ids = ([ids[0]] if keep_bos else []) + ids[len(ids) - tail :]
        out.append(ids)
    return out


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (prompts are cut to the largest bucket beforehand)."""
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"prompt length {length} exceeds the largest bucket {buckets[-1]}")


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """Left-pads token rows to `length`: (input_ids int32 [B, length], attention_mask int32)."""
    ids = np.full((len(rows), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the bucket {length}")
        if row:
            ids[i, length - len(row) :] = row
            mask[i, length - len(row) :] = 1
    return ids, mask


def plan_batches(lengths: Sequence[int], settings: DecodeSettings) -> list[tuple[int, list[int]]]:
    """Groups prompt indices into (bucket, indices) batches of at most batch_size rows."""
    by_bucket: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_bucket.setdefault(bucket_for(n, settings.prompt_buckets), []).append(i)
    plan = []
    for bucket in sorted(by_bucket):
        idx = by_bucket[bucket]
        for start in range(0, len(idx), settings.batch_size):
            plan.append((bucket, idx[start : start + settings.batch_size]))
    return plan


def strip_output(tokens: np.ndarray, length: int, eos_ids: Sequence[int]) -> list[int]:
    """A row's generated ids without the trailing EOS."""
    row = [int(t) for t in tokens[:length]]
    if row and row[-1] in eos_ids:
        row = row[:-1]
    return row


def generate_token_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    settings: DecodeSettings,
    *,
    key: jax.Array | None = None,
    adapters: bool = True,
    eos_ids: Sequence[int] | None = None,
    mesh=None,
    rules=None,
    on_batch: Callable[[int, int], None] | None = None,
    grammar=None,
    accept: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """Decodes already-encoded prompts (each BOS + tokens); returns output ids without EOS.

    `eos_ids` defaults to the model config's EOS. With sampling, batch n uses
    `fold_in(key, n)`, so a run is reproducible for a given key, prompts and settings.
    `grammar`: the SMILES grammar tables, needed when `settings.smiles_grammar`.
    `accept`: with `settings.rdkit_check_applies`, a test of a hypothesis' output ids (EOS
    stripped); each row keeps its best-ranked finished beam that passes, else the best beam.
    """
    settings = settings.validate()
    config = model.config
    eos_ids = tuple(eos_ids) if eos_ids is not None else eos_ids_of(config)
    pad_id = pad_id_of(config)
    split = split_model(model, adapters=adapters)
    sharding = None
    if mesh is not None:
        from almol_jax.sharding import batch_shard_count, batch_sharding

        sharding = batch_sharding(mesh, rules)
        shards = batch_shard_count(mesh, rules)
        if settings.batch_size % shards:
            raise ValueError(
                f"batch_size={settings.batch_size} is not divisible by the {shards} batch shards "
                f"of the mesh {dict(mesh.shape)}"
            )
    outputs: list[list[int] | None] = [None] * len(prompt_ids)
    plan = plan_batches([len(p) for p in prompt_ids], settings)
    for n, (bucket, idx) in enumerate(plan):
        rows = [prompt_ids[i] for i in idx]
        rows += [rows[0]] * (settings.batch_size - len(rows))
        ids_BP, mask_BP = left_pad(rows, bucket, pad_id)
        if sharding is not None:
            ids_BP, mask_BP = jax.device_put(ids_BP, sharding), jax.device_put(mask_BP, sharding)
        batch_key = None if key is None else jax.random.fold_in(key, n)
        tokens_BN, lengths_B = _decode_batch(
            model,
            ids_BP,
            mask_BP,
            dict(settings=settings, split=split, eos_ids=eos_ids, grammar=grammar),
            key=batch_key,
            accept=accept,
            rows=len(idx),
        )
        for row, i in enumerate(idx):
            outputs[i] = strip_output(tokens_BN[row], int(lengths_B[row]), eos_ids)
        if on_batch is not None:
            on_batch(n + 1, len(plan))
    return outputs  # type: ignore[return-value]


def _decode_batch(model, ids_BP, mask_BP, args: dict, *, key, accept, rows: int):
    """One batch's (tokens `[B, N]`, lengths `[B]`); with the RDKit check on, each of the first
    `rows` rows holds its best-ranked finished beam that `accept` passes, else its best beam."""
    if accept is None or not args["settings"].rdkit_check_applies:
        return decode_tokens(model, ids_BP, mask_BP, key=key, **args)
    pool = beam_pool(model, ids_BP, mask_BP, **args)

    def passes(b: int, w: int) -> bool:
        return accept(strip_output(pool.tokens[b, w], int(pool.lengths[b, w]), args["eos_ids"]))

    return rdkit_check.chosen(pool, rdkit_check.choose_slots(pool, passes, rows=rows))


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings: DecodeSettings,
    *,
    key: jax.Array | None = None,
    adapters: bool = True,
    add_bos: bool = True,
    mesh=None,
    rules=None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Generates one output string per prompt (see the module docstring).

    Rows stop at the model config's EOS or the tokenizer's EOS (the one training appends).
    With `settings.smiles_grammar` every output follows the SMILES grammar (the tables are built
    from the tokenizer's vocabulary first, a few seconds); with `settings.rdkit_check_applies`
    (grammar on, beam search) each row's output is its best-ranked finished beam whose SMILES
    RDKit sanitises, else its best beam (rdkit_check.py).
    """
    settings = settings.validate()
    prompt_ids = encode_prompts(
        tokenizer, prompts, add_bos=add_bos, max_length=settings.prompt_buckets[-1]
    )
    eos_ids = set(eos_ids_of(model.config))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        eos_ids.add(int(tokenizer.eos_token_id))
    grammar = None
    if settings.smiles_grammar:
        from almol_jax.generation.grammar_tables import build_tables

        grammar = build_tables(tokenizer, model.config.vocab_size, sorted(eos_ids))

    def accept(ids: list[int]) -> bool:  # the RDKit check of beam search (rdkit_check.py)
        return rdkit_check.sanitizes(tokenizer.decode(ids, skip_special_tokens=True).strip())

    out_ids = generate_token_ids(
        model,
        prompt_ids,
        settings,
        key=key,
        adapters=adapters,
        eos_ids=tuple(sorted(eos_ids)),
        mesh=mesh,
        rules=rules,
        on_batch=on_batch,
        grammar=grammar,
        accept=accept,
    )
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out_ids]


def settings_from_config(run_config: Any, **changes) -> DecodeSettings:
    """DecodeSettings from a RunConfig's `generation` section (+ prompt buckets from data).

    do_sample -> "sample"; else num_beams > 1 -> "beam"; else "greedy". Prompt buckets are the
    powers of two from 32 up to data.max_prompt_length (which is always the last bucket).
    """
    gen = run_config.generation
    method = "sample" if gen.do_sample else ("beam" if gen.num_beams > 1 else "greedy")
    top = int(run_config.data.max_prompt_length)
    buckets = [b for b in (32, 64, 128, 256, 512, 1024, 2048) if b < top] + [top]
    settings = DecodeSettings(
        method=method,
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        top_k=gen.top_k,
        top_p=gen.top_p,
        num_beams=max(gen.num_beams, 1),
        smiles_grammar=gen.smiles_grammar == "on",
        smiles_rdkit_check=gen.smiles_rdkit_check == "on",
        batch_size=gen.batch_size,
        prompt_buckets=tuple(buckets),
    )
    return settings.replace(**changes)
