"""Self-describing run directories, written so a crash never corrupts them.

A stage writes `runs/<study>/<stage>/` holding its resolved parameters
(`config.yaml`), the environment (`env.json`), an append-only
`metrics.jsonl`, a `manifest.json` of the artifacts it produced (with the size
and sha256 of each) and a `DONE` marker.  The next stage reads only that
directory, after `require_done` has checked it against its manifest.  Every
artifact is written to a temporary file and renamed into place, so a file that
exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import yaml

from lt_utils.runtime import config as config_lib
from lt_utils.runtime.paths import PROJECT_ROOT, resolve


class MissingInputError(FileNotFoundError):
    """An input run directory is absent or unfinished (message is one line)."""


class DamagedArtifactError(MissingInputError):
    """A finished stage's artifact no longer matches its manifest (message is one line)."""


# --------------------------------------------------------------------------- atomic files
@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """One JSON object per line, written as the records come (a generator never sits in memory whole)."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for r in records:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    return Path(path)


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Records of a jsonl file, read one line at a time; a broken line is a one-line error naming file and line."""
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DamagedArtifactError(f"{path}:{lineno}: not a JSON record ({exc.msg}); "
                                               "the file is truncated or damaged") from None


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a crash: ignore it
                continue
    return out


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=float) + "\n")
        fh.flush()


# --------------------------------------------------------------------------- environment
def git_state() -> dict[str, Any]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
        )
        return {"git_sha": sha.stdout.strip() or None, "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def environment() -> dict[str, Any]:
    """Versions and hardware, so a number can be traced to what produced it."""
    import importlib.metadata as md

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **git_state(),
    }
    for pkg in ("torch", "transformers", "accelerate", "tokenizers", "numpy", "papermill", "vllm"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    try:
        import torch

        env["cuda"] = torch.version.cuda
        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return env


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch global RNGs (code that samples also takes explicit generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


# --------------------------------------------------------------------------- integrity
def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """Size, modification time and sha256 of one artifact, as its manifest keeps them."""
    st = Path(path).stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def rebuild_command(run_dir: str | Path, overwrite: bool = True) -> str:
    """The command that (re)makes a stage's run directory (its study name is the profile when one exists)."""
    run_dir = Path(run_dir)
    study = run_dir.parent.name
    profile = study if (PROJECT_ROOT / "params" / study).is_dir() else "<profile>"
    return f"python -m lt_utils.cli.pipeline --profile {profile} --only {run_dir.name}" + (" --overwrite" * overwrite)


def verify_artifacts(run_dir: str | Path, *, full: bool = False) -> int:
    """Check every artifact of a finished run against the size and sha256 its manifest records.

    Fast path: a file whose size and mtime equal the record is trusted without
    hashing, so a stage pays for a sha256 only of files that were touched or
    copied since they were written (`full=True` hashes every file).  A missing,
    resized or changed file raises a one-line DamagedArtifactError naming it and
    the command that rebuilds it.  Returns the number of files hashed.
    """
    run_dir = Path(run_dir)
    manifest = run_dir / "manifest.json"
    try:
        files = read_json(manifest).get("files", {}) if manifest.exists() else {}
    except json.JSONDecodeError:
        raise DamagedArtifactError(f"{manifest} is not valid JSON; rebuild: {rebuild_command(run_dir)}") from None
    hashed = 0
    for name, rec in sorted(files.items()):
        path = run_dir / name
        if not path.is_file():
            problem = "is missing"
        elif (size := path.stat().st_size) != rec["bytes"]:
            problem = f"has {size} bytes, its manifest records {rec['bytes']} (truncated or rewritten)"
        elif not full and path.stat().st_mtime_ns == rec.get("mtime_ns"):
            continue
        else:
            hashed += 1
            if sha256_file(path) == rec["sha256"]:
                continue
            problem = "does not match the sha256 its manifest records"
        raise DamagedArtifactError(f"{path} {problem}; rebuild: {rebuild_command(run_dir)}")
    return hashed


# --------------------------------------------------------------------------- footprint
def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its finished child processes (workers), in MiB."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20   # ru_maxrss: KiB on Linux, bytes on macOS
    return {"process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
            "workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1)}


def disk_bytes(path: str | Path) -> int:
    """Bytes of every file under `path` (links not followed)."""
    total = 0
    for root, _, names in os.walk(path):
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, n)).st_size
    return total


def stage_footprint(run_dir: str | Path) -> dict[str, Any]:
    """Peak memory and disk bytes a finished stage recorded in its DONE marker (empty if none)."""
    done = Path(run_dir) / "DONE"
    if not done.exists():
        return {}
    d = read_json(done)
    return {k: d[k] for k in ("peak_rss_mb", "disk_bytes") if k in d}


# --------------------------------------------------------------------------- run directory
def is_done(path: str | Path) -> bool:
    return (Path(path) / "DONE").exists()


def require_done(path: str | Path, what: str = "input run") -> Path:
    """The path of a finished run directory whose artifacts match its manifest, or a one-line error naming it."""
    p = resolve(path)
    if not p.is_dir():
        raise MissingInputError(f"{what} not found: {p} (run the earlier stage first: {rebuild_command(p, False)})")
    if not is_done(p):
        raise MissingInputError(f"{what} is unfinished (no DONE marker): {p} (re-run the earlier stage: "
                                f"{rebuild_command(p)})")
    verify_artifacts(p)
    return p


@dataclass
class RunDir:
    """One stage's output directory.  Open it with `RunDir.open`."""

    path: Path
    config: Any
    config_hash: str
    already_done: bool = False
    artifacts: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)   # size / mtime / sha256 of each artifact at finish

    @classmethod
    def open(cls, cfg: Any, stage: str, *, study: str | None = None, run_root: str | Path | None = None,
             overwrite: bool | None = None) -> "RunDir":
        """Create (or reopen) `run_root/study/stage` for `cfg`.

        A finished run with the same parameters is reopened as `already_done`
        (stages then skip their work); one with different parameters is an
        error unless `overwrite`, so results never silently mix.
        """
        study = study if study is not None else cfg.study
        run_root = run_root if run_root is not None else cfg.run_root
        overwrite = overwrite if overwrite is not None else getattr(cfg, "overwrite", False)
        path = resolve(run_root) / study / stage
        digest = config_lib.config_hash(cfg)
        done = is_done(path)
        stamp = path / ".config_hash"   # written when a run starts, so an interrupted run is checked too
        if overwrite and path.exists():
            # redo means redo: nothing of the old run may be picked up as if it were current
            shutil.rmtree(path)
            done = False
        elif done or stamp.exists():
            old = read_json(path / "DONE").get("config_hash") if done else stamp.read_text().strip()
            if old != digest:
                raise config_lib.ConfigError(
                    f"{path} was produced with different parameters (hash {old} != {digest}); "
                    "set overwrite=True or choose another study name"
                )
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path=path, config=cfg, config_hash=digest, already_done=done)
        if not done:
            write_text(stamp, digest)
            write_text(path / "config.yaml", yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
            write_json(path / "env.json", environment())
        manifest = path / "manifest.json"
        if manifest.exists():
            m = read_json(manifest)
            run.artifacts, run.files = m.get("artifacts", {}), m.get("files", {})
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def log(self, **record: Any) -> None:
        """Append one record to the stage's metrics.jsonl (flushed at once)."""
        append_jsonl(self.path / "metrics.jsonl", {"time": time.time(), **record})

    def add_artifact(self, name: str, description: str) -> Path:
        """Register a file (relative to the run dir) in the manifest; returns its path."""
        self.artifacts[name] = description
        self._write_manifest()
        return self.path / name

    def add_training_runs(self, out_dirs: Iterable[str | Path]) -> None:
        """Register the record files of finished training runs under this stage (run.json, final.json, metrics.jsonl).

        The analysis reads each run's metrics.jsonl, so a truncated or rewritten
        one must fail the manifest check like any other artifact; the model
        weights stay out (large, and nothing downstream reads them by path).
        """
        for out in out_dirs:
            try:
                rel = Path(out).resolve().relative_to(self.path.resolve())
            except ValueError:        # a run kept outside the stage's directory is not the stage's to vouch for
                continue
            for name in ("run.json", "final.json", "metrics.jsonl"):
                self.artifacts[f"{rel.as_posix()}/{name}"] = f"training run {rel.as_posix()}: {name}"
        self._write_manifest()

    def _write_manifest(self) -> None:
        write_json(self.path / "manifest.json", {"stage": self.path.name, "artifacts": self.artifacts,
                                                 "files": self.files})

    def finish(self, **summary: Any) -> None:
        """Record size and sha256 of every artifact, then write the DONE marker (the last thing a stage does).

        A file already recorded with the same size and mtime is not hashed again,
        so re-finishing a reopened run costs nothing.  DONE and metrics.jsonl also
        get the stage's footprint: peak memory of this process and its workers,
        and the bytes its run directory holds (once: a reused stage keeps its own).
        """
        missing = [a for a in self.artifacts if not (self.path / a).is_file()]
        if missing:
            raise MissingInputError(f"{self.path}: manifest lists missing artifact '{missing[0]}'")
        for name in sorted(self.artifacts):
            st, rec = (self.path / name).stat(), self.files.get(name, {})
            if rec.get("bytes") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
                self.files[name] = file_record(self.path / name)
        self.files = {n: r for n, r in self.files.items() if n in self.artifacts}
        self._write_manifest()
        footprint = {"peak_rss_mb": peak_rss_mb(), "disk_bytes": disk_bytes(self.path)}
        done = self.path / "DONE"
        if self.already_done and done.is_file():   # a reused stage keeps the footprint of the run that made it
            footprint = {k: v for k, v in read_json(done).items() if k in footprint} or footprint
        else:
            self.log(kind="footprint", **footprint)
        write_json(self.path / "DONE", {"config_hash": self.config_hash, "time_utc": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **footprint, **summary})
        self.already_done = True
