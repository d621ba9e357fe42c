"""Typed run configuration: RunConfig and its per-concern sub-configs, with defaults and docs.

Every field is typed, defaulted and documented exactly once (the ``doc`` metadata of its
``dataclasses.field``); docs/configuration.md is generated from these. YAML files only supply
values: ``RunConfig.from_dict`` type-checks them (unknown keys and wrong types are errors that name
the key and suggest the nearest valid one) and ``validate`` checks cross-field constraints, all in
this one place, raising ValueError that names the bad value.

Sequences are stored as tuples and nested mappings as small dataclasses so that every section
except ``model.overrides`` is hashable (usable as a static argument of ``jax.jit``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from almol_jax.model.config import REMAT_NAMES
from almol_jax.model.kernels import ATTENTION_IMPLS, KERNEL_SETS

DIRECTIONS = ("smiles2caption", "caption2smiles")
OBJECTIVES = ("cpo", "sft", "dpo", "ipo", "simpo", "hinge")
MESH_AXES = ("data", "fsdp", "tensor")

# The Meditron L+M-24 model-card template (ALMOL.md), one string per direction; {source} is
# replaced by the SMILES (smiles2caption) or the caption (caption2smiles).
_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
MEDITRON_SMILES2CAPTION = (
    _PREAMBLE + "\n\n### Instruction:\n"
    "You are a researcher. You can come up captions based on your existing knowledge. Captions "
    "are given against the following input. You should be as detailed as possible."
    "\n\n### Input:\n"
    "Molecule: {source} \nIn that molecule, could you formulate a caption about?"
    "\n\n\n### Response:"
)
MEDITRON_CAPTION2SMILES = (
    _PREAMBLE + "\n\n### Instruction:\n"
    "You are a researcher. You can come up molecule smile strings based on your existing "
    "knowledge. Molecule smile strings are given against the following input. You should be as "
    "detailed as possible."
    "\n\n### Input:\n"
    "Caption: {source} \nIn that caption, could you generate a molecule smile string?"
    "\n\n\n### Response:"
)
SOURCE_PLACEHOLDER = "{source}"


def _frozen(value: Any) -> Any:
    """Lists (nested too) as tuples, so defaults equal what the parser makes of the same YAML."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with a default (lists become tuples) and its one-line documentation."""
    if isinstance(default, dict):
        return field(default_factory=lambda d=default: dict(d), metadata={"doc": doc})
    return field(default=_frozen(default), metadata={"doc": doc})


def _section(cls: type, doc: str) -> Any:
    """A sub-config field defaulting to ``cls()``."""
    return field(default_factory=cls, metadata={"doc": doc})


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
        " else portable.",
    )
    attention_impl: Literal[ATTENTION_IMPLS] = _f(
        "xla", "The portable kernels' attention: jax.nn.dot_product_attention's implementation."
    )
    remat: Literal[REMAT_NAMES] = _f(
        "none", "Rematerialisation per block: none, full, dots (= dots_saveable)."
    )


@dataclass(frozen=True)
class LoraSection:
    """LoRA adapters (PEFT conventions); the base stays frozen when enabled."""

    enabled: bool = _f(False, "Train LoRA adapters instead of all parameters.")
    r: int = _f(64, "Adapter rank.")
    alpha: float = _f(16.0, "Adapter scale numerator: scale = alpha / r (alpha / sqrt(r) rsLoRA).")
    dropout: float = _f(0.0, "Dropout on the adapter input during training.")
    target_modules: str | tuple[str, ...] = _f(
        "all-linear", '"all-linear" (q,k,v,o,gate,up,down; not lm_head) or PEFT module names.'
    )
    use_rslora: bool = _f(False, "Rank-stabilised scale alpha / sqrt(r).")


@dataclass(frozen=True)
class ObjectiveSection:
    """The training objective (TRL CPOTrainer / DPOTrainer conventions)."""

    name: Literal["cpo", "sft", "dpo", "ipo", "simpo", "hinge"] = _f(
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
    columns: ColumnsSection = _section(ColumnsSection, "Column names.")
    directions: Literal["both"] | tuple[Literal["smiles2caption", "caption2smiles"], ...] = _f(
        "both", "Directions kept (pair rows are expanded to each)."
    )
    templates: TemplatesSection = _section(TemplatesSection, "Prompt templates per direction.")
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
    prefix_sharing: Literal["auto", "on", "off"] = _f(
        "off", "Prompt once per pair in one row (issue 8); auto = on for pair-scoring objectives."
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
        "builtin: the data.builtin dataset's own tokenizer (resolved to hf by almol_jax.pipeline).",
    )
    path: str | None = _f(None, "Dir or hub id (hf), .model file (sentencepiece); None for byte.")
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
        [
            ["batch", ["data", "fsdp"]],
            ["vocab", "tensor"],
            ["embed", "fsdp"],
            ["heads", "tensor"],
            ["kv_heads", "tensor"],
            ["mlp", "tensor"],
            ["norm", None],
            ["lora_rank", None],
            ["length", None],
        ],
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


@dataclass(frozen=True)
class EvalSection:
    """Evaluation with the community scorers."""

    directions: Literal["both"] | tuple[Literal["smiles2caption", "caption2smiles"], ...] = _f(
        "both", "Directions to evaluate."
    )
    limit: int | None = _f(None, "Evaluate only the first N test rows per direction.")
    fingerprint_averaging: Literal["molt5", "lpm24", "both"] = _f(
        "both", "molt5: mean over valid outputs; lpm24: invalid counts 0, mean over all."
    )
    at_end: bool = _f(False, "Run the evaluation on data.test_files after training.")
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
        "almol_jax/host_allocator.py).",
    )
    cpu_devices: int = _f(
        1,
        "XLA CPU devices in the process (0 = one per usable CPU). More than one: eval.py "
        "--checkpoint decodes data-parallel across them on the CPU backend, weights replicated "
        "(almol_jax/cpu_devices.py); training shards over them as mesh says (slower on the CPU).",
    )


@dataclass(frozen=True)
class RunConfig:
    """One training/evaluation run."""

    seed: int = _f(0, "The one seed, split by purpose (params, lora, data, dropout, sampling).")
    output_dir: str = _f("runs/default", "Run directory (config.yaml, metrics, checkpoints).")
    model: ModelSection = _section(ModelSection, "The network.")
    lora: LoraSection = _section(LoraSection, "LoRA adapters.")
    objective: ObjectiveSection = _section(ObjectiveSection, "Training objective.")
    data: DataSection = _section(DataSection, "Data files, prompts, batching.")
    tokenizer: TokenizerSection = _section(TokenizerSection, "Tokenizer.")
    train: TrainSection = _section(TrainSection, "Optimisation.")
    mesh: MeshSection = _section(MeshSection, "Device mesh.")
    checkpoint: CheckpointSection = _section(CheckpointSection, "Checkpoints.")
    eval: EvalSection = _section(EvalSection, "Evaluation.")
    generation: GenerationSection = _section(GenerationSection, "Decoding.")
    export: ExportSection = _section(ExportSection, "HF export.")
    logging: LoggingSection = _section(LoggingSection, "Metric sinks.")
    runtime: RuntimeSection = _section(
        RuntimeSection, "Process settings (host memory, CPU devices)."
    )

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> RunConfig:
        """Builds and validates a RunConfig from plain (YAML-loaded) data; unset keys keep defaults."""
        cfg = _build(cls, raw or {}, "")
        validate(cfg)
        return cfg


# --------------------------------------------------------------------------- typed parsing


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(name: str, candidates: list[str], prefix: str = "") -> str:
    """'; did you mean <nearest>?' (difflib), or the list of valid keys when nothing is close."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; valid keys: {sorted(prefix + c for c in candidates)}"


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "<root>"
    if not isinstance(raw, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {raw!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ValueError(
                f"unknown config key {prefix + str(key)!r}" + _suggest(str(key), names, prefix)
            )
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    """Readable type: int, str | None, "cpo" | "sft", list[str] (tuples shown as YAML lists)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(f'"{a}"' for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple:
        inner = _type_name(args[0]) if args[-1] is Ellipsis else ", ".join(map(_type_name, args))
        return f"list[{inner}]"
    if origin is dict:
        return f"mapping[{_type_name(args[0])}, {_type_name(args[1])}]"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against type ``tp`` (converting lists to tuples, ints to floats)."""
    if dataclasses.is_dataclass(tp):  # a section; an empty YAML section (null) keeps defaults
        return _build(tp, {} if value is None else value, key + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ValueError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin in (typing.Union, types.UnionType):
        # Try None first, then scalars, then containers, so "both" never becomes ("b","o",...).
        for arg in sorted(args, key=lambda a: typing.get_origin(a) is tuple):
            try:
                return _coerce(value, arg, key)
            except ValueError:
                continue
        raise bad
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        raise ValueError(
            f"config key {key!r}: {value!r} is not one of {list(args)}"
            + (_suggest(value, [str(a) for a in args]) if isinstance(value, str) else "")
        )
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad
        return tuple(
            _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"config key {key!r}: unsupported annotation {tp!r}")


# --------------------------------------------------------------------------- validation


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate(cfg: RunConfig) -> None:
    """Cross-field checks of a RunConfig; raises ValueError naming the bad value."""
    m, lo, ob, d, t, ms = cfg.model, cfg.lora, cfg.objective, cfg.data, cfg.train, cfg.mesh
    _check(m.vocab_multiple >= 1, f"model.vocab_multiple={m.vocab_multiple} must be >= 1")
    _check(lo.r >= 1, f"lora.r={lo.r} must be >= 1")
    _check(lo.alpha > 0, f"lora.alpha={lo.alpha} must be > 0")
    _check(0.0 <= lo.dropout < 1.0, f"lora.dropout={lo.dropout} must be in [0, 1)")
    _check(ob.beta > 0, f"objective.beta={ob.beta} must be > 0")
    _check(ob.cpo_alpha >= 0, f"objective.cpo_alpha={ob.cpo_alpha} must be >= 0")
    _check(
        0.0 <= ob.label_smoothing < 0.5,
        f"objective.label_smoothing={ob.label_smoothing} must be in [0, 0.5)",
    )
    if ob.name == "dpo":
        _check(lo.enabled, "objective.name='dpo' needs lora.enabled=true (ref = adapters off)")
    _check(
        cfg.runtime.cpu_devices >= 0,
        f"runtime.cpu_devices={cfg.runtime.cpu_devices} must be >= 0 (0 = one per CPU)",
    )
    _check(d.max_length >= 4, f"data.max_length={d.max_length} must be >= 4")
    _check(
        1 <= d.max_prompt_length < d.max_length,
        f"data.max_prompt_length={d.max_prompt_length} must be in [1, data.max_length={d.max_length})",
    )
    _check(
        list(d.buckets) == sorted(set(d.buckets)),
        f"data.buckets={list(d.buckets)} must be strictly ascending",
    )
    for b in d.buckets:
        _check(
            2 <= b <= d.max_length,
            f"data.buckets entry {b} must be in [2, data.max_length={d.max_length}]",
        )
    if d.directions != "both":
        _check(len(d.directions) > 0, "data.directions=[] selects no direction")
    for direction in DIRECTIONS:
        tpl = getattr(d.templates, direction)
        _check(
            tpl.count(SOURCE_PLACEHOLDER) == 1,
            f"data.templates.{direction}={tpl!r} must contain {SOURCE_PLACEHOLDER} exactly once",
        )
    _check(
        d.max_examples is None or d.max_examples >= 1,
        f"data.max_examples={d.max_examples} must be >= 1",
    )
    _check(d.pack_max_pairs >= 1, f"data.pack_max_pairs={d.pack_max_pairs} must be >= 1")
    _check(
        d.pack_length is None or d.pack_length >= d.max_length,
        f"data.pack_length={d.pack_length} must be >= data.max_length={d.max_length} "
        "(a row must hold the longest example)",
    )
    if d.builtin is None:
        pass
    else:
        _check(d.builtin == "rdkit_nci", f"data.builtin={d.builtin!r} must be None or 'rdkit_nci'")
    tk = cfg.tokenizer
    if tk.kind in ("hf", "sentencepiece"):
        _check(tk.path is not None, f"tokenizer.kind={tk.kind!r} needs tokenizer.path")
    if tk.kind == "builtin":
        _check(
            d.builtin is not None, "tokenizer.kind='builtin' needs data.builtin (e.g. rdkit_nci)"
        )
        _check(tk.path is None, f"tokenizer.kind='builtin' takes no path, got {tk.path!r}")
    _check(t.steps >= 0, f"train.steps={t.steps} must be >= 0")
    _check(t.steps > 0 or t.epochs > 0, f"train.epochs={t.epochs} must be > 0 when train.steps=0")
    _check(t.micro_batch_size >= 1, f"train.micro_batch_size={t.micro_batch_size} must be >= 1")
    _check(t.grad_accum >= 1, f"train.grad_accum={t.grad_accum} must be >= 1")
    _check(t.learning_rate > 0, f"train.learning_rate={t.learning_rate} must be > 0")
    _check(0.0 <= t.warmup_ratio <= 1.0, f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1]")
    _check(t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} must be >= 0")
    _check(0 <= t.adam_b1 < 1, f"train.adam_b1={t.adam_b1} must be in [0, 1)")
    _check(0 <= t.adam_b2 < 1, f"train.adam_b2={t.adam_b2} must be in [0, 1)")
    _check(t.adam_eps > 0, f"train.adam_eps={t.adam_eps} must be > 0")
    _check(t.max_grad_norm >= 0, f"train.max_grad_norm={t.max_grad_norm} must be >= 0")
    for name in ("eval_every", "eval_batches"):
        _check(getattr(t, name) >= 0, f"train.{name}={getattr(t, name)} must be >= 0")
    _check(t.log_every >= 1, f"train.log_every={t.log_every} must be >= 1")
    sizes = {"data": ms.data, "fsdp": ms.fsdp, "tensor": ms.tensor}
    for name, size in sizes.items():
        _check(size == -1 or size >= 1, f"mesh.{name}={size} must be -1 (fill) or >= 1")
    _check(
        sum(s == -1 for s in sizes.values()) <= 1, f"at most one mesh axis may be -1, got {sizes}"
    )
    for logical, axes in ms.rules:
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            _check(axis in MESH_AXES, f"mesh.rules maps {logical!r} to unknown mesh axis {axis!r}")
    if ms.num_processes is not None:
        _check(ms.num_processes >= 1, f"mesh.num_processes={ms.num_processes} must be >= 1")
        if ms.process_id is not None:
            _check(
                0 <= ms.process_id < ms.num_processes,
                f"mesh.process_id={ms.process_id} must be in [0, {ms.num_processes})",
            )
    c = cfg.checkpoint
    _check(c.every >= 0, f"checkpoint.every={c.every} must be >= 0")
    _check(c.keep_last >= 1, f"checkpoint.keep_last={c.keep_last} must be >= 1")
    g = cfg.generation
    _check(g.max_new_tokens >= 1, f"generation.max_new_tokens={g.max_new_tokens} must be >= 1")
    _check(g.batch_size >= 1, f"generation.batch_size={g.batch_size} must be >= 1")
    _check(g.temperature > 0, f"generation.temperature={g.temperature} must be > 0")
    _check(g.top_k >= 0, f"generation.top_k={g.top_k} must be >= 0")
    _check(0 < g.top_p <= 1, f"generation.top_p={g.top_p} must be in (0, 1]")
    _check(g.num_beams >= 1, f"generation.num_beams={g.num_beams} must be >= 1")
    _check(
        cfg.eval.limit is None or cfg.eval.limit >= 1, f"eval.limit={cfg.eval.limit} must be >= 1"
    )
    _check(
        not cfg.eval.withheld_combos or bool(cfg.eval.nested_props),
        f"eval.withheld_combos={cfg.eval.withheld_combos!r} needs eval.nested_props too",
    )


# --------------------------------------------------------------------------- helpers


def directions_of(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """Expands a ``directions`` field ("both" or a tuple) into a tuple of direction names."""
    return DIRECTIONS if value == "both" else tuple(value)


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML/JSON-able data (tuples become lists) for a config or any of its sections."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def field_docs(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every leaf field, in declaration order."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(field_docs(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((prefix + f.name, _type_name(tp), config_to_dict(default), f.metadata["doc"]))
    return rows


def reference_markdown() -> str:
    """A markdown table of every field (key, type, default, doc), grouped by section."""
    out: list[str] = []
    section = None
    for key, tp, default, doc in field_docs():
        head = key.split(".")[0] if "." in key else "(top level)"
        if head != section:
            section = head
            out += [
                "",
                f"### {section}",
                "",
                "| key | type | default | meaning |",
                "|---|---|---|---|",
            ]
        shown = default
        if isinstance(default, str) and "\n" in default:
            shown = "Meditron L+M-24 template (see text)"
        cell = str(shown).replace("|", "\\|")
        out.append(
            f"| `{key}` | {tp.replace('|', '&#124;')} | `{cell}` | {doc.replace('|', '&#124;')} |"
        )
    return "\n".join(out).lstrip("\n") + "\n"


REFERENCE_MARKER = "<!-- reference: generated by `python -m almol_jax.config.schema` -->\n"


def write_reference(doc_path: str) -> None:
    """Rewrites everything after REFERENCE_MARKER in ``doc_path`` with ``reference_markdown()``."""
    with open(doc_path, encoding="utf-8") as fh:
        text = fh.read()
    if REFERENCE_MARKER not in text:
        raise ValueError(f"{doc_path!r} lacks the marker line {REFERENCE_MARKER.strip()!r}")
    head = text[: text.index(REFERENCE_MARKER) + len(REFERENCE_MARKER)]
    with open(doc_path, "w", encoding="utf-8") as fh:
        fh.write(head + "\n" + reference_markdown())


if __name__ == "__main__":
    import pathlib

    write_reference(str(pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.md"))
