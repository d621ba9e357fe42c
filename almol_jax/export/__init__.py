"""Hugging Face export of trained models: merged safetensors or PEFT adapters (and adapters in).

`export_run(run_dir_or_step, out_dir, format, dtype, max_shard_size)` exports a trained run;
`export_model(model, out_dir, format=..., tokenizer=...)` an in-memory model. Tensors are
gathered and written one at a time (streaming.py), so host memory stays near one tensor.
Adapters in: `load_with_adapter(adapter_dir)` (base + adapter), or `load_peft_adapter(model,
dir)` into an existing model (re-exported from almol_jax.model.hf_weights).
CLI: `python -m almol_jax.export --checkpoint RUN_DIR[/checkpoints/STEP] --out DIR`.
"""

from almol_jax.export.adapters import check_adapter_config, load_with_adapter
from almol_jax.export.merged import export_merged
from almol_jax.export.peft import export_peft
from almol_jax.export.run import export_from_config, export_model, export_run
from almol_jax.export.streaming import TensorSpec, parse_size, write_sharded_safetensors
from almol_jax.model.hf_weights import load_peft_adapter, read_peft_config

__all__ = [
    "TensorSpec",
    "check_adapter_config",
    "export_from_config",
    "export_merged",
    "export_model",
    "export_peft",
    "export_run",
    "load_peft_adapter",
    "load_with_adapter",
    "parse_size",
    "read_peft_config",
    "write_sharded_safetensors",
]
