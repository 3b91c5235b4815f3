"""One writer per study: a live holder refuses a second writer, a killed one's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from lt_utils.cli import pipeline
from lt_utils.runtime.study_lock import StudyLock, StudyLocked, process_start_ticks


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    with StudyLock(tmp_path) as held:
        info = held.read()
        assert info["pid"] == os.getpid() and info["start_ticks"] == process_start_ticks(os.getpid())
        with pytest.raises(StudyLocked, match=f"PID {os.getpid()} .* since {info['started_utc']}"):
            StudyLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()


def test_second_pipeline_refuses_at_once(tmp_path, capsys):
    study = tmp_path / "smoke"
    with StudyLock(study):
        rc = pipeline.main(["--profile", "smoke", "--run-root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"PID {os.getpid()}" in err[0]
    assert not (study / "01_data_prep").exists()   # nothing ran


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = _dead_pid()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "start_ticks": 1,
                                                "started_utc": "2026-01-01T00:00:00Z"}))
    lock = StudyLock(tmp_path).acquire()
    assert lock.took_over["pid"] == dead and lock.read()["pid"] == os.getpid()
    lock.release()


def test_lock_of_a_reused_pid_is_taken_over(tmp_path):
    # our own PID, but recorded with another start time: the PID now belongs to a different process
    ticks = process_start_ticks(os.getpid())
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                "start_ticks": ticks + 1, "started_utc": "2026-01-01T00:00:00Z"}))
    lock = StudyLock(tmp_path).acquire()
    assert lock.took_over["start_ticks"] == ticks + 1
    lock.release()


def test_lock_of_another_host_is_respected(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": "another-host", "start_ticks": 1,
                                                "started_utc": "2026-01-01T00:00:00Z"}))
    with pytest.raises(StudyLocked, match="another-host"):
        StudyLock(tmp_path).acquire()


_TAKER = """
import sys, time
from lt_utils.runtime import study_lock
from lt_utils.runtime.study_lock import StudyLock, StudyLocked
slow_check = study_lock.holder_is_live
def holder_is_live(info):          # a slow liveness check widens the window between check and takeover
    time.sleep(0.5)
    return slow_check(info)
study_lock.holder_is_live = holder_is_live
try:
    lock = StudyLock(sys.argv[1]).acquire()
except StudyLocked:
    print("refused", flush=True)
else:
    print("took", flush=True)
    time.sleep(2)
    lock.release()
"""


def test_simultaneous_takeovers_of_a_stale_lock_leave_one_holder(tmp_path):
    # eight processes find the same dead holder's lock at once: the guard lets exactly one take it over
    (tmp_path / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "start_ticks": 1,
                                                "started_utc": "2026-01-01T00:00:00Z"}))
    procs = [subprocess.Popen([sys.executable, "-c", _TAKER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["refused"] * 7 + ["took"]
    assert not (tmp_path / ".lock").exists()   # the one holder released it
