"""Kill the smoke study at chosen points, rerun it, and check it ends exactly where an uninterrupted run ends.

    python -m lt_utils.cli.fault_sweep                      # every default point (make faults)
    python -m lt_utils.cli.fault_sweep --points train_step:10 analysis:3 --keep /tmp/sweep

First the smoke profile runs uninterrupted into a temporary run root.  Then,
for each point, a fresh run root is seeded with the clean run's stages that
come before the point's stage (they are compared too, and stage-02 points start
from nothing), the pipeline runs with `LT_FAULT_AT=POINT:N` (see
`lt_utils.runtime.faults`: the N-th arrival kills the pipeline's whole process group
with SIGKILL), and then runs again without it.  Every file the study produces
is compared with the clean run's:

* JSON and JSONL files (E-step records and summaries, metrics, final metrics,
  manifests, DONE markers) after dropping wall-clock fields (VOLATILE_KEYS);
* CSV files (results.csv) after dropping those columns;
* everything else byte for byte: model weights, corpora, tokenizers, figures
  (PDFs carry no creation date, PNGs none either).

Not compared: logs, progress events, pipeline.json and env.json (timings,
environment), executed notebooks (their outputs show the compared numbers,
plus timings), SQLite caches (what they hold reaches the compared records) and
launcher job files.  After each kill the sweep scans /proc for processes whose
environment carries this sweep's tag: anything found outlived the kill.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lt_utils.runtime.paths import PROJECT_ROOT

PROFILE = "smoke"
STAGES = ("01_data_prep", "02_synthetic_thoughts", "03_bootstrap_em", "04_analysis")
# point -> the stage it fires in (with the default counts on the smoke profile)
DEFAULT_POINTS = {
    "train_step:10": "02_synthetic_thoughts",
    "checkpoint_write:2": "02_synthetic_thoughts",
    "thought_cache_write:1": "02_synthetic_thoughts",
    "between_stages:2": "02_synthetic_thoughts",
    "estep_sample:2": "03_bootstrap_em",
    "estep_score:2": "03_bootstrap_em",
    "candidate_cache_write:3": "03_bootstrap_em",
    "analysis:3": "04_analysis",
}
# Wall-clock fields, and the footprint a stage records (file mtimes in manifests, peak memory, bytes on disk:
# a resumed stage legitimately differs there), are dropped before comparing.
VOLATILE_KEYS = frozenset({"time", "time_utc", "finished_utc", "train_seconds", "tokens_per_s", "seconds",
                           "mtime_ns", "peak_rss_mb", "disk_bytes"})
SKIP_NAMES = frozenset({"progress.jsonl", "pipeline.json", "env.json", "executed.ipynb", ".lock"})
SKIP_DIRS = frozenset({"logs", "jobs"})
TAG_ENV = "LT_FAULT_SWEEP_TAG"


@dataclass
class Outcome:
    point: str
    killed: bool = False
    rerun_ok: bool = False
    differences: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_pipeline(run_root: Path, tag: str, fault: str | None, timeout: float) -> int:
    """The smoke pipeline in a session of its own (so its group kill cannot reach us); its return code."""
    env = {k: v for k, v in os.environ.items() if k not in ("LT_FAULT_AT", "LT_PROGRESS_FILE", "LT_PIPELINE_PGID")}
    env[TAG_ENV] = tag
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    if fault:
        env["LT_FAULT_AT"] = fault
    cmd = [sys.executable, "-m", "lt_utils.cli.pipeline", "--profile", PROFILE, "--run-root", str(run_root),
           "--status-every", "0"]
    log = run_root / f"sweep_{'fault' if fault else 'run'}.txt"
    run_root.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -999


def tagged_processes(tag: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose environment carries this sweep's tag."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append((int(d.name), cmd[:120]))
        except OSError:
            continue
    return found


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _normal(path: Path, roots: tuple[Path, ...]):
    """What of a file must match: parsed and stripped for JSON/JSONL/CSV, bytes otherwise.

    Run roots are replaced by one placeholder: the clean run's appear in the stages a point copies from it.
    """
    data = path.read_bytes()
    if path.suffix in (".json", ".jsonl", ".csv", ".yaml") or path.name in ("DONE",):
        text = data.decode()
        for root in roots:
            text = text.replace(str(root), "<ROOT>")
        if path.suffix == ".jsonl":
            return [_strip(json.loads(line)) for line in text.splitlines() if line.strip()]
        if path.suffix == ".json" or path.name == "DONE":
            obj = _strip(json.loads(text))
            if path.name == "manifest.json":   # per-file hashes cover wall-clock fields; each file is compared itself
                obj.pop("files", None)
            return obj
        if path.suffix == ".csv":
            rows = list(csv.reader(io.StringIO(text)))
            keep = [i for i, c in enumerate(rows[0]) if c not in VOLATILE_KEYS] if rows else []
            return [[r[i] for i in keep] for r in rows]
        return text
    return data


def study_files(study: Path) -> set[str]:
    out = set()
    for p in study.rglob("*"):
        rel = p.relative_to(study)
        if p.is_file() and p.name not in SKIP_NAMES and not p.name.startswith("sweep_") \
                and not set(rel.parts[:-1]) & SKIP_DIRS and ".sqlite" not in p.name:
            out.add(rel.as_posix())
    return out


def compare(clean: Path, other: Path) -> list[str]:
    """Files that differ between two study directories (names only, at most a handful reported)."""
    a, b = study_files(clean / PROFILE), study_files(other / PROFILE)
    diffs = [f"missing {f}" for f in sorted(a - b)] + [f"extra {f}" for f in sorted(b - a)]
    for rel in sorted(a & b):
        if _normal(clean / PROFILE / rel, (clean, other)) != _normal(other / PROFILE / rel, (clean, other)):
            diffs.append(rel)
    return diffs


def sweep_point(point: str, stage: str, root: Path, clean: Path, timeout: float) -> Outcome:
    t0 = time.time()
    out = Outcome(point)
    run_root = root / point.replace(":", "_")
    (run_root / PROFILE).mkdir(parents=True, exist_ok=True)
    for s in STAGES[:STAGES.index(stage)]:
        if s != "01_data_prep" or stage != "02_synthetic_thoughts":
            shutil.copytree(clean / PROFILE / s, run_root / PROFILE / s)
    tag = uuid.uuid4().hex
    rc = run_pipeline(run_root, tag, point, timeout)
    out.killed = rc == -signal.SIGKILL
    time.sleep(2.0)   # the kernel learns of its parent's death at once; give the OS a moment all the same
    left = tagged_processes(tag)
    out.survivors = [f"{pid} {cmd}" for pid, cmd in left]
    for pid, _ in left:   # clean up after a failure, so the rerun is not disturbed
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if rc == 0:
        out.differences = ["point not reached (the run finished)"]
    rc2 = run_pipeline(run_root, uuid.uuid4().hex, None, timeout)
    out.rerun_ok = rc2 == 0
    if out.rerun_ok:
        out.differences += compare(clean, run_root)
    else:
        out.differences.append(f"rerun exited with {rc2} (see {run_root / 'sweep_run.txt'})")
    out.seconds = time.time() - t0
    return out


def table(outcomes: list[Outcome]) -> str:
    lines = ["| point | killed | survived (rerun identical) | what differed | processes outliving the kill | time |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        survived = "yes" if o.killed and o.rerun_ok and not o.differences else "no"
        diff = "nothing" if not o.differences else "; ".join(o.differences[:4]) + (
            f" (+{len(o.differences) - 4} more)" if len(o.differences) > 4 else "")
        orphans = "none" if not o.survivors else f"{len(o.survivors)}: " + "; ".join(o.survivors[:2])
        lines.append(f"| {o.point} | {'yes' if o.killed else 'no'} | {survived} | {diff} | {orphans} | "
                     f"{o.seconds:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", nargs="*", default=list(DEFAULT_POINTS),
                    help=f"POINT:N items (default: {' '.join(DEFAULT_POINTS)})")
    ap.add_argument("--stage", action="append", default=[], metavar="POINT:N=STAGE",
                    help="the stage a non-default point fires in (earlier stages are copied from the clean run)")
    ap.add_argument("--keep", help="run root to use and keep (default: a temporary directory, removed)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per pipeline run")
    args = ap.parse_args(argv)
    stages = dict(DEFAULT_POINTS)
    for item in args.stage:
        point, _, stage = item.partition("=")
        stages[point] = stage
    unknown = [p for p in args.points if p not in stages]
    if unknown:
        print(f"error: no stage known for point '{unknown[0]}' (pass --stage {unknown[0]}=STAGE)", file=sys.stderr)
        return 2
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lt_faults_"))
    t0 = time.time()
    try:
        clean = root / "clean"
        if (clean / PROFILE / STAGES[-1] / "DONE").exists():
            print(f"reusing the clean run in {clean}", flush=True)
        else:
            print(f"clean run of the {PROFILE} profile into {clean} ...", flush=True)
        if run_pipeline(clean, uuid.uuid4().hex, None, args.timeout) != 0:
            print(f"error: the clean run failed (see {clean / 'sweep_run.txt'})", file=sys.stderr)
            return 1
        outcomes = []
        for point in args.points:
            print(f"{point}: kill, rerun, compare ...", flush=True)
            outcomes.append(sweep_point(point, stages[point], root, clean, args.timeout))
        print(table(outcomes))
        print(f"fault sweep: {len(outcomes)} points in {(time.time() - t0) / 60:.1f} min")
        ok = all(o.killed and o.rerun_ok and not o.differences and not o.survivors for o in outcomes)
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
