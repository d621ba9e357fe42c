"""Cross-field checks of the run config, one small function per section.

Types and allowed names are checked while parsing (config/coerce.py), and the lora section checks
its own fields (LoraConfig.__post_init__); what remains are ranges and relations between fields,
each a ConfigError (a ValueError) naming the key and the bad value. ``validate`` in config/run.py runs them all
(this module is not called ``validate`` so that it does not shadow that function in the package).
"""

from __future__ import annotations

from almol_jax.config.sections import (
    CheckpointSection,
    DataSection,
    EvalSection,
    GenerationSection,
    LoraSection,
    MeshSection,
    ModelSection,
    ObjectiveSection,
    RuntimeSection,
    TokenizerSection,
    TrainSection,
)
from almol_jax.data.templates import SOURCE_PLACEHOLDER
from almol_jax.directions import DIRECTIONS
from almol_jax.errors import ConfigError
from almol_jax.sharding import MESH_AXES


def check(ok: bool, message: str) -> None:
    """ConfigError(message) unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def check_model(m: ModelSection) -> None:
    check(m.vocab_multiple >= 1, f"model.vocab_multiple={m.vocab_multiple} must be >= 1")


def check_objective(ob: ObjectiveSection, lora: LoraSection) -> None:
    check(ob.beta > 0, f"objective.beta={ob.beta} must be > 0")
    check(ob.cpo_alpha >= 0, f"objective.cpo_alpha={ob.cpo_alpha} must be >= 0")
    check(
        0.0 <= ob.label_smoothing < 0.5,
        f"objective.label_smoothing={ob.label_smoothing} must be in [0, 0.5)",
    )
    if ob.name == "dpo":
        check(lora.enabled, "objective.name='dpo' needs lora.enabled=true (ref = adapters off)")


def check_runtime(rt: RuntimeSection) -> None:
    check(
        rt.cpu_devices >= 0,
        f"runtime.cpu_devices={rt.cpu_devices} must be >= 0 (0 = one per CPU)",
    )


def check_data(d: DataSection) -> None:
    check(d.max_length >= 4, f"data.max_length={d.max_length} must be >= 4")
    check(
        1 <= d.max_prompt_length < d.max_length,
        f"data.max_prompt_length={d.max_prompt_length} must be in [1, data.max_length={d.max_length})",
    )
    check(
        list(d.buckets) == sorted(set(d.buckets)),
        f"data.buckets={list(d.buckets)} must be strictly ascending",
    )
    for b in d.buckets:
        check(
            2 <= b <= d.max_length,
            f"data.buckets entry {b} must be in [2, data.max_length={d.max_length}]",
        )
    if d.directions != "both":
        check(len(d.directions) > 0, "data.directions=[] selects no direction")
    for direction in () if d.templates == "chat" else DIRECTIONS:
        tpl = getattr(d.templates, direction)
        check(
            tpl.count(SOURCE_PLACEHOLDER) == 1,
            f"data.templates.{direction}={tpl!r} must contain {SOURCE_PLACEHOLDER} exactly once",
        )
    check(
        d.max_examples is None or d.max_examples >= 1,
        f"data.max_examples={d.max_examples} must be >= 1",
    )
    check(d.pack_max_pairs >= 1, f"data.pack_max_pairs={d.pack_max_pairs} must be >= 1")
    check(
        d.pack_length is None or d.pack_length >= d.max_length,
        f"data.pack_length={d.pack_length} must be >= data.max_length={d.max_length} "
        "(a row must hold the longest example)",
    )
    check(
        d.builtin in (None, "rdkit_nci"),
        f"data.builtin={d.builtin!r} must be None or 'rdkit_nci'",
    )


def check_tokenizer(tk: TokenizerSection, d: DataSection) -> None:
    if tk.kind == "hf":
        check(
            tk.path is not None,
            "tokenizer.kind='hf' needs tokenizer.path, or model.source (its own tokenizer)",
        )
    if tk.kind == "sentencepiece":
        check(tk.path is not None, f"tokenizer.kind={tk.kind!r} needs tokenizer.path")
    if d.templates == "chat":
        check(
            tk.kind == "hf",
            f"data.templates='chat' needs an hf tokenizer with a chat template, not {tk.kind!r}",
        )
    if tk.kind == "builtin":
        check(d.builtin is not None, "tokenizer.kind='builtin' needs data.builtin (e.g. rdkit_nci)")
        check(tk.path is None, f"tokenizer.kind='builtin' takes no path, got {tk.path!r}")


def check_train(t: TrainSection) -> None:
    check(t.steps >= 0, f"train.steps={t.steps} must be >= 0")
    check(t.steps > 0 or t.epochs > 0, f"train.epochs={t.epochs} must be > 0 when train.steps=0")
    check(t.micro_batch_size >= 1, f"train.micro_batch_size={t.micro_batch_size} must be >= 1")
    check(t.grad_accum >= 1, f"train.grad_accum={t.grad_accum} must be >= 1")
    check(t.learning_rate > 0, f"train.learning_rate={t.learning_rate} must be > 0")
    check(0.0 <= t.warmup_ratio <= 1.0, f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1]")
    check(t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} must be >= 0")
    check(0 <= t.adam_b1 < 1, f"train.adam_b1={t.adam_b1} must be in [0, 1)")
    check(0 <= t.adam_b2 < 1, f"train.adam_b2={t.adam_b2} must be in [0, 1)")
    check(t.adam_eps > 0, f"train.adam_eps={t.adam_eps} must be > 0")
    check(t.max_grad_norm >= 0, f"train.max_grad_norm={t.max_grad_norm} must be >= 0")
    for name in ("eval_every", "eval_batches"):
        check(getattr(t, name) >= 0, f"train.{name}={getattr(t, name)} must be >= 0")
    check(t.log_every >= 1, f"train.log_every={t.log_every} must be >= 1")


def check_mesh(ms: MeshSection) -> None:
    sizes = {axis: getattr(ms, axis) for axis in MESH_AXES}
    for name, size in sizes.items():
        check(size == -1 or size >= 1, f"mesh.{name}={size} must be -1 (fill) or >= 1")
    check(
        sum(s == -1 for s in sizes.values()) <= 1, f"at most one mesh axis may be -1, got {sizes}"
    )
    for logical, axes in ms.rules:
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            check(axis in MESH_AXES, f"mesh.rules maps {logical!r} to unknown mesh axis {axis!r}")
    if ms.num_processes is not None:
        check(ms.num_processes >= 1, f"mesh.num_processes={ms.num_processes} must be >= 1")
        if ms.process_id is not None:
            check(
                0 <= ms.process_id < ms.num_processes,
                f"mesh.process_id={ms.process_id} must be in [0, {ms.num_processes})",
            )


def check_checkpoint(c: CheckpointSection) -> None:
    check(c.every >= 0, f"checkpoint.every={c.every} must be >= 0")
    check(c.keep_last >= 1, f"checkpoint.keep_last={c.keep_last} must be >= 1")


def check_generation(g: GenerationSection) -> None:
    check(g.max_new_tokens >= 1, f"generation.max_new_tokens={g.max_new_tokens} must be >= 1")
    check(g.batch_size >= 1, f"generation.batch_size={g.batch_size} must be >= 1")
    check(g.temperature > 0, f"generation.temperature={g.temperature} must be > 0")
    check(g.top_k >= 0, f"generation.top_k={g.top_k} must be >= 0")
    check(0 < g.top_p <= 1, f"generation.top_p={g.top_p} must be in (0, 1]")
    check(g.num_beams >= 1, f"generation.num_beams={g.num_beams} must be >= 1")


def check_eval(e: EvalSection) -> None:
    check(e.limit is None or e.limit >= 1, f"eval.limit={e.limit} must be >= 1")
    check(
        not e.withheld_combos or bool(e.nested_props),
        f"eval.withheld_combos={e.withheld_combos!r} needs eval.nested_props too",
    )
