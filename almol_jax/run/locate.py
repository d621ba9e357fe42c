"""Which run and which checkpoint step a path names: the one home of "best, else latest".

Evaluation, export, preference building, restore and the after-training code all take either a
run directory (holding config.yaml) or one of its `<run_dir>/checkpoints/<step>` folders, plus a
step choice: "best" (lowest validation loss, else the latest when no step was validated),
"latest", or a number. `locate_checkpoint` turns that into (run_dir, step). A path that names no run, or a run without
a checkpoint, is a RunDirectoryError (a UserError, and a ValueError).
"""

from __future__ import annotations

from pathlib import Path

from almol_jax.errors import UserError
from almol_jax.run.checkpoint import CHECKPOINTS, best_step, latest_step

STEP_CHOICES = ("best", "latest")


class RunDirectoryError(UserError, ValueError):
    """A run directory that is missing, holds no checkpoint, or does not fit the config."""


def run_and_step(path: str | Path) -> tuple[Path, int | None]:
    """(run_dir, explicit step or None) of a run directory or a <run_dir>/checkpoints/<step>."""
    path = Path(path).absolute()
    if (path / "config.yaml").is_file():
        return path, None
    run_dir = path.parent.parent
    if (
        path.name.isdigit()
        and path.parent.name == CHECKPOINTS
        and (run_dir / "config.yaml").is_file()
    ):
        return run_dir, int(path.name)
    raise RunDirectoryError(
        f"checkpoint {str(path)!r} is neither a run directory (with config.yaml) nor a "
        f"<run_dir>/{CHECKPOINTS}/<step> folder"
    )


def choose_step(run_dir: str | Path, step: str | int = "best") -> int:
    """The checkpoint step `step` names in `run_dir`: "best" (lowest validation loss, else the
    latest), "latest", or a number. Raises RunDirectoryError when the run holds no checkpoint."""
    if step == "best":
        chosen = best_step(run_dir)
        chosen = latest_step(run_dir) if chosen is None else chosen
    elif step == "latest":
        chosen = latest_step(run_dir)
    else:
        chosen = int(step)
    if chosen is None:
        raise RunDirectoryError(f"run directory {str(run_dir)!r} holds no complete checkpoint")
    return chosen


def locate_checkpoint(path: str | Path, step: str | int = "best") -> tuple[Path, int]:
    """(run_dir, step) of a run directory (then `step` chooses, see `choose_step`) or of a
    `<run_dir>/checkpoints/<step>` folder (its own step; `step` is ignored)."""
    run_dir, explicit = run_and_step(path)
    return run_dir, explicit if explicit is not None else choose_step(run_dir, step)
