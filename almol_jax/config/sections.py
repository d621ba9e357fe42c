"""The run config's sections: one frozen dataclass per concern (model, lora, objective, data, ...).

Every field is typed, defaulted and documented exactly once (``doc_field``: its ``doc`` metadata);
docs/configuration.md is generated from these (config/reference.py). The root ``RunConfig`` that
holds them is in config/run.py; the YAML parsing in config/coerce.py; cross-field checks in
config/checks.py. Facts with a home elsewhere are imported, not restated: the objective names
(train/losses.py), the directions (almol_jax/directions.py), the mesh axes' default rules
(almol_jax/sharding.py), the prompt templates (data/templates.py) and the LoRA fields (the
model's LoraConfig, which the ``lora`` section extends with its ``enabled`` switch).

Sequences are stored as tuples and nested mappings as small dataclasses so that every section
except ``model.overrides`` is hashable (usable as a static argument of ``jax.jit``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from almol_jax.data.prefix_sharing import PREFIX_SHARING_MODES
from almol_jax.data.templates import MEDITRON_CAPTION2SMILES, MEDITRON_SMILES2CAPTION
from almol_jax.directions import DIRECTIONS
from almol_jax.doc_field import doc_field as _f
from almol_jax.doc_field import section_field
from almol_jax.model.config import REMAT_NAMES
from almol_jax.model.kernels import ATTENTION_IMPLS, KERNEL_SETS
from almol_jax.model.lora_config import LoraConfig
from almol_jax.objectives import OBJECTIVES
from almol_jax.sharding import DEFAULT_RULES


@dataclass(frozen=True)
class ModelSection:
    """The network: where its weights come from and how it computes."""

    source: str | None = _f(
        None, "Hub id or local dir of a HF LLaMA-family checkpoint; None = random init from preset."
    )
    preset: str = _f("tiny", "ModelConfig preset name used when source is None (e.g. tiny).")
    overrides: dict[str, Any] = _f(
        {}, "ModelConfig fields overriding the preset/checkpoint config (e.g. vocab_size: 260)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "Compute dtype.")
    param_dtype: Literal["float32", "bfloat16", "float16"] | None = _f(
        None, "Parameter dtype of the frozen base; None = same as dtype."
    )
    vocab_multiple: int = _f(128, "Embedding/lm_head rows are padded to a multiple of this.")
    kernels: Literal[KERNEL_SETS] = _f(
        "auto",
        "Kernel table (model/kernels.py): portable = jnp / jax.nn with autodiff (any backend);"
        " cpu = the CPU wing (threaded C++ attention built on first use, merged LoRA,"
        " hand-written backward passes; float32 on the CPU backend only); auto = cpu on a"
        " one-device float32 CPU run (XLA's attention if the C++ kernel cannot be built),"
        " custom_vjp on TPU, else portable; custom_vjp = portable with ops/custom_vjp.py's"
        " hand-written backward passes (any backend; measured on TPU in docs/benchmarks.md).",
    )
    attention_impl: Literal[ATTENTION_IMPLS] = _f(
        "auto",
        "The portable kernels' attention: xla / cudnn (jax.nn.dot_product_attention), flash (the"
        " Pallas TPU kernel), auto = flash on TPU, cudnn on GPU in bf16/fp16, else xla.",
    )
    remat: Literal[REMAT_NAMES] = _f(
        "none",
        "Rematerialisation per block: none, full, dots (= dots_saveable), offload (full with each"
        " block's input kept in host memory: TPU/GPU, docs/tpu.md).",
    )


@dataclass(frozen=True)
class LoraSection(LoraConfig):
    """LoRA adapters (PEFT conventions): the model's LoraConfig plus the ``enabled`` switch."""

    enabled: bool = _f(False, "Train LoRA adapters instead of all parameters.")

    def for_model(self) -> LoraConfig | None:
        """The model's LoraConfig (these fields without the switch), or None when LoRA is off."""
        if not self.enabled:
            return None
        return LoraConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoraConfig)})


@dataclass(frozen=True)
class ObjectiveSection:
    """The training objective (TRL CPOTrainer / DPOTrainer conventions)."""

    name: Literal[OBJECTIVES] = _f(
        "cpo", "cpo (sigmoid), hinge, ipo, simpo (reference-free), dpo (adapters-off ref), sft."
    )
    beta: float = _f(0.1, "Inverse temperature of the preference term; rewards = beta * logp.")
    cpo_alpha: float = _f(1.0, "Weight of the NLL term on chosen responses (0 disables it).")
    label_smoothing: float = _f(
        0.0, "Conservative label smoothing of the sigmoid losses, in [0, 0.5)."
    )
    simpo_gamma: float = _f(0.5, "SimPO target reward margin gamma: -log sigmoid(beta d - gamma).")


@dataclass(frozen=True)
class ColumnsSection:
    """Column names in the data files."""

    source: str = _f("source", "Preference rows: the prompt source (SMILES or caption).")
    chosen: str = _f("chosen", "Preference rows: the preferred (gold) response.")
    rejected: str = _f("rejected", "Preference rows: the dis-preferred response.")
    direction: str = _f("direction", "Preference rows: smiles2caption or caption2smiles.")
    molecule: str = _f("SMILES", "Pair rows: the molecule (ChEBI-20 header).")
    caption: str = _f("description", "Pair rows: the caption (ChEBI-20 header).")


@dataclass(frozen=True)
class TemplatesSection:
    """Prompt templates per direction; {source} marks where the source text goes."""

    smiles2caption: str = _f(MEDITRON_SMILES2CAPTION, "Prompt for molecule captioning.")
    caption2smiles: str = _f(MEDITRON_CAPTION2SMILES, "Prompt for text-based molecule generation.")


@dataclass(frozen=True)
class DataSection:
    """Where the triplets come from and how they become static-shape batches."""

    train_files: tuple[str, ...] = _f(
        [], "Training files (csv/tsv/jsonl/json/parquet/txt) or hub datasets as hf:NAME[:SPLIT]."
    )
    validation_files: tuple[str, ...] = _f([], "Validation files (same forms).")
    test_files: tuple[str, ...] = _f([], "Test files for evaluation (pair or scorer-TSV rows).")
    format: Literal["auto", "preference", "pairs", "scorer_tsv"] = _f(
        "auto", "Row format; auto: scorer_tsv by header, preference if chosen/rejected, else pairs."
    )
    columns: ColumnsSection = section_field(ColumnsSection, "Column names.")
    directions: Literal["both"] | tuple[Literal[DIRECTIONS], ...] = _f(
        "both", "Directions kept (pair rows are expanded to each)."
    )
    templates: TemplatesSection | Literal["chat"] = section_field(
        TemplatesSection,
        'Prompt templates per direction, or "chat": the tokenizer\'s chat template around '
        "a short instruction (data/templates.py), as TRL does for conversational rows.",
    )
    max_length: int = _f(512, "Maximum tokens of prompt + response (incl. BOS and EOS).")
    max_prompt_length: int = _f(
        256, "Maximum prompt tokens (incl. BOS); longer prompts keep their end."
    )
    buckets: tuple[int, ...] = _f(
        [], "Padded sequence lengths (ascending, <= max_length); max_length is always added."
    )
    shuffle: bool = _f(True, "Shuffle training rows each epoch (seeded by seed and epoch).")
    drop_last: bool = _f(False, "Drop the last incomplete global batch instead of padding it.")
    max_examples: int | None = _f(
        None, "Keep only the first N examples of each split (after direction filtering)."
    )
    prefix_sharing: Literal[PREFIX_SHARING_MODES] = _f(
        "auto",
        "A pair's prompt once in its row, both responses after it (on), or prompt + chosen and "
        "prompt + rejected as two groups of the row (off); auto = on for pair-scoring objectives.",
    )
    packing: Literal["on", "off"] = _f(
        "off",
        "Pack each step's pairs several to a row (segment ids, positions restarting; implies "
        "prefix sharing where prompts allow); rows of pack_length tokens.",
    )
    pack_length: int | None = _f(
        None, "Tokens per packed row (data.packing on); None = 2 x max_length."
    )
    pack_max_pairs: int = _f(8, "Most pairs (SFT: examples) in one packed row.")
    builtin: str | None = _f(None, 'Embedded dataset instead of files: None or "rdkit_nci".')


@dataclass(frozen=True)
class TokenizerSection:
    """Which tokenizer turns text into ids."""

    kind: Literal["hf", "byte", "sentencepiece", "builtin"] = _f(
        "byte",
        "hf: AutoTokenizer dir/hub id; byte: built-in byte-level; sentencepiece: a .model; "
        "builtin: the data.builtin dataset's own tokenizer (resolved to hf by almol_jax.after_training).",
    )
    path: str | None = _f(
        None,
        "Dir or hub id (hf), .model file (sentencepiece); for hf, None = model.source's own "
        "tokenizer; None for byte.",
    )
    add_bos: bool = _f(True, "Prepend the BOS token to every prompt (LLaMA convention).")


@dataclass(frozen=True)
class TrainSection:
    """Optimisation schedule (AdamW + clipping, TRL defaults of the published recipe)."""

    steps: int = _f(0, "Optimizer steps; 0 = derive from epochs.")
    epochs: float = _f(1.0, "Epochs over the training set when steps is 0.")
    micro_batch_size: int = _f(1, "Pairs per micro-batch (global, all hosts).")
    grad_accum: int = _f(1, "Micro-batches accumulated per optimizer step.")
    learning_rate: float = _f(5e-5, "Peak learning rate.")
    schedule: Literal["linear", "cosine", "constant"] = _f("linear", "Decay after warm-up.")
    warmup_ratio: float = _f(0.1, "Share of steps spent warming up linearly from 0.")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay.")
    adam_b1: float = _f(0.9, "AdamW beta1.")
    adam_b2: float = _f(0.999, "AdamW beta2.")
    adam_eps: float = _f(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _f(1.0, "Global gradient-norm clip; 0 disables clipping.")
    eval_every: int = _f(0, "Validate every N steps; 0 = once per epoch and at the end.")
    log_every: int = _f(10, "Log training metrics every N steps.")
    eval_batches: int = _f(0, "Validation batches per evaluation; 0 = the whole validation set.")


@dataclass(frozen=True)
class MeshSection:
    """Device mesh and multi-host setup."""

    data: int = _f(1, "Data-parallel axis size; -1 = fill with the remaining devices.")
    fsdp: int = _f(-1, "Fully-sharded data-parallel axis size; -1 = fill.")
    tensor: int = _f(1, "Tensor-parallel axis size; -1 = fill.")
    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = _f(
        DEFAULT_RULES,
        "Logical axis -> mesh axis (or list of axes, or null = replicated).",
    )
    distributed: Literal["auto", "on", "off"] = _f(
        "auto", "jax.distributed.initialize: auto = when the environment says multi-host."
    )
    coordinator_address: str | None = _f(None, "host:port of process 0 (on / explicit setups).")
    num_processes: int | None = _f(None, "Number of processes (None = from the environment).")
    process_id: int | None = _f(None, "This process's index (None = from the environment).")


@dataclass(frozen=True)
class CheckpointSection:
    """Orbax checkpoints under <output_dir>/checkpoints/."""

    every: int = _f(0, "Save every N steps; 0 = at each validation and at the end.")
    keep_last: int = _f(2, "Keep the N most recent checkpoints.")
    keep_best: bool = _f(True, "Also keep the checkpoint with the lowest validation loss.")
    async_save: bool = _f(True, "Save in the background while training continues.")
    resume: bool = _f(True, "Resume from the latest checkpoint in output_dir when present.")


@dataclass(frozen=True)
class GenerationSection:
    """Decoding for evaluation and generation (paper: greedy, 300 new tokens)."""

    max_new_tokens: int = _f(300, "Maximum generated tokens per prompt (stops at EOS).")
    batch_size: int = _f(8, "Prompts decoded together.")
    do_sample: bool = _f(False, "Sample instead of greedy/beam decoding.")
    temperature: float = _f(1.0, "Sampling temperature.")
    top_k: int = _f(0, "Sample from the k most likely tokens; 0 = no limit.")
    top_p: float = _f(1.0, "Nucleus sampling mass; 1 = no limit.")
    num_beams: int = _f(1, "Beam width; 1 = greedy.")
    smiles_grammar: Literal["on", "off"] = _f(
        "off",
        "caption2smiles only: mask every token that would break the SMILES grammar, so each output "
        "parses (docs/generation.md); off = the paper's unconstrained decoding.",
    )
    smiles_rdkit_check: Literal["on", "off"] = _f(
        "on",
        "With smiles_grammar on and num_beams > 1: keep each row's best-ranked finished beam whose "
        "SMILES RDKit sanitises, else the best beam (docs/generation.md); off = the best beam.",
    )


@dataclass(frozen=True)
class EvalSection:
    """Evaluation with the community scorers."""

    directions: Literal["both"] | tuple[Literal[DIRECTIONS], ...] = _f(
        "both", "Directions to evaluate."
    )
    limit: int | None = _f(None, "Evaluate only the first N test rows per direction.")
    fingerprint_averaging: Literal["molt5", "lpm24", "both"] = _f(
        "both", "molt5: mean over valid outputs; lpm24: invalid counts 0, mean over all."
    )
    at_end: bool = _f(False, "Run the evaluation on data.test_files after training.")
    at_end_smiles_grammar: bool = _f(
        False,
        "With at_end and generation.smiles_grammar off: evaluate caption2smiles of the best "
        "checkpoint a second time with the grammar on (a column of the after-training table).",
    )
    scibert_vocab: str | None = _f(
        None, "SciBERT vocab.txt (or its directory) for BLEU/METEOR; None = looked up."
    )
    wordnet_dir: str | None = _f(
        None, "NLTK_DATA root or WordNet dict directory for METEOR; None = looked up."
    )
    nested_props: str | None = _f(
        None, "L+M-24 nested_props.json: enables the property metrics; None = off."
    )
    withheld_combos: str | None = _f(
        None, "L+M-24 withheld combinations file (needs nested_props); None = off."
    )
    skip_unavailable: bool = _f(
        False, "A missing resource skips its metrics (recorded in the report) instead of failing."
    )


@dataclass(frozen=True)
class ExportSection:
    """Hugging Face export of the trained model."""

    at_end: bool = _f(False, "Export after training.")
    format: Literal["merged", "peft"] = _f(
        "merged", "merged: LoRA folded into weights; peft: adapters."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _f("bfloat16", "Exported weight dtype.")
    dir: str | None = _f(None, "Export directory; None = <output_dir>/export.")
    max_shard_size: str = _f("5GB", "Largest safetensors shard (merged format), e.g. 5GB, 500MB.")


@dataclass(frozen=True)
class LoggingSection:
    """Where metrics go besides metrics.jsonl."""

    tensorboard: bool = _f(True, "Write TensorBoard events to <output_dir>/tb.")
    wandb_project: str | None = _f(None, "Weights & Biases project; None = off.")


@dataclass(frozen=True)
class RuntimeSection:
    """Process settings applied by the entry points (train.py, eval.py) before JAX starts."""

    host_allocator: Literal["auto", "keep", "system"] = _f(
        "auto",
        "glibc malloc: keep = reuse freed host buffers (no per-step page faults on the CPU "
        "backend; the process keeps its peak memory), system = leave malloc alone, auto = keep "
        "for training on the CPU backend (not for eval.py: it slows compiles; "
        "almol_jax/cpu/host_allocator.py).",
    )
    cpu_devices: int = _f(
        1,
        "XLA CPU devices in the process (0 = one per usable CPU). More than one: eval.py "
        "--checkpoint decodes data-parallel across them on the CPU backend, weights replicated "
        "(almol_jax/cpu/devices.py); training shards over them as mesh says (slower on the CPU).",
    )
