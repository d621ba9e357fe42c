"""Train an ALMol model: `python train.py --config configs/tiny.yaml [key.sub=value ...]`.

Thin entry point: parses the config and overrides, runs almol_jax.train.loop.run_training and
prints its summary as JSON. Resumes from the newest checkpoint in output_dir by default
(checkpoint.resume=false starts afresh; a run directory whose checkpoints were trained on another
model, tokenizer, LoRA or objective is refused before anything in it is written). A user's
mistake ends with one `error: ...` line and exit status 2 (`--debug`: with its traceback). SIGTERM saves a checkpoint and exits 0; a non-finite loss
exits 1 with a message naming the step. With eval.at_end / export.at_end set (configs/demo.yaml),
almol_jax.after_training then evaluates step 0 and the best checkpoint, exports, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """train.py under the error policy: a user's mistake is one `error:` line and exit status 2
    (almol_jax.errors.run_command; `--debug` shows its traceback), a bug a traceback."""
    from almol_jax.errors import run_command

    return run_command(run, argv)


def run(argv: list[str]) -> int:
    """train.py's work; a user's mistake raises UserError."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML run config (default: all defaults)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save/restore at INFO

    from almol_jax.after_training import after_training, format_summary, resolve_builtin
    from almol_jax.config import load_config
    from almol_jax.cpu import runtime
    from almol_jax.seeds import PURPOSES
    from almol_jax.train.loop import run_training

    cfg = load_config(args.config, args.overrides)
    runtime.configure(cfg.runtime, training=True)  # before JAX starts its threads
    cfg = resolve_builtin(cfg)
    # the one seed of the run; every random draw comes from one of its keys by purpose
    logging.getLogger("almol_jax").info(
        "seed %d (keys by purpose: %s)", cfg.seed, ", ".join(PURPOSES)
    )
    try:
        summary = run_training(cfg)
    except FloatingPointError as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    if summary.get("stopped") is None and (cfg.eval.at_end or cfg.export.at_end):
        print("\n" + format_summary(after_training(cfg, summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
