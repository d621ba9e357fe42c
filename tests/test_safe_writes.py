"""Writes that cannot half-happen (issue 19): the export is renamed into place whole, a non-empty
target is refused unless overwritten whole, a failed write leaves the target as it was; only
finished checkpoints are chosen or restored (planted unfinished ones are skipped and set aside);
a truncated last line of metrics.jsonl is dropped with a warning on reading and resuming."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import subprocess
import sys

import jax
import optax
import pytest
from flax import nnx
from train_runs import REPO, env_with_devices, tiny_lora_run

from almol_jax.data.tokenizer import byte_tokenizer
from almol_jax.errors import UserError
from almol_jax.export import export_from_config, export_run
from almol_jax.model import LoRAParam
from almol_jax.run.checkpoint import INCOMPLETE, RunCheckpointer, best_step, latest_step
from almol_jax.run.disk import DiskWriteError
from almol_jax.run.locate import choose_step
from almol_jax.run.restore import restore_for_inference
from almol_jax.train.metrics_log import read_metrics, truncate_metrics
from almol_jax.train.step import init_train_state


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny LoRA run directory with checkpoints 3 (val_loss 0.5) and 7 (val_loss 0.9)."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg, model = tiny_lora_run(run_dir)
    state = init_train_state(nnx.state(model, LoRAParam), optax.adam(1e-3))
    ckpt = RunCheckpointer(run_dir, async_save=False)
    for step, loss in ((3, 0.5), (7, 0.9)):
        shifted = state.replace(trainable=jax.tree.map(lambda x, s=step: x + s, state.trainable))
        ckpt.save(step, shifted, {"seed": 3}, val_loss=loss)
    ckpt.close()
    return run_dir, cfg, model


def _tree(path):
    """{relative path: bytes} of every file under `path` (its whole content)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "almol_jax.export", *map(str, args)],
        env=env_with_devices(1),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_one_error_line(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0]


def test_non_empty_target_is_refused_and_overwrite_replaces_it_whole(run, tmp_path):
    run_dir, _, _ = run
    fresh = export_run(run_dir, tmp_path / "fresh", "merged", "float32", "100KB")
    assert len(list(fresh.glob("model-*.safetensors"))) > 1  # several shards
    target = tmp_path / "target"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"an old single-file export")
    (target / "model-00001-of-00099.safetensors").write_bytes(b"an old shard")
    before = _tree(target)
    with pytest.raises(UserError, match="is not empty"):
        export_run(run_dir, target, "merged", "float32", "100KB")
    proc = _cli("--checkpoint", run_dir, "--out", target, "--dtype", "float32")
    _assert_one_error_line(proc, str(target), "--overwrite")
    assert _tree(target) == before  # refused: nothing written
    out = export_run(run_dir, target, "merged", "float32", "100KB", overwrite=True)
    assert out == target.absolute()
    assert _tree(target) == _tree(fresh)  # replaced whole: no old file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "target"]  # no temp folder


def test_a_failed_export_leaves_the_target_as_it_was(run, tmp_path, monkeypatch):
    run_dir, _, _ = run
    target = export_run(run_dir, tmp_path / "target", "merged", "float32", "5GB")
    before = _tree(target)
    import almol_jax.export.run as export_run_module

    def disk_full(model, out_dir, **kwargs):
        (out_dir / "model.safetensors").write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_run_module, "export_merged", disk_full)
    with pytest.raises(DiskWriteError, match=r"disk full: No space left on device; .* MiB free"):
        export_run(run_dir, target, "merged", "float32", "5GB", overwrite=True)
    assert _tree(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["target"]  # the temporary folder is gone


def test_export_at_end_replaces_the_runs_own_export_but_no_other_folder(run, tmp_path):
    run_dir, cfg, model = run
    import dataclasses

    target = tmp_path / "export"
    cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, dir=str(target)))
    export_from_config(cfg, model, byte_tokenizer())
    provenance = json.loads((target / "almol_jax_export.json").read_text())
    assert provenance == {"run_dir": str(run_dir.absolute())}
    (target / "stale-shard.safetensors").write_bytes(b"left by an earlier export")
    export_from_config(cfg, model, byte_tokenizer())  # the run's own export: replaced whole
    assert not (target / "stale-shard.safetensors").exists()
    assert (target / "config.json").is_file()
    # A model folder that is no export of this run (another run's, a base model) is refused.
    other = export_run(run_dir, tmp_path / "base-model", "merged", "float32", "5GB")
    (other / "almol_jax_export.json").unlink()
    before = _tree(other)
    cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, dir=str(other)))
    with pytest.raises(UserError, match="is not empty"):
        export_from_config(cfg, model, byte_tokenizer())
    assert _tree(other) == before


def test_unfinished_checkpoints_are_never_chosen_or_restored(run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    ckpts = run_dir / "checkpoints"
    # A step folder that lost its commit marker (a partial copy, a non-atomic file system) with
    # the best validation loss, and an interrupted save's temporary folder with a later step.
    shutil.copytree(ckpts / "3", ckpts / "9")
    (ckpts / "9" / "commit_success.txt").unlink()
    (ckpts / "9" / "metrics" / "metrics").write_text(json.dumps({"val_loss": 0.1}))
    shutil.copytree(ckpts / "7", ckpts / "11.orbax-checkpoint-tmp-1234")
    assert (latest_step(run_dir), best_step(run_dir)) == (7, 3)
    assert (choose_step(run_dir, "latest"), choose_step(run_dir, "best")) == (7, 3)
    reader = RunCheckpointer(run_dir, read_only=True)
    assert reader.latest_step() == 7
    with pytest.raises(UserError, match="no complete checkpoint 9"):
        reader.restore_trainable(9, None)
    _, model, _ = restore_for_inference(run_dir, step="latest")  # step 7: its adapters + 7
    _, want, _ = restore_for_inference(run_dir / "checkpoints" / "7")
    for a, b in zip(
        jax.tree.leaves(nnx.state(model, LoRAParam)),
        jax.tree.leaves(nnx.state(want, LoRAParam)),
        strict=True,
    ):
        assert (a == b).all()
    proc = _cli("--checkpoint", run_dir, "--out", tmp_path / "x", "--step", "9")
    _assert_one_error_line(proc, "no complete checkpoint 9")
    # A writable checkpointer (a resumed run) moves both aside before Orbax lists the steps.
    with caplog.at_level(logging.WARNING):
        RunCheckpointer(run_dir).close()
    assert sorted(p.name for p in ckpts.iterdir()) == ["3", "7"]
    assert sorted(p.name for p in (run_dir / INCOMPLETE).iterdir()) == [
        "11.orbax-checkpoint-tmp-1234",
        "9",
    ]
    assert "never restored" in caplog.text


def test_metrics_tolerate_a_truncated_last_line(tmp_path, caplog):
    lines = [json.dumps({"loss": 1.5, "step": s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"loss": 0.7, "st')
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert "metrics.jsonl:4: dropped a truncated last line" in caplog.text
    truncate_metrics(tmp_path, 2)  # what a resume from step 2 does
    assert (tmp_path / "metrics.jsonl").read_text() == lines[0] + "\n" + lines[1] + "\n"
    # A damaged line that is not the last one is an error naming it.
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n{oops\n" + lines[2] + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON object"):
        read_metrics(tmp_path)


def test_a_failed_metrics_write_is_a_disk_error(tmp_path):
    from almol_jax.train.metrics_log import MetricsLogger

    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(1, {"loss": 1.0})

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    logger._file.close()
    logger._file = FullDisk()
    with pytest.raises(DiskWriteError, match=r"could not write the metrics to .*metrics.jsonl"):
        logger.log(2, {"loss": 0.5})
    assert read_metrics(tmp_path) == [{"loss": 1.0, "step": 1}]
