"""The experiment's stage graph (almol_jax/experiments/schedule.py) and one stage's child
process (stages.run_stage): stages start only after what they need, at most ``jobs`` at a
time, in the order added; a failure stops the running stages and starts no other; a stopped
child is terminated; each stage's CPU seconds are its own child's, whatever runs beside it;
the command under SIGTERM stops both stages it runs and exits 130.
"""

from __future__ import annotations

import _thread
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from almol_jax.errors import UserError
from almol_jax.experiments.schedule import Cancelled, Task, run_graph
from almol_jax.experiments.stages import run_stage, stage_jobs

REPO = Path(__file__).resolve().parents[1]


class Recorder:
    """Tasks that note when they start and end, and how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.running = 0
        self.most = 0

    def task(self, name: str, needs=(), seconds: float = 0.2, fail: bool = False) -> Task:
        def run(slot) -> None:
            with self.lock:
                self.events.append(("start", name))
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                if slot.stop.wait(seconds):
                    raise Cancelled(name)
                if fail:
                    raise UserError(f"{name} failed")
            finally:
                with self.lock:
                    self.running -= 1
                    self.events.append(("end", name))

        return Task(name, run, tuple(needs))

    def index(self, kind: str, name: str) -> int:
        return self.events.index((kind, name))


def test_stages_wait_for_what_they_need_and_run_jobs_at_once():
    rec = Recorder()
    tasks = [
        rec.task("a", seconds=0.6),
        rec.task("b", seconds=0.1),
        rec.task("c", needs=["b"]),
        rec.task("d", needs=["a", "c"]),
        rec.task("e", needs=["b"]),
    ]
    run_graph(tasks, jobs=2)
    assert rec.most == 2 and len(rec.events) == 10
    for name, needs in (("c", "b"), ("e", "b"), ("d", "a"), ("d", "c")):
        assert rec.index("end", needs) < rec.index("start", name), (name, needs)
    # c and e became ready together when b ended: c, added first, starts first
    assert rec.index("start", "c") < rec.index("start", "e")
    one = Recorder()
    run_graph([one.task(n, seconds=0.05) for n in "abcd"], jobs=1)
    assert one.most == 1
    assert [n for kind, n in one.events if kind == "start"] == list("abcd")


def test_stages_that_others_wait_on_start_first():
    """Ready together, "train" (an evaluation waits on it) goes before "report" (nothing
    does), though added after it; "deep" (two stages wait on it, one through the other) before
    "train"; ties keep the order added."""
    rec = Recorder()
    tasks = [
        rec.task("report", seconds=0.05),
        rec.task("train", seconds=0.05),
        rec.task("evaluate", needs=["train"], seconds=0.05),
        rec.task("deep", seconds=0.05),
        rec.task("mid", needs=["deep"], seconds=0.05),
        rec.task("end", needs=["mid"], seconds=0.05),
        rec.task("other", seconds=0.05),
    ]
    run_graph(tasks, jobs=1)
    started = [n for kind, n in rec.events if kind == "start"]
    assert started == ["deep", "train", "mid", "report", "evaluate", "end", "other"]


def test_a_failed_stage_stops_the_running_ones_and_starts_no_other():
    rec = Recorder()
    tasks = [
        rec.task("long", seconds=60),
        rec.task("bad", seconds=0.2, fail=True),
        rec.task("after_bad", needs=["bad"]),
        rec.task("independent", needs=["long"]),
    ]
    start = time.perf_counter()
    with pytest.raises(UserError, match="bad failed"):
        run_graph(tasks, jobs=2)
    assert time.perf_counter() - start < 10  # "long" was stopped, not waited for
    started = {n for kind, n in rec.events if kind == "start"}
    assert started == {"long", "bad"}
    assert ("end", "long") in rec.events


def test_ctrl_c_stops_the_running_stages_and_is_raised():
    rec = Recorder()
    interrupt = Task("interrupt", lambda slot: (time.sleep(0.3), _thread.interrupt_main()))
    # Ctrl-C as a terminal run gets it: a shell that starts the tests in the background hands
    # them SIGINT ignored, and interrupt_main then does nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            tasks = [rec.task("long", seconds=60), interrupt, rec.task("next", ["long"])]
            run_graph(tasks, jobs=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - start < 10
    assert rec.events == [("start", "long"), ("end", "long")]  # stopped; "next" never began


def test_a_graph_whose_stage_needs_a_later_one_is_refused():
    rec = Recorder()
    with pytest.raises(ValueError, match="not added before it"):
        run_graph([rec.task("a", needs=["b"]), rec.task("b")], jobs=2)


BURN = "import time; t = time.process_time()\nwhile time.process_time() - t < {s}: pass"


def test_each_stage_counts_its_own_childs_cpu_seconds(tmp_path):
    """Two stages at once: one burns 1.5 CPU s, one sleeps. Each is charged its own child's
    CPU time (the getrusage of all children together would charge the sleeper the burner's)."""
    results: dict[str, dict[str, float]] = {}

    def stage(name: str, code: str) -> None:
        results[name] = run_stage(
            name, ["-c", code], tmp_path / f"{name}.log", total=1, unit="x",
            progress=lambda: 0, show=False,
        )  # fmt: skip

    burner = threading.Thread(target=stage, args=("burn", BURN.format(s=1.5)))
    sleeper = threading.Thread(target=stage, args=("sleep", "import time; time.sleep(2.5)"))
    sleeper.start()
    time.sleep(0.2)
    burner.start()
    burner.join()
    sleeper.join()
    assert 1.5 <= results["burn"]["cpu"] < 2.5  # + the interpreter's start-up
    assert results["sleep"]["cpu"] < 0.5
    assert results["sleep"]["wall"] >= 2.5


def test_a_stopped_stage_terminates_its_child(tmp_path):
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    start = time.perf_counter()
    with pytest.raises(Cancelled):
        run_stage(
            "sleeper", ["-c", "import time; time.sleep(60)"], tmp_path / "s.log", total=1,
            unit="x", progress=lambda: 0, show=False, stop=stop,
        )  # fmt: skip
    assert time.perf_counter() - start < 10


def test_a_failed_child_is_one_user_error_naming_its_log(tmp_path):
    log = tmp_path / "bad.log"
    with pytest.raises(UserError, match=r"bad failed \(exit status 3\)") as err:
        run_stage(
            "bad", ["-c", "import sys; print('oops'); sys.exit(3)"], log, total=1, unit="x",
            progress=lambda: 0, show=False,
        )  # fmt: skip
    assert str(log) in str(err.value) and "oops" in str(err.value)


def test_jobs_auto_is_two_on_the_cpu_and_a_number_is_taken_as_given():
    assert stage_jobs("auto", {"JAX_PLATFORMS": "cpu"}) == 2
    probe_env = {"PATH": "", "JAX_PLATFORMS": ""}  # the child asks JAX itself: no GPU here
    assert stage_jobs("auto", {**probe_env, "PYTHONPATH": ":".join(sys.path)}) == 2
    assert stage_jobs("3", {}) == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(UserError, match="--jobs must be auto or a whole number"):
            stage_jobs(bad, {})


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_sigterm_stops_both_running_stages_and_says_how_to_resume(tmp_path):
    """The command under SIGTERM (a scheduler's stop, or Ctrl-C) while its first two stages
    (sft_full's and weak's training) run side by side: both children end, nothing is left
    running, and the command exits 130 saying how to resume."""
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "almol_jax.experiments", "almol-mini", "--quick"]
    cmd += ["--no-progress", "--jobs", "2", "--output-dir", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    children = _children(proc.pid)
    assert len(children) == 2, proc.communicate(timeout=60)
    assert sorted(p.name for p in (out / "logs").glob("*.log")) == [
        "sft_full-train.log", "weak-train.log",
    ]  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted: run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    assert not (out / "runs" / "sft_full" / ".experiment_stage.json").exists()  # not finished
