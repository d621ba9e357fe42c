"""Resuming a run safely: check first, restore next, write the run directory's records last.

`resumable_step` finds the newest checkpoint (checkpoint.resume) and compares its fingerprint
(run/fingerprint.py) with the config's, reading only; a mismatch is a RunDirectoryError naming
each differing key. `restore_run` restores the state and the data iterator, and turns a
checkpoint that does not fit into a RunDirectoryError too. Only then does `record_run` write:
config.yaml (the config of the newest start), a line in config_history.jsonl (every start's
config and first step, so a resumed run's changed keys, e.g. train.steps, are not lost), the
tokenizer and data_report.json. A refused resume leaves every file as it was.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from almol_jax.config import config_to_dict, dump_config, load_config
from almol_jax.run.checkpoint import latest_step, read_meta
from almol_jax.run.fingerprint import FINGERPRINT, check_resume
from almol_jax.run.locate import RunDirectoryError

CONFIG = "config.yaml"
CONFIG_HISTORY = "config_history.jsonl"
log = logging.getLogger(__name__)


def resumable_step(cfg, run_dir: Path, fingerprint: dict[str, Any]) -> int | None:
    """The checkpoint step to resume from (None: start afresh); RunDirectoryError when it was
    trained with another model, tokenizer, LoRA or objective. Writes nothing."""
    if not cfg.checkpoint.resume:
        return None
    step = latest_step(run_dir)
    if step is None:
        return None
    recorded = read_meta(run_dir, step).get(FINGERPRINT)
    if recorded is None:
        log.warning(
            "checkpoint %d of %s records no fingerprint (older run): unchecked", step, run_dir
        )
    check_resume(run_dir, step, recorded, fingerprint)
    return step


def restore_run(ckpt, step: int, state, data) -> tuple[Any, int]:
    """(restored state, first step) of checkpoint `step`; the data iterator is restored too."""
    try:
        state, meta = ckpt.restore(step, state)
        data.train.restore(meta["data"])
    except (ValueError, KeyError, TypeError) as err:
        raise RunDirectoryError(
            f"checkpoint {step} of {str(ckpt.directory.parent)!r} does not fit this config "
            f"({err}); nothing in the run directory was changed. Give another output_dir (or "
            "checkpoint.resume=false) to start a new run"
        ) from err
    return state, int(meta["step"])


def record_run(cfg, run_dir: Path, data, start: int) -> None:
    """config.yaml, a config_history.jsonl line, the tokenizer and data_report.json (primary)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    history = run_dir / CONFIG_HISTORY
    config_path = run_dir / CONFIG
    lines = []
    if not history.is_file() and config_path.is_file():  # a run from before the history
        try:
            old = config_to_dict(load_config(config_path))
            lines.append({"start_step": None, "source": CONFIG, "config": old})
        except ValueError:  # an unreadable old config is kept as text
            lines.append({"start_step": None, "source": CONFIG, "text": config_path.read_text()})
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines.append({"start_step": start, "started": started, "config": config_to_dict(cfg)})
    with open(history, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    dump_config(cfg, config_path)
    data.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    data.report.to_json(run_dir / "data_report.json")
