"""Few-shot MATH/GSM8K evaluation: loading, prompts, answer checking, truncation and the end-to-end loop."""

import json
import math

import pytest

from lt_utils.math_eval import (
    GSM8K_EXEMPLARS, MATH_EXEMPLARS, Problem, build_prompt, check_gsm8k, check_math, cut_at_stop,
    encode_prompt, evaluate, generate_answers, last_boxed, last_number, load_problems,
)
from lt_utils.tokens import EOL, EOS, LATENT_TOKENS, POSTERIOR, PRIOR, SOL, SpecialIds

MATH_ROWS = [
    {"problem": "What is $1 \\div 2$?", "solution": "Dividing gives $\\boxed{\\frac{1}{2}}$.",
     "level": "Level 1", "type": "Prealgebra"},
    {"problem": "Find the set of roots of $x^2 = 1$.",
     "solution": "First $\\boxed{1}$ is a root, and so is $-1$: $\\boxed{\\{-1, 1\\}}$.",
     "level": "Level 2", "type": "Algebra"},
    {"problem": "Compute $2 + 3$.", "solution": "$2 + 3 = \\boxed 5$.", "level": "Level 1", "type": "Algebra"},
]
GSM8K_ROWS = [
    {"question": "Ann has 3 apples and buys 4 more. How many apples does she have?",
     "answer": "She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A car costs $1,250 and a bike $250. What do both cost?",
     "answer": "1,250 + 250 = 1,500\n#### 1,500"},
]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture()
def math_problems(tmp_path):
    return load_problems(write_jsonl(tmp_path / "math.jsonl", MATH_ROWS), "math")


@pytest.fixture()
def gsm8k_problems(tmp_path):
    return load_problems(write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS), "gsm8k")


# --------------------------------------------------------------------------- loading


def test_load_math_extracts_last_boxed_with_nested_braces(math_problems):
    assert [p.answer for p in math_problems] == ["\\frac{1}{2}", "\\{-1, 1\\}", "5"]
    assert math_problems[0].type == "Prealgebra" and math_problems[0].level == "Level 1"
    assert math_problems[1].question == MATH_ROWS[1]["problem"]
    assert math_problems[1].solution == MATH_ROWS[1]["solution"]


def test_last_boxed_edge_cases():
    assert last_boxed("\\boxed{a} then \\boxed{\\sqrt{\\frac{3}{4}}}") == "\\sqrt{\\frac{3}{4}}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed{2} and an unclosed \\boxed{3") == "2"
    assert last_boxed("no answer") is None


def test_load_gsm8k_extracts_number_after_hashes(gsm8k_problems):
    assert [p.answer for p in gsm8k_problems] == ["7", "1500"]
    assert gsm8k_problems[1].question.startswith("A car costs")


def test_load_limit(tmp_path):
    assert len(load_problems(write_jsonl(tmp_path / "m.jsonl", MATH_ROWS), "math", limit=2)) == 2


@pytest.mark.parametrize("task, rows, message", [
    ("math", GSM8K_ROWS, "lacks string field 'problem'"),           # a GSM8K file read as MATH
    ("gsm8k", MATH_ROWS, "lacks string field 'question'"),
    ("math", [{"problem": "p", "solution": "no box here"}], "no \\boxed"),
    ("gsm8k", [{"question": "q", "answer": "just 7"}], "'#### <number>'"),
    ("gsm8k", [{"question": "q", "answer": "#### seven"}], "'#### <number>'"),
])
def test_schema_errors_name_file_line_and_field(tmp_path, task, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError) as err:
        load_problems(path, task)
    text = str(err.value)
    assert message in text and f"{path}:1" in text and "\n" not in text


def test_loading_errors_for_bad_json_missing_file_and_task(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:2: not valid JSON"):
        load_problems(bad, "gsm8k")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems(tmp_path / "nope.jsonl", "math")
    with pytest.raises(ValueError, match="unknown task"):
        load_problems(bad, "mmlu")


# --------------------------------------------------------------------------- prompts


def test_exemplar_counts_and_answer_sentences():
    assert len(MATH_EXEMPLARS) == 4 and len(GSM8K_EXEMPLARS) == 8
    std_math = build_prompt("math", "What is $3^2$?", latent=False)
    std_gsm = build_prompt("gsm8k", "How many cats?", latent=False)
    assert std_math.count("Problem:\n") == 5 and std_math.count("Solution:") == 5
    assert std_gsm.count("Question: ") == 9 and std_gsm.count("\nAnswer:") == 9
    assert std_math.count("Final Answer: The final answer is $") == 4
    assert std_gsm.count("The final answer is ") == 8
    for ex in MATH_EXEMPLARS:
        assert f"Final Answer: The final answer is ${ex.answer}$." in std_math
    for ex in GSM8K_EXEMPLARS:
        assert f"The final answer is {ex.answer}." in std_gsm


def test_standard_prompt_ends_with_the_problem_and_has_no_special_tokens():
    m = build_prompt("math", "What is $3^2$?", latent=False)
    g = build_prompt("gsm8k", "How many cats?", latent=False)
    assert m.endswith("Problem:\nWhat is $3^2$?\n\nSolution:")
    assert g.endswith("Question: How many cats?\nAnswer:")
    assert not any(t in m or t in g for t in LATENT_TOKENS)


@pytest.mark.parametrize("task, n", [("math", 4), ("gsm8k", 8)])
def test_latent_prompt_structure(task, n):
    question = "What is $3^2$?"
    p = build_prompt(task, question, latent=True)
    assert p.endswith(question + ("\n\n" if task == "math" else "\n") + SOL + PRIOR)
    assert p.count(SOL + PRIOR) == n + 1 and p.count(SOL) == n + 1
    assert p.count(EOL) == n and POSTERIOR not in p
    exs = MATH_EXEMPLARS if task == "math" else GSM8K_EXEMPLARS
    # every exemplar: reasoning inside the thought, the final-answer sentence right after EoL
    blocks = p.split(SOL + PRIOR)[1:]
    for ex, block in zip(exs, blocks):
        thought, after = block.split(EOL)
        assert thought == ex.reasoning
        sentence = (f"Final Answer: The final answer is ${ex.answer}$." if task == "math"
                    else f"The final answer is {ex.answer}.")
        assert after.strip().startswith(sentence)
    assert blocks[-1] == ""
    assert "Solution:" not in p and "Answer:" not in p.replace("Final Answer:", "")


def test_n_shots_keeps_the_last_exemplars():
    p = build_prompt("gsm8k", "Q?", latent=False, n_shots=2)
    assert p.count("Question: ") == 3
    assert GSM8K_EXEMPLARS[-1].question in p and GSM8K_EXEMPLARS[0].question not in p
    assert build_prompt("math", "Q?", latent=False, n_shots=0) == "Problem:\nQ?\n\nSolution:"
    with pytest.raises(ValueError):
        build_prompt("math", "Q?", latent=False, n_shots=5)


# --------------------------------------------------------------------------- truncation


def test_prompt_ids_start_with_bos_and_latent_prompt_ends_with_sol_pri(tokenizer):
    ids = SpecialIds.of(tokenizer)
    pr = encode_prompt(tokenizer, "math", "What is $3^2$?", latent=True)
    assert pr.ids[0] == ids.bos and pr.ids[-2:] == [ids.sol, ids.prior]
    assert pr.shots == 4 and not pr.truncated("math") and not pr.over_limit


@pytest.mark.parametrize("task", ["math", "gsm8k"])
def test_truncation_drops_exemplars_from_the_front_and_keeps_the_problem(tokenizer, task):
    question = "What is 123 + 456 exactly?"
    full = encode_prompt(tokenizer, task, question, latent=False)
    zero = encode_prompt(tokenizer, task, question, latent=False, max_prompt_tokens=1)
    assert zero.over_limit and zero.shots == 0 and zero.truncated(task)
    assert tokenizer.decode(zero.ids[1:]).count(question) == 1       # kept whole even when over the limit
    limit = (len(full.ids) + len(zero.ids)) // 2
    cut = encode_prompt(tokenizer, task, question, latent=False, max_prompt_tokens=limit)
    assert 0 < cut.shots < full.shots and len(cut.ids) <= limit and not cut.over_limit
    text = tokenizer.decode(cut.ids[1:])
    assert text == build_prompt(task, question, latent=False, n_shots=cut.shots)
    assert text.endswith(question + ("\n\nSolution:" if task == "math" else "\nAnswer:"))
    # the largest number of shots that fits was kept
    one_more = build_prompt(task, question, latent=False, n_shots=cut.shots + 1)
    assert 1 + len(tokenizer(one_more, add_special_tokens=False)["input_ids"]) > limit


def test_generate_answers_counts_truncated_prompts(tokenizer, tiny_model, gsm8k_problems):
    problems = gsm8k_problems + [Problem("Short one?", "1")]
    full_lens = [len(encode_prompt(tokenizer, "gsm8k", p.question, latent=False).ids) for p in problems]
    limit = max(full_lens) - 1                     # only the longest prompt(s) must lose an exemplar
    gens = generate_answers(tiny_model, tokenizer, problems, task="gsm8k", latent=False, max_new_tokens=2,
                            max_prompt_tokens=limit)
    assert gens.truncated == sum(n > limit for n in full_lens) >= 1
    assert all(n <= limit for n in gens.prompt_tokens) and gens.over_limit == 0
    assert [s < 8 for s in gens.shots] == [n > limit for n in full_lens]


def test_cut_at_stop_uses_the_earliest_stop():
    assert cut_at_stop(" x = 2.\n\nQuestion: more\n\nProblem: z", ("Problem:", "Question:")) == (" x = 2.\n\n", True)
    assert cut_at_stop("no stop", ("Problem:",)) == ("no stop", False)


# --------------------------------------------------------------------------- checking


def test_check_math_equivalences():
    assert check_math("The final answer is $0.5$.", "\\frac{1}{2}").correct
    assert check_math("Final Answer: The final answer is $\\frac{1}{2}$.", "0.5").correct
    assert check_math("Final Answer: The final answer is $\\dfrac{2}{4}$.", "\\frac{1}{2}").correct
    wrong = check_math("Final Answer: The final answer is $3$.", "2")
    assert wrong.parsed and not wrong.correct
    junk = check_math("I do not know.", "2")
    assert not junk.parsed and not junk.correct and junk.predicted is None


def test_check_math_latent_reads_only_after_eol():
    right_after = f"the answer might be $7$ so $7${EOL} Final Answer: The final answer is $4$."
    assert check_math(right_after, "4").correct
    assert not check_math(f"the answer is $4${EOL} Final Answer: The final answer is $7$.", "4").correct
    # thought never closed: the whole text is read
    assert check_math("the thought says the final answer is $4$", "4").correct


def test_check_gsm8k_last_number():
    assert last_number("paid $1,250.50 then 3 more") == "3"
    assert last_number("total $1,250.") == "1250"
    assert last_number("owes -$12") == "-12" and last_number("none") is None
    assert check_gsm8k("5 + 7 = 12 dollars, so $1,234.", "1234").correct
    assert check_gsm8k("The final answer is 18.00.", "18").correct
    assert not check_gsm8k("The final answer is 18, not 20.", "18").correct   # the last number counts
    miss = check_gsm8k("no idea", "3")
    assert not miss.parsed and not miss.correct
    assert check_gsm8k(f"3 + 4 = 9 is wrong{EOL} The final answer is 7.", "7").correct
    assert not check_gsm8k(f"so 7{EOL} The final answer is 9.", "7").correct


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("task", ["math", "gsm8k"])
@pytest.mark.parametrize("latent", [False, True])
def test_evaluate_end_to_end(tokenizer, tiny_model, math_problems, gsm8k_problems, task, latent):
    problems = math_problems if task == "math" else gsm8k_problems
    res = evaluate(tiny_model, tokenizer, problems, task=task, latent=latent, n_samples=2, temperature=1.0,
                   max_new_tokens=6, max_prompt_tokens=120, batch_size=4, records=True)
    assert res["n_problems"] == len(problems) and res["n_samples"] == 2
    assert 0 <= res["accuracy"] <= 1 and 0 <= res["unparseable"] <= 1 and 0 <= res["unfinished"] <= 1
    assert res["accuracy"] <= 1 - res["unparseable"] + 1e-9       # unparseable answers are wrong
    assert math.isnan(res["accuracy_se"]) or res["accuracy_se"] >= 0
    assert len(res["records"]) == 2 * len(problems)
    assert sorted((r["problem"], r["sample"]) for r in res["records"]) == \
        [(i, j) for i in range(len(problems)) for j in range(2)]
    assert res["truncated_prompts"] == len(problems)               # 120 tokens cannot hold the exemplars
    assert all(r["prompt_tokens"] <= 120 or r["shots"] == 0 for r in res["records"])
    assert sum(r["correct"] for r in res["records"]) / len(res["records"]) == pytest.approx(res["accuracy"])
    if task == "math":
        assert set(res["per_type"]) == {"Prealgebra", "Algebra"} and set(res["per_level"]) == {"Level 1", "Level 2"}
        assert all(0 <= v <= 1 for v in res["per_type"].values())
    else:
        assert "per_type" not in res
    for r in res["records"]:
        assert not any(s in r["generated"] for s in ("Problem:", "Question:", EOS))
        if not latent:
            assert not any(t in r["generated"] for t in LATENT_TOKENS)  # banned for non-latent models
        else:
            assert SOL not in r["generated"]                              # a new thought is a stop
    if latent:
        assert 0 <= res["thought_closed"] <= 1
    else:
        assert math.isnan(res["thought_closed"])


def test_greedy_samples_repeat_and_sampling_is_seeded(tokenizer, tiny_model, gsm8k_problems):
    kw = dict(task="gsm8k", latent=True, max_new_tokens=5, max_prompt_tokens=100)
    greedy = generate_answers(tiny_model, tokenizer, gsm8k_problems, n_samples=3, **kw)
    assert all(len(row) == 3 and len(set(row)) == 1 for row in greedy.texts)
    a = generate_answers(tiny_model, tokenizer, gsm8k_problems, n_samples=2, temperature=1.0, seed=3, **kw)
    b = generate_answers(tiny_model, tokenizer, gsm8k_problems, n_samples=2, temperature=1.0, seed=3, **kw)
    assert a.texts == b.texts and all(len(row) == 2 for row in a.texts)
    with pytest.raises(ValueError):
        generate_answers(tiny_model, tokenizer, gsm8k_problems, n_samples=0, **kw)


def test_latent_tokens_banned_for_raw_models_and_sol_stops_latent_ones(tokenizer, tiny_model, gsm8k_problems):
    """A model pushed hard towards EoL/SoL: banned unless latent; EoL is no stop, a new SoL is."""
    import torch

    ids = SpecialIds.of(tokenizer)
    boost = torch.zeros(len(tokenizer))
    boost[ids.eol] = 50.0
    handle = tiny_model.lm_head.register_forward_hook(lambda mod, inp, out: out + boost)
    try:
        kw = dict(task="gsm8k", max_new_tokens=4, max_prompt_tokens=100, records=True)
        raw = evaluate(tiny_model, tokenizer, gsm8k_problems, latent=False, **kw)
        assert not any(t in r["generated"] for r in raw["records"] for t in LATENT_TOKENS)
        lat = evaluate(tiny_model, tokenizer, gsm8k_problems, latent=True, **kw)
        assert lat["thought_closed"] == 1.0
        assert all(r["generated"] == EOL * 4 for r in lat["records"])   # EoL does not stop generation
        boost[ids.sol] = 100.0                     # now a new thought starts at once: cut, counted as finished
        lat = evaluate(tiny_model, tokenizer, gsm8k_problems, latent=True, **kw)
        assert all(r["generated"] == "" and r["finished"] and not r["parsed"] for r in lat["records"])
        assert lat["unparseable"] == 1.0 and lat["unfinished"] == 0.0
    finally:
        handle.remove()


def test_problems_without_answers_are_counted_by_reason_when_asked(tmp_path):
    from lt_utils.runtime.skipped_inputs import Rejects

    path = tmp_path / "gsm8k.jsonl"
    path.write_bytes(b"\n".join([json.dumps(GSM8K_ROWS[0]).encode(),
                                 json.dumps({"question": "q", "answer": "just 7"}).encode(),   # no '#### n'
                                 json.dumps({"question": "q"}).encode(),                      # no answer field
                                 b'{"question": "\xff", "answer": "#### 1"}',                  # not UTF-8
                                 b'{"question": "cut',                                         # torn line
                                 json.dumps(GSM8K_ROWS[1]).encode()]) + b"\n")
    rejects = Rejects()
    problems = load_problems(path, "gsm8k", rejects=rejects)
    assert [p.question for p in problems] == [GSM8K_ROWS[0]["question"], GSM8K_ROWS[1]["question"]]
    assert rejects.as_dict()["by_reason"] == {"invalid_json": 1, "missing_field": 1, "no_answer": 1, "non_utf8": 1}
    assert rejects.first["no_answer"] == f"{path}:2"
    with pytest.raises(ValueError, match=rf"gsm8k.jsonl:2: field 'answer' lacks"):
        load_problems(path, "gsm8k")
