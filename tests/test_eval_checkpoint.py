"""eval.py on a checkpoint: a tiny run trained for two steps is evaluated in both directions.

Checks the files (scorer-format predictions, metrics.json, report), that the metrics equal
prediction-file mode run on the written predictions (same outputs, same scorer), that the
outputs are the model's greedy generations, the adapters-off (base model) path, and the
self-generated preference CLI on the same checkpoint.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eval as eval_cli  # noqa: E402  (the repo-root entry point)

PAIRS = REPO / "tests" / "data" / "tiny_pairs.tsv"
PREFS = REPO / "tests" / "data" / "tiny_prefs.jsonl"
LIMIT = 3
SCORING = ["--no-fcd", "--num-workers", "1", "--skip-unavailable", "--no-plots"]


def _overrides(run_dir: Path) -> list[str]:
    return [
        f"output_dir={run_dir}",
        f"data.train_files=[{PREFS}]",
        f"data.validation_files=[{PREFS}]",
        f"data.test_files=[{PAIRS}]",
        "data.format=auto",
        "train.steps=2",
        "train.eval_every=2",
        "train.eval_batches=1",
        "checkpoint.every=2",
        "generation.max_new_tokens=16",
        "generation.batch_size=4",
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(config, run_dir) of configs/tiny.yaml trained for two steps into a tmp directory."""
    from almol_jax.config import load_config
    from almol_jax.train.loop import run_training

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    cfg = load_config(REPO / "configs" / "tiny.yaml", _overrides(run_dir))
    run_training(cfg)
    return cfg, run_dir


def _one_line(text):
    """What the scorer's TSV can hold: tabs/newlines become one space, ends stripped."""
    return re.sub(r"[\t\r\n]+", " ", text).strip()


def _read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_eval_cli_on_checkpoint_matches_prediction_file_mode(tiny_run, tmp_path, capsys):
    cfg, run_dir = tiny_run
    out = tmp_path / "eval"
    args = ["--config", str(REPO / "configs" / "tiny.yaml"), "--checkpoint", str(run_dir)]
    args += [f"--set={o}" for o in _overrides(run_dir)]
    rc = eval_cli.main(args + ["--limit", str(LIMIT), "--output-dir", str(out), *SCORING])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "## smiles2caption" in printed and "## caption2smiles" in printed

    from almol_jax.data.prompts import format_prompt
    from almol_jax.generation import generate_texts, settings_from_config
    from almol_jax.run.restore import restore_for_inference

    _, model, tokenizer = restore_for_inference(run_dir)
    gold = _read_tsv(PAIRS)[1 : LIMIT + 1]  # CID, SMILES, description
    for direction, header in (("smiles2caption", "SMILES"), ("caption2smiles", "description")):
        rows = _read_tsv(out / direction / "predictions.tsv")
        assert rows[0] == [header, "ground truth", "output"] and len(rows) == LIMIT + 1
        sources = [r[1] if direction == "smiles2caption" else r[2] for r in gold]
        references = [r[2] if direction == "smiles2caption" else r[1] for r in gold]
        assert [r[0] for r in rows[1:]] == sources
        assert [r[1] for r in rows[1:]] == references
        prompts = [format_prompt(cfg.data.templates, direction, s) for s in sources]
        expected = generate_texts(model, tokenizer, prompts, settings_from_config(cfg))
        assert [r[2] for r in rows[1:]] == [_one_line(e) for e in expected]

        metrics = json.loads((out / direction / "metrics.json").read_text())
        assert metrics["n"] == LIMIT and metrics["adapters"] == "on" and metrics["step"] == 2
        file_out = tmp_path / f"file-{direction}"
        rc = eval_cli.main(
            [
                "--task",
                direction,
                "--predictions",
                str(out / direction / "predictions.tsv"),
                "--output-dir",
                str(file_out),
                *SCORING,
            ]
        )
        assert rc == 0
        from_file = json.loads((file_out / "metrics.json").read_text())
        for key, value in from_file.items():
            if key not in ("resources", "predictions", "seconds"):
                assert metrics[key] == value, key
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"smiles2caption", "caption2smiles"}


def test_two_cpu_devices_decode_data_parallel_with_the_same_outputs(tiny_run, tmp_path):
    """runtime.cpu_devices=2 in a fresh eval.py process: prompts split over two CPU devices
    (mesh data=2, weights replicated), predictions identical to the one-device run."""
    import subprocess

    _, run_dir = tiny_run
    common = ["--config", str(REPO / "configs" / "tiny.yaml"), "--checkpoint", str(run_dir)]
    common += [f"--set={o}" for o in _overrides(run_dir)]
    common += ["--limit", str(LIMIT), "--directions", "smiles2caption", *SCORING]
    outs = {}
    for devices in (1, 2):
        outs[devices] = tmp_path / f"dev{devices}"
        args = [*common, f"--set=runtime.cpu_devices={devices}", "--output-dir", str(outs[devices])]
        subprocess.run(
            [sys.executable, str(REPO / "eval.py"), *args],
            check=True,
            capture_output=True,
            text=True,
            cwd=REPO,
        )
    meshes = {
        d: json.loads((outs[d] / "smiles2caption" / "metrics.json").read_text())["generation"]
        for d in outs
    }
    assert meshes[2]["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}, meshes
    assert meshes[1]["mesh"] != meshes[2]["mesh"]
    rows = {d: _read_tsv(outs[d] / "smiles2caption" / "predictions.tsv") for d in outs}
    assert len(rows[1]) == LIMIT + 1 and rows[2] == rows[1]


def test_set_without_config_overrides_the_runs_own_config(tiny_run, tmp_path):
    _, run_dir = tiny_run
    out = tmp_path / "eval"
    args = ["--checkpoint", str(run_dir), "--set", "generation.max_new_tokens=3"]
    args += ["--limit", "2", "--directions", "smiles2caption", "--output-dir", str(out)]
    assert eval_cli.main([*args, *SCORING]) == 0
    metrics = json.loads((out / "smiles2caption" / "metrics.json").read_text())
    assert metrics["generation"]["max_new_tokens"] == 3  # the run's config says 16
    # greedy captions: no grammar, no RDKit check among beams
    assert metrics["generation"]["num_beams"] == 1
    assert metrics["generation"]["smiles_rdkit_check"] is False


def test_evaluate_checkpoint_adapters_off_is_the_base_model(tiny_run, tmp_path):
    from almol_jax.data.prompts import format_prompt
    from almol_jax.eval import EvalOptions
    from almol_jax.evaluate_checkpoint import evaluate_checkpoint
    from almol_jax.generation import generate_texts, settings_from_config
    from almol_jax.run.setup import build_run_model

    cfg, run_dir = tiny_run
    options = EvalOptions(fcd=False, skip_unavailable=True, num_workers=1)
    results = evaluate_checkpoint(
        cfg,
        run_dir / "checkpoints" / "2",
        "test",
        "caption2smiles",
        2,
        tmp_path,
        "off",
        options=options,
        plots=False,
    )
    assert set(results) == {"caption2smiles"} and results["caption2smiles"]["n"] == 2
    rows = _read_tsv(tmp_path / "caption2smiles" / "predictions.tsv")[1:]
    base = build_run_model(cfg)  # full fine-tune: "adapters off" = the untrained base
    prompts = [format_prompt(cfg.data.templates, "caption2smiles", r[0]) for r in rows]
    from almol_jax.data.tokenizer import byte_tokenizer

    expected = generate_texts(base, byte_tokenizer(), prompts, settings_from_config(cfg))
    assert [r[2] for r in rows] == [_one_line(e) for e in expected]
    assert (
        json.loads((tmp_path / "caption2smiles" / "metrics.json").read_text())["adapters"] == "off"
    )
    with pytest.raises(ValueError, match="adapters"):
        evaluate_checkpoint(cfg, run_dir, adapters="maybe")


def test_self_generated_cli_on_checkpoint(tiny_run, tmp_path, capsys):
    from almol_jax.preferences.__main__ import main as preferences_main

    _, run_dir = tiny_run
    out = tmp_path / "self.jsonl"
    rc = preferences_main(
        [
            "self-generated",
            "--checkpoint",
            str(run_dir),
            "--split",
            "validation",
            "--limit",
            "4",
            "--k",
            "2",
            "--max-new-tokens",
            "8",
            "--molecule-metric",
            "chrf",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["builder"] == "self_generated" and summary["step"] == 2
    assert summary["total"]["input"] == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["total"]["kept"]
    assert sum(c["candidates"] for c in summary["candidates"].values()) == 8
    assert "kept" in capsys.readouterr().out


def test_bad_checkpoint_path_is_named(tmp_path, capsys):
    from almol_jax.run.locate import run_and_step

    with pytest.raises(ValueError, match="neither a run directory"):
        run_and_step(tmp_path / "nowhere")
    rc = eval_cli.main(["--checkpoint", str(tmp_path / "nowhere"), *SCORING])
    assert rc == 2 and "nowhere" in capsys.readouterr().err


def test_eval_cli_smiles_grammar_on_gives_parseable_smiles(tiny_run, tmp_path):
    """Issue 18's command: `eval.py --checkpoint RUN --directions caption2smiles --set
    generation.smiles_grammar=on`. The two-step model writes near-random tokens, so without the
    grammar its SMILES do not parse; with it every output parses (RDKit, sanitize=False)."""
    from rdkit import Chem

    from almol_jax.eval.io import read_tsv

    _, run_dir = tiny_run
    parses = {}
    for switch in ("off", "on"):
        out = tmp_path / switch
        args = ["--checkpoint", str(run_dir), "--directions", "caption2smiles"]
        args += ["--set", f"generation.smiles_grammar={switch}", "--limit", str(LIMIT)]
        assert eval_cli.main([*args, "--output-dir", str(out), *SCORING]) == 0
        assert not (out / "smiles2caption").exists()
        metrics = json.loads((out / "caption2smiles" / "metrics.json").read_text())
        assert metrics["n"] == LIMIT
        assert metrics["generation"]["smiles_grammar"] is (switch == "on")
        outputs = read_tsv(out / "caption2smiles" / "predictions.tsv", "caption2smiles").outputs
        parses[switch] = [Chem.MolFromSmiles(s, sanitize=False) is not None for s in outputs]
    assert all(parses["on"]), parses
    assert not all(parses["off"]), parses  # else the check above proves nothing
