"""WRAP baselines: restyled documents keep the facts, WRAP-Orig adds no derivation, WRAP-CoT adds every step."""

import random
import re
from collections import Counter

import numpy as np
import pytest

from lt_utils import world
from lt_utils import wrap_baselines as R
from lt_utils.data import layout_ids, tokenize_docs
from lt_utils.tokens import SpecialIds, encode

STEP_PATTERN = re.compile(r"\d+\s*[-+*/]\s*\d+\s*=\s*-?\d+")


def numbers(text):
    return re.findall(r"(?<![\w.])-?\d+", text)


@pytest.fixture(scope="module")
def units():
    """A few units of every family (word problems with 1 to 4 operations, multi-digit multipliers)."""
    fams = list(world.FAMILIES)
    out = world.generate_problems("comparison", 7 * 12, families=fams, seed=5)
    out += world.generate_problems("fresh", 12, families=["word"], difficulty={"word": 4}, seed=5)
    out += world.generate_problems("fresh", 6, families=["multiplication"], difficulty={"multiplication": 12}, seed=5)
    out += world.generate_problems("fresh", 6, families=["conversion"], difficulty={"conversion": 3}, seed=5)
    assert {u.family for u in out} == set(fams)
    return out


@pytest.fixture(scope="module")
def world_docs():
    return world.generate_documents("comparison", 120, families=list(world.FAMILIES), seed=11)


def test_every_style_keeps_every_number_and_the_correct_answer(units):
    rng = random.Random(0)
    for u in units:
        expected = set(numbers(u.question)) | {u.answer}
        for style in R.STYLES:
            for _ in range(4):  # several templates per style
                text = R.rephrase_unit(u, style, rng)
                found = numbers(text)
                # every number of the problem and the answer, and no other number
                assert set(found) == expected, (style, u.question, text)
                assert "Problem:" not in text
                if style == "qa":
                    assert text.startswith("Question: ") and " Answer: " in text
                else:
                    assert "\n" not in text and "Question:" not in text and "Answer:" not in text


def test_templates_vary_within_each_style(units):
    by_family = {}
    for u in units:
        by_family.setdefault(u.family, u)
    for fam, u in by_family.items():
        for style in R.STYLES:
            forms = {R.rephrase_unit(u, style, np.random.default_rng(s)) for s in range(40)}
            need = 3 if fam in ("addition", "linear", "word") else 2
            assert len(forms) >= need, (fam, style, forms)


def test_wrap_orig_has_no_derivation(world_docs):
    for d in world_docs[:40]:
        for style in R.STYLES:
            text = R.rephrase_document(d, style, np.random.default_rng(1))
            assert not STEP_PATTERN.search(text), text
            for u in d.units:
                v = world.verify(u.question, text)
                assert v.n_steps == 0 and not v.correct
            assert "Problem:" not in text


def test_rephrases_differ_from_raw_and_across_styles(world_docs):
    for d in world_docs[:30]:
        texts = [R.rephrase_document(d, s, np.random.default_rng(2)) for s in R.STYLES]
        assert len(set(texts)) == len(R.STYLES)
        for t in texts:
            assert t != d.text and "Problem:" not in t
        assert all(line.startswith("Question: ") for line in texts[3].splitlines())


def test_styles_drawn_uniformly_and_deterministically(world_docs):
    drawn = Counter(R.wrap_orig(d, r, seed=0)[0] for d in world_docs for r in range(4))
    n = len(world_docs) * 4
    assert set(drawn) == set(R.STYLES)
    for s in R.STYLES:  # expected n/4 = 120, sd ~ 9.5
        assert abs(drawn[s] - n / 4) < 40, drawn
    d = world_docs[0]
    assert R.wrap_orig(d, 0, 0) == R.wrap_orig(d, 0, 0)
    assert R.wrap_cot(d, 1, 3) == R.wrap_cot(d, 1, 3)
    assert len({R.wrap_orig(d, r, 0)[1] for r in range(5)}) > 1
    assert len({R.wrap_orig(d, 0, s)[1] for s in range(5)}) > 1
    with pytest.raises(ValueError):
        R.rephrase_document(d, "poem", random.Random(0))


def test_wrap_cot_states_every_ground_truth_step(units, world_docs):
    step = re.compile(r"(?:\d+: )?\d+(?:[-+*/]\d+)+=-?\d+")
    for u in units:
        text = R.cot_unit(u, random.Random(1))
        claims = step.findall(u.thought)
        assert claims
        rest = text
        for c in claims:  # every step, as often as the thought has it
            assert c in rest, (c, text)
            rest = rest.replace(c, "", 1)
        # the passage alone is a correct derivation of the unit, and keeps the problem's numbers
        assert world.verify(u.question, text).correct, (u.question, text)
        assert set(numbers(u.question)) <= set(numbers(text))
    for d in world_docs[:20]:
        text = R.wrap_cot(d, 0, 0)
        lines = [ln for ln in text.splitlines() if re.search(r"\bso -?\d+", ln)]
        assert len(lines) == len(d.units)
        for u, line in zip(d.units, lines):
            assert world.verify(u.question, line).correct
        assert "Problem:" not in text


def test_rephrase_corpus_lays_out_as_bos_text_eos(world_docs, tokenizer):
    small = world_docs[:3]
    for kind in R.KINDS:
        corpus = R.rephrase_corpus(small, kind, repeats=2, seed=0)
        assert [t.doc_id for t in corpus] == [f"{d.doc_id}#r{r}" for d in small for r in range(2)]
        for td in corpus:
            assert td.head == "" and td.suffixes == [] and len(td.thoughts) == 1
        expect = R.wrap_orig(small[1], 1, 0)[1] if kind == "wrap_orig" else R.wrap_cot(small[1], 1, 0)
        assert corpus[3].thoughts[0] == expect
        ids = SpecialIds.of(tokenizer)
        for td, tok in zip(corpus, tokenize_docs(tokenizer, corpus)):
            toks, raw = layout_ids(tok, "thought_only", ids)
            assert toks == [ids.bos] + encode(tokenizer, td.thoughts[0]) + [ids.eos]
            assert tokenizer.decode(toks[1:-1]) == td.thoughts[0]
            assert not any(raw[1:-1])
    with pytest.raises(ValueError):
        R.rephrase_corpus(small, "wrap", 1, 0)
