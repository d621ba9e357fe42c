"""Arms -> train.py / eval.py config files, and where everything of an experiment lives in DIR.

Every arm is one run config written into ``DIR/configs`` that ``python train.py --config`` runs as
it is, and its test evaluation is ``python eval.py --config <that file> --checkpoint <its run>``.
The runner fills in what ties the arms together: the output directories, the seed, the data
files (the embedded dataset's, or the experiment's), the tokenizer, and for the LoRA arms
``model.source`` = the merged export of ``sft_full`` (so DPO's adapters-off reference is
``sft_full`` itself) and ``data.train_files`` = the seed's 10% triplets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from almol_jax.config import load_config
from almol_jax.errors import ConfigError
from almol_jax.experiments.config import BASE_ARMS, COUNTERPART, ExperimentConfig, deep_merge


@dataclass(frozen=True)
class DataFiles:
    """The experiment's resolved data: gold training pairs, validation triplets, test pairs."""

    train_pairs: str
    validation_files: tuple[str, ...]
    test_files: tuple[str, ...]
    tokenizer: str


def resolve_data(exp: ExperimentConfig) -> DataFiles:
    """The experiment's files: the embedded dataset's (built or reused), or the config's own."""
    data = exp.data
    if data.get("builtin"):
        from almol_jax.data.demo import build_demo_dataset

        if data["builtin"] != "rdkit_nci":
            raise ConfigError(f"data.builtin={data['builtin']!r}: only rdkit_nci is embedded")
        paths = build_demo_dataset()
        return DataFiles(
            train_pairs=str(paths.pairs["train"]),
            validation_files=(str(paths.preferences["validation"]),),
            test_files=(str(paths.pairs["test"]),),
            tokenizer=str(paths.tokenizer_dir),
        )
    return DataFiles(
        train_pairs=str(data["train_pairs"]),
        validation_files=tuple(data.get("validation_files") or ()),
        test_files=tuple(data["test_files"]),
        tokenizer=str(data.get("tokenizer") or ""),
    )


@dataclass(frozen=True)
class Layout:
    """Paths of an experiment directory (all under ``root``)."""

    root: Path

    def tag(self, arm: str, seed: int | None) -> str:
        return arm if seed is None else f"{arm}-seed{seed}"

    def config(self, arm: str, seed: int | None) -> Path:
        return self.root / "configs" / f"{self.tag(arm, seed)}.yaml"

    def compile_cache(self) -> Path:
        """JAX's persistent compilation cache, shared by the stages (stages.stage_environment)."""
        return self.root / "compile_cache"

    def run_dir(self, arm: str, seed: int | None) -> Path:
        return self.root / "runs" / self.tag(arm, seed)

    def eval_dir(self, arm: str, seed: int | None) -> Path:
        return self.root / "eval" / self.tag(arm, seed)

    def predictions(self, arm: str, seed: int | None, direction: str) -> Path:
        return self.eval_dir(arm, seed) / direction / "predictions.tsv"

    def seed_dir(self, seed: int) -> Path:
        return self.root / "data" / f"seed{seed}"

    def subset_pairs(self, seed: int) -> Path:
        return self.seed_dir(seed) / "subset_pairs.jsonl"

    def subset_config(self, seed: int) -> Path:
        return self.root / "configs" / f"weak-subset-seed{seed}.yaml"

    def weak_outputs(self, seed: int) -> Path:
        return self.seed_dir(seed) / "weak_outputs"

    def preferences(self, seed: int) -> Path:
        return self.seed_dir(seed) / "preferences.jsonl"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def export_dir(self, arm: str) -> Path:
        return self.run_dir(arm, None) / "export"


def arm_run_config(
    exp: ExperimentConfig, layout: Layout, data: DataFiles, arm: str, seed: int | None
) -> dict[str, Any]:
    """The train.py run config (plain data) of ``arm`` (``seed`` None for the base arms)."""
    cfg = exp.arm_config(arm)
    fixed: dict[str, Any] = {
        "seed": 0 if seed is None else seed,
        "output_dir": str(layout.run_dir(arm, seed)),
        "data": {
            "builtin": None,
            "train_files": [data.train_pairs],
            "validation_files": list(data.validation_files),
            "test_files": list(data.test_files),
        },
    }
    if data.tokenizer:
        fixed["tokenizer"] = {"kind": "hf", "path": data.tokenizer}
    if arm == COUNTERPART:  # the LoRA arms start from its merged export
        fixed["export"] = {"at_end": True, "format": "merged", "dir": str(layout.export_dir(arm))}
    if arm not in BASE_ARMS:
        fixed["model"] = {"source": str(layout.export_dir(COUNTERPART))}
        fixed["data"]["train_files"] = [str(layout.preferences(seed))]
        fixed["lora"] = {"enabled": True}
    return deep_merge(cfg, fixed)


def subset_eval_config(base_config: dict[str, Any], layout: Layout, seed: int) -> dict[str, Any]:
    """The weak arm's config with its test split = the seed's subset of training pairs (eval.py
    then writes the weak system's greedy outputs on that subset in the scorer's format)."""
    over = {"data": {"test_files": [str(layout.subset_pairs(seed))]}, "eval": {"limit": None}}
    return deep_merge(base_config, over)


def write_config(config: dict[str, Any], path: Path) -> Path:
    """Writes ``config`` as YAML at ``path`` and checks that train.py's loader accepts it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    load_config(str(tmp))  # a bad key or value fails here, naming it, before any arm runs
    tmp.replace(path)
    return path
