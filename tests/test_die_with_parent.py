"""Nothing of a study outlives it: processes bound by die_with_parent die with their parent; fault hooks kill at the N-th hit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lt_utils.runtime import faults

from lt_utils.runtime import progress_events
from lt_utils.cli.progress_display import Plan, StageView, Watcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-m", "lt_utils.runtime.die_with_parent", "--", "sleep", "600"],
                         env={**__import__("os").environ, "JPY_PARENT_PID": str(__import__("os").getpid())})
print(child.pid, flush=True)
child.wait()
"""


def _becomes(pid: int, command: str, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if command in open(f"/proc/{pid}/cmdline").read():
            return True
        time.sleep(0.05)
    return False


def _gone(pid: int, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ")[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_child_dies_with_its_parent_kill_9():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = int(parent.stdout.readline())
    assert _becomes(child, "sleep")   # exec'd into the command, still bound
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert _gone(child)


def test_fault_hook_is_a_no_op_without_its_variable(monkeypatch):
    monkeypatch.delenv("LT_FAULT_AT", raising=False)
    for _ in range(3):
        faults.hit("train_step")


def test_fault_hook_kills_at_the_nth_arrival():
    code = ("from lt_utils.runtime import faults\n"
            "for i in range(5):\n    faults.hit('other'); faults.hit('train_step'); print(i, flush=True)\n")
    env = {**os.environ, "LT_FAULT_AT": "train_step:3", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("LT_PIPELINE_PGID", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL and proc.stdout.split() == ["0", "1"]


def test_progress_events_reach_the_view(tmp_path, monkeypatch):
    path = tmp_path / "progress_events.jsonl"
    monkeypatch.setenv(progress_events.ENV, str(path))
    lines: list[str] = []
    view = StageView("02_synthetic_thoughts", Plan(runs=2, steps=60), later_steps=0)
    watcher = Watcher(path, view, every=0, out=lines.append)
    progress_events.emit("run_start", name="raw_repeat/seed0", step=0, steps=30)
    progress_events.emit("train", name="raw_repeat/seed0", step=25, steps=30, tokens_per_s=1000.0)
    progress_events.emit("run_done", name="raw_repeat/seed0", steps=30, accuracy=0.125, seconds=61.0)
    watcher.poll()
    assert len(lines) == 1 and "raw_repeat/seed0" in lines[0] and "12.5%" in lines[0] and "1 min 01 s" in lines[0]
    assert view.status().startswith("  [02_synthetic_thoughts] 1/2 runs")
    monkeypatch.delenv(progress_events.ENV)
    progress_events.emit("run_done", name="x")   # no variable: nothing written
    assert len(path.read_text().splitlines()) == 3


def test_eta_of_a_stage_without_a_plan_counts_its_running_run():
    # stage 01 plans no steps (its base model is built only when not cached); its ETA must not read 0 s
    view = StageView("01_data_prep", Plan(), later_steps=0)
    t0 = view.t0
    view.update({"event": "run_start", "name": "base", "step": 0, "steps": 1500, "time": t0})
    view.update({"event": "train", "name": "base", "step": 500, "steps": 1500, "tokens_per_s": 1000.0, "time": t0 + 100})
    assert "ETA stage 3 min 20 s" in view.status(now=t0 + 100)   # 1000 steps left at 5 steps/s


def test_eta_rate_counts_only_time_with_a_run_in_flight():
    # an E-step between training pools must not slow the rate the ETA is computed from
    view = StageView("03_bootstrap_em", Plan(runs=2, steps=200, esteps=1), later_steps=0)
    t0 = view.t0
    view.update({"event": "run_start", "name": "warmstart/seed0", "step": 0, "steps": 100, "time": t0})
    view.update({"event": "run_done", "name": "warmstart/seed0", "steps": 100, "time": t0 + 100})
    during_estep = view.status(now=t0 + 1000)              # 900 s of sampling, no run in flight
    assert "ETA stage 1 min 40 s" in during_estep and "(sampling or scoring)" in during_estep


def test_runs_finished_before_a_resume_are_not_counted_as_work_left(tmp_path):
    # a resumed stage skips its finished runs only when its pool reaches them; the ETA must not wait for that
    import json

    from lt_utils.cli.progress_display import finished_runs

    for name, steps in (("raw_repeat/seed0", 100), ("raw_repeat/seed1", 100)):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / "DONE").write_text(json.dumps({"step": steps}))
    (tmp_path / "train" / "raw_fresh" / "seed0").mkdir(parents=True)   # started, not finished
    assert finished_runs(tmp_path) == {"raw_repeat/seed0": 100, "raw_repeat/seed1": 100}
    plan = Plan(runs=3, steps=300, finished=finished_runs(tmp_path))
    assert plan.steps_left == 100
    view = StageView("02_synthetic_thoughts", plan, later_steps=0)
    t0 = view.t0
    assert view.status(now=t0).startswith("  [02_synthetic_thoughts] 2/3 runs")
    view.update({"event": "run_skipped", "name": "raw_repeat/seed0", "steps": 100, "time": t0})   # reached later
    view.update({"event": "run_start", "name": "raw_fresh/seed0", "step": 0, "steps": 100, "time": t0})
    view.update({"event": "train", "name": "raw_fresh/seed0", "step": 50, "steps": 100, "tokens_per_s": 1.0,
                 "time": t0 + 100})
    status = view.status(now=t0 + 100)
    assert "2/3 runs" in status and "ETA stage 1 min 40 s" in status   # 50 steps left at 0.5 steps/s


LAUNCHING_STAGE = """
import subprocess, sys
from lt_utils.runtime.die_with_parent import bound_command
argv, env = bound_command([sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(600)"])
subprocess.run(argv, env=env)
"""


def test_a_launcher_dies_with_the_stage_that_started_it_kill_9():
    # the `launcher` path of run_jobs (accelerate launch, torchrun) starts its command through bound_command
    stage = subprocess.Popen([sys.executable, "-c", LAUNCHING_STAGE], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    launcher = int(stage.stdout.readline())
    assert _becomes(launcher, "time.sleep(600)")
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()
    assert _gone(launcher)
