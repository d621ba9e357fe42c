"""The ALMol comparison runner (almol_jax/experiments, docs/experiments.md).

- The arms' config files: every one loads with train.py's loader, the LoRA arms start from the
  counterpart's merged export, and the control differs from CPO in its objective only.
- The paired bootstrap against SciPy's (an independent implementation, same percentile method).
- The quick variant end to end, as the README prints it: every arm present, the report's
  numbers equal an independent re-scoring of the predictions it saved with the eval scorers,
  and a re-run resumes every stage without retraining.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from almol_jax.config import load_config
from almol_jax.directions import DIRECTIONS
from almol_jax.experiments.arms import DataFiles, Layout, arm_run_config, write_config
from almol_jax.experiments.bootstrap import paired_interval
from almol_jax.experiments.config import ARMS, SEEDED_ARMS, load_experiment
from tests.readme_commands import command_argv

REPO = Path(__file__).resolve().parents[1]


def _configs(tmp_path: Path, quick: bool = False) -> dict[str, object]:
    exp = load_experiment(quick=quick)
    data = DataFiles("train_pairs.jsonl", ("validation.jsonl",), ("test_pairs.jsonl",), "tok")
    layout = Layout(tmp_path)
    out = {}
    for arm in ARMS:
        seed = 1 if arm in SEEDED_ARMS else None
        path = write_config(arm_run_config(exp, layout, data, arm, seed), layout.config(arm, seed))
        out[arm] = load_config(str(path))
    return out


def test_arm_configs_are_train_configs_with_the_papers_roles(tmp_path):
    cfgs = _configs(tmp_path)
    layout = Layout(tmp_path)
    full = cfgs["sft_full"]
    assert full.objective.name == "sft" and not full.lora.enabled
    assert full.data.train_files == ("train_pairs.jsonl",)
    assert full.export.at_end and full.export.format == "merged"
    assert cfgs["weak"].train.steps < full.train.steps  # the weaker system
    for arm in SEEDED_ARMS:
        cfg = cfgs[arm]
        assert cfg.model.source == full.export.dir == str(layout.export_dir("sft_full"))
        assert cfg.lora.enabled and cfg.seed == 1
        assert cfg.data.train_files == (str(layout.preferences(1)),)
        assert cfg.data.test_files == full.data.test_files
    cpo, sft, dpo = (cfgs[a] for a in SEEDED_ARMS)
    assert (cpo.objective.name, cpo.objective.cpo_alpha, sft.objective.name) == ("cpo", 1.0, "sft")
    assert dpo.objective.name == "dpo"
    # the control: the same LoRA, data, steps and learning rate; only the objective differs
    for section in ("lora", "data", "train", "model", "generation", "eval"):
        assert getattr(cpo, section) == getattr(sft, section), section


WRITE_RUN = (
    "import pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True); "
    "(d / 'checkpoint').write_text(sys.argv[2])"
)  # a stand-in stage: writes its "checkpoint" into the run directory


def test_a_finished_stage_whose_inputs_changed_starts_afresh_and_keeps_the_old_run(
    tmp_path, capsys
):
    """A stage that finished with other inputs (an arm's config edited) must not resume from
    that run's checkpoints: its directory is moved to <name>.previous-<k>, nothing is deleted.
    A stage that never finished (no marker: interrupted) stays in place to be resumed."""
    from almol_jax.experiments.runner import Runner

    data = DataFiles("train_pairs.jsonl", ("validation.jsonl",), ("test_pairs.jsonl",), "tok")
    runner = Runner(load_experiment(quick=True), Layout(tmp_path), data, show=False)
    run_dir = tmp_path / "runs" / "weak"

    def stage(content: str) -> None:
        args = ["-c", WRITE_RUN, str(run_dir), content]
        runner._stage("weak", "train", run_dir, [], args, 1, "step", lambda: 0, fresh=True)

    stage("A")
    stage("A")  # finished with the same inputs: skipped, nothing moved
    assert runner.resumed == ["weak/train"] and not list(tmp_path.glob("runs/weak.previous-*"))
    stage("B")
    assert (tmp_path / "runs" / "weak.previous-1" / "checkpoint").read_text() == "A"
    assert (run_dir / "checkpoint").read_text() == "B"
    assert "weak.previous-1" in capsys.readouterr().out  # said, even without progress lines
    stage("C")
    assert (tmp_path / "runs" / "weak.previous-2" / "checkpoint").read_text() == "B"
    (run_dir / ".experiment_stage.json").unlink()  # an interrupted stage: resumed in place
    stage("D")
    assert (run_dir / "checkpoint").read_text() == "D"
    assert not (tmp_path / "runs" / "weak.previous-3").exists()


def test_bad_experiment_config_is_one_error_line(tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text("seeds: 2\narms: {sft_full: {}}\ndata: {builtin: rdkit_nci}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "almol_jax.experiments", "almol-mini", "--config", str(bad),
         "--output-dir", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "arms must be exactly" in proc.stderr and "Traceback" not in proc.stderr


def test_paired_bootstrap_matches_scipy():
    rng = np.random.default_rng(3)
    a = rng.random(300)
    b = np.clip(a - 0.05 + 0.2 * rng.standard_normal(300), 0, 1)
    ours = paired_interval(a, b, higher_is_better=True, samples=20000, confidence=0.9)
    ref = scipy.stats.bootstrap(
        (a - b,), np.mean, n_resamples=20000, confidence_level=0.9, method="percentile",
        random_state=np.random.default_rng(7),
    )  # fmt: skip
    assert ours["difference"] == pytest.approx(float(np.mean(a - b)), abs=1e-15)
    # two Monte Carlo estimates of the same percentiles: agree to their sampling error (~1e-3)
    assert ours["low"] == pytest.approx(ref.confidence_interval.low, abs=3e-3)
    assert ours["high"] == pytest.approx(ref.confidence_interval.high, abs=3e-3)
    assert ours["p_better"] > 0.99
    lower = paired_interval(a, b, higher_is_better=False, samples=2000, confidence=0.9)
    assert lower["p_better"] < 0.01


def _readme_quick_command(out: Path) -> list[str]:
    args = command_argv("Does the recipe work?", "--quick", ["python"])
    args[args.index("--output-dir") + 1] = str(out)
    return [sys.executable, *args]


def _same(value, expected, where):
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        assert value is None, where
    else:
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-12), where


def check_report(out: Path) -> dict:
    """Every arm present; the report's numbers equal an independent re-scoring of the
    predictions it saved (almol_jax.eval.score, reference cache off); the intervals' point
    estimates equal the metric differences; report.md and the plots exist."""
    from almol_jax.eval import EvalOptions, read_predictions, score

    report = json.loads((out / "report.json").read_text())
    assert list(report["arms"]) == list(ARMS)
    options = EvalOptions(reference_cache=False)
    for arm, entry in report["arms"].items():
        for direction in DIRECTIONS:
            p = read_predictions(out / entry["predictions"][direction], direction)
            metrics, _, _ = score(direction, p.sources, p.references, p.outputs, options=options)
            saved = entry["metrics"][direction]
            assert saved["n"] == len(p.outputs) == 24
            for key in RESCORED:
                if key in metrics:
                    _same(saved.get(key), metrics[key], f"{arm} {direction} {key}")
    for name, per_dir in report["comparisons"].items():
        a, b = name.split(" - ")
        for direction, per_metric in per_dir.items():
            for metric, iv in per_metric.items():
                diff = report["arms"][a]["metrics"][direction][metric]
                diff -= report["arms"][b]["metrics"][direction][metric]
                assert iv["difference"] == pytest.approx(diff, abs=1e-9), (name, metric)
                assert iv["low"] <= iv["difference"] <= iv["high"]
    assert report["verdict"]["text"] and (out / "report.md").is_file()
    assert all((out / p).is_file() for p in report["plots"])
    return report


def check_resume(out: Path, cmd: list[str], report: dict) -> None:
    """Running the command again trains and evaluates nothing: all 12 stages already done, the
    checkpoints untouched, the same numbers."""
    checkpoints = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoints/*")}
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-4000:]
    stage_lines = [line for line in again.stdout.splitlines() if re.match(r"\[\s*\d+/12\] ", line)]
    assert len(stage_lines) == 12 and all("already done" in line for line in stage_lines)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoints/*")} == checkpoints
    resumed = json.loads((out / "report.json").read_text())
    assert len(resumed["timings"]["resumed"]) == 12
    assert resumed["arms"] == report["arms"]


RESCORED = (
    "meteor", "rougeL", "bleu2", "bleu4", "chrf", "validity", "exact_match", "morgan_fts_lpm24",
    "morgan_fts_molt5", "maccs_fts_lpm24", "levenshtein", "chrf_sentence_mean",
    "length_chars_diff_mean",
)  # fmt: skip


@pytest.mark.slow
def test_quick_experiment_end_to_end_and_resume(tmp_path, shared_data):
    # about 4-5 minutes on this 2-core machine with two stages at a time (docs/experiments.md);
    # the limit leaves room for a slower one
    out = tmp_path / "exp"
    cmd = _readme_quick_command(out)
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-4000:]
    assert any((out / "compile_cache").iterdir())  # the stages shared JAX's compilation cache
    check_resume(out, cmd, check_report(out))
