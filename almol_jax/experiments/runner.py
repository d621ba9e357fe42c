"""The experiment runner: the arms' stages in order, skipping those already finished.

Order: ``sft_full`` (train, export merged, evaluate), ``weak`` (train, evaluate), then per seed:
the 10% subset and the weak system's greedy outputs on it (eval.py), its triplets (the
from-predictions builder), and each LoRA arm (train from sft_full's export, evaluate). Every
stage is the project's own command (stages.py); one line per finished stage names the arm, the
stage and its time, and a bar follows the stage while it runs. Then the report (report.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from almol_jax.directions import DIRECTIONS
from almol_jax.experiments.arms import (
    DataFiles,
    Layout,
    arm_run_config,
    resolve_data,
    subset_eval_config,
    write_config,
)
from almol_jax.experiments.config import BASE_ARMS, COUNTERPART, SEEDED_ARMS, ExperimentConfig
from almol_jax.experiments.stages import (
    files_progress,
    is_done,
    mark_done,
    run_stage,
    set_aside_if_stale,
    stage_environment,
    stage_key,
    stage_times,
    training_progress,
)
from almol_jax.experiments.subset import builder_args, write_subset


@dataclass
class Runner:
    """Runs the stages of one experiment directory and records what each took."""

    exp: ExperimentConfig
    layout: Layout
    data: DataFiles
    show: bool = True
    total_stages: int = 0
    done_stages: int = 0
    timings: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)

    def _line(self, tag: str, stage: str, times: dict[str, float], resumed: bool) -> None:
        self.done_stages += 1
        self.timings.setdefault(tag, {})[stage] = times
        seconds = times["wall"]
        if resumed:
            self.resumed.append(f"{tag}/{stage}")
        if self.show:
            how = (
                f"already done (took {_clock(seconds)})"
                if resumed
                else f"done in {_clock(seconds)}"
            )
            n, total = self.done_stages, self.total_stages
            print(f"[{n:>2}/{total}] {tag:<18} {stage:<12} {how}", flush=True)

    def _stage(self, tag, stage, directory, parts, args, total, unit, progress, fresh=False):
        """Runs one stage unless finished with the same inputs. ``fresh``: a directory finished
        with other inputs is set aside first (a training run must not resume from them)."""
        key = stage_key(list(parts), args)
        moved = set_aside_if_stale(directory, key) if fresh else None
        if moved is not None:  # printed even without progress lines: a run was moved
            print(f"{tag} {stage}: its inputs changed; the previous run moved to {moved}")
        if is_done(directory, key):
            self._line(tag, stage, stage_times(directory), resumed=True)
            return
        times = run_stage(
            f"{tag} {stage}",
            args,
            self.layout.log(f"{tag}-{stage}"),
            total=total,
            unit=unit,
            progress=progress,
            show=self.show,
            env=stage_environment(self.layout.compile_cache()),
        )
        mark_done(directory, key, times, args)
        self._line(tag, stage, times, resumed=False)

    def train(self, arm: str, seed: int | None, config: Path, inputs: list[Path]) -> None:
        run_dir = self.layout.run_dir(arm, seed)
        steps = int(self.exp.arm_config(arm).get("train", {}).get("steps", 0)) or 1
        args = ["train.py", "--config", str(config)]
        self._stage(
            self.layout.tag(arm, seed), "train", run_dir, [config, *inputs], args,
            steps, "step", training_progress(run_dir), fresh=True,
        )  # fmt: skip

    def evaluate(self, tag: str, stage: str, config: Path, run_dir: Path, out: Path) -> None:
        args = ["eval.py", "--config", str(config), "--checkpoint", str(run_dir)]
        args += ["--split", "test", "--output-dir", str(out), "--no-plots"]
        reports = [out / d / "metrics.json" for d in DIRECTIONS]
        marker = run_dir / ".experiment_stage.json"
        self._stage(
            tag, stage, out, [config, marker], args, len(reports), "direction",
            files_progress(reports), fresh=True,
        )  # fmt: skip

    def arm(self, arm: str, seed: int | None, inputs: list[Path]) -> None:
        """Write the arm's config, train it, evaluate it on the test split."""
        layout = self.layout
        config = write_config(
            arm_run_config(self.exp, layout, self.data, arm, seed), layout.config(arm, seed)
        )
        self.train(arm, seed, config, inputs)
        self.evaluate(
            layout.tag(arm, seed), "evaluate", config, layout.run_dir(arm, seed),
            layout.eval_dir(arm, seed),
        )  # fmt: skip

    def preferences(self, seed: int) -> Path:
        """The seed's subset, the weak system's outputs on it, and the triplets built from them."""
        layout = self.layout
        subset = layout.subset_pairs(seed)
        write_subset(self.data.train_pairs, self.exp.subset_fraction, seed, subset)
        weak_cfg = arm_run_config(self.exp, layout, self.data, "weak", None)
        config = write_config(
            subset_eval_config(weak_cfg, layout, seed), layout.subset_config(seed)
        )
        tag = f"weak-seed{seed}"
        self.evaluate(
            tag, "rejections", config, layout.run_dir("weak", None), layout.weak_outputs(seed)
        )
        out = layout.preferences(seed)
        args = builder_args(layout.weak_outputs(seed), subset, out, system="weak")
        inputs = [layout.weak_outputs(seed) / d / "predictions.tsv" for d in DIRECTIONS]
        self._stage(tag, "triplets", layout.seed_dir(seed), [subset, *inputs], args, 1, "file",
                    files_progress([out]))  # fmt: skip
        return out

    def run(self) -> None:
        self.total_stages = 2 * len(BASE_ARMS) + self.exp.seeds * (2 + 2 * len(SEEDED_ARMS))
        for arm in BASE_ARMS:
            self.arm(arm, None, [])
        counterpart = self.layout.run_dir(COUNTERPART, None) / ".experiment_stage.json"
        for seed in range(self.exp.seeds):
            prefs = self.preferences(seed)
            for arm in SEEDED_ARMS:
                self.arm(arm, seed, [prefs, counterpart])


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def run_experiment(exp: ExperimentConfig, output_dir: str | Path, *, show: bool = True) -> dict:
    """Runs (or resumes) the experiment in ``output_dir``; writes and returns the report."""
    from almol_jax.experiments.report import write_report

    layout = Layout(Path(output_dir).absolute())
    layout.root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = resolve_data(exp)
    record = {"source": exp.source, "seeds": exp.seeds, "data": vars(data)}
    (layout.root / "experiment.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    runner = Runner(exp, layout, data, show=show)
    runner.run()
    wall = time.perf_counter() - start
    return write_report(exp, layout, runner.timings, runner.resumed, wall, show=show)
