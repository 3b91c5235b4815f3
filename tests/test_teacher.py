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
