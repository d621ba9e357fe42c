"""The SMILES grammar's cost and effect on a trained run: caption2smiles with the grammar off and on.

    python bench/smiles_grammar.py --checkpoint runs/demo [--limit 100] [--repeats 3]

Decodes the same `--limit` test captions (the run's data, templates and generation settings)
with `generation.smiles_grammar` off and on, repeats interleaved (off, on, off, on, ...) so a
shared machine's load falls on both alike, and prints: the seconds to build the grammar tables,
each program's compile seconds (its first call less its median later call), the milliseconds per
decode step of each (median over repeats; a batch's steps are its longest output plus EOS, capped
at max_new_tokens), their ratio (the grammar's per-step overhead), and per output how many parse
(RDKit, sanitize=False) and sanitise, with the failure kinds RDKit reports. The last line is
`overhead=<on / off ms per step - 1>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_description, median  # noqa: E402


def validity(texts: list[str]) -> tuple[int, int, Counter]:
    """(outputs RDKit parses, outputs it sanitises, failure kinds of the parsed ones)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    parsed, valid, kinds = 0, 0, Counter()
    for text in texts:
        mol = Chem.MolFromSmiles(text, sanitize=False) if text else None
        if mol is None:
            continue
        parsed += 1
        problems = Chem.DetectChemistryProblems(mol)
        if not problems:
            valid += 1
        kinds.update({p.GetType() for p in problems})
    return parsed, valid, kinds


def decode_steps(outputs, lengths, settings) -> int:
    """The decode loop's iterations over all batches (it stops when every row has its EOS)."""
    from almol_jax.generation.text import plan_batches

    cap = settings.max_new_tokens
    return sum(
        min(cap, max(len(outputs[i]) + 1 for i in idx))
        for _, idx in plan_batches(lengths, settings)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint step")
    parser.add_argument("--step", default="best")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from almol_jax.data.prompts import format_prompt
    from almol_jax.data.report import DataReport
    from almol_jax.data.sources import load_examples
    from almol_jax.generation import settings_from_config
    from almol_jax.generation.grammar_tables import build_tables
    from almol_jax.generation.kv_steps import eos_ids_of
    from almol_jax.generation.text import encode_prompts, generate_token_ids
    from almol_jax.run.restore import load_for_eval

    run_cfg, model, tokenizer, run_dir, step, adapters = load_for_eval(
        args.checkpoint, adapters=True, step=args.step
    )
    rows = [
        ex
        for ex in load_examples(run_cfg.data, "test", DataReport())
        if ex.direction == "caption2smiles"
    ][: args.limit]
    prompts = [
        format_prompt(run_cfg.data.templates, ex.direction, ex.source, tokenizer) for ex in rows
    ]
    off = settings_from_config(run_cfg, smiles_grammar=False).for_direction("caption2smiles")
    on = off.replace(smiles_grammar=True)
    ids = encode_prompts(
        tokenizer, prompts, add_bos=run_cfg.tokenizer.add_bos, max_length=off.prompt_buckets[-1]
    )
    eos = set(eos_ids_of(model.config)) | {int(tokenizer.eos_token_id)}
    eos_ids = tuple(sorted(eos))
    start = time.perf_counter()
    grammar = build_tables(tokenizer, model.config.vocab_size, eos_ids)
    build_s = time.perf_counter() - start

    walls: dict[str, list[float]] = {"off": [], "on": []}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats + 1):  # the first round compiles
        for name, settings in (("off", off), ("on", on)):
            start = time.perf_counter()
            outputs[name] = generate_token_ids(
                model, ids, settings, adapters=adapters, eos_ids=eos_ids, grammar=grammar
            )
            walls[name].append(time.perf_counter() - start)

    lengths = [len(p) for p in ids]
    print(f"machine: {machine_description()}; load {os.getloadavg()[0]:.1f}")
    print(
        f"run {run_dir} step {step}: {len(rows)} test captions, {off.method}, "
        f"batch {off.batch_size}, max_new_tokens {off.max_new_tokens}"
    )
    print(f"table build: {build_s:.1f} s")
    per_step = {}
    for name, settings in (("off", off), ("on", on)):
        steps = decode_steps(outputs[name], lengths, settings)
        warm = median(walls[name][1:])
        per_step[name] = 1000 * warm / steps
        texts = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs[name]]
        parsed, valid, kinds = validity(texts)
        print(
            f"grammar {name}: compile {walls[name][0] - warm:.1f} s, {steps} decode steps, "
            f"{warm:.2f} s per decode (median of {args.repeats}), {per_step[name]:.2f} ms/step; "
            f"parses {parsed}/{len(texts)}, sanitises {valid}/{len(texts)}, "
            f"failures {dict(kinds)}"
        )
    print(f"overhead={per_step['on'] / per_step['off'] - 1:+.3f}")


if __name__ == "__main__":
    main()
