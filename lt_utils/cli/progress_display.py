"""What a running study shows at the terminal: one line per finished run or E-step, and a periodic status.

The pipeline tails `runs/<study>/progress.jsonl` (written by `lt_utils.runtime.progress_events`
from the kernel and its workers) in a thread.  ETAs count training tokens: the
rate of one training process so far (steps finished per second of each run in
flight, evaluations included), times the stage's parallel runs, applied to the
steps still planned for this stage and the later ones, planned from their
validated configs.  Tokens, not steps, carry the rate across stages whose
batches differ, and one process's rate, not the pool's, stays right while an
odd-sized pool runs its last run alone.  The E-steps left are priced at the
mean of those this invocation has seen; until one finishes they are not in the
count, and the EM stage's ETA is a lower bound.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lt_utils import em_plan


@dataclass
class Plan:
    runs: int = 0
    steps: int = 0
    esteps: int = 0
    finished: dict[str, int] = field(default_factory=dict)   # run name -> steps, of runs finished before this start
    tokens_per_step: int = 1    # batch × sequence length × accumulation of one process (1: rates in steps)
    workers: int = 1            # training runs the stage keeps in flight
    esteps_done: int = 0        # E-steps whose summaries an earlier invocation wrote

    @property
    def steps_left(self) -> int:
        return max(self.steps - sum(self.finished.values()), 0)

    @property
    def slot_tokens_left(self) -> float:
        """Tokens each of the stage's parallel runs still has to train, if the stage's work splits evenly."""
        return self.steps_left * self.tokens_per_step / max(self.workers, 1)


def finished_runs(stage_dir: Path) -> dict[str, int]:
    """Runs of a stage already finished on disk (`train/<name>/seed<N>/DONE`), by the name their events carry.

    A resumed study skips them only when its pool reaches them; counted from the start, the ETA does not take
    them for work still to do.
    """
    from lt_utils.runtime.runs import read_json

    done = {}
    for marker in sorted(Path(stage_dir).glob("train/*/seed*/DONE")):
        try:
            done[f"{marker.parent.parent.name}/{marker.parent.name}"] = int(read_json(marker).get("step", 0))
        except (OSError, ValueError, AttributeError):   # a marker being written or damaged: not counted
            continue
    return done


def measured_token_ratio(stage_dir: Path | None) -> float:
    """Training tokens per raw token of the iteration-1 corpus, once an earlier invocation measured it (else 1,
    which counts a token-match run as long as an M-step: an ETA on the safe side)."""
    from lt_utils.runtime.runs import read_json

    path = Path(stage_dir) / "token_ratios.json" if stage_dir is not None else None
    try:
        return float(read_json(path)["bolt_iter1"]) if path is not None and path.exists() else 1.0
    except (OSError, ValueError, KeyError, TypeError):
        return 1.0


def stage_plan(stage: str, cfg: Any, stage_dir: Path | None = None) -> Plan:
    """Training runs, optimizer steps and E-steps a stage will do (token-match baselines at the measured token
    ratio, or at `steps` before it is measured), with the runs and E-steps already finished in `stage_dir`."""
    finished = finished_runs(stage_dir) if stage_dir is not None else {}
    shape = {}
    if hasattr(cfg, "batch_size") and hasattr(cfg, "seq_len"):
        shape = {"tokens_per_step": cfg.batch_size * cfg.seq_len * getattr(cfg, "grad_accum", 1),
                 "workers": cfg.n_workers}
    if stage == "01_data_prep" and hasattr(cfg, "base_batch_size"):   # its base model, when not cached
        return Plan(tokens_per_step=cfg.base_batch_size * cfg.base_seq_len)
    if stage == "02_synthetic_thoughts":
        from lt_utils.stages.synthetic_thoughts import n_runs

        n = n_runs(cfg)
        return Plan(runs=n, steps=n * cfg.steps, finished=finished, **shape)
    if stage == "03_bootstrap_em":
        done = len(list(Path(stage_dir).glob("iter*/estep_summary.json"))) if stage_dir is not None else 0
        steps = em_plan.estimated_steps(cfg, token_ratio=measured_token_ratio(stage_dir))
        return Plan(runs=len(em_plan.all_runs(cfg)), steps=steps, esteps=cfg.iterations, finished=finished,
                    esteps_done=min(done, cfg.iterations), **shape)
    return Plan()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class StageView:
    """Progress of one stage, built from its events."""

    def __init__(self, stage: str, plan: Plan, later_tokens: float = 0.0):
        """`later_tokens`: what each parallel run of the later stages still has to train (`Plan.slot_tokens_left`)."""
        self.stage, self.plan, self.later_tokens = stage, plan, later_tokens
        self.t0 = time.time()
        self.runs: dict[str, dict] = {}       # name -> {"start", "step", "steps", "tokens_per_s", "done"}
        self.esteps_done = plan.esteps_done
        self.estep_seconds: list[float] = []  # E-steps finished in this invocation (the price of those left)
        self.steps_at_start = 0               # steps finished before this invocation (resumed runs, skipped runs)
        self.busy = 0.0                       # run-seconds: wall seconds × runs in flight (the rate's denominator)
        self._last = self.t0
        for name, steps in plan.finished.items():   # finished before this start: done, and no work left
            self._run(name).update(start=steps, step=steps, steps=steps, done=True)
            self.steps_at_start += steps

    def _tick(self, now: float) -> None:
        """Count the time since the last event once per run in flight (none while an E-step runs)."""
        self.busy += max(now - self._last, 0.0) * sum(not r["done"] for r in self.runs.values())
        self._last = max(now, self._last)

    def _run(self, name: str) -> dict:
        return self.runs.setdefault(name, {"start": 0, "step": 0, "steps": 0, "tokens_per_s": 0.0, "done": False})

    def update(self, ev: dict) -> str | None:
        """Fold one event in; returns a line to print now, if the event is one."""
        kind, name = ev.get("event"), ev.get("name", "")
        self._tick(ev.get("time") or time.time())
        if kind == "run_start":
            r = self._run(name)
            r.update(start=ev.get("step", 0), step=ev.get("step", 0), steps=ev.get("steps", 0))
            self.steps_at_start += ev.get("step", 0)
        elif kind == "train":
            r = self._run(name)
            r.update(step=ev.get("step", 0), steps=ev.get("steps", r["steps"]), tokens_per_s=ev.get("tokens_per_s", 0))
        elif kind in ("run_done", "run_skipped"):
            r = self._run(name)
            steps = ev.get("steps", r["steps"])
            if kind == "run_skipped" and not r["done"]:   # a run the plan counted as finished is not added twice
                self.steps_at_start += steps
                r.update(start=steps)
            r.update(step=steps, steps=steps, done=True)
            if kind == "run_done":
                acc = ev.get("accuracy")
                acc_s = f"accuracy {100 * acc:5.1f}%" if isinstance(acc, (int, float)) else "accuracy   –  "
                return f"  run {name:<28} {acc_s}  {_duration(ev.get('seconds'))}"
        elif kind == "estep_done":
            self.esteps_done += 1
            if isinstance(ev.get("seconds"), (int, float)):
                self.estep_seconds.append(float(ev["seconds"]))
            extra = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in (ev.get("summary") or {}).items())
            return f"  E-step {ev.get('iteration')} done: {_duration(ev.get('seconds'))}" + (f", {extra}" if extra else "")
        return None

    def status(self, now: float | None = None) -> str:
        now = now or time.time()
        self._tick(now)
        if not self.plan.runs and not self.runs:
            return f"  [{self.stage}] elapsed {_duration(now - self.t0)}"
        done = sum(r["done"] for r in self.runs.values())
        running = [r for r in self.runs.values() if not r["done"]]
        steps_done = sum(r["step"] for r in self.runs.values())
        new_steps = steps_done - self.steps_at_start
        # steps per second of one run, times the runs the stage keeps in flight
        per_run = new_steps / self.busy if new_steps > 0 and self.busy > 0 else None
        rate = per_run * max(self.plan.workers, 1) if per_run else None
        later_s = self.later_tokens / (per_run * self.plan.tokens_per_step) if per_run else None
        finished = done >= self.plan.runs and not running
        # a stage without a planned count (01's base model, built only when not cached) counts its running runs
        left_in_running = sum(max(r["steps"] - r["step"], 0) for r in running)
        remaining = 0 if finished else max(self.plan.steps - steps_done, left_in_running, 0)
        tps = sum(r["tokens_per_s"] for r in running)
        parts = [f"{done}/{self.plan.runs or len(self.runs)} runs"]
        if running:
            parts.append(", ".join(f"step {r['step']}/{r['steps']}" for r in running[:4]))
        if self.plan.esteps:
            parts.append(f"E-steps {self.esteps_done}/{self.plan.esteps}" + ("" if running else " (sampling or scoring)"))
        if tps:
            parts.append(f"{tps / 1000:.1f}k tok/s")
        parts.append(f"elapsed {_duration(now - self.t0)}")
        later = f"study {_duration(later_s)}" if self.later_tokens else ""
        if finished:
            parts.append("training done, finishing the stage" + (f"; ETA {later}" if later else ""))
        else:
            estep_s = (max(self.plan.esteps - self.esteps_done, 0) * sum(self.estep_seconds) / len(self.estep_seconds)
                       if self.estep_seconds else 0.0)
            # the stage lasts at least as long as its longest run in flight: its last runs cannot share out
            stage_s = max(remaining / rate, max((r["steps"] - r["step"] for r in running), default=0) / per_run) \
                + estep_s if rate else None
            eta = _duration(stage_s)
            eta_study = _duration(stage_s + later_s if rate else None)
            parts.append(f"ETA stage {eta}, study {eta_study}")
        return f"  [{self.stage}] " + " | ".join(parts)


class Watcher(threading.Thread):
    """Tail the events file from its current end, print event lines at once and a status every `every` s."""

    def __init__(self, path: Path, view: StageView, every: float = 30.0, out: Callable[[str], None] = print):
        super().__init__(daemon=True)
        self.path, self.view, self.every, self.out = Path(path), view, every, out
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._halt = threading.Event()
        self._buf = ""

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as fh:
            fh.seek(self.offset)
            chunk = fh.read()
            self.offset = fh.tell()
        self._buf += chunk
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            msg = self.view.update(ev)
            if msg:
                self.out(msg)

    def run(self) -> None:
        last = time.time()
        while not self._halt.wait(1.0):
            self.poll()
            if self.every > 0 and time.time() - last >= self.every:
                self.out(self.view.status())
                last = time.time()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.poll()
