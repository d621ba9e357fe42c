"""Greedy decoding throughput: our jitted KV-cache decoder vs transformers' PyTorch generate.

    python bench/generate.py --shape cpo-small --vs-hf [--batch 8 --prompt-len 128 --new 64]

Builds a random-weight HF LlamaForCausalLM of the named bench shape, saves it with
save_pretrained, loads the same weights with almol_jax.load_model, checks that both produce the
same greedy tokens, then times both, interleaved round by round in one process (the machine is
shared, so interleaving keeps the comparison fair), and reports the median new tokens/s of each.

Ours runs twice per round: on one XLA CPU device (the library default) and, when the process
has several CPUs, data-parallel over `--cpu-devices` XLA CPU devices (default: one per usable
CPU; runtime.cpu_devices in a run config), weights replicated and the prompts split; both must
give the same tokens. Our model is split once (`split=`), as generate_texts does for a run's
batches. HF runs with torch's default threads (all usable CPUs). The last line is
`ratio_vs_hf=<best of ours / HF>` (only with --vs-hf), after each variant's ratio and the name
of the best one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import get_shape, machine_description, median  # noqa: E402


def build_hf(shape, seed: int):
    """A random-weight transformers LlamaForCausalLM of the bench shape (float32, eval mode)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    return model


def make_prompts(shape_vocab: int, batch: int, prompt_len: int, seed: int):
    """Random prompts (BOS + tokens avoiding the special ids 0-2), all of full length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, shape_vocab, size=(batch, prompt_len), dtype=np.int64)
    ids[:, 0] = 1
    return ids, np.ones_like(ids)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="cpo-small")
    parser.add_argument("--vs-hf", action="store_true", help="also time transformers' generate")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=0,
        help="XLA CPU devices (runtime.cpu_devices); >1 also times ours data-parallel across them "
        "(0: one per CPU this process may use)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="0: library defaults; N: this process pinned to N CPUs, torch N threads",
    )
    return parser.parse_args(argv)


def ours_systems(ours, ids, mask, settings, no_eos: int) -> dict:
    """{name: () -> (new tokens, count)}: ours on one device, and data-parallel over every
    device when there are several (weights replicated, prompts split)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from almol_jax.generation import decode_tokens
    from almol_jax.generation.kv_steps import split_model
    from almol_jax.sharding import batch_sharding, data_parallel_mesh

    # split once, as generate_texts does for every batch of a run (split_model walks the module
    # graph in Python: ~15 ms a call at this size)
    split = split_model(ours)

    def runner(ids_, mask_, split_):
        def run():
            tokens, lengths = decode_tokens(
                ours, ids_, mask_, settings=settings, eos_ids=(no_eos,), split=split_
            )
            return tokens, int(np.sum(lengths))

        return run

    systems = {"ours": runner(ids, mask, split)}
    devices = len(jax.devices())
    if devices > 1:
        if len(ids) % devices:
            raise ValueError(f"--batch {len(ids)} does not split on {devices} CPU devices")
        mesh = data_parallel_mesh()
        graphdef, states = split
        split_dp = (graphdef, jax.device_put(states, NamedSharding(mesh, PartitionSpec())))
        ids_dp, mask_dp = (
            jax.device_put(a.astype(np.int32), batch_sharding(mesh)) for a in (ids, mask)
        )
        systems[f"ours_dp{devices}"] = runner(ids_dp, mask_dp, split_dp)
    return systems


def hf_system(hf, ids, mask, new_tokens: int):
    """transformers' greedy generate of exactly `new_tokens` per row."""
    import torch

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
        new = out[:, ids.shape[1] :].numpy()
        return new, int(new.size)

    return run_hf


def time_rounds(systems: dict, rounds: int) -> tuple[dict, dict]:
    """Interleaved rounds: ({name: [seconds]}, {name: new tokens per call})."""
    times = {name: [] for name in systems}
    counts = {}
    for _ in range(rounds):
        for name, fn in systems.items():
            start = time.perf_counter()
            _, n = fn()
            times[name].append(time.perf_counter() - start)
            counts[name] = n
    return times, counts


def report(args, shape, times: dict, counts: dict) -> None:
    import jax

    print(
        f"machine: {machine_description()}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({len(jax.devices())} devices)"
    )
    print(
        f"shape {shape.name}: batch {args.batch} x prompt {args.prompt_len}, "
        f"{args.new} new tokens each, greedy, median of {args.rounds} interleaved rounds"
    )
    rates = {}
    for name, ts in times.items():
        if not ts:
            continue
        rates[name] = counts[name] / median(ts)
        print(f"{name:>9}: {median(ts):.4f} s/generate  {rates[name]:,.0f} new tokens/s")
    if args.vs_hf:
        best = max((n for n in rates if n != "hf"), key=rates.get)
        for name in rates:
            if name != "hf":
                print(f"{name} / hf: {rates[name] / rates['hf']:.2f}")
        print(f"best of ours: {best}")
        print(f"ratio_vs_hf={rates[best] / rates['hf']:.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:  # before jax/torch start their thread pools (XLA sizes its pool by affinity)
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))

    import torch

    from almol_jax.config import load_config
    from almol_jax.cpu import runtime

    # before the backend starts; malloc is left alone (an evaluation, host_allocator auto)
    runtime.configure(
        load_config(None, [f"runtime.cpu_devices={args.cpu_devices}"]).runtime, training=False
    )
    if args.threads:
        torch.set_num_threads(args.threads)

    from almol_jax import load_model
    from almol_jax.generation import DecodeSettings

    shape = get_shape(args.shape)
    hf = build_hf(shape, args.seed)
    # Never stop early: both sides generate exactly --new tokens per row (fair token counts).
    hf.generation_config.eos_token_id = None
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_model(tmp, dtype="float32")
    no_eos = shape.vocab_size + 1  # an id the model can never produce
    ids, mask = make_prompts(shape.vocab_size, args.batch, args.prompt_len, args.seed)
    settings = DecodeSettings(method="greedy", max_new_tokens=args.new)
    systems = ours_systems(ours, ids, mask, settings, no_eos)

    first = {}
    for name, fn in systems.items():
        t0 = time.perf_counter()
        first[name], _ = fn()
        print(f"{name}: first call (compile + run) {time.perf_counter() - t0:.2f} s", flush=True)
    for name in systems:
        if name != "ours":
            print(f"{name} tokens identical to ours: {np.array_equal(first[name], first['ours'])}")
    if args.vs_hf:
        systems["hf"] = hf_system(hf, ids, mask, args.new)
        hf_tokens, _ = systems["hf"]()
        print(f"greedy tokens identical to HF: {np.array_equal(first['ours'], hf_tokens)}")
    report(args, shape, *time_rounds(systems, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
