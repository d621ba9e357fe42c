"""RunConfig: the root of the run configuration, built from plain (YAML-loaded) data and validated.

``RunConfig.from_dict`` type-checks the data against the sections (config/sections.py; unknown
keys and wrong types are errors that name the key and suggest the nearest valid one,
config/coerce.py) and then runs :func:`validate`, the cross-field checks (config/checks.py),
raising ConfigError (a ValueError) that names the bad value. :func:`field_docs` lists every leaf field with its
type, default and doc (docs/configuration.md's table, config/reference.py).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from almol_jax.config import checks
from almol_jax.config.coerce import build, config_to_dict, type_name
from almol_jax.config.sections import (
    CheckpointSection,
    DataSection,
    EvalSection,
    ExportSection,
    GenerationSection,
    LoggingSection,
    LoraSection,
    MeshSection,
    ModelSection,
    ObjectiveSection,
    RuntimeSection,
    TokenizerSection,
    TrainSection,
)
from almol_jax.doc_field import doc_field, section_field


@dataclass(frozen=True)
class RunConfig:
    """One training/evaluation run."""

    seed: int = doc_field(
        0, "The one seed, split by purpose (params, lora, data, dropout, sampling)."
    )
    output_dir: str = doc_field(
        "runs/default", "Run directory (config.yaml, metrics, checkpoints)."
    )
    model: ModelSection = section_field(ModelSection, "The network.")
    lora: LoraSection = section_field(LoraSection, "LoRA adapters.")
    objective: ObjectiveSection = section_field(ObjectiveSection, "Training objective.")
    data: DataSection = section_field(DataSection, "Data files, prompts, batching.")
    tokenizer: TokenizerSection = section_field(TokenizerSection, "Tokenizer.")
    train: TrainSection = section_field(TrainSection, "Optimisation.")
    mesh: MeshSection = section_field(MeshSection, "Device mesh.")
    checkpoint: CheckpointSection = section_field(CheckpointSection, "Checkpoints.")
    eval: EvalSection = section_field(EvalSection, "Evaluation.")
    generation: GenerationSection = section_field(GenerationSection, "Decoding.")
    export: ExportSection = section_field(ExportSection, "HF export.")
    logging: LoggingSection = section_field(LoggingSection, "Metric sinks.")
    runtime: RuntimeSection = section_field(
        RuntimeSection, "Process settings (host memory, CPU devices)."
    )

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> RunConfig:
        """Builds and validates a RunConfig from plain (YAML-loaded) data; unset keys keep defaults."""
        cfg = resolve_tokenizer_path(build(cls, raw or {}, ""))
        validate(cfg)
        return cfg


def resolve_tokenizer_path(cfg: RunConfig) -> RunConfig:
    """``tokenizer.path: null`` with ``kind: hf`` means the checkpoint's own tokenizer: the path
    becomes ``model.source`` (the resolved config records it)."""
    tk = cfg.tokenizer
    if tk.kind != "hf" or tk.path is not None or cfg.model.source is None:
        return cfg
    return dataclasses.replace(cfg, tokenizer=dataclasses.replace(tk, path=cfg.model.source))


def validate(cfg: RunConfig) -> None:
    """Cross-field checks of a RunConfig; raises ConfigError naming the bad value."""
    checks.check_model(cfg.model)
    checks.check_objective(cfg.objective, cfg.lora)
    checks.check_runtime(cfg.runtime)
    checks.check_data(cfg.data)
    checks.check_tokenizer(cfg.tokenizer, cfg.data)
    checks.check_train(cfg.train)
    checks.check_mesh(cfg.mesh)
    checks.check_checkpoint(cfg.checkpoint)
    checks.check_generation(cfg.generation)
    checks.check_eval(cfg.eval)


def field_docs(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every leaf field, in declaration order."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(field_docs(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        section = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
        if section is not None:  # a section or a keyword (data.templates: chat)
            others = " | ".join(type_name(a) for a in typing.get_args(tp) if a is not section)
            rows.append((prefix + f.name, f"section | {others}", "section", f.metadata["doc"]))
            rows.extend(field_docs(section, prefix + f.name + "."))
            continue
        rows.append((prefix + f.name, type_name(tp), config_to_dict(default), f.metadata["doc"]))
    return rows
