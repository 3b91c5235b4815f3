"""The oracle teacher writes the world's ground truth from the text alone; the cache makes reruns free."""

from lt_utils import world
from lt_utils.data import chunk_document
from lt_utils.teacher import OracleTeacher, ThoughtCache, write_thoughts


def world_chunks(n_docs=12, mean_units=1.0):
    docs = world.generate_documents("comparison", n_docs, families=list(world.FAMILIES), seed=3)
    out = []
    for d in docs:
        _, chunks = chunk_document(d.doc_id, d.segments(), mean_units=mean_units, max_units=4)
        out.append((d, chunks))
    return out


def test_oracle_writes_ground_truth_for_each_answer_in_the_suffix():
    teacher = OracleTeacher()
    for doc, chunks in world_chunks(mean_units=2.0):
        thoughts = teacher.write(chunks)
        # every unit's thought appears exactly in the chunk whose suffix states its answer, in order
        assert " ".join(t for t in thoughts if t) == " ".join(u.thought for u in doc.units)
        for c, t in zip(chunks, thoughts):
            n_answers = c.suffix.count(".\n")
            assert (t == "") == (n_answers == 0)


def test_oracle_thoughts_verify():
    teacher = OracleTeacher()
    for doc, chunks in world_chunks():
        for u, t in zip(doc.units, teacher.write(chunks)):
            assert world.verify(u.question, t).correct


class CountingTeacher(OracleTeacher):
    name = "counting"

    def __init__(self):
        self.calls = 0

    def write(self, chunks):
        self.calls += len(chunks)
        return super().write(chunks)


def test_cache_hit_miss_and_resume(tmp_path):
    chunks = [c for _, cs in world_chunks() for c in cs]
    path = tmp_path / "cache.sqlite"
    # an interrupted first run: only the first half got written
    t1 = CountingTeacher()
    c1 = ThoughtCache(path)
    first = write_thoughts(t1, chunks[: len(chunks) // 2], c1, progress=False)
    c1.close()
    # the rerun only asks the teacher for the missing half
    t2 = CountingTeacher()
    c2 = ThoughtCache(path)
    full = write_thoughts(t2, chunks, c2, progress=False, batch_size=5)
    assert t2.calls == len(chunks) - len(chunks) // 2
    assert c2.hits == len(chunks) // 2 and c2.misses == len(chunks) - len(chunks) // 2
    assert full[: len(first)] == first
    # a third run costs nothing and gives the same thoughts
    t3 = CountingTeacher()
    assert write_thoughts(t3, chunks, c2, progress=False) == full and t3.calls == 0
    c2.close()


def test_cache_key_covers_teacher_settings(tmp_path):
    chunk = world_chunks(1)[0][1][0]
    assert ThoughtCache.key({"teacher": "a", "temperature": 0.7}, chunk) != \
        ThoughtCache.key({"teacher": "a", "temperature": 1.0}, chunk)


# --------------------------------------------------------------------------- teacher quality as a knob
import math
import re

import numpy as np
import pytest

from lt_utils.teacher import (NoisyOracleTeacher, chunk_units, degrade_thought, split_unit_thoughts,
                              thought_quality)


def flat_chunks(n_docs=12, mean_units=2.0):
    return [c for _, cs in world_chunks(n_docs, mean_units) for c in cs]


def test_noisy_oracle_at_rate_zero_is_the_oracle():
    chunks = flat_chunks()
    assert NoisyOracleTeacher().write(chunks) == OracleTeacher().write(chunks)
    assert NoisyOracleTeacher(0.0, 0.0, seed=9).write(chunks) == OracleTeacher().write(chunks)


def test_thought_quality_of_the_oracle_is_one():
    chunks = flat_chunks()
    q = thought_quality(chunks, OracleTeacher().write(chunks))
    n_units = sum(len(doc.units) for doc, _ in world_chunks(12, 2.0))
    assert q["units"] == n_units and q["correct"] == n_units and q["fraction_correct"] == 1.0
    assert q["chunks"] == len(chunks) and q["reasons"] == {}
    # empty or missing thoughts count every unit as wrong
    q0 = thought_quality(chunks, [""] * len(chunks))
    assert q0["correct"] == 0 and q0["reasons"] == {"missing thought": n_units}
    assert math.isnan(thought_quality([], [])["fraction_correct"])
    with pytest.raises(ValueError):
        thought_quality(chunks, [])


def test_split_unit_thoughts_rule():
    t = "4+9=13 c1. 1+4+1=6. so 63. 3*6=18. so 18."
    assert split_unit_thoughts(t, 2) == ["4+9=13 c1. 1+4+1=6. so 63.", "3*6=18. so 18."]
    assert split_unit_thoughts(t, 1) == [t]  # surplus stays with the last unit
    assert split_unit_thoughts(t + " junk", 2)[1] == "3*6=18. so 18. junk"
    assert split_unit_thoughts("no ending", 2) == ["no ending"]
    assert split_unit_thoughts(t, 0) == []


@pytest.fixture(scope="module")
def many_chunks():
    return flat_chunks(n_docs=150, mean_units=2.0)


def test_full_error_rate_breaks_every_unit_and_keeps_the_format(many_chunks):
    oracle = OracleTeacher().write(many_chunks)
    noisy = NoisyOracleTeacher(error_rate=1.0).write(many_chunks)
    q = thought_quality(many_chunks, noisy)
    assert q["correct"] == 0 and q["reasons"] == {"wrong step": q["units"]}
    for c, o, t in zip(many_chunks, oracle, noisy):
        units = chunk_units(c)
        for uo, un in zip(split_unit_thoughts(o, len(units)), split_unit_thoughts(t, len(units))):
            a, b = uo.split(". "), un.split(". ")
            assert len(a) == len(b) and b[-1] == a[-1]  # same clauses, same final answer
            diff = [(x, y) for x, y in zip(a, b) if x != y]
            assert len(diff) == 1  # exactly one step's result, one digit changed, same format
            (x, y), = diff
            assert x.split("=")[0] == y.split("=")[0] and len(x) == len(y)
            assert sum(p != r for p, r in zip(x, y)) == 1
            assert re.fullmatch(r"(?:\d+: )?\d+(?:[-+*/]\d+)+=-?\d+(?: [cb]\d+)?", y)


def test_full_drop_rate_removes_one_step(many_chunks):
    oracle = OracleTeacher().write(many_chunks)
    noisy = NoisyOracleTeacher(drop_rate=1.0).write(many_chunks)
    q = thought_quality(many_chunks, noisy)
    assert q["correct"] == 0 and q["reasons"] == {"missing step": q["units"]}
    for o, t in zip(oracle, noisy):
        assert t.count(". ") == o.count(". ") - o.count("so ")  # one clause fewer per unit
        assert re.findall(r"so -?\d+\.", t) == re.findall(r"so -?\d+\.", o)
        assert ("has" in t) == ("has" in o)  # background facts are never dropped


@pytest.mark.parametrize("err,drop", [(0.3, 0.0), (0.0, 0.3), (0.2, 0.2)])
def test_partial_rates_fail_the_expected_fraction(many_chunks, err, drop):
    q = thought_quality(many_chunks, NoisyOracleTeacher(err, drop, seed=1).write(many_chunks))
    n = q["units"]
    expected = 1 - (1 - err) * (1 - drop)
    sd = math.sqrt(expected * (1 - expected) / n)
    assert n > 500
    assert abs((1 - q["fraction_correct"]) - expected) < 4 * sd, (q, expected)


def test_noisy_oracle_is_deterministic_keyed_and_cache_safe(tmp_path):
    chunks = flat_chunks()
    t = NoisyOracleTeacher(0.5, 0.5, seed=3)
    first = t.write(chunks)
    assert NoisyOracleTeacher(0.5, 0.5, seed=3).write(chunks) == first
    assert t.write(chunks[::-1]) == first[::-1]  # a thought depends on its chunk only
    assert NoisyOracleTeacher(0.5, 0.5, seed=4).write(chunks) != first
    keys = {json_key(NoisyOracleTeacher(e, d, seed=s)) for e in (0, 0.1) for d in (0, 0.1) for s in (0, 1)}
    assert len(keys) == 8 and json_key(OracleTeacher()) not in keys
    assert t.name == "oracle(err=0.5,drop=0.5)"
    cache = ThoughtCache(tmp_path / "c.sqlite")
    assert write_thoughts(t, chunks, cache, progress=False) == first
    assert write_thoughts(NoisyOracleTeacher(0.1, 0.0, seed=3), chunks, cache, progress=False) == \
        NoisyOracleTeacher(0.1, 0.0, seed=3).write(chunks)
    cache.close()
    with pytest.raises(ValueError):
        NoisyOracleTeacher(error_rate=1.5)


def json_key(teacher):
    import json

    return json.dumps(teacher.key(), sort_keys=True)


def test_degrade_thought_leaves_thoughts_without_steps_alone():
    rng = np.random.default_rng(0)
    assert degrade_thought("a day has 24 hours. so 24.", rng, 1.0, 1.0) == "a day has 24 hours. so 24."


def _damage(path, offset):
    """Overwrite one page of an SQLite file with junk (offset 0: the header, 4096: the first table's root)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xa5" * 4096)


def test_damaged_cache_is_reported_moved_aside_and_rebuilt(tmp_path, capsys):
    chunks = [c for _, cs in world_chunks() for c in cs]
    for offset in (0, 4096):
        path = tmp_path / f"cache{offset}.sqlite"
        cache = ThoughtCache(path)
        assert cache.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        first = write_thoughts(OracleTeacher(), chunks, cache, progress=False)
        cache.close()
        _damage(path, offset)
        capsys.readouterr()
        teacher = CountingTeacher()
        cache = ThoughtCache(path)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and "damaged" in err[0]
        assert [p.name for p in tmp_path.glob(f"cache{offset}.sqlite.damaged-*")]   # kept for a post-mortem
        # nothing of the damaged file is trusted: every thought is written again, and equals the first ones
        assert write_thoughts(teacher, chunks, cache, progress=False) == first
        assert teacher.calls == len(chunks) and cache.hits == 0
        cache.close()


def test_oracle_style_joins_the_cache_key_only_when_not_the_default():
    assert OracleTeacher().key() == {"teacher": "oracle", "version": 1}   # keys cached before styles existed
    assert OracleTeacher("spelled").key() == {"teacher": "oracle", "version": 1, "style": "spelled"}
    chunk = world_chunks(1)[0][1][0]
    assert ThoughtCache.key(OracleTeacher().key(), chunk) != ThoughtCache.key(OracleTeacher("spelled").key(), chunk)
    from lt_utils.teacher import NoisyOracleTeacher

    assert "style" not in NoisyOracleTeacher(0.5).key()
    assert NoisyOracleTeacher(0.5, style="spelled").key()["style"] == "spelled"
    with pytest.raises(ValueError, match="thought_style"):
        OracleTeacher("verbose")
