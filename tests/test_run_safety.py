"""Issue 19, through the real commands (subprocesses): a user's mistake is one `error:` line and
exit 2, a bug a traceback and exit 1, `--debug` shows the traceback; a run directory knows what
its checkpoints were trained on (a refused resume leaves every file byte-identical, adapters are
not loaded onto another base unless asked); a non-finite validation loss is never "best";
`model.source` / `tokenizer.path` follow one rule; only safetensors are read, no remote code.

One tiny run (train.py, 2 steps) is trained once for the module and copied where a test edits it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_runs import REPO, TINY, env_with_devices, overrides, run_train

RUN = ("train.steps=2", "train.eval_every=2", "train.eval_batches=1", "checkpoint.every=2")


def _run(args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 300):
    env = env_with_devices(1)
    env.pop("ALMOL_JAX_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _train(run_dir, *extra: str, env_extra=None):
    return _run(["train.py", "--config", str(TINY), *overrides(run_dir, *RUN, *extra)], env_extra)


def _error_line(proc, *fragments: str) -> str:
    """The one `error:` line of a user error (exit 2, no traceback), holding every fragment."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` (relative path -> digest)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("safety") / "run"
    proc = run_train(run_dir, *RUN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    return copy


# --------------------------------------------------------------------------- config mistakes

CONFIG_MISTAKES = {
    "unknown key": (("train.stepz=3",), ["unknown config key 'train.stepz'", "'train.steps'"]),
    "bad value": (("train.steps=-1",), ["train.steps=-1 must be >= 0"]),
    "override not YAML": (("train.steps=[",), ["override 'train.steps=['", "not YAML"]),
    "relative source": (("model.source=./nowhere-h6",), ["model.source='./nowhere-h6'", "exist"]),
    "source under a local dir": (("model.source=tests/nowhere",), ["'tests/nowhere' does not"]),
    "offline hub id": (("model.source=nobody-h6/tiny",), ["'nobody-h6/tiny'", "offline"]),
    "tokenizer path": (
        ("tokenizer.kind=hf", "tokenizer.path=./nowhere-h6"),
        ["tokenizer.path='./nowhere-h6' does not exist"],
    ),
    "data file": (("data.train_files=[tests/data/nowhere.jsonl]",), ["nowhere.jsonl", "exist"]),
    "mesh over more devices": (("mesh.data=2", "mesh.fsdp=1"), ["need 2 devices but 1 are"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_MISTAKES))
def test_train_config_mistake_is_one_error_line(case, tmp_path):
    extra, fragments = CONFIG_MISTAKES[case]
    proc = _train(tmp_path / "run", *extra, env_extra={"HF_HUB_OFFLINE": "1"})
    _error_line(proc, *fragments)
    assert not (tmp_path / "run").exists()  # nothing written for a refused start


def test_missing_or_malformed_config_file(tmp_path):
    _error_line(_run(["train.py", "--config", str(tmp_path / "no.yaml")]), "no.yaml", "not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [steps\n")
    _error_line(_run(["train.py", "--config", str(bad)]), "bad.yaml", "not valid YAML")


def test_debug_flag_and_environment_show_the_traceback(tmp_path):
    for args, env in ((["--debug"], {}), ([], {"ALMOL_JAX_DEBUG": "1"})):
        proc = _run(["train.py", *args, "--config", str(TINY), "train.stepz=3"], env)
        assert proc.returncode == 2
        assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr
        assert sum(line.startswith("error:") for line in proc.stderr.splitlines()) == 1


def test_a_bug_keeps_its_traceback_and_exit_1(tmp_path):
    code = (
        "import sys; sys.path.insert(0, '.'); import train, almol_jax.train.loop as loop\n"
        "def boom(cfg, **kw): raise RuntimeError('boom: a bug')\n"
        "loop.run_training = boom\n"
        f"sys.exit(train.main(['--config', {str(TINY)!r}, 'output_dir={tmp_path / 'r'}']))\n"
    )
    proc = _run(["-c", code])
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" in proc.stderr and "RuntimeError: boom: a bug" in proc.stderr
    assert not any(line.startswith("error:") for line in proc.stderr.splitlines())


def test_eval_and_preferences_user_errors(tmp_path):
    proc = _run(["eval.py", "--task", "caption2smiles", "--predictions", str(tmp_path / "p.tsv")])
    _error_line(proc, "p.tsv", "does not exist")
    nowhere = str(tmp_path / "nowhere")
    _error_line(_run(["eval.py", "--checkpoint", nowhere, "--no-fcd"]), "neither a run directory")
    proc = _run(
        [
            "-m",
            "almol_jax.preferences",
            "self-generated",
            "--checkpoint",
            nowhere,
            "--out",
            "x.jsonl",
        ]
    )
    _error_line(proc, "nowhere", "neither a run directory")


# --------------------------------------------------------------------------- run directories


def test_refused_resume_names_each_key_and_writes_nothing(tiny_run):
    before = _hashes(tiny_run)
    proc = _train(tiny_run, "model.overrides.num_hidden_layers=3", "objective.beta=0.2")
    _error_line(
        proc,
        "model.num_hidden_layers: 2 -> 3",
        "objective.beta: 0.1 -> 0.2",
        "output_dir",
        "checkpoint.resume=false",
    )
    assert "lora." not in proc.stderr.splitlines()[-1]  # unchanged keys are not listed
    assert _hashes(tiny_run) == before
    # same trainables, but the data iterator's state does not fit: refused at restore, unchanged
    proc = _train(tiny_run, "train.micro_batch_size=2")
    _error_line(proc, "does not fit this config", "global_batch=8", "output_dir")
    assert _hashes(tiny_run) == before


def test_compatible_resume_keeps_the_config_history(run_copy):
    proc = _train(run_copy, "train.steps=3", "train.eval_every=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [
        json.loads(line) for line in (run_copy / "config_history.jsonl").read_text().splitlines()
    ]
    assert [h["start_step"] for h in history] == [0, 2]
    assert [h["config"]["train"]["steps"] for h in history] == [2, 3]
    from almol_jax.config import load_config
    from almol_jax.run.checkpoint import latest_step

    assert load_config(run_copy / "config.yaml").train.steps == 3
    assert latest_step(run_copy) == 3


def test_adapters_are_not_loaded_onto_another_base(run_copy):
    """A config.yaml edited to another random-init base (seed) is refused by eval.py and the
    preference builder; --allow-other-base (allow_other_base=True) loads it anyway."""
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0\n", "seed: 1\n", 1))
    before = _hashes(run_copy)
    proc = _run(["eval.py", "--checkpoint", str(run_copy), "--no-fcd"])
    _error_line(proc, "another base", "base.seed: 0 -> 1", "--allow-other-base")
    cmd = ["-m", "almol_jax.preferences", "self-generated", "--checkpoint", str(run_copy)]
    _error_line(_run([*cmd, "--out", str(run_copy.parent / "x.jsonl")]), "base.seed: 0 -> 1")
    export = ["-m", "almol_jax.export", "--checkpoint", str(run_copy), "--format", "merged"]
    _error_line(_run([*export, "--out", str(run_copy.parent / "refused")]), "base.seed: 0 -> 1")
    assert not (run_copy.parent / "refused").exists()
    assert _hashes(run_copy) == before
    # allowed: the model loads, and the command stops later at the config's empty test split
    proc = _run(["eval.py", "--checkpoint", str(run_copy), "--no-fcd", "--allow-other-base"])
    _error_line(proc, "split 'test' of the config has no rows")
    from almol_jax.run.restore import restore_for_inference

    cfg, _, _ = restore_for_inference(run_copy, allow_other_base=True)
    assert cfg.seed == 1
    allowed = run_copy.parent / "allowed"
    done = _run([*export, "--out", str(allowed), "--allow-other-base"])
    assert done.returncode == 0, done.stderr
    assert (allowed / "config.json").is_file()


def test_checkpoint_meta_records_the_fingerprint(tiny_run):
    from almol_jax.config import load_config
    from almol_jax.run.checkpoint import latest_step, read_meta
    from almol_jax.run.fingerprint import FINGERPRINT, run_fingerprint

    meta = read_meta(tiny_run, latest_step(tiny_run))
    recorded = meta[FINGERPRINT]
    assert recorded == run_fingerprint(load_config(tiny_run / "config.yaml"))
    assert recorded["model.num_hidden_layers"] == 2 and recorded["base.seed"] == 0
    assert recorded["tokenizer.kind"] == "byte" and recorded["objective.name"] == "cpo"


def test_hf_base_identity_follows_config_and_tensor_shapes(tmp_path):
    from hf_fixtures import make_hf_llama

    from almol_jax.run.fingerprint import base_identity

    _, ckpt = make_hf_llama(tmp_path / "a", num_hidden_layers=1)
    first = base_identity(ckpt)
    assert first["base.source"] == str(ckpt.resolve())
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(config, rms_norm_eps=1e-6)))
    edited = base_identity(ckpt)
    assert edited["base.config_sha256"] != first["base.config_sha256"]
    assert edited["base.weights_sha256"] == first["base.weights_sha256"]
    _, other = make_hf_llama(tmp_path / "b", num_hidden_layers=2)
    assert base_identity(other)["base.weights_sha256"] != first["base.weights_sha256"]


# --------------------------------------------------------------------------- validation loss


def test_non_finite_validation_loss_is_reported_and_never_best(tmp_path, monkeypatch, caplog):
    """Validation at steps 1 and 2; step 2's loss is made NaN: its record says so (null loss, as
    strict JSON has no NaN, and eval/non_finite), a warning line too, and step 1 stays the best
    checkpoint although step 2 is the latest."""
    from train_runs import three_step_config

    from almol_jax.train import loop
    from almol_jax.train.metrics_log import read_metrics

    real = loop.validate
    calls = []

    def validate(*args):
        metrics = real(*args)
        calls.append(metrics["eval/loss"])
        return dict(metrics, **{"eval/loss": math.nan}) if len(calls) == 2 else metrics

    monkeypatch.setattr(loop, "validate", validate)
    cfg = three_step_config(tmp_path, "train.steps=2", "train.eval_every=1")
    with caplog.at_level("WARNING", logger="almol_jax"):
        summary = loop.run_training(cfg)
    assert len(calls) == 2 and math.isfinite(calls[1])  # the real loss was finite
    evals = [r for r in read_metrics(tmp_path) if "eval/loss" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert evals[1]["eval/loss"] is None and evals[1]["eval/non_finite"] == "eval/loss=nan"
    assert math.isfinite(evals[0]["eval/loss"]) and "eval/non_finite" not in evals[0]
    assert any("step 2" in m and "not finite" in m for m in caplog.messages)
    assert summary["latest_step"] == 2 and summary["best_step"] == 1


# --------------------------------------------------------------------------- sources, security


def test_source_rule(tmp_path, monkeypatch):
    from almol_jax.errors import ConfigError, UserError
    from almol_jax.hub import local_or_hub, resolve_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert local_or_hub("models", "model.source") == Path("models")
    assert local_or_hub("owner/name", "model.source") == "owner/name"  # a Hub id
    for missing in ("./owner/name", "/owner/name", "models/name", "~/nowhere-h6", "gpt2", "a/b/c"):
        with pytest.raises(ConfigError, match=f"model.source='{missing}' does not exist"):
            local_or_hub(missing, "model.source")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline"):
        resolve_dir("owner/name", "model.source", ("*.json",))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        resolve_dir("file", "model.source", ("*.json",))


def test_pickle_only_checkpoint_is_refused(tmp_path):
    source = tmp_path / "torch_model"
    source.mkdir()
    llama = {"model_type": "llama", "vocab_size": 260, "hidden_size": 64, "num_attention_heads": 4}
    (source / "config.json").write_text(json.dumps(llama))
    (source / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    proc = _train(tmp_path / "run", f"model.source={source}")
    _error_line(proc, "pytorch_model.bin", "safetensors only")
    assert not (tmp_path / "run").exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_remote_code_no_pickles():
    """Every transformers Auto*.from_pretrained call passes trust_remote_code=False, nothing
    passes True, and no library file loads a pickle (torch.load / pickle.load)."""
    auto_calls = 0
    for path in sorted([*(REPO / "almol_jax").rglob("*.py"), REPO / "train.py", REPO / "eval.py"]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call, func in _calls(tree):
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            kwargs = {k.arg: ast.unparse(k.value) for k in call.keywords}
            assert kwargs.get("trust_remote_code") in (None, "False"), where
            if func.startswith("Auto") and func.endswith(".from_pretrained"):
                auto_calls += 1
                assert kwargs.get("trust_remote_code") == "False", where
            assert func not in ("torch.load", "pickle.load", "pickle.loads"), where
    assert auto_calls >= 3  # the tokenizer loaders: configured, saved in a run, SentencePiece


def test_readme_states_the_security_rules():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Security") :]
    for rule in ("safetensors", "trust_remote_code", "HF_HUB_OFFLINE", "owner/name"):
        assert rule in section, rule
    assert os.path.exists(REPO / "almol_jax" / "hub.py")
