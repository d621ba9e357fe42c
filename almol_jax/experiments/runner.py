"""The experiment runner: the arms' stages as a graph, skipping those already finished.

The stages: ``sft_full`` (train, export merged, evaluate), ``weak`` (train, evaluate), then per
seed: the 10% subset and the weak system's greedy outputs on it (eval.py, after weak's
training), its triplets (the from-predictions builder), and each LoRA arm (train from
sft_full's export once sft_full is trained and the triplets exist, then evaluate). Each starts
when what it reads is there, ``jobs`` at a time (schedule.py; 2 on a CPU, 1 on an accelerator).
Every stage is the project's own command (stages.py); one line per finished stage names the
arm, the stage and its time, and a bar per running stage follows it. Then the report
(report.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm.auto import tqdm

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
from almol_jax.experiments.schedule import Slot, Task, run_graph
from almol_jax.experiments.stages import (
    MARKER,
    files_progress,
    is_done,
    mark_done,
    run_stage,
    set_aside_if_stale,
    stage_environment,
    stage_jobs,
    stage_key,
    stage_times,
    training_progress,
)
from almol_jax.experiments.subset import builder_args, write_subset


@dataclass
class Runner:
    """Runs the stages of one experiment directory, up to ``jobs`` at once, and records what
    each took."""

    exp: ExperimentConfig
    layout: Layout
    data: DataFiles
    show: bool = True
    jobs: int = 1
    total_stages: int = 0
    done_stages: int = 0
    timings: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _say(self, text: str) -> None:
        """A line above the bars (tqdm.write keeps them intact)."""
        with self.lock:
            tqdm.write(text)

    def _line(self, tag: str, stage: str, times: dict[str, float], resumed: bool) -> None:
        with self.lock:
            self.done_stages += 1
            self.timings.setdefault(tag, {})[stage] = times
            if resumed:
                self.resumed.append(f"{tag}/{stage}")
            n, total = self.done_stages, self.total_stages
        if self.show:
            seconds = times["wall"]
            how = (
                f"already done (took {_clock(seconds)})"
                if resumed
                else f"done in {_clock(seconds)}"
            )
            self._say(f"[{n:>2}/{total}] {tag:<18} {stage:<12} {how}")

    def _stage(self, tag, stage, directory, parts, args, total, unit, progress, fresh=False,
               slot: Slot | None = None):  # fmt: skip
        """Runs one stage unless finished with the same inputs. ``fresh``: a directory finished
        with other inputs is set aside first (a training run must not resume from them).
        ``slot``: where its bar goes and what stops it (schedule.py; None: line 0, no stop)."""
        key = stage_key(list(parts), args)
        moved = set_aside_if_stale(directory, key) if fresh else None
        if moved is not None:  # printed even without progress lines: a run was moved
            self._say(f"{tag} {stage}: its inputs changed; the previous run moved to {moved}")
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
            env=stage_environment(self.layout.compile_cache(), self.jobs),
            position=slot.position if slot else 0,
            stop=slot.stop if slot else None,
        )
        mark_done(directory, key, times, args)
        self._line(tag, stage, times, resumed=False)

    def _add(self, tag, stage, directory, parts, args, total, unit, progress, needs, fresh=False):
        """Adds the stage to the graph; returns its task name (what later stages need)."""
        name = f"{tag}/{stage}"

        def run(slot: Slot) -> None:
            self._stage(tag, stage, directory, parts, args, total, unit, progress, fresh, slot)

        self.tasks.append(Task(name, run, tuple(needs)))
        return name

    def train(self, arm: str, seed: int | None, config: Path, inputs: list[Path], needs) -> str:
        run_dir = self.layout.run_dir(arm, seed)
        steps = int(self.exp.arm_config(arm).get("train", {}).get("steps", 0)) or 1
        args = ["train.py", "--config", str(config)]
        return self._add(
            self.layout.tag(arm, seed), "train", run_dir, [config, *inputs], args,
            steps, "step", training_progress(run_dir), needs, fresh=True,
        )  # fmt: skip

    def evaluate(self, tag: str, stage: str, config: Path, run_dir: Path, out: Path, needs) -> str:
        args = ["eval.py", "--config", str(config), "--checkpoint", str(run_dir)]
        args += ["--split", "test", "--output-dir", str(out), "--no-plots"]
        reports = [out / d / "metrics.json" for d in DIRECTIONS]
        marker = run_dir / MARKER
        return self._add(
            tag, stage, out, [config, marker], args, len(reports), "direction",
            files_progress(reports), needs, fresh=True,
        )  # fmt: skip

    def arm(self, arm: str, seed: int | None, inputs: list[Path], needs=()) -> str:
        """Write the arm's config; add its training and its evaluation on the test split.
        Returns the training's task name."""
        layout = self.layout
        config = write_config(
            arm_run_config(self.exp, layout, self.data, arm, seed), layout.config(arm, seed)
        )
        trained = self.train(arm, seed, config, inputs, needs)
        self.evaluate(
            layout.tag(arm, seed), "evaluate", config, layout.run_dir(arm, seed),
            layout.eval_dir(arm, seed), [trained],
        )  # fmt: skip
        return trained

    def preferences(self, seed: int, weak: str) -> tuple[Path, str]:
        """The seed's subset, the weak system's outputs on it (after ``weak``, its training)
        and the triplets built from them: the triplets' path and task name."""
        layout = self.layout
        subset = layout.subset_pairs(seed)
        write_subset(self.data.train_pairs, self.exp.subset_fraction, seed, subset)
        weak_cfg = arm_run_config(self.exp, layout, self.data, "weak", None)
        config = write_config(
            subset_eval_config(weak_cfg, layout, seed), layout.subset_config(seed)
        )
        tag = f"weak-seed{seed}"
        outputs = self.evaluate(
            tag, "rejections", config, layout.run_dir("weak", None), layout.weak_outputs(seed),
            [weak],
        )  # fmt: skip
        out = layout.preferences(seed)
        args = builder_args(layout.weak_outputs(seed), subset, out, system="weak")
        inputs = [layout.weak_outputs(seed) / d / "predictions.tsv" for d in DIRECTIONS]
        name = self._add(tag, "triplets", layout.seed_dir(seed), [subset, *inputs], args, 1,
                         "file", files_progress([out]), [outputs])  # fmt: skip
        return out, name

    def run(self) -> None:
        """Adds every stage to the graph (each after the stages it reads) and runs it."""
        self.total_stages = 2 * len(BASE_ARMS) + self.exp.seeds * (2 + 2 * len(SEEDED_ARMS))
        trained = {arm: self.arm(arm, None, []) for arm in BASE_ARMS}
        counterpart = self.layout.run_dir(COUNTERPART, None) / MARKER
        for seed in range(self.exp.seeds):
            prefs, triplets = self.preferences(seed, trained["weak"])
            for arm in SEEDED_ARMS:
                self.arm(arm, seed, [prefs, counterpart], [trained[COUNTERPART], triplets])
        run_graph(self.tasks, self.jobs)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def run_experiment(
    exp: ExperimentConfig, output_dir: str | Path, *, show: bool = True, jobs: str = "auto"
) -> dict:
    """Runs (or resumes) the experiment in ``output_dir``, ``jobs`` stages at a time (a number,
    or auto: stages.stage_jobs); writes and returns the report."""
    from almol_jax.experiments.report import write_report

    layout = Layout(Path(output_dir).absolute())
    layout.root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = resolve_data(exp)
    record = {"source": exp.source, "seeds": exp.seeds, "data": vars(data)}
    (layout.root / "experiment.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    workers = stage_jobs(jobs, stage_environment(layout.compile_cache()))
    runner = Runner(exp, layout, data, show=show, jobs=workers)
    runner.run()
    wall = time.perf_counter() - start
    return write_report(exp, layout, runner.timings, runner.resumed, wall, jobs=workers, show=show)
