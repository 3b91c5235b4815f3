"""One study, one writer: a lock file in the study's run directory.

Two pipelines writing into the same `runs/<study>/` would interleave training
runs and caches.  `runs/<study>/.lock` names its holder (PID, host, the PID's
start time as the kernel counts it, and the wall-clock start).  A lock whose
PID is dead, or whose PID now belongs to a process that started at another
time (a reused PID), was left by a killed run and is taken over.  A lock from
another host cannot be checked from here and is always respected.

Checking a lock and taking it over are two steps, so two runs that find the
same stale lock could both take it.  Every acquire and release therefore runs
under an exclusive `flock` on a guard file beside the lock (`.lock.guard`,
never removed); the kernel drops that flock when its holder dies, so the
guard itself cannot go stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"
GUARD_NAME = ".lock.guard"


class StudyLocked(RuntimeError):
    """Another live process holds the study (message is one line naming it)."""


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (/proc/<pid>/stat field 22); None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_is_live(info: dict) -> bool:
    """Whether the process a lock names still runs: same host, PID alive and started when the lock says."""
    if info.get("host") != socket.gethostname():
        return True
    pid = int(info.get("pid", 0))
    if pid <= 0 or not _alive(pid):
        return False
    recorded, now = info.get("start_ticks"), process_start_ticks(pid)
    return recorded is None or now is None or int(recorded) == now


class StudyLock:
    """`with StudyLock(runs/<study>):` holds the study for this process; releases it on exit."""

    def __init__(self, study_dir: str | Path):
        self.path = Path(study_dir) / LOCK_NAME
        self.took_over: dict | None = None

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @contextlib.contextmanager
    def guarded(self):
        """Hold the guard's flock for one check-and-write of the lock file (blocks at most that long)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent / GUARD_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)          # closing drops the flock

    def acquire(self) -> "StudyLock":
        with self.guarded():
            return self._acquire()

    def _acquire(self) -> "StudyLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": process_start_ticks(os.getpid()),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = self.read()
                if info is None:          # being written this instant, or torn by a crash: look again
                    time.sleep(0.2)
                    info = self.read()
                if info is not None and holder_is_live(info):
                    raise StudyLocked(f"{self.path.parent} is in use by PID {info.get('pid')} on {info.get('host')} "
                                      f"since {info.get('started_utc')} (lock file {self.path})") from None
                self.took_over = info or {}
                try:                       # stale (and we hold the guard): remove it, then create ours
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me, sort_keys=True) + "\n")
            return self
        raise StudyLocked(f"could not take the lock {self.path} (another process keeps taking it)")

    def release(self) -> None:
        with self.guarded():
            info = self.read()
            if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
