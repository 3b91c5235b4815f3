"""Progress events of a running study, for the terminal that started it.

Stages run inside a notebook kernel whose output nobody sees live, and their
training runs inside worker processes of that kernel.  Each of them appends a
one-line JSON event to the file named by `LT_PROGRESS_FILE` (the pipeline sets
it to `runs/<study>/progress.jsonl`, and every child inherits it); the pipeline
tails that file.  Without the variable `emit` does nothing.  Lines are short
and written with O_APPEND in one call, so writers in several processes never
interleave within a line.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ENV = "LT_PROGRESS_FILE"


def emit(event: str, **fields: Any) -> None:
    """Append one event (`event`, wall time, pid, fields); never raises into the study."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), **fields}, default=str) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass
