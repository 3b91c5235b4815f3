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
    view = StageView("02_synthetic_thoughts", Plan(runs=2, steps=60))
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
    view = StageView("01_data_prep", Plan())
    t0 = view.t0
    view.update({"event": "run_start", "name": "base", "step": 0, "steps": 1500, "time": t0})
    view.update({"event": "train", "name": "base", "step": 500, "steps": 1500, "tokens_per_s": 1000.0, "time": t0 + 100})
    assert "ETA stage 3 min 20 s" in view.status(now=t0 + 100)   # 1000 steps left at 5 steps/s


def test_eta_rate_counts_only_time_with_a_run_in_flight():
    # an E-step between training pools must not slow the rate the ETA is computed from
    view = StageView("03_bootstrap_em", Plan(runs=2, steps=200, esteps=1))
    t0 = view.t0
    view.update({"event": "run_start", "name": "warmstart/seed0", "step": 0, "steps": 100, "time": t0})
    view.update({"event": "run_done", "name": "warmstart/seed0", "steps": 100, "time": t0 + 100})
    during_estep = view.status(now=t0 + 1000)              # 900 s of sampling, no run in flight
    assert "ETA stage 1 min 40 s" in during_estep and "(sampling or scoring)" in during_estep
    # once an E-step has finished, the ones left are priced at its duration
    view.update({"event": "estep_done", "iteration": 1, "seconds": 900.0, "time": t0 + 1000})
    assert "ETA stage 1 min 40 s" in view.status(now=t0 + 1000)   # this plan's only E-step is done
    view.plan.esteps = 2
    assert "ETA stage 16 min 40 s" in view.status(now=t0 + 1000)  # 100 s of training + one more E-step of 900 s


def test_eta_extrapolates_one_runs_rate_to_the_pool_and_waits_for_a_lone_last_run():
    # two runs at 1 step/s each, then an odd pool's last run alone: the rate must stay one run's, times two slots
    view = StageView("03_bootstrap_em", Plan(runs=3, steps=300, workers=2))
    t0 = view.t0
    for name in ("iter1/seed0", "iter1/seed1"):
        view.update({"event": "run_start", "name": name, "step": 0, "steps": 100, "time": t0})
    for name in ("iter1/seed0", "iter1/seed1"):
        view.update({"event": "run_done", "name": name, "steps": 100, "time": t0 + 100})
    view.update({"event": "run_start", "name": "iter1/seed2", "step": 0, "steps": 100, "time": t0 + 100})
    view.update({"event": "train", "name": "iter1/seed2", "step": 50, "steps": 100, "time": t0 + 150})
    # 250 steps in 250 run-seconds; 50 steps left, all of them in the lone run: 50 s (not 25 s at 2 steps/s)
    assert "ETA stage 50 s" in view.status(now=t0 + 150)
    view.update({"event": "run_done", "name": "iter1/seed2", "steps": 100, "time": t0 + 200})
    assert "3/3 runs" in view.status(now=t0 + 200)


def test_eta_carries_the_rate_to_later_stages_in_tokens():
    # this stage: 2 rows of 8 tokens a step, at 1 step/s per run; later: 1,000 steps of 4 rows of 8 on 2 slots
    later = Plan(runs=2, steps=1000, tokens_per_step=32, workers=2)
    assert later.slot_tokens_left == 16_000
    view = StageView("02_synthetic_thoughts", Plan(runs=1, steps=200, tokens_per_step=16), later.slot_tokens_left)
    t0 = view.t0
    view.update({"event": "run_start", "name": "raw_repeat/seed0", "step": 0, "steps": 200, "time": t0})
    view.update({"event": "train", "name": "raw_repeat/seed0", "step": 100, "steps": 200, "time": t0 + 100})
    # 100 s left here; later 16,000 tokens per slot at 16 tokens/s: 1,000 s
    assert "ETA stage 1 min 40 s, study 18 min 20 s" in view.status(now=t0 + 100)


def test_the_em_plan_counts_measured_token_ratios_and_esteps_already_done(tmp_path):
    import json

    from lt_utils.cli.progress_display import stage_plan
    from lt_utils.runtime import config as config_lib
    from lt_utils.stages.bootstrap_em import BootstrapConfig

    cfg = config_lib.load(BootstrapConfig, {"study": "t", "seeds": [0, 1], "iterations": 2, "steps": 100,
                                            "warmstart_steps": 10, "baselines": ["raw_token_match"],
                                            "k_ablation": [], "batch_size": 4, "seq_len": 32, "workers": 2})
    before = stage_plan("03_bootstrap_em", cfg, tmp_path)
    # 2 warmstarts of 10, 4 M-steps of 100, 2 token-match runs counted as long as an M-step until measured
    assert (before.steps, before.esteps_done, before.tokens_per_step, before.workers) == (620, 0, 128, 2)
    (tmp_path / "token_ratios.json").write_text(json.dumps({"bolt_iter1": 2.5}))
    (tmp_path / "iter1").mkdir()
    (tmp_path / "iter1" / "estep_summary.json").write_text("{}")
    after = stage_plan("03_bootstrap_em", cfg, tmp_path)
    assert (after.steps, after.esteps_done) == (500, 1)   # token-match runs: 100 / 2.5 = 40 steps each
    assert StageView("03_bootstrap_em", after).status().count("E-steps 1/2") == 1


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
    view = StageView("02_synthetic_thoughts", plan)
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
