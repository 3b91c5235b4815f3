"""Teachers write a latent thought for each (prefix, suffix) chunk; a cache makes them idempotent.

`OracleTeacher` is the embedded default: it reads the chunk's text the way an
LLM teacher would, finds each problem whose answer the suffix states, and
writes the world's ground-truth derivation for it.  Any teacher shares the
same interface (`key()` + `write(chunks)`), so an API- or model-backed teacher
drops in at paper scale.  `ThoughtCache` (SQLite) stores every thought under a
key of everything that determines it, so a rerun costs nothing and an
interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Protocol, Sequence

from .data import Chunk

_UNIT = re.compile(r"Problem: (?P<q>.*?) Answer: (?P<a>-?\d+)\.")


class Teacher(Protocol):
    name: str

    def key(self) -> dict:
        """Everything that determines the output besides the chunk (model id, prompt version, sampling)."""

    def write(self, chunks: Sequence[Chunk]) -> list[str]:
        """One thought per chunk."""


class OracleTeacher:
    """Ground-truth thoughts of the synthetic world, read off the chunk's text."""

    name = "oracle"

    def key(self) -> dict:
        return {"teacher": "oracle", "version": 1}

    def thought_for(self, chunk: Chunk) -> str:
        from . import world

        text = chunk.prefix + chunk.suffix
        start = len(chunk.prefix)
        parts = []
        for m in _UNIT.finditer(text):
            # a unit belongs to this chunk when its answer is stated inside the suffix
            if m.start("a") < start:
                continue
            unit = world.parse_question(m.group("q"))
            if unit is not None:
                parts.append(unit.thought)
        return " ".join(parts)

    def write(self, chunks: Sequence[Chunk]) -> list[str]:
        return [self.thought_for(c) for c in chunks]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class ThoughtCache:
    """SQLite map from (teacher key, chunk text) to a thought; committed as results arrive."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS thoughts (key TEXT PRIMARY KEY, thought TEXT NOT NULL)")
        self.db.commit()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(teacher_key: dict, chunk: Chunk) -> str:
        return _digest({"teacher": teacher_key, "prefix": chunk.prefix, "suffix": chunk.suffix})

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for s in range(0, len(keys), 500):
            part = list(keys[s:s + 500])
            q = f"SELECT key, thought FROM thoughts WHERE key IN ({','.join('?' * len(part))})"
            out.update(dict(self.db.execute(q, part).fetchall()))
        return out

    def put_many(self, items: dict[str, str]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO thoughts (key, thought) VALUES (?, ?)", list(items.items()))
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def write_thoughts(teacher: Teacher, chunks: Sequence[Chunk], cache: ThoughtCache, *, batch_size: int = 256,
                   progress: bool = True) -> list[str]:
    """Thoughts for all chunks, from the cache where present; new ones are stored batch by batch."""
    tkey = teacher.key()
    keys = [cache.key(tkey, c) for c in chunks]
    found = cache.get_many(keys)
    todo = [i for i, k in enumerate(keys) if k not in found]
    cache.hits += len(chunks) - len(todo)
    cache.misses += len(todo)
    batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    if progress and batches:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"{teacher.name} thoughts", unit="batch")
    for idx in batches:
        new = teacher.write([chunks[i] for i in idx])
        items = {keys[i]: t for i, t in zip(idx, new)}
        cache.put_many(items)
        found.update(items)
    return [found[k] for k in keys]
