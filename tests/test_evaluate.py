"""Answer parsing and equivalence, and the evaluation prompt every arm shares."""

from types import SimpleNamespace

import pytest

from lt_utils.evaluate import answers_equal, evaluate_problems, parse_answer, problem_prompt


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
