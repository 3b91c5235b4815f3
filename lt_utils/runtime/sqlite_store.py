"""Opening the study's SQLite caches so a kill never costs them and a damaged one is never trusted.

The teacher's thought cache and the E-step's candidate cache are rebuilt on a
miss, so losing one costs time, never correctness -- but reading a damaged one
could return garbage.  Every open therefore runs ``PRAGMA quick_check``; a file
that fails it is reported in one line, moved aside (``<name>.damaged-<time>``)
and replaced by an empty cache.  Write-ahead logging keeps the file readable
after a kill mid-commit.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

SIDE_FILES = ("-wal", "-shm", "-journal")


def _check(path: Path) -> str | None:
    """None when `path` opens and passes quick_check, else the reason in a few words."""
    try:
        db = sqlite3.connect(str(path))
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    result = "; ".join(str(r[0]) for r in rows)
    return None if result == "ok" else result


def move_aside(path: Path) -> Path:
    """Rename `path` (and its journal files) out of the way; returns the new name."""
    dest = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}.{n}")
    path.rename(dest)
    for suffix in SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(dest.with_name(dest.name + suffix))
    return dest


def open_cache(path: str | Path | None, schema: str) -> sqlite3.Connection:
    """A connection to the cache at `path` (None: in memory) with `schema` created.

    An existing file is checked first; a damaged one is moved aside with a
    one-line report on stderr and the cache starts empty.
    """
    if path is None:
        db = sqlite3.connect(":memory:")
    else:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > 0:
            reason = _check(path)
            if reason is not None:
                dest = move_aside(path)
                print(f"warning: damaged cache {path} ({reason.splitlines()[0][:200]}); moved to {dest.name}, "
                      "rebuilding it", file=sys.stderr, flush=True)
        db = sqlite3.connect(str(path))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")   # with WAL: a commit survives a killed process
    db.execute(schema)
    db.commit()
    return db
