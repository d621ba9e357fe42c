"""The one-command demo, shortened: `train.py --config configs/demo.yaml` end to end in CI.

A few CPO steps of a smaller model on the embedded dataset (built once into the user cache, or
reused), a tiny evaluation limit and short generations; then every artefact must exist and parse:
the checkpoints, metrics.jsonl with validation records, metrics.json and predictions.tsv for both
directions at step 0 and at the best step, the summary files, and the merged Hugging Face export,
which transformers must load (AutoModelForCausalLM + AutoTokenizer) and whose forward must
reproduce the logits of the checkpointed JAX model. The after-training helpers are tested on
hand-made values.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from almol_jax.after_training import (
    SUMMARY_JSON,
    SUMMARY_MD,
    TABLE_METRICS,
    format_summary,
    resolve_builtin,
    validation_curve,
)
from almol_jax.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
LIMIT = 3
STEPS = 4

# Everything that makes the run short; the rest is configs/demo.yaml as shipped.
SHORT = [
    f"train.steps={STEPS}",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.micro_batch_size=4",
    "train.log_every=2",
    "data.max_examples=48",
    "data.buckets=[]",
    "model.overrides.hidden_size=64",
    "model.overrides.intermediate_size=128",
    "model.overrides.num_hidden_layers=2",
    "model.overrides.num_attention_heads=2",
    "model.overrides.num_key_value_heads=2",
    f"eval.limit={LIMIT}",
    "generation.max_new_tokens=12",
    f"generation.batch_size={LIMIT}",
    "logging.tensorboard=false",
]


def _train_main():
    spec = importlib.util.spec_from_file_location("almol_train_entry", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    rc = _train_main()(["--config", str(DEMO), f"output_dir={run_dir}", *SHORT])
    assert rc == 0
    return run_dir


def test_demo_config_is_the_documented_recipe():
    """The shipped demo: CPO with its NLL term, from scratch, evaluated and exported at the end."""
    cfg = load_config(DEMO)
    assert (cfg.objective.name, cfg.objective.cpo_alpha, cfg.objective.beta) == ("cpo", 1.0, 0.02)
    assert cfg.model.source is None and not cfg.lora.enabled
    assert (cfg.data.builtin, cfg.tokenizer.kind) == ("rdkit_nci", "builtin")
    assert cfg.eval.at_end and cfg.export.at_end and cfg.export.format == "merged"
    assert cfg.eval.limit is not None and cfg.generation.max_new_tokens <= 128


def test_resolve_builtin_points_at_the_dataset_tokenizer():
    from transformers import AutoTokenizer

    from almol_jax.data.demo import build_demo_dataset

    cfg = resolve_builtin(load_config(DEMO))
    assert (cfg.tokenizer.kind, cfg.tokenizer.path) == (
        "hf",
        str(build_demo_dataset().tokenizer_dir),
    )
    tok = AutoTokenizer.from_pretrained(cfg.tokenizer.path)
    assert len(tok) == load_config(DEMO).model.overrides["vocab_size"]
    plain = load_config(REPO / "configs" / "tiny.yaml")
    assert resolve_builtin(plain) is plain


def test_builtin_tokenizer_needs_builtin_data():
    with pytest.raises(ValueError, match="data.builtin"):
        load_config(DEMO, ["data.builtin=null", "data.train_files=[a.jsonl]"])


def test_format_summary_golden():
    summary = {
        "test": {
            "caption2smiles": [
                {"label": "validity", "higher_is_better": True, "step0": 0.0, "final": 0.5},
                {"label": "Levenshtein", "higher_is_better": False, "step0": 40.0, "final": 12.5},
                {"label": "FCD", "higher_is_better": False, "step0": math.nan, "final": 3.0},
                {"label": "BLEU", "higher_is_better": True, "step0": 1e-9, "final": 2e-9},
            ]
        },
        "validation": {
            "first": {"step": 50, "eval/rewards/accuracies": 0.5, "eval/loss": 3.0},
            "last": {"step": 200, "eval/rewards/accuracies": 0.875, "eval/loss": 1.25},
        },
    }
    assert format_summary(summary).splitlines() == [
        "| direction | metric | step 0 | final | better |",
        "|---|---|---:|---:|:---:|",
        "| caption2smiles | validity | 0.0000 | 0.5000 | yes |",
        "| caption2smiles | Levenshtein | 40.0000 | 12.5000 | yes |",
        "| caption2smiles | FCD | n/a | 3.0000 | - |",
        "| caption2smiles | BLEU | 0.0000 | 0.0000 | = |",
        "| validation | rewards/accuracies | 0.5000 (step 50) | 0.8750 (step 200) | |",
        "| validation | loss | 3.0000 (step 50) | 1.2500 (step 200) | |",
    ]
    # the grammar-on evaluation adds a column, filled for the rows that have it
    rows = summary["test"]["caption2smiles"]
    rows[0]["grammar"], rows[1]["grammar"] = 0.75, math.nan
    summary["test"]["smiles2caption"] = [
        {"label": "BLEU-2", "higher_is_better": True, "step0": 0.0, "final": 0.5}
    ]
    assert format_summary(summary).splitlines() == [
        "| direction | metric | step 0 | final | better | final, SMILES grammar on |",
        "|---|---|---:|---:|:---:|---:|",
        "| caption2smiles | validity | 0.0000 | 0.5000 | yes | 0.7500 |",
        "| caption2smiles | Levenshtein | 40.0000 | 12.5000 | yes | n/a |",
        "| caption2smiles | FCD | n/a | 3.0000 | - | |",
        "| caption2smiles | BLEU | 0.0000 | 0.0000 | = | |",
        "| smiles2caption | BLEU-2 | 0.0000 | 0.5000 | yes | |",
        "| validation | rewards/accuracies | 0.5000 (step 50) | 0.8750 (step 200) | | |",
        "| validation | loss | 3.0000 (step 50) | 1.2500 (step 200) | | |",
    ]


def test_validation_curve_keeps_eval_records_in_step_order(tmp_path):
    lines = [{"step": 4, "eval/loss": 2.0}, {"step": 2, "loss": 9.0}, {"step": 2, "eval/loss": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert validation_curve(tmp_path) == [{"step": 2, "eval/loss": 3.0}, lines[0]]
    assert validation_curve(tmp_path / "absent") == []


def test_demo_run_checkpoints_and_metrics(demo_run):
    from almol_jax.run.checkpoint import best_step, latest_step, read_meta

    cfg = load_config(demo_run / "config.yaml")
    assert cfg.tokenizer.kind == "hf" and cfg.train.steps == STEPS
    assert latest_step(demo_run) == STEPS
    best = best_step(demo_run)
    assert best in (2, STEPS)
    assert read_meta(demo_run, best)["step"] == best
    assert (demo_run / "checkpoints" / str(best) / "trainable").is_dir()
    records = [json.loads(line) for line in (demo_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/rewards/accuracies" in r]
    assert [r["step"] for r in evals] == [2, STEPS]
    assert all(0.0 <= r["eval/rewards/accuracies"] <= 1.0 for r in evals)
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)


def test_demo_run_evaluations_parse(demo_run):
    from almol_jax.eval.io import read_tsv
    from almol_jax.run.checkpoint import best_step

    summary = json.loads((demo_run / SUMMARY_JSON).read_text())
    best = best_step(demo_run)
    assert summary["best_step"] == best
    assert summary["eval_dirs"] == {
        "step0": str(demo_run / "eval" / "test-step0"),
        "final": str(demo_run / "eval" / f"test-step{best}"),
        "grammar": str(demo_run / "eval" / f"test-step{best}-smiles-grammar"),
    }
    for which in ("step0", "final"):
        for direction, rows in TABLE_METRICS.items():
            out = Path(summary["eval_dirs"][which]) / direction
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["n"] == LIMIT
            assert metrics["step"] == best and metrics["adapters"] == (
                "off" if which == "step0" else "on"
            )
            preds = read_tsv(out / "predictions.tsv", direction)
            assert len(preds.outputs) == LIMIT and all(preds.references)
            by_key = {r["metric"]: r for r in summary["test"][direction]}
            for key, _, _ in rows:
                value = metrics.get(key)
                value = math.nan if value is None else value
                np.testing.assert_allclose(by_key[key][which], value, rtol=0, atol=0)
    # the demo's third evaluation: caption2smiles of the best checkpoint with the SMILES grammar
    out = Path(summary["eval_dirs"]["grammar"]) / "caption2smiles"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == LIMIT and metrics["generation"]["smiles_grammar"]
    outputs = read_tsv(out / "predictions.tsv", "caption2smiles").outputs
    assert all(Chem.MolFromSmiles(s, sanitize=False) is not None for s in outputs), outputs
    assert not (demo_run / "eval" / f"test-step{best}-smiles-grammar" / "smiles2caption").exists()
    by_key = {r["metric"]: r for r in summary["test"]["caption2smiles"]}
    for key, _, _ in TABLE_METRICS["caption2smiles"]:
        value = math.nan if metrics.get(key) is None else metrics[key]
        np.testing.assert_allclose(by_key[key]["grammar"], value, rtol=0, atol=0)
    assert all("grammar" not in r for r in summary["test"]["smiles2caption"])
    table = (demo_run / SUMMARY_MD).read_text()
    assert table.splitlines()[0].endswith("| better | final, SMILES grammar on |")
    assert "| smiles2caption | BLEU-2 |" in table and "| caption2smiles | validity |" in table
    assert "| validation | rewards/accuracies |" in table


def test_demo_export_loads_in_transformers_and_matches(demo_run):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from almol_jax.run.restore import restore_for_inference

    summary = json.loads((demo_run / SUMMARY_JSON).read_text())
    export_dir = Path(summary["export_dir"])
    assert export_dir == demo_run / "export"
    hf_tok = AutoTokenizer.from_pretrained(str(export_dir))
    hf_model = AutoModelForCausalLM.from_pretrained(str(export_dir)).eval()
    _, model, run_tok = restore_for_inference(demo_run, step="best")
    text = "The molecule is a ketone. CC(=O)c1ccccc1"
    ids = run_tok(text, add_special_tokens=False)["input_ids"]
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == run_tok.decode(ids)
    ids = [run_tok.bos_token_id, *ids]
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor([ids])).logits.float().numpy()
    ours = np.asarray(model(np.asarray([ids], dtype=np.int32)))
    assert hf_logits.shape == ours.shape == (1, len(ids), hf_model.config.vocab_size)
    np.testing.assert_allclose(hf_logits, ours, rtol=1e-4, atol=1e-4)


def test_after_training_skips_evaluation_without_test_files(tmp_path):
    from almol_jax.after_training import after_training

    cfg = load_config(REPO / "configs" / "tiny.yaml", ["eval.at_end=true"])
    assert cfg.data.test_files == ()
    out = after_training(cfg, {"run_dir": str(tmp_path)}, progress=False)
    assert out["eval_skipped"].startswith("eval.at_end is set")
    assert "test" not in out and "export_dir" not in out
    assert json.loads((tmp_path / SUMMARY_JSON).read_text())["eval_skipped"] == out["eval_skipped"]
    off = load_config(REPO / "configs" / "tiny.yaml")
    assert after_training(off, {"run_dir": str(tmp_path / "off")}) == {
        "run_dir": str(tmp_path / "off"),
        "seconds": {},
    }
