"""Shared pieces of the benchmark scripts: named shapes, FLOP counting, timing and memory.

Every bench script (train_step.py, matmul_peak.py, generate.py) takes its sizes from `SHAPES` by
name so that a row in docs/benchmarks.md names one reproducible shape (aot_compile.py builds its
shape from the run config).

FLOP convention (documented once here, used for every "model FLOPs" figure):
- matmul FLOPs only (2 per multiply-add); norms, softmax, RoPE and elementwise work are not
  counted; recomputation by remat is not counted (the usual MFU convention);
- attention counts only the (query, key) pairs a query may attend (causal, same segment,
  prefix rule), i.e. the useful work, not a dense T x S square;
- forward: every projection, LoRA A/B products, attention QK^T and PV, and the lm_head at the
  positions where logits are computed (all positions for TRL, response positions for ours); ours
  runs its last layer's queries, attention output and MLP at the label positions only, and is
  counted so;
- backward with a frozen base (LoRA): input gradients through every frozen matmul (1x forward)
  except the first layer's input-side projections (their input, the embedding, needs no
  gradient), attention backward (2x forward: dQ, dK, dV, dP), LoRA weight and input
  gradients (2x the LoRA forward); no weight gradients of frozen kernels;
- full fine-tuning (lora_r == 0) adds weight gradients (1x forward of each kernel);
- merged LoRA (ours, cpu/merged_lora.py): the forward runs x @ (W + s A B), so its LoRA
  cost is the merge (I x R x O, counted again in the backward, which recomputes it) instead
  of the per-row A and B products; the backward's per-row LoRA work is the same 2x.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys


@dataclasses.dataclass(frozen=True)
class BenchShape:
    """One benchmark shape: model sizes, LoRA, and the preference batch."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    pairs: int  # preference pairs per step (B)
    prompt_len: int  # prompt tokens incl. BOS
    chosen_len: int  # chosen tokens incl. EOS
    rejected_len: int  # rejected tokens incl. EOS
    lora_r: int = 16
    lora_alpha: float = 32.0
    dtype: str = "float32"
    tie_word_embeddings: bool = False
    beta: float = 0.1
    cpo_alpha: float = 1.0
    learning_rate: float = 1e-4

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def trl_tokens_per_step(self) -> int:
        """Tokens per step counted the way TRL's concatenated forward sees them (prompt twice)."""
        return self.pairs * (2 * self.prompt_len + self.chosen_len + self.rejected_len)


SHAPES: dict[str, BenchShape] = {
    # The reference shape of issue 8 (TRL CPOTrainer measured at ~0.49 s/step here).
    "cpo-small": BenchShape("cpo-small", 2048, 256, 688, 4, 4, 4, 8, 128, 64, 64),
    # The almol-mini experiment's LoRA arms (configs/experiments/almol_mini.yaml): r 16 / alpha 16.
    "almol-mini": BenchShape("almol-mini", 1024, 128, 344, 4, 4, 4, 16, 48, 64, 64, 16, 16.0),
    # The peak-fraction target shape: d 512, 8 layers.
    "cpo-d512": BenchShape("cpo-d512", 2048, 512, 1376, 8, 8, 8, 8, 128, 64, 64),
    # A LLaMA-sized vocabulary with long sequences: exercises response-only, vocab-chunked logits.
    "cpo-32k": BenchShape("cpo-32k", 32000, 256, 688, 2, 4, 4, 4, 512, 256, 256),
    # A tiny shape for smoke tests of the bench scripts themselves.
    "tiny": BenchShape("tiny", 256, 64, 128, 2, 4, 2, 2, 16, 8, 8, lora_r=4, lora_alpha=8.0),
}


def get_shape(name: str) -> BenchShape:
    """Looks a shape up by name; the error lists the known names."""
    if name not in SHAPES:
        raise ValueError(f"unknown bench shape {name!r}; known: {sorted(SHAPES)}")
    return SHAPES[name]


def _linear_dims(s: BenchShape) -> list[tuple[int, int]]:
    """(in, out) of the seven linear projections of one decoder layer."""
    d, h = s.hidden_size, s.head_dim
    nh, kh = s.num_heads * h, s.num_kv_heads * h
    f = s.intermediate_size
    return [(d, nh), (d, kh), (d, kh), (nh, d), (d, f), (d, f), (f, d)]


def _causal_pairs(n: int) -> int:
    """Number of (query, key) pairs with key <= query in a run of n tokens."""
    return n * (n + 1) // 2


LAYOUTS = ("plain", "unshared", "prefix_shared")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown {layout=}; expected one of {LAYOUTS}")


def attended_pairs(s: BenchShape, layout: str) -> int:
    """(query, key) pairs attended per step for a layout: 'plain' (TRL: two rows per pair),
    'unshared' (ours: one row, prompt + chosen and prompt + rejected as two groups: the same
    pairs) or 'prefix_shared' (ours: one row, the prompt once)."""
    _check_layout(layout)
    p, c, r = s.prompt_len, s.chosen_len, s.rejected_len
    if layout == "prefix_shared":
        # prompt causally; each response token sees the whole prompt and its own earlier tokens
        return s.pairs * (_causal_pairs(p) + c * p + _causal_pairs(c) + r * p + _causal_pairs(r))
    return s.pairs * (_causal_pairs(p + c) + _causal_pairs(p + r))


def processed_tokens(s: BenchShape, layout: str) -> int:
    """Tokens the model runs per step: the prompt twice (plain, unshared) or once (prefix_shared)."""
    _check_layout(layout)
    if layout == "prefix_shared":
        return s.pairs * (s.prompt_len + s.chosen_len + s.rejected_len)
    return s.trl_tokens_per_step


def label_query_pairs(s: BenchShape) -> int:
    """(query, key) pairs of the label positions only (ours, either layout): the hidden state
    before each response token, i.e. the prompt's last token and all but the last token of the
    response, each seeing the prompt and its response so far."""
    p, c, r = s.prompt_len, s.chosen_len, s.rejected_len
    return s.pairs * (c * p + c * (c - 1) // 2 + r * p + r * (r - 1) // 2)


def train_step_flops(
    s: BenchShape,
    layout: str,
    *,
    response_only_logits: bool,
    label_queries_last: bool = False,
    merged_lora: bool = False,
) -> dict[str, int]:
    """Model matmul FLOPs of one CPO train step (see the module docstring for the convention).

    Returns {"forward", "backward", "total"}. `response_only_logits` counts the lm_head only at
    the label positions (chosen + rejected tokens) instead of at every processed position;
    `label_queries_last` (ours) counts the last layer's q/o/MLP projections and
    its attention at the label positions only (k and v still at every position);
    `merged_lora` (ours) counts LoRA as cpu/merged_lora.py computes it (module docstring).
    """
    tokens = processed_tokens(s, layout)
    labels = s.pairs * (s.chosen_len + s.rejected_len)
    lin = _linear_dims(s)
    names = ("q", "k", "v", "o", "gate", "up", "down")
    in_side = ("q", "k", "v", "gate", "up")  # layer 0's need no input gradient (embedding input)
    r = s.lora_r

    def layer(index: int) -> tuple[int, int]:
        last = label_queries_last and index == s.num_layers - 1
        fwd = bwd = 0
        for (i, o), name in zip(lin, names, strict=True):
            rows = labels if last and name not in ("k", "v") else tokens
            base, lora = 2 * i * o * rows, (2 * (i * r + r * o) * rows if r else 0)
            merge = 2 * i * r * o if merged_lora and r else 0
            fwd += base + (merge if merged_lora else lora)
            bwd += (0 if index == 0 and name in in_side else base) + 2 * lora + merge
            if not r:  # full fine-tuning: weight gradients of every kernel
                bwd += base
        pairs = label_query_pairs(s) if last else attended_pairs(s, layout)
        attn = 2 * 2 * s.num_heads * s.head_dim * pairs  # QK^T and PV; backward 2x
        return fwd + attn, bwd + 2 * attn

    per_layer = [layer(i) for i in range(s.num_layers)]
    logit_positions = labels if response_only_logits else tokens
    head_fwd = 2 * s.hidden_size * s.vocab_size * logit_positions
    fwd = sum(f for f, _ in per_layer) + head_fwd
    bwd = sum(b for _, b in per_layer) + head_fwd + (0 if r else head_fwd)
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_peak_bytes() -> int | None:
    """Peak device memory from JAX's memory_stats (GPU/TPU), None where unavailable (CPU)."""
    try:
        import jax

        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - any backend without stats
        return None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def machine_description() -> str:
    """One line naming the machine: CPU model and core count (lscpu), or the accelerator."""
    cpu = platform.processor() or "cpu"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(
            line.split(":", 1) for line in out.splitlines() if ":" in line and line.strip()
        )
        cpu = fields.get("Model name", cpu).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{os.cpu_count()}-core CPU ({cpu})"


def median(xs: list[float]) -> float:
    """Median of a non-empty list."""
    if not xs:
        raise ValueError("median of an empty list")
    ys = sorted(xs)
    mid = len(ys) // 2
    return ys[mid] if len(ys) % 2 else 0.5 * (ys[mid - 1] + ys[mid])


def send(msg: dict) -> None:
    """Writes one JSON message line to stdout (the worker protocol of the bench scripts)."""
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def format_row(figures: dict) -> str:
    """One human-readable line of a system's figures."""
    return (
        f"{figures['system']:>6}: {figures['s_per_step']:.4f} s/step  "
        f"{figures['tokens_per_s']:,.0f} tokens/s  "
        f"{figures['flops_per_step'] / 1e9:.2f} GFLOP/step  "
        f"{figures['flops_per_s'] / 1e9:.1f} GFLOP/s  "
        f"peak_frac={figures.get('peak_fraction', float('nan')):.3f}  "
        f"peak_mem={figures['peak_mem_bytes'] / 2**20:.0f} MiB ({figures['mem_kind']})"
    )
