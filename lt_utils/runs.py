"""Self-describing run directories, written so a crash never corrupts them.

A stage writes `runs/<study>/<stage>/` holding its resolved parameters
(`config.yaml`), the environment (`env.json`), an append-only
`metrics.jsonl`, a `manifest.json` of the artifacts it produced and a `DONE`
marker.  The next stage reads only that directory.  Every artifact is written
to a temporary file and renamed into place, so a file that exists is complete.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import yaml

from . import config as config_lib
from .paths import PROJECT_ROOT, resolve


class MissingInputError(FileNotFoundError):
    """An input run directory is absent or unfinished (message is one line)."""


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
    """Records of a jsonl file, read one line at a time."""
    with open(path) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


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


# --------------------------------------------------------------------------- run directory
def is_done(path: str | Path) -> bool:
    return (Path(path) / "DONE").exists()


def require_done(path: str | Path, what: str = "input run") -> Path:
    """The path of a finished run directory, or a one-line error naming it."""
    p = resolve(path)
    if not p.is_dir():
        raise MissingInputError(f"{what} not found: {p} (run the earlier stage first)")
    if not is_done(p):
        raise MissingInputError(f"{what} is unfinished (no DONE marker): {p} (re-run the earlier stage)")
    return p


@dataclass
class RunDir:
    """One stage's output directory.  Open it with `RunDir.open`."""

    path: Path
    config: Any
    config_hash: str
    already_done: bool = False
    artifacts: dict[str, str] = field(default_factory=dict)

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
            run.artifacts = read_json(manifest).get("artifacts", {})
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def log(self, **record: Any) -> None:
        """Append one record to the stage's metrics.jsonl (flushed at once)."""
        append_jsonl(self.path / "metrics.jsonl", {"time": time.time(), **record})

    def add_artifact(self, name: str, description: str) -> Path:
        """Register a file (relative to the run dir) in the manifest; returns its path."""
        self.artifacts[name] = description
        write_json(self.path / "manifest.json", {"stage": self.path.name, "artifacts": self.artifacts})
        return self.path / name

    def finish(self, **summary: Any) -> None:
        """Write the manifest and the DONE marker (the last thing a stage does)."""
        missing = [a for a in self.artifacts if not (self.path / a).exists()]
        if missing:
            raise MissingInputError(f"{self.path}: manifest lists missing artifact '{missing[0]}'")
        write_json(self.path / "manifest.json", {"stage": self.path.name, "artifacts": self.artifacts})
        write_json(self.path / "DONE", {"config_hash": self.config_hash, "time_utc": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary})
        self.already_done = True
