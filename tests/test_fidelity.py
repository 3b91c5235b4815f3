"""Fidelity f = mean q(z* | x): exact on constructed models whose probabilities are known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lt_utils.data import Chunk
from lt_utils.estep import chunk_pieces, posterior_prompt_ids, thought_banned_ids
from lt_utils.fidelity import (clause_op, dev_chunks, score_oracle, summarize_fidelity, thought_logprobs,
                               thought_steps)
from lt_utils.teacher import OracleTeacher
from lt_utils.tokens import SpecialIds, encode


class Bigram(torch.nn.Module):
    """logits at position t depend on the token at t only: a model whose every probability is a table lookup."""

    def __init__(self, vocab: int, seed: int = 0, scale: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(scale * torch.randn(vocab, vocab, generator=g))

    def forward(self, input_ids, attention_mask=None, use_cache=False, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def _chunks() -> list[Chunk]:
    return [Chunk("d0", 0, "Problem: What is 650+684? Answer:", " 1334.\nProblem: Solve 2+2x=26 for x. Answer:"),
            Chunk("d0", 1, " 1334.\nProblem: Solve 2+2x=26 for x. Answer:", " 12.\n"),
            Chunk("d1", 0, "Problem: Solve 3x+4=19 for x. Answer:", " 5.\n")]


class Positional(torch.nn.Module):
    """logits at position t are row t of a table, whatever the tokens: every probability is a table lookup."""

    def __init__(self, vocab: int, length: int = 256, scale: float = 0.5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(scale * torch.randn(length, vocab, generator=g, dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None, use_cache=False, **_):
        return SimpleNamespace(logits=self.table[:input_ids.shape[1]].expand(input_ids.shape[0], -1, -1))


def _reference_log_q(table: np.ndarray, prompt: list[int], target: list[int], banned: list[int]) -> float:
    """log q of `target` after `prompt` by hand: the table's row at each position, banned columns removed."""
    seq, total = prompt + target, 0.0
    keep = np.ones(table.shape[1], dtype=bool)
    keep[banned] = False
    for t in range(len(prompt) - 1, len(seq) - 1):
        row = table[t]
        total += row[seq[t + 1]] - math.log(np.exp(row[keep]).sum())
    return total


@pytest.mark.parametrize("ban", [False, True])
def test_fidelity_equals_the_probability_of_the_oracle_thought_on_a_constructed_model(tokenizer, ban):
    ids = SpecialIds.of(tokenizer)
    chunks = _chunks()
    banned = thought_banned_ids(tokenizer, ids) if ban else []
    prompts = [posterior_prompt_ids(ids, *chunk_pieces(tokenizer, c)) for c in chunks]
    targets = [encode(tokenizer, OracleTeacher().thought_for(c)) + [ids.eol] for c in chunks]
    for peaked in range(len(chunks)):   # a model that prefers chunk `peaked`'s oracle thought, token by token
        model = Positional(len(tokenizer))
        seq = prompts[peaked] + targets[peaked]
        with torch.no_grad():
            for t in range(len(prompts[peaked]) - 1, len(seq) - 1):
                model.table[t, seq[t + 1]] += 9.0
        rows = score_oracle(model, tokenizer, chunks, ban_special_in_thought=ban, batch_size=2)
        table = model.table.detach().numpy()
        expected = []
        for row, prompt, target in zip(rows, prompts, targets):
            ref = _reference_log_q(table, prompt, target, banned)
            assert row["log_q"] == pytest.approx(ref, rel=1e-6, abs=1e-5)  # float32 logits
            assert row["n_tokens"] == len(target)
            assert sum(s["log_q"] for s in row["steps"]) == pytest.approx(ref, rel=1e-6, abs=1e-5)  # the split is exact
            expected.append(math.exp(ref))
        assert 0.05 < math.exp(rows[peaked]["log_q"]) < 0.95   # the constructed model's q(z*) is far from 0 and 1
        assert summarize_fidelity(rows)["f"] == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_a_uniform_model_gives_one_over_the_allowed_vocabulary_per_token(tokenizer):
    ids = SpecialIds.of(tokenizer)
    model = Bigram(len(tokenizer), scale=0.0)   # every logit 0: q is uniform over what is not banned
    n_allowed = len(tokenizer) - len(thought_banned_ids(tokenizer, ids))
    rows = score_oracle(model, tokenizer, _chunks(), ban_special_in_thought=True)
    for r in rows:
        assert r["log_q"] == pytest.approx(-r["n_tokens"] * math.log(n_allowed), abs=1e-4)
    assert summarize_fidelity(rows)["nll_per_token"] == pytest.approx(math.log(n_allowed), abs=1e-5)


def test_temperature_scales_the_logits_before_the_softmax(tokenizer):
    model = Bigram(len(tokenizer), scale=1.5).double()
    prompt, target = [1, 2, 3], [4, 5]
    hot = thought_logprobs(model, [prompt], [target], temperature=2.0)[0]
    half = Bigram(len(tokenizer)).double()
    with torch.no_grad():
        half.table.copy_(model.table / 2.0)
    assert hot == pytest.approx(thought_logprobs(half, [prompt], [target])[0], abs=1e-9)


def test_padding_in_a_batch_does_not_change_a_row(tokenizer, tiny_model):
    prompts, targets = [[1, 5, 6, 7, 8, 9], [1, 5]], [[10, 11], [12, 13, 14, 15]]
    together = thought_logprobs(tiny_model, prompts, targets, batch_size=2)
    alone = [thought_logprobs(tiny_model, [p], [t])[0] for p, t in zip(prompts, targets)]
    for a, b in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-5)


def test_steps_are_labelled_by_problem_family_and_operation():
    thought = "19-4=15. 15/3=5. so 5. 7+6=13 c1. 4+8+1=13 c1. so 33."
    steps = thought_steps(thought, ["linear", "addition"])
    assert [(s.unit, s.family, s.op) for s in steps] == [
        (0, "linear", "-"), (0, "linear", "/"), (0, "linear", "answer"),
        (1, "addition", "+"), (1, "addition", "+"), (1, "addition", "answer")]
    assert "".join(thought[s.start:s.end] for s in steps) == thought
    assert clause_op(" 4*6+4=28.") == "*+"
    assert clause_op(" a day has 24 hours.") == "fact"
    assert clause_op(" 34: 6*5=30.") == "*"


def test_summary_splits_by_position_family_and_operation():
    rows = [{"index": 0, "n_tokens": 4, "log_q": math.log(0.5),
             "steps": [{"unit": 0, "family": "linear", "op": "-", "log_q": math.log(0.5)},
                       {"unit": 0, "family": "linear", "op": "answer", "log_q": 0.0}]},
            {"index": 2, "n_tokens": 4, "log_q": math.log(0.25),
             "steps": [{"unit": 0, "family": "word", "op": "*", "log_q": math.log(0.25)}]}]
    s = summarize_fidelity(rows)
    assert s["f"] == pytest.approx(0.375)
    assert s["by_position"]["first"] == {"n": 1, "f": pytest.approx(0.5)}
    assert s["by_position"]["later"] == {"n": 1, "f": pytest.approx(0.25)}
    assert s["by_family"]["word"]["p"] == pytest.approx(0.25)
    ops = s["by_operation"]
    assert ops["linear answer"]["nll_share"] == 0.0
    assert ops["word *"]["nll_share"] == pytest.approx(math.log(4) / math.log(8))
    assert sum(o["nll_share"] for o in ops.values()) == pytest.approx(1.0)
    assert summarize_fidelity([]) == {"n_chunks": 0, "f": None}


def test_dev_problems_become_first_chunks_whose_oracle_thought_is_the_problems():
    probs = [{"question": "Solve 3x+4=19 for x.", "answer": "5", "uid": "u1", "family": "linear"}]
    (c,) = dev_chunks(probs)
    assert (c.index, c.prefix, c.suffix) == (0, "Problem: Solve 3x+4=19 for x. Answer:", " 5.\n")
    assert OracleTeacher().thought_for(c).endswith("so 5.")


def test_fidelity_scores_the_oracle_thought_of_its_style(tokenizer):
    """With spelled thoughts z* is the spelled oracle: a uniform model pays one token's price per token of it,
    and the linear chunk's spelled thought is longer than its compact one."""
    ids = SpecialIds.of(tokenizer)
    model = Bigram(len(tokenizer), scale=0.0)
    n_allowed = len(tokenizer) - len(thought_banned_ids(tokenizer, ids))
    compact = score_oracle(model, tokenizer, _chunks(), ban_special_in_thought=True)
    spelled = score_oracle(model, tokenizer, _chunks(), ban_special_in_thought=True, thought_style="spelled")
    for c, s, chunk in zip(compact, spelled, _chunks()):
        z = OracleTeacher("spelled").thought_for(chunk)
        assert s["n_tokens"] == len(encode(tokenizer, z)) + 1
        assert s["log_q"] == pytest.approx(-s["n_tokens"] * math.log(n_allowed), abs=1e-4)
        assert s["n_tokens"] >= c["n_tokens"]
    assert spelled[1]["n_tokens"] > compact[1]["n_tokens"]   # "26-2=24" gets its columns
    assert {st["family"] for st in spelled[1]["steps"]} == {"linear"}
