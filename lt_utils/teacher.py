"""Teachers write a latent thought for each (prefix, suffix) chunk; a cache makes them idempotent.

`OracleTeacher` is the embedded default: it reads the chunk's text the way an
LLM teacher would, finds each problem whose answer the suffix states, and
writes the world's ground-truth derivation for it.  Any teacher shares the
same interface (`key()` + `write(chunks)`), so an API- or model-backed teacher
drops in at paper scale.  `ThoughtCache` (SQLite) stores every thought under a
key of everything that determines it, so a rerun costs nothing and an
interrupted run resumes.

Teacher quality is a knob of the study: `NoisyOracleTeacher` degrades the
oracle's thoughts at given rates (a wrong digit in one step's result, or one
step left out), and `thought_quality` measures the fraction of units whose
thought `world.verify` accepts, so accuracy can be read against teacher
quality.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from lt_utils.runtime import faults
from lt_utils.data import Chunk
from lt_utils.runtime.sqlite_store import open_cache

_UNIT = re.compile(r"Problem: (?P<q>.*?) Answer: (?P<a>-?\d+)\.")


def chunk_units(chunk: Chunk, style: str = "compact") -> list:
    """The world units a chunk's thought covers, in order: problems whose answer is stated in the suffix.

    Read off the text alone (the question of each ``Problem: … Answer: N.``
    whose answer lies inside the suffix; the problem itself may start in the
    prefix) and re-derived with `world.parse_question`, thoughts in `style`;
    unrecognised questions are skipped.
    """
    from lt_utils import world

    text = chunk.prefix + chunk.suffix
    start = len(chunk.prefix)
    units = []
    for m in _UNIT.finditer(text):
        # a unit belongs to this chunk when its answer is stated inside the suffix
        if m.start("a") < start:
            continue
        unit = world.parse_question(m.group("q"), style)
        if unit is not None:
            units.append(unit)
    return units


class Teacher(Protocol):
    name: str

    def key(self) -> dict:
        """Everything that determines the output besides the chunk (model id, prompt version, sampling)."""

    def write(self, chunks: Sequence[Chunk]) -> list[str]:
        """One thought per chunk."""


class OracleTeacher:
    """Ground-truth thoughts of the synthetic world, read off the chunk's text, in one thought style.

    The style (`world.THOUGHT_STYLES`) joins the cache key only when it is not
    the default, so thoughts cached before styles existed keep their keys.
    """

    name, style = "oracle", "compact"

    def __init__(self, style: str = "compact"):
        from lt_utils.world.units import check_style

        self.style = check_style(style)
        self.name = "oracle" if style == "compact" else f"oracle({style})"

    def _style_key(self) -> dict:
        return {} if self.style == "compact" else {"style": self.style}

    def key(self) -> dict:
        return {"teacher": "oracle", "version": 1, **self._style_key()}

    def thought_for(self, chunk: Chunk) -> str:
        return " ".join(unit.thought for unit in chunk_units(chunk, self.style))

    def write(self, chunks: Sequence[Chunk]) -> list[str]:
        return [self.thought_for(c) for c in chunks]


# An arithmetic step clause of a thought: optional long-division label, expression, result, marker.
_STEP_CLAUSE = re.compile(r"(?:\d+: )?\d+(?:[-+*/]\d+)+=(?P<res>-?\d+)(?: [cb]\d+)?")
# The end of one unit's thought inside a chunk thought.
_UNIT_END = re.compile(r"\bso -?\d+\.")


def degrade_thought(thought: str, rng: np.random.Generator, error_rate: float, drop_rate: float) -> str:
    """A unit's thought with, at the given rates, one step's result made false and/or one step left out.

    Two uniforms are always drawn (error, then drop), so the outcome for one
    setting does not depend on the other rate.  *Error*: one arithmetic step
    is picked and one digit of its result replaced by another digit (never a
    leading zero), so the step stays well formed but is false.  *Drop*: one
    arithmetic step (not the corrupted one when another exists) is removed;
    background facts and the final ``so N`` clause are never touched.  A
    thought without steps is returned unchanged.
    """
    u_err, u_drop = rng.random(2)
    corrupt, drop = bool(u_err < error_rate), bool(u_drop < drop_rate)
    if not (corrupt or drop):
        return thought
    body = thought[:-1] if thought.endswith(".") else thought
    clauses = body.split(". ")
    steps = [i for i, c in enumerate(clauses[:-1]) if _STEP_CLAUSE.fullmatch(c)]
    if not steps:
        return thought
    bad = None
    if corrupt:
        bad = steps[int(rng.integers(len(steps)))]
        m = _STEP_CLAUSE.fullmatch(clauses[bad])
        lo, hi = m.span("res")
        if clauses[bad][lo] == "-":
            lo += 1
        pos = int(rng.integers(lo, hi))
        old = clauses[bad][pos]
        choices = [d for d in "0123456789" if d != old and not (d == "0" and pos == lo and hi - lo > 1)]
        clauses[bad] = clauses[bad][:pos] + choices[int(rng.integers(len(choices)))] + clauses[bad][pos + 1:]
    if drop:
        pool = [i for i in steps if i != bad] or steps
        del clauses[pool[int(rng.integers(len(pool)))]]
    return ". ".join(clauses) + "."


class NoisyOracleTeacher(OracleTeacher):
    """The oracle with teacher quality as a knob: per unit, a false step at `error_rate`, a missing step at `drop_rate`.

    The randomness of each unit comes from a stable hash of (seed, the chunk's
    prefix and suffix, the unit's position in the chunk), so a thought depends
    only on its chunk and the settings: deterministic, order-free and safe to
    cache.  `key()` holds both rates and the seed.  With both rates 0 the
    thoughts are exactly the oracle's.
    """

    def __init__(self, error_rate: float = 0.0, drop_rate: float = 0.0, seed: int = 0, style: str = "compact"):
        super().__init__(style)
        for label, rate in (("error_rate", error_rate), ("drop_rate", drop_rate)):
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {rate}")
        self.error_rate, self.drop_rate, self.seed = float(error_rate), float(drop_rate), int(seed)
        extra = "" if style == "compact" else f",{style}"
        self.name = f"oracle(err={self.error_rate:g},drop={self.drop_rate:g}{extra})"

    def key(self) -> dict:
        return {"teacher": "noisy_oracle", "version": 1, "error_rate": self.error_rate,
                "drop_rate": self.drop_rate, "seed": self.seed, **self._style_key()}

    def unit_rng(self, chunk: Chunk, position: int) -> np.random.Generator:
        h = hashlib.sha256(json.dumps(["noisy-oracle", self.seed, chunk.prefix, chunk.suffix, int(position)]).encode())
        return np.random.default_rng(int.from_bytes(h.digest()[:16], "little"))

    def thought_for(self, chunk: Chunk) -> str:
        return " ".join(degrade_thought(u.thought, self.unit_rng(chunk, i), self.error_rate, self.drop_rate)
                        for i, u in enumerate(chunk_units(chunk, self.style)))


def split_unit_thoughts(thought: str, n_units: int) -> list[str]:
    """A chunk thought cut back into per-unit thoughts (at most `n_units` pieces).

    Splitting rule: every unit's thought ends with ``so N.``, so the text is
    cut right after each match of ``so <integer>.``; pieces are stripped of
    surrounding whitespace.  The k-th piece belongs to the k-th unit.  Surplus
    pieces and any text after the last ``so N.`` stay with the last unit's
    piece (so it must still verify with them); when there are fewer pieces
    than units, the list is shorter and the missing units count as wrong.
    """
    if n_units <= 0:
        return []
    pieces, pos = [], 0
    for m in _UNIT_END.finditer(thought):
        pieces.append(thought[pos:m.end()])
        pos = m.end()
    if pos < len(thought) and thought[pos:].strip():
        if pieces:
            pieces[-1] += thought[pos:]
        else:
            pieces.append(thought[pos:])
    if len(pieces) > n_units:
        pieces = pieces[:n_units - 1] + ["".join(pieces[n_units - 1:])]
    return [p.strip() for p in pieces]


def thought_quality(chunks: Sequence[Chunk], thoughts: Sequence[str]) -> dict:
    """How many of the units covered by the chunks have a thought that `world.verify` accepts.

    The units of a chunk are found as the oracle finds them (`chunk_units`),
    and the chunk's thought is cut into per-unit thoughts by
    `split_unit_thoughts`.  Returns ``{"chunks", "units", "correct",
    "fraction_correct", "reasons"}``; ``reasons`` counts the verifier's reason
    for every failed unit ("missing thought" when the chunk thought had too
    few pieces); ``fraction_correct`` is NaN when no chunk covers a unit.
    """
    from lt_utils import world

    if len(chunks) != len(thoughts):
        raise ValueError(f"{len(chunks)} chunks but {len(thoughts)} thoughts")
    n = k = 0
    reasons: dict[str, int] = {}
    for chunk, thought in zip(chunks, thoughts):
        units = chunk_units(chunk)
        pieces = split_unit_thoughts(thought or "", len(units))
        for i, unit in enumerate(units):
            n += 1
            reason = world.verify(unit.question, pieces[i]).reason if i < len(pieces) else "missing thought"
            if reason:
                reasons[reason] = reasons.get(reason, 0) + 1
            else:
                k += 1
    return {"chunks": len(chunks), "units": n, "correct": k,
            "fraction_correct": k / n if n else float("nan"), "reasons": reasons}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class ThoughtCache:
    """SQLite map from (teacher key, chunk text) to a thought; committed as results arrive.

    Opened through `sqlite_store.open_cache`: WAL journal, and a damaged file is moved aside and rebuilt.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = open_cache(self.path, "CREATE TABLE IF NOT EXISTS thoughts (key TEXT PRIMARY KEY, "
                                        "thought TEXT NOT NULL)")
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
        faults.hit("thought_cache_write")
        self.db.commit()

    def close(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- errors and the caching driver
def _one_line(text: str, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


class TeacherError(RuntimeError):
    """Some chunks of a batch failed for good.

    `partial` maps positions in the batch passed to `write` to the thoughts that
    did succeed; `failures` maps the failed positions to a one-line reason.
    """

    def __init__(self, message: str, partial: dict[int, str] | None = None,
                 failures: dict[int, str] | None = None):
        super().__init__(_one_line(message, 1000))
        self.partial: dict[int, str] = dict(partial or {})
        self.failures: dict[int, str] = dict(failures or {})


def _chunk_name(chunk: Chunk) -> str:
    return f"chunk doc_id={chunk.doc_id} index={chunk.index}"


def _batch_error(chunks: Sequence[Chunk], partial: dict[int, str], failures: dict[int, str]) -> TeacherError:
    first = min(failures)
    more = f" (and {len(failures) - 1} more of {len(chunks)})" if len(failures) > 1 else ""
    return TeacherError(f"{_chunk_name(chunks[first])} failed: {failures[first]}{more}", partial, failures)


def write_thoughts(teacher: Teacher, chunks: Sequence[Chunk], cache: ThoughtCache, *, batch_size: int = 256,
                   progress: bool = True, keep_going: bool = False) -> list[str]:
    """Thoughts for all chunks, from the cache where present; new ones are stored batch by batch.

    A teacher that fails for some chunks raises `TeacherError` with the
    batch's finished thoughts in `.partial`: they are stored before the error
    goes on, so nothing finished is lost and a rerun asks only for what is
    missing.  With `keep_going` the remaining batches still run and one error
    naming the first failed chunk is raised at the end.
    """
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
    failures: dict[int, str] = {}
    for idx in batches:
        try:
            new = dict(enumerate(teacher.write([chunks[i] for i in idx])))
            err = None
        except TeacherError as e:
            new, err = e.partial, e
        items = {keys[idx[j]]: t for j, t in new.items()}
        if items:
            cache.put_many(items)
            found.update(items)
        if err is not None:
            batch_failures = {idx[j]: r for j, r in err.failures.items()} or \
                {i: str(err) for i in idx if keys[i] not in found}
            if not keep_going:
                raise _batch_error(chunks, {i: found[keys[i]] for i in range(len(chunks)) if keys[i] in found},
                                   batch_failures) from err
            failures.update(batch_failures)
    if failures:
        raise _batch_error(chunks, {i: found[keys[i]] for i in range(len(chunks)) if keys[i] in found}, failures)
    return [found[k] for k in keys]
