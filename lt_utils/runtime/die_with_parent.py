"""Tie a process's life to its parent's, so nothing of a study outlives the study.

The notebook kernel runs in a session of its own (jupyter starts it so), and
training workers are the kernel's children: a signal to the pipeline's process
group reaches neither.  On Linux, `prctl(PR_SET_PDEATHSIG)` asks the OS to send
SIGKILL the moment the parent dies, however it dies (kill -9 included), which
no in-process handler can promise.  Elsewhere these calls do nothing.

    python -m lt_utils.runtime.die_with_parent [--log FILE] -- CMD ...   # bind, then exec CMD
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_ENV = "LT_LIFELINE_PARENT"   # the PID `bound_command` expects as parent (else the kernel's JPY_PARENT_PID)


def die_with_parent(parent_pid: int | None = None) -> bool:
    """SIGKILL this process when its parent dies; True if the OS supports it.

    `parent_pid` is the parent the caller expects: if it already died before the
    call (a race prctl cannot see), the process kills itself at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def bound_command(cmd: list[str]) -> tuple[list[str], dict[str, str]]:
    """`cmd` wrapped so it dies with this process, and the environment to run it in (for subprocess.run/Popen).

    The wrapper binds, then execs `cmd` (no preexec_fn: the caller may be a
    threaded kernel).  A launcher such as `accelerate launch` starts its ranks
    in turn; `lt_utils.paper.train_launch` binds each rank to the launcher.
    """
    return ([sys.executable, "-m", "lt_utils.runtime.die_with_parent", "--", *cmd],
            {**os.environ, PARENT_ENV: str(os.getpid())})


def main(argv: list[str] | None = None) -> int:
    """Bind to the parent, optionally send stdout/stderr to a log file, then become CMD (execvp keeps the binding)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    log = None
    if argv[:1] == ["--log"]:
        log, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m lt_utils.runtime.die_with_parent [--log FILE] -- CMD ...", file=sys.stderr)
        return 2
    parent = os.environ.pop(PARENT_ENV, None) or os.environ.get("JPY_PARENT_PID")
    die_with_parent(int(parent) if parent else None)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.execvp(argv[0], argv)
    return 127  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
