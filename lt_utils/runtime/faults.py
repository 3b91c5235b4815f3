"""Deliberate crashes at named points of a study, for the fault sweep (`make faults`).

`LT_FAULT_AT=POINT:N` makes the N-th call of `hit(POINT)` in a process kill the
pipeline's whole process group (`LT_PIPELINE_PGID`) and the calling process
with SIGKILL, as a power cut or `kill -9` would.  Without the variable a hook
is one dictionary lookup.  Points: train_step, checkpoint_write, estep_sample,
estep_score, candidate_cache_write (E-step cache), thought_cache_write (teacher
cache), analysis (figure files), between_stages.
"""

from __future__ import annotations

import os
import signal

POINTS = ("train_step", "checkpoint_write", "estep_sample", "estep_score", "candidate_cache_write",
          "thought_cache_write", "analysis", "between_stages")
_counts: dict[str, int] = {}


def hit(point: str) -> None:
    """Count one arrival at `point`; kill the study here if LT_FAULT_AT names this arrival."""
    spec = os.environ.get("LT_FAULT_AT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] < int(nth or 1):
        return
    group = os.environ.get("LT_PIPELINE_PGID")
    if group:
        try:
            os.killpg(int(group), signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)
