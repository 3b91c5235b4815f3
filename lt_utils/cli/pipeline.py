"""Run the study's notebooks headless with papermill, one profile at a time.

    python -m lt_utils.cli.pipeline --profile cpu            # the default CPU study
    python -m lt_utils.cli.pipeline --profile smoke          # every notebook on tiny settings
    python -m lt_utils.cli.pipeline --profile cpu --only 04_analysis
    python -m lt_utils.cli.pipeline --profile smoke --run-root /tmp/runs
    python -m lt_utils.cli.pipeline --profile cpu --set 02_synthetic_thoughts.steps=2000

Each params file, with the `--set STAGE.KEY=VALUE` overrides (values parsed as
YAML), is validated against its stage's config *before* anything runs, and
checked against a finished stage of the same study, so a bad key or a clash
fails in a second with one line.  While a stage runs, the terminal shows one
line per finished training run or E-step and a periodic status; the kernel's
whole output goes to `runs/<study>/logs/<stage>.txt`, the executed notebook
to the stage's run directory.
Wall times go to `runs/<study>/pipeline.json`.  One pipeline at a time may
write a study (`runs/<study>/.lock`); the kernel and every worker die with the
pipeline, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lt_utils.runtime import config as config_lib
from lt_utils.runtime import faults
from lt_utils.runtime.paths import NOTEBOOKS_DIR, PARAMS_DIR, resolve
from lt_utils.runtime.runs import disk_bytes, read_json, stage_footprint, write_json

STAGES = ("01_data_prep", "02_synthetic_thoughts", "03_bootstrap_em", "04_analysis")
ALWAYS_RECOMPUTED = ("04_analysis",)   # stages whose notebook redoes its run dir every time (never refused)
_held_locks: list = []   # the study locks this process holds, released by the Ctrl-C handler too


def profile_stages(profile: str) -> list[str]:
    """The stages a profile runs: those with a params file in params/<profile>/, in order."""
    return [s for s in STAGES if (PARAMS_DIR / profile / f"{s}.yaml").is_file()]


def stage_config_class(stage: str):
    from lt_utils.report.results import AnalysisConfig
    from lt_utils.stages.bootstrap_em import BootstrapConfig
    from lt_utils.stages.data_prep import DataPrepConfig
    from lt_utils.stages.synthetic_thoughts import SyntheticThoughtsConfig

    classes = {"01_data_prep": DataPrepConfig, "02_synthetic_thoughts": SyntheticThoughtsConfig,
               "03_bootstrap_em": BootstrapConfig, "04_analysis": AnalysisConfig}
    if stage not in classes:
        raise config_lib.ConfigError(f"unknown stage '{stage}' (known: {', '.join(STAGES)})")
    return classes[stage]


def parse_sets(items: list[str] | None, stages: list[str]) -> dict[str, dict]:
    """`--set STAGE.KEY=VALUE` items as {stage: {key: value}}; values are YAML, keys checked against the config."""
    out: dict[str, dict] = {}
    for item in items or []:
        target, eq, raw = item.partition("=")
        stage, dot, key = target.strip().partition(".")
        if not eq or not dot or not key:
            raise config_lib.ConfigError(f"--set {item}: expected STAGE.KEY=VALUE, e.g. 02_synthetic_thoughts.steps=2000")
        if stage not in STAGES:
            raise config_lib.ConfigError(f"--set {item}: unknown stage '{stage}' (known: {', '.join(STAGES)})")
        if stage not in stages:
            raise config_lib.ConfigError(f"--set {item}: stage '{stage}' does not run in this invocation "
                                         f"(runs: {', '.join(stages)})")
        fields = sorted(f.name for f in dataclasses.fields(stage_config_class(stage)))
        if key not in fields:
            raise config_lib.ConfigError(f"--set {item}: unknown parameter '{key}' of {stage} (known: {', '.join(fields)})")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise config_lib.ConfigError(f"--set {item}: value is not valid YAML ({str(exc).splitlines()[0]})") from None
        out.setdefault(stage, {})[key] = value
    return out


def load_stage_params(profile: str, stage: str, overrides: dict | None = None,
                      stage_overrides: dict | None = None) -> dict:
    """The stage's params file merged with overrides (study-wide, then this stage's `--set`), validated."""
    path = PARAMS_DIR / profile / f"{stage}.yaml"
    params = config_lib.read_params(path)
    fields = {f.name for f in dataclasses.fields(stage_config_class(stage))}
    params.update({k: v for k, v in (overrides or {}).items() if k in fields})
    params.update(stage_overrides or {})
    config_lib.load(stage_config_class(stage), params, where=str(path))
    return params


def check_existing(stage: str, cfg) -> None:
    """Fail now, not inside the kernel, if the stage's run dir holds results of other parameters."""
    path = resolve(cfg.run_root) / cfg.study / stage
    if getattr(cfg, "overwrite", False) or stage in ALWAYS_RECOMPUTED:
        return
    old = None
    if (path / "DONE").exists():
        old = read_json(path / "DONE").get("config_hash")
    elif (path / ".config_hash").exists():
        old = (path / ".config_hash").read_text().strip()
    digest = config_lib.config_hash(cfg)
    if old is not None and old != digest:
        raise config_lib.ConfigError(f"{path} was produced with different parameters (hash {old} != {digest}); "
                                     "pass --overwrite or choose another --study")


def kernel_manager_class(log_path: Path, socket_dir: Path):
    """A kernel manager whose kernel talks over local IPC sockets, dies with this process and logs to `log_path`.

    IPC (Unix sockets in `socket_dir`, a private temporary directory) instead
    of TCP on localhost: nothing listens on a port, so there is nothing to
    encrypt, and ipykernel's warning about unencrypted TCP has no cause to appear.
    """
    from jupyter_client.manager import AsyncKernelManager

    die_with_parent = Path(__file__).resolve().parents[1] / "runtime" / "die_with_parent.py"

    class StageKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(socket_dir / "kernel"))   # else "kernel-ipc-N" in the notebooks' cwd
            super().__init__(**kwargs)

        def format_kernel_cmd(self, extra_arguments=None):
            cmd = super().format_kernel_cmd(extra_arguments)
            return [sys.executable, str(die_with_parent), "--log", str(log_path), "--", *cmd]

    return StageKernelManager


def run_stage(profile: str, stage: str, overrides: dict | None = None, stage_overrides: dict | None = None,
              view=None, status_every: float = 30.0) -> float:
    """Execute one notebook with papermill, showing its progress; returns its wall time in seconds."""
    import papermill as pm

    from lt_utils.cli.progress_display import Watcher

    params = load_stage_params(profile, stage, overrides, stage_overrides)
    cfg = config_lib.load(stage_config_class(stage), params)
    study_dir = resolve(cfg.run_root) / cfg.study
    out_dir = study_dir / stage
    out_dir.mkdir(parents=True, exist_ok=True)
    # beside the stage dir, not in it: --overwrite and the analysis stage empty their dir when they start
    log_path = study_dir / "logs" / f"{stage}.txt"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh:
        fh.write(f"=== {stage} ({profile}) started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    # the notebook's cell output (papermill logs it) goes to the same file, not to the terminal
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    # a parameters cell names only `profile` and `overrides` while every field is injected: not worth a warning each
    handler.addFilter(lambda record: not record.getMessage().startswith("Passed unknown parameter"))
    pm_log = logging.getLogger("papermill")
    pm_log.addHandler(handler)
    pm_log.setLevel(logging.INFO)
    pm_log.propagate = False
    watcher = Watcher(study_dir / "progress.jsonl", view, every=status_every) if view is not None else None
    if watcher:
        watcher.start()
    remove_orphan_socket_dirs()
    # mode 0700: only this user reaches the kernel; the PID in the name lets a later run clear it after a kill -9
    socket_dir = Path(tempfile.mkdtemp(prefix=f"{SOCKET_PREFIX}{os.getpid()}-"))
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(NOTEBOOKS_DIR / f"{stage}.ipynb"), str(out_dir / "executed.ipynb"),
                            parameters={**params, "profile": profile}, cwd=str(NOTEBOOKS_DIR), progress_bar=False,
                            log_output=True, kernel_name="python3",
                            kernel_manager_class=kernel_manager_class(log_path, socket_dir))
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
        if watcher:
            watcher.stop()
        pm_log.removeHandler(handler)
        handler.close()
    return time.perf_counter() - t0


SOCKET_PREFIX = "lt-kernel-"


def remove_orphan_socket_dirs(tmp: str | Path | None = None) -> list[Path]:
    """Delete this user's kernel socket dirs whose pipeline (the PID in the name) is gone; returns them.

    A pipeline removes its own dir when it ends, but a kill -9 gives it no
    chance, so the next run sweeps up after it.
    """
    removed = []
    for d in Path(tmp or tempfile.gettempdir()).glob(f"{SOCKET_PREFIX}*"):
        pid = d.name[len(SOCKET_PREFIX):].split("-")[0]
        try:
            if not d.is_dir() or d.stat().st_uid != os.getuid() or not pid.isdigit():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        except OSError:
            continue
    return removed


def run_profile(profile: str, only: list[str] | None = None, overrides: dict | None = None,
                sets: list[str] | None = None, status_every: float = 30.0) -> dict[str, float]:
    from lt_utils.runtime.progress_events import ENV as PROGRESS_ENV
    from lt_utils.cli.progress_display import StageView, stage_plan
    from lt_utils.runtime.study_lock import StudyLock

    stages = [s for s in profile_stages(profile) if not only or s in only]
    unknown = [s for s in (only or []) if s not in STAGES]
    if unknown:
        raise config_lib.ConfigError(f"unknown stage '{unknown[0]}' (known: {', '.join(STAGES)})")
    if not stages:
        raise config_lib.ConfigError(f"params/{profile}/ has no params file for the requested stages")
    per_stage = parse_sets(sets, stages)
    cfgs = {}
    for s in stages:  # validate everything first: a typo in the last stage should not cost the first one's time
        cfgs[s] = config_lib.load(stage_config_class(s), load_stage_params(profile, s, overrides, per_stage.get(s)))
    first = cfgs[stages[0]]
    study_dir = resolve(first.run_root) / first.study
    saved_env = {k: os.environ.get(k) for k in (PROGRESS_ENV, "LT_PIPELINE_PGID")}
    lock = StudyLock(study_dir).acquire()   # before the checks below: another writer may be changing the dirs
    _held_locks.append(lock)
    try:
        for s in stages:
            check_existing(s, cfgs[s])
        if lock.took_over:
            print(f"[{profile}] took over the stale lock of PID {lock.took_over.get('pid')} "
                  f"(started {lock.took_over.get('started_utc')})", flush=True)
        # children (the kernel, its workers) inherit these: where to report progress, whose group is the study
        os.environ[PROGRESS_ENV] = str(study_dir / "progress.jsonl")
        os.environ["LT_PIPELINE_PGID"] = str(os.getpgrp())
        # runs finished by an earlier invocation count as done from the start (not with --overwrite, which redoes them)
        plans = {s: stage_plan(s, cfgs[s], None if getattr(cfgs[s], "overwrite", False)
                               else resolve(cfgs[s].run_root) / cfgs[s].study / s) for s in stages}
        log = study_dir / "pipeline.json"
        times = {}
        for i, s in enumerate(stages):
            print(f"[{profile}] {s} ... (log: {study_dir / 'logs' / s}.txt)", flush=True)
            view = StageView(s, plans[s], later_tokens=sum(plans[t].slot_tokens_left for t in stages[i + 1:]))
            times[s] = run_stage(profile, s, overrides, per_stage.get(s), view=view, status_every=status_every)
            print(f"[{profile}] {s} done in {times[s]:.0f} s", flush=True)
            history = read_json(log) if log.exists() else {}
            history[s] = {"seconds": round(times[s], 1),
                          "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          **stage_footprint(study_dir / s)}
            history["study_disk_bytes"] = disk_bytes(study_dir)
            write_json(log, history)
            faults.hit("between_stages")
    finally:
        lock.release()
        _held_locks.remove(lock)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return times


def _stop_on_signal(locks: list) -> dict:
    """Ctrl-C / SIGTERM: one line, then exit at once; the kernel and its workers die with this process.

    Returns the handlers it replaced, for `main` to put back (it may be called from a test).
    """

    def handler(signum, frame):
        print(f"\ninterrupted ({signal.Signals(signum).name}): stopping the kernel and its workers; "
              "rerun the same command to resume", file=sys.stderr, flush=True)
        for lock in locks:
            lock.release()
        os._exit(128 + signum)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def print_claims(profile: str, overrides: dict, sets: list[str], only: list[str] | None) -> None:
    """After the analysis stage ran: the claims table at the terminal (from the claims.csv it stored)."""
    if (only and "04_analysis" not in only) or "04_analysis" not in profile_stages(profile):
        return
    import pandas as pd

    from lt_utils.report.claims import terminal_text

    own = [item for item in sets or [] if item.startswith("04_analysis.")]
    params = load_stage_params(profile, "04_analysis", overrides, parse_sets(own, ["04_analysis"]).get("04_analysis"))
    cfg = config_lib.load(stage_config_class("04_analysis"), params)
    path = resolve(cfg.run_root) / cfg.study / "04_analysis" / "claims.csv"
    if path.is_file():
        print(f"[{profile}] the paper's claims, measured ({path}):")
        print(terminal_text(pd.read_csv(path, dtype={"values_a": str, "values_b": str})))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help="params/<profile>/ (smoke, cpu, paper)")
    ap.add_argument("--only", nargs="*", help=f"stages to run (default: every stage with a params file; {' '.join(STAGES)})")
    ap.add_argument("--run-root", help="override run_root for every stage")
    ap.add_argument("--study", help="override the study name for every stage")
    ap.add_argument("--overwrite", action="store_true", help="redo finished stages")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                    help="override one parameter of one stage (repeatable; VALUE is YAML)")
    ap.add_argument("--status-every", type=float, default=30.0, help="seconds between status lines (0: none)")
    args = ap.parse_args(argv)
    overrides: dict = {}
    if args.run_root:
        overrides["run_root"] = args.run_root
    if args.study:
        overrides["study"] = args.study
    if args.overwrite:
        overrides["overwrite"] = True
    if args.run_root or args.study:
        overrides["figures_dir"] = ""  # an ad-hoc study never writes over the committed figures/
    if not (PARAMS_DIR / args.profile).is_dir():
        print(f"error: unknown profile '{args.profile}' (no directory {PARAMS_DIR / args.profile})", file=sys.stderr)
        return 2
    from lt_utils.runtime.study_lock import StudyLocked

    t0 = time.perf_counter()
    previous = _stop_on_signal(_held_locks)
    try:
        times = run_profile(args.profile, args.only, overrides, args.set, args.status_every)
    except (config_lib.ConfigError, StudyLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # papermill's error carries the notebook's exception name and message
        name = getattr(exc, "ename", type(exc).__name__)
        value = getattr(exc, "evalue", str(exc)).strip().splitlines()
        print(f"error: {name}: {value[0] if value else ''}", file=sys.stderr)
        return 1
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    total = time.perf_counter() - t0
    print_claims(args.profile, overrides, args.set, args.only)
    print(f"[{args.profile}] all stages done in {total:.0f} s ({', '.join(f'{k} {v:.0f}s' for k, v in times.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
