"""Train-step benchmark: our jitted CPO step against TRL's CPOTrainer (PyTorch + PEFT), one run.

    python bench/train_step.py --shape cpo-small --vs-trl
    python bench/train_step.py --shape cpo-d512 --layout unshared

Each system runs in its own worker process (so each one's peak RSS is its own and their thread
pools never compete); the parent interleaves rounds (TRL k steps, ours k steps, matmul peak, ...)
so both see the same machine load, and reports per system: seconds/step (median over rounds),
tokens/s (TRL's token count for both: pairs x (2 x prompt + chosen + rejected)), model FLOPs per
step (bench/common.py convention, for the computation each system actually performs), achieved
FLOP/s, its fraction of the matmul peak measured in the same run, and peak memory. With --vs-trl
the last line is `ratio_vs_trl=<ours tokens/s / TRL tokens/s>`.

Both systems train the same shape from the same random token ids: a LLaMA of the shape's sizes,
LoRA on all seven linear projections, CPO sigmoid (beta, alpha 1), AdamW, grad-norm clip 1.0.
TRL runs Trainer.training_step + the AdamW step (the body of Trainer's inner loop, including
collation), with gradient checkpointing and bf16 off (its fastest fp32 CPU setting).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    BenchShape,
    device_peak_bytes,
    format_row,
    get_shape,
    machine_description,
    median,
    peak_rss_bytes,
    processed_tokens,
    send,
    train_step_flops,
)

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def random_triplets(shape: BenchShape, n: int, seed: int):
    """n (prompt, chosen, rejected) token-id lists: BOS + prompt, response + EOS, exact lengths."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = lambda k: rng.integers(3, shape.vocab_size, size=k).tolist()  # noqa: E731
        out.append(
            (
                [BOS_ID] + ids(shape.prompt_len - 1),
                ids(shape.chosen_len - 1) + [EOS_ID],
                ids(shape.rejected_len - 1) + [EOS_ID],
            )
        )
    return out


# ----------------------------------------------------------------------------------------- TRL
class TrlSystem:
    """TRL CPOTrainer + PEFT LoRA on a random-init transformers LlamaForCausalLM (fp32, CPU)."""

    name = "trl"

    def __init__(self, shape: BenchShape, seed: int, num_batches: int = 8):
        self.shape, self.seed, self.num_batches = shape, seed, num_batches

    def _tokenizer(self):
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID}
        vocab.update({f"t{i}": i for i in range(3, self.shape.vocab_size)})
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
        )

    def setup(self) -> dict:
        import torch
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import LlamaConfig, LlamaForCausalLM
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        s = self.shape
        if os.environ.get("ALMOL_BENCH_TORCH_THREADS"):
            torch.set_num_threads(int(os.environ["ALMOL_BENCH_TORCH_THREADS"]))
        torch.manual_seed(self.seed)
        cfg = LlamaConfig(
            vocab_size=s.vocab_size,
            hidden_size=s.hidden_size,
            intermediate_size=s.intermediate_size,
            num_hidden_layers=s.num_layers,
            num_attention_heads=s.num_heads,
            num_key_value_heads=s.num_kv_heads,
            max_position_embeddings=4096,
            tie_word_embeddings=s.tie_word_embeddings,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )
        model = LlamaForCausalLM(cfg).to(torch.float32)
        words = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731
        rows = {"prompt": [], "chosen": [], "rejected": []}
        for p, c, r in random_triplets(s, s.pairs * self.num_batches, self.seed):
            # TRL adds BOS to the prompt and EOS to the answers itself
            rows["prompt"].append(words(p[1:]))
            rows["chosen"].append(" " + words(c[:-1]))
            rows["rejected"].append(" " + words(r[:-1]))
        args = CPOConfig(
            output_dir="/tmp/almol_bench_trl",
            per_device_train_batch_size=s.pairs,
            learning_rate=s.learning_rate,
            beta=s.beta,
            cpo_alpha=s.cpo_alpha,
            loss_type="sigmoid",
            max_length=s.prompt_len + max(s.chosen_len, s.rejected_len),
            gradient_checkpointing=False,
            bf16=False,
            use_cpu=True,
            report_to=[],
            logging_steps=10**9,
            save_strategy="no",
            max_grad_norm=1.0,
            dataloader_num_workers=0,
            seed=self.seed,
        )
        peft = LoraConfig(
            r=s.lora_r,
            lora_alpha=s.lora_alpha,
            lora_dropout=0.0,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            task_type="CAUSAL_LM",
        )
        self.trainer = CPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict(rows),
            processing_class=self._tokenizer(),
            peft_config=peft,
        )
        self.trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() normally
        self.model = self.trainer.model
        self.model.train()
        self.loader = self.trainer.get_train_dataloader()
        self.it = iter(self.loader)
        first = next(iter(self.loader))
        n_tok = int(first["chosen_input_ids"].numel() + first["rejected_input_ids"].numel())
        if n_tok != s.trl_tokens_per_step:
            raise ValueError(f"TRL batch holds {n_tok} tokens, expected {s.trl_tokens_per_step}")
        return {"threads": torch.get_num_threads()}

    def _step(self) -> float:
        try:
            inputs = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            inputs = next(self.it)
        tr = self.trainer
        loss = tr.training_step(self.model, inputs)
        tr.accelerator.clip_grad_norm_(self.model.parameters(), tr.args.max_grad_norm)
        tr.optimizer.step()
        tr.lr_scheduler.step()
        self.model.zero_grad()
        return float(loss)

    def run_steps(self, n: int) -> dict:
        times, losses = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            losses.append(self._step())
            times.append(time.perf_counter() - t0)
        return {"times": times, "loss": losses[-1]}

    def memory(self) -> tuple[int, str]:
        return peak_rss_bytes(), "RSS"


# ---------------------------------------------------------------------------------------- ours
class OursSystem:
    """almol_jax: LlamaForCausalLM + LoRA, the jitted CPO train step, a chosen batch layout."""

    name = "ours"

    def __init__(
        self, shape: BenchShape, seed: int, layout: str, num_batches: int = 8, options=None
    ):
        """`options`: the step's XLA compiler options; None = cpu/runtime's "train_step" ones."""
        self.shape, self.seed, self.layout, self.num_batches = shape, seed, layout, num_batches
        self.options = options

    def setup(self) -> dict:
        import jax
        import numpy as np
        import optax
        from flax import nnx

        from almol_jax.config.sections import ObjectiveSection
        from almol_jax.cpu import runtime
        from almol_jax.data.prefix_sharing import plain_batch, plain_to_indexed
        from almol_jax.model.build import build_model
        from almol_jax.model.config import ModelConfig
        from almol_jax.model.lora import LoRAParam
        from almol_jax.model.lora_config import LoraConfig
        from almol_jax.train.optimizer import make_optimizer
        from almol_jax.train.step import StepSettings, init_train_state, train_step

        s = self.shape
        cfg = ModelConfig(
            vocab_size=s.vocab_size,
            hidden_size=s.hidden_size,
            intermediate_size=s.intermediate_size,
            num_hidden_layers=s.num_layers,
            num_attention_heads=s.num_heads,
            num_key_value_heads=s.num_kv_heads,
            max_position_embeddings=4096,
            tie_word_embeddings=s.tie_word_embeddings,
            dtype=s.dtype,
            param_dtype=s.dtype,
        )
        lora = LoraConfig(r=s.lora_r, alpha=s.lora_alpha)
        model = build_model(cfg, lora=lora, rngs=jax.random.key(self.seed))
        self.graphdef, trainable, self.frozen = nnx.split(model, LoRAParam, ...)
        schedule = optax.constant_schedule(s.learning_rate)
        self.settings = StepSettings(
            objective=ObjectiveSection(name="cpo", beta=s.beta, cpo_alpha=s.cpo_alpha),
            grad_accum=1,
            tx=make_optimizer(schedule, max_grad_norm=1.0),
            schedule=schedule,
        )
        self.state = jax.jit(lambda t: init_train_state(t, self.settings.tx))(trainable)
        self.step_fn = jax.jit(  # as train/step.py's build_train_step, without shardings
            train_step,
            static_argnames=("graphdef", "settings"),
            donate_argnames=("state",),
            compiler_options=(
                runtime.compiler_options("train_step") if self.options is None else self.options
            ),
        )
        triplets = random_triplets(s, s.pairs * self.num_batches, self.seed)
        self.batches = []
        for i in range(self.num_batches):
            plain = plain_batch(triplets[i * s.pairs : (i + 1) * s.pairs])
            share = self.layout == "prefix_shared"
            self.batches.append(plain_to_indexed(plain, share_prefix=share))
        self.i = 0
        return {"layout": self.layout, "row_shape": list(np.shape(self.batches[0]["input_ids"]))}

    def _step(self) -> float:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.state, metrics = self.step_fn(
            graphdef=self.graphdef,
            state=self.state,
            frozen=self.frozen,
            batch=batch,
            settings=self.settings,
        )
        return float(metrics["loss"])

    def run_steps(self, n: int) -> dict:
        times, losses = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            losses.append(self._step())
            times.append(time.perf_counter() - t0)
        return {"times": times, "loss": losses[-1]}

    def memory(self) -> tuple[int, str]:
        dev = device_peak_bytes()
        return (dev, "device") if dev is not None else (peak_rss_bytes(), "RSS")


# -------------------------------------------------------------------------------------- worker
def worker_main(system: str, shape_name: str, seed: int, layout: str) -> None:
    """Line protocol: reads commands ("steps N", "peak", "memory", "quit"), answers JSON lines."""
    if os.environ.get(CPUS_ENV):  # before jax/torch start their thread pools
        os.sched_setaffinity(0, {int(c) for c in os.environ[CPUS_ENV].split(",")})
    from almol_jax.config import load_config
    from almol_jax.cpu import runtime

    # the same malloc setting in every worker (TRL's too), before jax/torch allocate anything
    allocator = os.environ.get(ALLOCATOR_ENV, "keep")
    runtime.configure(
        load_config(None, [f"runtime.host_allocator={allocator}"]).runtime, training=True
    )
    shape = get_shape(shape_name)
    if system == "peak":  # measures only the matmul peak (its own process: no thread sharing)
        sys_obj = None
        send({"ready": {}})
    else:
        sys_obj = TrlSystem(shape, seed) if system == "trl" else OursSystem(shape, seed, layout)
        send({"ready": sys_obj.setup()})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "steps":
            send(sys_obj.run_steps(int(cmd[1])))
        elif cmd[0] == "peak":
            from bench.matmul_peak import measure_matmul_peak

            send(measure_matmul_peak(int(cmd[1]), int(cmd[2])))
        elif cmd[0] == "memory":
            mem, kind = sys_obj.memory()
            send({"peak_mem_bytes": mem, "mem_kind": kind})
        else:
            send({"error": f"unknown command {cmd[0]!r}"})


CPUS_ENV = "ALMOL_BENCH_CPUS"
ALLOCATOR_ENV = "ALMOL_BENCH_HOST_ALLOCATOR"


def pinned_cpus(n: int) -> list[int]:
    """The first `n` CPUs this process may run on."""
    allowed = sorted(os.sched_getaffinity(0))
    if n > len(allowed):
        raise ValueError(f"--threads {n} but only {len(allowed)} CPUs are available")
    return allowed[:n]


class Worker:
    """A worker subprocess (this script with --worker) driven through its stdin/stdout."""

    def __init__(self, system: str, args):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", system, "--shape", args.shape]
        cmd += ["--seed", str(args.seed), "--layout", args.layout]
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        if args.threads:
            # N threads each: torch's pool is set to N and each worker is pinned to the first N
            # allowed CPUs (XLA sizes its pool from the CPU affinity; its thread flags alone do
            # not make the thunk runtime single-threaded)
            env["OMP_NUM_THREADS"] = env["ALMOL_BENCH_TORCH_THREADS"] = str(args.threads)
            env[CPUS_ENV] = ",".join(str(c) for c in pinned_cpus(args.threads))
        env[ALLOCATOR_ENV] = args.host_allocator
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("HF_HUB_OFFLINE", "1")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1
        )
        self.ready = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.proc.args} exited with {self.proc.wait()}")
            if line.startswith("{"):
                msg = json.loads(line)
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def figures(
    system: str, shape: BenchShape, layout: str, times: list[float], mem: dict, peak: float
):
    """The reported figures of one system from its per-step times."""
    s_per_step = median(times)
    ours = system == "ours"
    flops = train_step_flops(
        shape,
        layout,
        response_only_logits=ours,
        label_queries_last=ours,
        merged_lora=ours and shape.dtype == "float32",
    )["total"]
    return {
        "system": system,
        "layout": layout,
        "s_per_step": s_per_step,
        "tokens_per_s": shape.trl_tokens_per_step / s_per_step,
        "processed_tokens_per_step": processed_tokens(shape, layout),
        "flops_per_step": flops,
        "flops_per_s": flops / s_per_step,
        "peak_fraction": flops / s_per_step / peak,
        **mem,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="cpo-small")
    parser.add_argument(
        "--vs-trl", action="store_true", help="also run TRL CPOTrainer, interleaved"
    )
    parser.add_argument("--no-ours", action="store_true", help="run only TRL (with --vs-trl)")
    parser.add_argument(
        "--layout",
        default="prefix_shared",
        choices=["prefix_shared", "unshared"],
        help="our rows: the prompt once per pair, or prompt + chosen and prompt + rejected",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per system first")
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads per system (0: library defaults; N: torch N threads, each worker pinned to N CPUs)",
    )
    parser.add_argument(
        "--host-allocator",
        choices=["keep", "system"],
        default="keep",
        help="glibc malloc in every worker, TRL's included (almol_jax/cpu/host_allocator.py): keep "
        "= reuse freed buffers (what train.py does on the CPU backend), system = glibc defaults",
    )
    parser.add_argument("--json", default=None, help="also write all figures to this JSON file")
    parser.add_argument("--worker", choices=["trl", "ours", "peak"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.shape, args.seed, args.layout)
        return

    shape = get_shape(args.shape)
    systems = [] if args.no_ours else ["ours"]
    if args.vs_trl:
        systems.insert(0, "trl")
    if not systems:
        raise ValueError("nothing to run: --no-ours needs --vs-trl")
    layouts = {"trl": "plain", "ours": args.layout}
    print(f"machine: {machine_description()}")
    print(f"shape: {shape}")
    print(f"threads per system: {args.threads or 'library default'}")
    print(f"host allocator (every worker): {args.host_allocator}")
    workers = {name: Worker(name, args) for name in systems}
    peak_worker = Worker("peak", args)
    try:
        times = {name: [] for name in systems}
        peaks = []
        for w in workers.values():
            w.ask(f"steps {args.warmup}")
        for r in range(args.rounds):
            peaks.append(peak_worker.ask(f"peak {args.peak_size} 3")["flops_per_s"])
            for name, w in workers.items():
                res = w.ask(f"steps {args.steps_per_round}")
                times[name] += res["times"]
                print(
                    f"round {r}: {name} {median(res['times']):.4f} s/step loss={res['loss']:.4f}",
                    flush=True,
                )
        peak = max(peaks)
        print(f"matmul_peak (fp32 {args.peak_size}^2, best of run): {peak / 1e9:.1f} GFLOP/s")
        results = {}
        for name, w in workers.items():
            results[name] = figures(name, shape, layouts[name], times[name], w.ask("memory"), peak)
            print(format_row(results[name]))
    finally:
        for w in [*workers.values(), peak_worker]:
            w.close()
    out = {
        "machine": machine_description(),
        "shape": args.shape,
        "threads": args.threads,
        "host_allocator": args.host_allocator,
        "matmul_peak": peak,
        **results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if "trl" in results and "ours" in results:
        print(
            f"ratio_vs_trl={results['ours']['tokens_per_s'] / results['trl']['tokens_per_s']:.3f}"
        )


if __name__ == "__main__":
    main()
