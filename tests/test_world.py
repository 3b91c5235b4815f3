"""Tests of the synthetic compressed-math world (lt_utils.world)."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from lt_utils import world as W

ALL = list(W.FAMILIES)
TRAIN_SPLITS = ("comparison", "fresh", "warmstart", "bootstrap", "base")
ANSWER_RE = re.compile(r"-?\d+")
THOUGHT_CHARS = set("0123456789+-*/= .,;:()") | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

# Difficulties exercised per family (default first).
LEVELS = {
    "addition": (3, 1, 2, 5),
    "subtraction": (3, 1, 2, 5),
    "multiplication": (2, 1, 4, 11, 13),
    "word": (2, 1, 3, 4, 6),
    "linear": (1, 2, 4),
    "remainder": (3, 1, 2, 5),
    "conversion": (1, 2, 3),
}


def _instances(family: str, difficulty: int, n: int, seed: int = 0) -> list[W.Unit]:
    fam = W.FAMILIES[family]
    rng = np.random.default_rng([seed, difficulty, len(family)])
    return [fam.unit(fam.sample(rng, difficulty), difficulty) for _ in range(n)]


def _all_units(n: int = 40) -> list[W.Unit]:
    return [u for f in ALL for d in LEVELS[f] for u in _instances(f, d, n)]


# --------------------------------------------------------------------------- #
# registry and sizes
# --------------------------------------------------------------------------- #
def test_registry_and_defaults():
    assert set(ALL) >= {"addition", "subtraction", "multiplication", "word", "linear", "remainder", "conversion"}
    assert set(W.DEFAULT_DIFFICULTY) == set(ALL)
    for name, fam in W.FAMILIES.items():
        assert fam.name == name
        assert W.DEFAULT_DIFFICULTY[name] in fam.difficulties
    assert W.SPLITS == ("comparison", "fresh", "warmstart", "bootstrap", "valid", "eval", "base")


def test_unknown_names_raise_one_line_errors():
    with pytest.raises(ValueError) as e:
        W.generate_documents("comparison", 1, families=["addition", "calculus"], seed=0)
    msg = str(e.value)
    assert "\n" not in msg and "calculus" in msg
    assert all(name in msg for name in ALL)
    with pytest.raises(ValueError, match="valid families"):
        W.generate_problems("eval", 1, families=["nope"], seed=0)
    with pytest.raises(ValueError, match="valid families"):
        W.instance_space_size("nope")
    with pytest.raises(ValueError, match="split"):
        W.generate_documents("test", 1, families=["addition"], seed=0)
    with pytest.raises(ValueError, match="difficulty"):
        W.generate_documents("comparison", 1, families=["addition"], difficulty={"addition": 0}, seed=0)
    with pytest.raises(ValueError, match="valid families"):
        W.generate_documents("comparison", 1, families=["addition"], difficulty={"algebra": 2}, seed=0)


def test_instance_space_sizes_at_default():
    sizes = {f: W.instance_space_size(f) for f in ALL}
    assert sizes == {
        "addition": 810_000,
        "subtraction": 405_450,
        "multiplication": 720,
        "word": 92_778_498,
        "linear": 5_895,
        "remainder": 7_200,
        "conversion": 160,
    }
    # families with fewer than 300 eval problems at default are exactly the documented three
    small = {f: W.split_pool_size(f, "eval") for f in ALL if (W.split_pool_size(f, "eval") or 10**9) < 300}
    assert small == {"multiplication": 39, "conversion": 9, "linear": 280}
    assert W.split_pool_size("remainder", "eval") >= 300


@pytest.mark.parametrize("family,difficulty", [("linear", 1), ("linear", 2), ("conversion", 2), ("subtraction", 2),
                                               ("multiplication", 11), ("remainder", 2), ("addition", 1)])
def test_instance_space_size_matches_enumeration(family, difficulty):
    fam = W.FAMILIES[family]
    insts = list(fam.enumerate(difficulty))
    assert len(insts) == len(set(insts)) == W.instance_space_size(family, difficulty)
    # every enumerated instance renders to a distinct question that parses back to itself
    questions = {fam.render(i) for i in insts}
    assert len(questions) == len(insts)
    for inst in insts[:: max(1, len(insts) // 200)]:
        assert fam.parse(fam.render(inst)) == inst


def test_word_space_size_matches_brute_force_at_one_operation():
    # independent count: one event after the start (add, sub with its extra slot, or share)
    total = 0
    for fr in W._FRAMES:
        for subject in fr.subjects:
            extras = len(W._Word._extra_choices(fr, subject))
            for start in range(2, 21):
                n = 20 + extras * min(20, start) + sum(1 for k in range(2, 10) if start % k == 0 and start >= k)
                total += n * len(fr.objs)
    assert W.instance_space_size("word", 1) == total


def test_split_pool_sizes_partition_small_spaces():
    for family in ("multiplication", "linear", "remainder", "conversion"):
        sizes = [W.split_pool_size(family, s) for s in W.SPLITS]
        assert sum(sizes) == W.instance_space_size(family)
    assert W.split_pool_size("addition", "eval") is None  # too big to enumerate


# --------------------------------------------------------------------------- #
# splits and determinism
# --------------------------------------------------------------------------- #
PINNED_SPLITS = {"0000000000000000": "base", "ffffffffffffffff": "fresh", "0123456789abcdef": "fresh"}


def test_split_of_is_stable_and_fractions_match():
    # pinned values: the assignment must not change across runs or machines
    pinned = {uid: W.split_of(uid) for uid in ("0000000000000000", "ffffffffffffffff", "0123456789abcdef")}
    assert pinned == PINNED_SPLITS
    rng = np.random.default_rng(1)
    uids = [f"{int(x):016x}" for x in rng.integers(0, 2**62, size=20_000)]
    counts = {s: 0 for s in W.SPLITS}
    for u in uids:
        counts[W.split_of(u)] += 1
    expected = {"eval": 0.05, "valid": 0.05, "comparison": 0.225, "fresh": 0.225, "warmstart": 0.1125,
                "base": 0.1125, "bootstrap": 0.225}
    assert W.SPLIT_FRACTIONS == pytest.approx(expected)
    for s, frac in expected.items():
        assert counts[s] / len(uids) == pytest.approx(frac, abs=0.012)


def test_uid_is_stable_per_instance():
    a = W.parse_question("What is 347+586?")
    b = W.parse_question("What is 347+586?")
    c = W.parse_question("What is 586+347?")
    assert a.uid == b.uid != c.uid
    assert re.fullmatch(r"[0-9a-f]{16}", a.uid)
    assert a.uid == "1c0860d11d98d4cf"  # sha1-based: identical on every machine
    assert W.FAMILIES["addition"].uid((347, 586)) == a.uid


def test_generate_documents_is_deterministic():
    kw = dict(families=ALL, units_per_doc=(2, 5))
    d1 = W.generate_documents("comparison", 12, seed=3, **kw)
    d2 = W.generate_documents("comparison", 12, seed=3, **kw)
    d3 = W.generate_documents("comparison", 12, seed=4, **kw)
    assert [d.to_dict() for d in d1] == [d.to_dict() for d in d2]
    assert [d.text for d in d1] != [d.text for d in d3]
    assert [d.doc_id for d in d1] == [f"comparison-3-{i:06d}" for i in range(12)]
    assert all(2 <= len(d.units) <= 5 for d in d1)
    # pinned: the same arguments give the same text on every machine
    pinned = W.generate_documents("comparison", 5, families=ALL, seed=0)
    digest = hashlib.sha1("".join(d.text for d in pinned).encode()).hexdigest()
    assert digest == "ad9b796c3022d064b56b520a98f294cb361d5405"
    p1 = W.generate_problems("eval", 14, families=ALL, seed=0)
    p2 = W.generate_problems("eval", 14, families=ALL, seed=0)
    p3 = W.generate_problems("eval", 14, families=ALL, seed=1)
    assert p1 == p2 and p1 != p3


def test_units_per_doc_range_is_inclusive_and_families_mix():
    docs = W.generate_documents("fresh", 60, families=["addition", "word", "conversion"], units_per_doc=(1, 3),
                                seed=0)
    lengths = {len(d.units) for d in docs}
    assert lengths == {1, 2, 3}
    fams = [u.family for d in docs for u in d.units]
    assert set(fams) == {"addition", "word", "conversion"}
    assert min(fams.count(f) for f in set(fams)) > 20
    with pytest.raises(ValueError):
        W.generate_documents("fresh", 1, families=["addition"], units_per_doc=(3, 2), seed=0)


def test_splits_are_disjoint_and_eval_questions_never_in_training_text():
    diffs = {"conversion": 2}  # conversion's default space is tiny; see docstring
    uids_by_split = {}
    train_text = []
    for split in W.SPLITS:
        docs = W.generate_documents(split, 40, families=ALL, difficulty=diffs, seed=7)
        units = [u for d in docs for u in d.units]
        assert all(W.split_of(u.uid) == split for u in units)
        assert all(d.split == split for d in docs)
        uids_by_split[split] = {u.uid for u in units}
        if split in TRAIN_SPLITS or split == "valid":
            train_text.append("".join(d.text for d in docs))
    problems = W.generate_problems("eval", 140, families=ALL, difficulty=diffs, seed=7)
    assert all(W.split_of(p.uid) == "eval" for p in problems)
    uids_by_split["eval"] |= {p.uid for p in problems}
    splits = list(uids_by_split)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not uids_by_split[a] & uids_by_split[b], (a, b)
    blob = "\n".join(train_text)
    assert len(blob) > 10_000
    for p in problems:
        assert p.question not in blob


def test_generate_problems_distinct_and_round_robin():
    fams = ["remainder", "word", "linear"]
    probs = W.generate_problems("eval", 90, families=fams, seed=2)
    assert [p.family for p in probs] == fams * 30
    assert len({p.uid for p in probs}) == 90
    # a small family runs out: exact error naming it
    n_conv = W.split_pool_size("conversion", "eval")
    got = W.generate_problems("eval", n_conv, families=["conversion"], seed=0)
    assert len({p.uid for p in got}) == n_conv
    with pytest.raises(ValueError, match="conversion"):
        W.generate_problems("eval", n_conv + 1, families=["conversion"], seed=0)


# --------------------------------------------------------------------------- #
# rendering conventions
# --------------------------------------------------------------------------- #
def test_document_text_segments_and_round_trip():
    docs = W.generate_documents("warmstart", 25, families=ALL, seed=11)
    for doc in docs:
        n = len(doc.units)
        assert doc.text == "".join(f"Problem: {u.question} Answer: {u.answer}.\n" for u in doc.units)
        segs = doc.segments()
        assert len(segs) == n + 1
        assert "".join(segs) == doc.text
        assert segs[0] == f"Problem: {doc.units[0].question} Answer:"
        for k in range(1, n + 1):
            assert segs[k].startswith(f" {doc.units[k - 1].answer}.\n")
            if k < n:
                assert segs[k].endswith(f"Problem: {doc.units[k].question} Answer:")
            else:
                assert segs[k] == f" {doc.units[k - 1].answer}.\n"
        d = json.loads(json.dumps(doc.to_dict()))
        assert W.Document.from_dict(d) == doc
    u = docs[0].units[0]
    assert u.prompt == W.eval_prompt(u.question) == f"Problem: {u.question} Answer:"
    assert u.target == W.eval_target(u.answer) == f" {u.answer}."
    assert u.text == u.prompt + u.target + "\n"


def test_question_answer_and_thought_text_rules():
    for u in _all_units(30):
        q, a, t = u.question, u.answer, u.thought
        assert "Problem:" not in q and "Answer:" not in q and "\n" not in q
        assert q == q.strip() and q
        assert ANSWER_RE.fullmatch(a), a
        assert t.isascii() and "\n" not in t and "Problem:" not in t and "Answer:" not in t
        assert set(t) <= THOUGHT_CHARS, t
        assert t.endswith(f"so {a}.")
        assert int(a) == int(W.verify(q, t).final_answer)


def test_thought_formats_examples():
    def th(q):
        return W.parse_question(q).thought

    assert th("What is 347+586?") == "7+6=13 c1. 4+8+1=13 c1. 3+5+1=9. so 933."
    assert th("What is 532-187?") == "12-7=5 b1. 13-1-8=4 b1. 5-1-1=3. so 345."
    assert th("What is 47*6?") == "7*6=42 c4. 4*6+4=28. so 282."
    assert th("What is 47*36?") == ("7*6=42 c4. 4*6+4=28. 47*6=282. 7*3=21 c2. 4*3+2=14. 47*3=141. "
                                     "282+1410=1692. so 1692.")
    assert th("Ann has 12 apples. She buys 3 bags of 5 apples each. How many apples does she have now?") == \
        "3*5=15. 12+15=27. so 27."
    assert th("Solve 3x+4=19 for x.") == "19-4=15. 15/3=5. so 5."
    assert th("Solve 3x-4=11 for x.") == "11+4=15. 15/3=5. so 5."
    assert th("What is the remainder of 347 divided by 6?") == "34: 6*5=30. 34-30=4. 47: 6*7=42. 47-42=5. so 5."
    assert th("How many days are in 3 weeks?") == "a week has 7 days. 3*7=21. so 21."
    assert th("How many hours are in 3 days?") == "a day has 24 hours. 4*3=12 c1. 2*3+1=7. so 72."
    assert th("How many minutes are in 2 hours?") == "an hour has 60 minutes. 0*2=0. 6*2=12. so 120."


def test_word_problems_use_varied_templates():
    units = _instances("word", 3, 300)
    starts = {u.question.split(" ")[0] for u in units}
    frames = {W.FAMILIES["word"].parse(u.question)[0] for u in units}
    assert len(frames) >= 4 and len(starts) >= 8
    for u in units:
        assert 2 <= u.question.count(". ") + 1 <= 6  # several sentences on one line
        assert u.question.endswith("?")
        nums = [int(x) for x in re.findall(r"\d+", u.question)]
        assert max(nums) <= 20 and 0 <= int(u.answer) < 1000
        assert len(re.findall(r"=", u.thought)) == 3  # one step per operation


# --------------------------------------------------------------------------- #
# parsing
# --------------------------------------------------------------------------- #
def test_parse_question_round_trip_every_family():
    for u in _all_units(40):
        p = W.parse_question(u.question)
        assert p is not None, u.question
        assert (p.family, p.question, p.answer, p.thought, p.uid) == (u.family, u.question, u.answer, u.thought,
                                                                        u.uid)
        assert p.difficulty <= u.difficulty


@pytest.mark.parametrize("q", [
    "", "What is 347+586", "What is 347+58?", "What is 0347+586?", "What is 47*1?", "What is 5-9?",
    "Solve 3x+4=18 for x.", "Solve 1x+4=19 for x.", "How many days are in 1 weeks?", "How many hours are in 3 weeks?",
    "What is the remainder of 47 divided by 1?", "Ann has 12 apples. How many apples does she have now?",
    "Ann has 12 apples. He buys 3 more apples. How many apples does she have now?",
    "Ann has 25 apples. She buys 3 more apples. How many apples does she have now?",
    "Problem: What is 1+2? Answer: 3.", "\x00\xff", "What is 347+586?\n",
])
def test_parse_question_rejects_foreign_text(q):
    assert W.parse_question(q) is None


def test_parse_question_ignores_non_strings():
    assert W.parse_question(None) is None  # type: ignore[arg-type]
    assert W.parse_question(123) is None  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# verifier
# --------------------------------------------------------------------------- #
def test_verifier_accepts_every_ground_truth_thought():
    units = _all_units(40)
    assert len(units) > 800
    for u in units:
        v = W.verify(u.question, u.thought)
        assert v.correct, (u.question, u.thought, v)
        assert v.reason == "" and v.n_wrong_steps == 0 and v.final_answer == u.answer
        assert v.n_steps == u.thought.count("=")


def _digit_corruptions(thought: str):
    for i, ch in enumerate(thought):
        if ch.isdigit():
            yield thought[:i] + str((int(ch) + 1) % 10) + thought[i + 1:]


def test_verifier_detects_any_single_digit_change():
    # a wrong digit anywhere (operand, result, carry, label, fact, final answer) is caught
    n = 0
    for f in ALL:
        for d in LEVELS[f][:3]:
            for u in _instances(f, d, 12, seed=5):
                for bad in _digit_corruptions(u.thought):
                    v = W.verify(u.question, bad)
                    assert not v.correct, (u.question, bad)
                    n += 1
    assert n > 2000


def test_verifier_detects_dropped_steps():
    for f in ALL:
        for d in LEVELS[f][:3]:
            for u in _instances(f, d, 15, seed=6):
                clauses = u.thought[:-1].split(". ")
                for i in range(len(clauses)):
                    bad = ". ".join(clauses[:i] + clauses[i + 1:]) + "."
                    v = W.verify(u.question, bad)
                    assert not v.correct, (u.question, bad)
                    if i == len(clauses) - 1:
                        assert v.reason == "no final answer"
                    elif clauses[i].startswith(("a ", "an ")):
                        assert v.reason == "missing background fact"
                    else:
                        assert v.reason == "missing step"


def test_verifier_corruption_examples():
    q = "What is 347+586?"
    good = "7+6=13 c1. 4+8+1=13 c1. 3+5+1=9. so 933."
    assert W.verify(q, good) == W.Verdict(True, 3, 0, "933", "")
    v = W.verify(q, "7+6=14 c1. 4+8+1=13 c1. 3+5+1=9. so 933.")
    assert not v.correct and v.reason == "wrong step" and v.n_wrong_steps == 1 and v.n_steps == 3
    assert W.verify(q, "7+6=13 c2. 4+8+1=13 c1. 3+5+1=9. so 933.").reason == "wrong step"
    assert W.verify(q, "7+6=13 c1. 3+5+1=9. so 933.").reason == "missing step"
    v = W.verify(q, "7+6=13 c1. 4+8+1=13 c1. 3+5+1=9. so 934.")
    assert not v.correct and v.reason == "wrong final answer" and v.final_answer == "934"
    assert W.verify(q, "7+6=13 c1. 4+8+1=13 c1. 3+5+1=9.").reason == "no final answer"
    # arithmetic that is true but not tied to the problem's operands
    v = W.verify(q, "1+1=2. so 933.")
    assert not v.correct and v.reason == "missing step" and v.n_wrong_steps == 0
    assert not W.verify(q, "347+586=933. so 933.").correct
    # commuted operands are the same step
    assert W.verify(q, "6+7=13 c1. 8+4+1=13 c1. 1+5+3=9. so 933.").correct
    # spaces around operators are tolerated
    assert W.verify(q, "7 + 6 = 13 c1. 4+8+1 = 13 c1. 3+5+1=9. so 933.").correct


def test_verifier_background_fact():
    q = "How many days are in 3 weeks?"
    assert W.verify(q, "a week has 7 days. 3*7=21. so 21.").correct
    v = W.verify(q, "a week has 8 days. 3*8=24. so 24.")
    assert not v.correct and v.reason == "wrong background fact"
    v = W.verify(q, "a week has 8 days. 3*7=21. so 21.")
    assert not v.correct and v.reason == "wrong background fact"
    assert W.verify(q, "3*7=21. so 21.").reason == "missing background fact"
    assert W.verify(q, "a day has 24 hours. 3*7=21. so 21.").reason == "missing background fact"
    assert W.verify(q, "a week has 7 days. a day has 25 hours. 3*7=21. so 21.").reason == "wrong background fact"


def test_verifier_thought_for_a_different_problem():
    for f in ALL:
        units = _instances(f, W.DEFAULT_DIFFICULTY[f], 30, seed=8)
        for a, b in zip(units, units[1:]):
            if a.answer != b.answer:
                assert not W.verify(a.question, b.thought).correct
    # same answer, different operands: still wrong, the steps are not this problem's
    v = W.verify("Solve 3x+4=19 for x.", "16-1=15. 15/3=5. so 5.")
    assert not v.correct and v.reason == "missing step"
    v = W.verify("What is the remainder of 47 divided by 6?", "35: 6*5=30. 35-30=5. so 5.")
    assert not v.correct and v.reason == "missing step"
    # a long-division label that disagrees with its quotient digit is a wrong step
    assert W.verify("What is the remainder of 47 divided by 6?", "47: 6*7=42. 47-42=5. so 5.").correct
    assert W.verify("What is the remainder of 47 divided by 6?", "48: 6*7=42. 47-42=5. so 5.").reason == "wrong step"


@pytest.mark.parametrize("thought", [
    "", "   ", "so", "so 933", "Answer: 933.", "=====", "1+=2", "+-*/", "9/0=1. so 1.", "c1 b1 c1", "3:",
    "7+6=13 c99999", "a week has 99999999999999999999999999 days", "\u00e9\u4e2d\U0001f600 7+6=13",
    "1" * 5000 + "+1=2", "1+" * 3000 + "1=3001. so 933.", "7+6=" + "9" * 5000,
])
def test_verifier_never_raises_on_junk(thought):
    for q in ("What is 347+586?", "How many days are in 3 weeks?", "not a question"):
        v = W.verify(q, thought)
        assert isinstance(v, W.Verdict) and not v.correct and v.reason


def test_verifier_random_junk_and_non_strings():
    rng = np.random.default_rng(0)
    alphabet = list("0123456789+-*/=.:; abcso\n")
    q = "What is the remainder of 347 divided by 6?"
    for _ in range(300):
        junk = "".join(rng.choice(alphabet, size=int(rng.integers(0, 80))))
        v = W.verify(q, junk)
        assert not v.correct and v.reason
    assert W.verify(q, None).reason == "empty thought"  # type: ignore[arg-type]
    assert W.verify(None, "so 5.").reason == "unrecognised question"  # type: ignore[arg-type]
    assert W.verify("What is love?", "so 5.").reason == "unrecognised question"


# --------------------------------------------------------------------------- #
# length budget
# --------------------------------------------------------------------------- #
# Characters of thought / raw unit text at default difficulty, mean (max) over
# 200 instances, measured: addition 0.88 (1.05), subtraction 0.85 (1.03),
# multiplication 0.73 (0.78), word 0.17 (0.24), linear 0.53 (0.63),
# remainder 0.84 (1.02), conversion 0.89 (1.11).
def test_thought_length_within_budget_at_default_difficulty():
    ratios = {}
    for f in ALL:
        units = _instances(f, W.DEFAULT_DIFFICULTY[f], 200, seed=9)
        r = [len(u.thought) / len(u.text) for u in units]
        assert max(r) <= 3.0, f
        ratios[f] = float(np.mean(r))
    assert all(v <= 1.2 for v in ratios.values()), ratios


# --------------------------------------------------------------------------- thought styles
@pytest.mark.parametrize("style", ["spelled", "spelled_linear"])
@pytest.mark.parametrize("family", sorted(W.FAMILIES))
def test_spelled_thoughts_verify_and_hold_every_compact_step(family, style):
    """A spelled thought passes the verifier, keeps every clause of the compact one in order, and adds only
    column steps, in the families its style names; the column families already spell out, so their thoughts
    are unchanged."""
    fam = W.FAMILIES[family]
    rng = np.random.default_rng(7)
    spelled_more = 0
    for _ in range(300):
        inst = fam.sample(rng, fam.default_difficulty)
        compact = fam.unit(inst, fam.default_difficulty)
        spelled = fam.unit(inst, fam.default_difficulty, style)
        assert (spelled.question, spelled.answer) == (compact.question, compact.answer)
        assert W.verify(compact.question, spelled.thought).correct, spelled.thought
        verdict = W.verify(compact.question, spelled.thought)
        assert verdict.n_wrong_steps == 0
        clauses, extra = compact.thought[:-1].split(". "), spelled.thought[:-1].split(". ")
        it = iter(extra)
        assert all(c in it for c in clauses), (compact.thought, spelled.thought)   # a subsequence
        spelled_more += spelled.thought != compact.thought
    if family in {"spelled": ("linear", "word"), "spelled_linear": ("linear",)}[style]:
        assert spelled_more > 150
    else:
        assert spelled_more == 0


def test_spelled_steps_work_columns_with_borrows_carries_and_zero_padding():
    lin = W.FAMILIES["linear"]
    assert lin.unit(("plus", 9, 19, 64), 1, "spelled").thought == "14-9=5 b1. 6-1-1=4. 64-19=45. 45/9=5. so 5."
    assert lin.unit(("minus", 4, 5, 35), 1, "spelled").thought == "5+5=10 c1. 3+0+1=4. 35+5=40. 40/4=10. so 10."
    assert lin.unit(("plus", 2, 3, 7), 1, "spelled").thought == "7-3=4. 4/2=2. so 2."   # one digit: one step
    assert lin.unit(("none", 3, 0, 12), 1, "spelled").thought == "12/3=4. so 4."          # no sum: unchanged
    # two borrows in a row, and a leading column that ends at zero
    assert lin.unit(("lead", 4, 17, 105), 2, "spelled").thought == (
        "15-7=8 b1. 10-1-1=8 b1. 1-1-0=0. 105-17=88. 88/4=22. so 22."
    )


def test_unknown_thought_style_is_a_one_line_error():
    with pytest.raises(ValueError, match="thought_style.*compact, spelled"):
        W.parse_question("What is 12+34?", "verbose")
    assert W.parse_question("What is 12+34?", "spelled").thought == W.parse_question("What is 12+34?").thought
