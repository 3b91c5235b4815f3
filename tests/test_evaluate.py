"""Answer parsing and equivalence, and the evaluation prompt every arm shares."""

from types import SimpleNamespace

import pytest

from lt_utils.evaluate import (answers_equal, evaluate_problems, exemplar_units, few_shot_prompts,
                               parse_answer, problem_prompt)


@pytest.mark.parametrize("text, expected", [
    (" 933.\n", "933"),
    (" 933.", "933"),
    (" -12.\nProblem: 1 + 1 Answer: 2.", "-12"),
    ("<|START_OF_LATENT|><|PRIOR_PREFIX|>7+6=13. so 933.<|END_OF_LATENT|> 933.\n", "933"),
    ("<|START_OF_LATENT|><|PRIOR_PREFIX|>7+6=13. so 933.", None),  # never closed the thought, so no answer
    (" nine hundred.\n", None),
    ("", None),
])
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_answers_equal_is_mathematical():
    assert answers_equal("933", "933")
    assert answers_equal("07", "7") and answers_equal("7.0", "7")
    assert not answers_equal("934", "933")
    assert not answers_equal(None, "1")


def test_prompt_format():
    assert problem_prompt("12 + 30") == "Problem: 12 + 30 Answer:"


def test_evaluate_reports_accuracy_unparseable_and_families(tokenizer, tiny_model):
    problems = [SimpleNamespace(question="12 + 30", answer="42", family="addition"),
                SimpleNamespace(question="5 + 5", answer="10", family="other")]
    for latent in (False, True):
        res = evaluate_problems(tiny_model, tokenizer, problems, latent=latent, max_new_tokens=8, with_records=True)
        assert 0 <= res.accuracy <= 1 and 0 <= res.unparseable <= 1
        assert set(res.per_family) == {"addition", "other"}
        assert len(res.records) == 2
        # an untrained model produces junk: every unparseable answer is also counted wrong
        assert res.accuracy <= 1 - res.unparseable + 1e-9
        if latent:
            assert all(r["generated"].startswith("<|START_OF_LATENT|><|PRIOR_PREFIX|>") for r in res.records)
        else:
            assert not any("<|" in r["generated"] for r in res.records)  # latent tokens banned for raw models
        m = res.metrics("final/")
        assert "final/accuracy/addition" in m


def _world_docs():
    from lt_utils import world

    return world.generate_documents("valid", 6, families=["addition", "linear", "word"], seed=0)


def test_exemplars_cycle_over_families_in_order():
    docs = _world_docs()
    ex = exemplar_units(docs, 5)
    fams = list(dict.fromkeys(u.family for d in docs for u in d.units))
    assert [e["family"] for e in ex] == [fams[i % len(fams)] for i in range(5)]
    assert len({e["uid"] for e in ex}) == 5
    assert exemplar_units(docs, 0) == []


def test_few_shot_prompts_show_the_format_and_fit_the_context(tokenizer):
    from lt_utils.tokens import SpecialIds

    ids = SpecialIds.of(tokenizer)
    shots = exemplar_units(_world_docs(), 3)
    q = "What is 12+30?"
    direct = few_shot_prompts(tokenizer, [q], style="direct", shots=shots)[0]
    expected = "".join(f"Problem: {e['question']} Answer: {e['answer']}.\n" for e in shots) + problem_prompt(q)
    assert direct[0] == ids.bos and tokenizer.decode(direct[1:]) == expected
    latent = few_shot_prompts(tokenizer, [q], style="latent", shots=shots)[0]
    assert latent[-2:] == [ids.sol, ids.prior]
    assert latent.count(ids.sol) == 4 and latent.count(ids.eol) == 3   # one closed thought per exemplar
    assert shots[0]["thought"] in tokenizer.decode(latent, skip_special_tokens=False)
    cot = few_shot_prompts(tokenizer, [q], style="cot", shots=shots)[0]
    assert "The answer is" in tokenizer.decode(cot) and len(cot) > len(direct)
    # a context limit drops the earliest exemplars first; too-long reasoning falls back to the raw format
    limited = few_shot_prompts(tokenizer, [q], style="direct", shots=shots, max_len=len(direct) - 1)[0]
    assert len(limited) < len(direct) and tokenizer.decode(direct).endswith(tokenizer.decode(limited[1:]))
    fallback = few_shot_prompts(tokenizer, [q], style="cot", shots=shots, max_len=len(direct))[0]
    assert fallback == direct
    with pytest.raises(ValueError, match="eval style"):
        few_shot_prompts(tokenizer, [q], style="chatty", shots=shots)


def test_few_shot_evaluation_runs_every_style(tokenizer, tiny_model):
    problems = [SimpleNamespace(question="What is 12+30?", answer="42", family="addition")]
    shots = exemplar_units(_world_docs(), 2)
    for style in ("direct", "cot", "latent"):
        res = evaluate_problems(tiny_model, tokenizer, problems, style=style, shots=shots, max_new_tokens=8,
                                with_records=True)
        assert res.records[0]["generated"].startswith("<|START_OF_LATENT|>") == (style == "latent")


def test_every_style_gets_the_same_number_of_exemplars_within_the_context(tokenizer, tiny_model):
    from lt_utils import world
    from lt_utils.evaluate import ANSWER_TOKENS, STYLES, common_shot_count

    shots = exemplar_units(_world_docs(), 3)
    problems = world.generate_problems("eval", 12, families=["addition", "linear", "word"], seed=0)
    questions = [p.question for p in problems]
    full = {s: max(map(len, few_shot_prompts(tokenizer, questions, style=s, shots=shots))) for s in STYLES}
    # a context where three direct exemplars fit with their answer budget but three latent ones do not
    max_pos = full["direct"] + ANSWER_TOKENS["direct"]
    assert full["latent"] + ANSWER_TOKENS["latent"] > max_pos
    n = common_shot_count(tokenizer, questions, shots, max_pos)
    assert 0 < n < 3
    counts = {}
    for style in STYLES:
        prompts = few_shot_prompts(tokenizer, questions, style=style, shots=shots[:n],
                                   max_len=max_pos - ANSWER_TOKENS[style])
        assert all(len(p) <= max_pos - ANSWER_TOKENS[style] for p in prompts)
        counts[style] = {tokenizer.decode(p).count("Problem:") - 1 for p in prompts}
    assert counts == {s: {n} for s in STYLES}
    # the count is the most that fits: one more latent exemplar would overflow for some question
    longer = few_shot_prompts(tokenizer, questions, style="latent", shots=shots[:n + 1])
    assert max(map(len, longer)) > max_pos - ANSWER_TOKENS["latent"]
    assert common_shot_count(tokenizer, questions, shots, 0) == 3
    # evaluation applies the same count in every style
    used = {s: evaluate_problems(tiny_model, tokenizer, problems[:2], style=s, shots=shots, max_new_tokens=4,
                                 n_shots=n).shots for s in STYLES}
    assert used == {s: n for s in STYLES}
