"""The sampler's log-probs are exact, untruncated and reproducible."""

import math

import pytest
import torch

from lt_utils.sample import sample, score
from lt_utils.tokens import SpecialIds, encode


def prompts_for(tokenizer):
    ids = SpecialIds.of(tokenizer)
    texts = ["Problem: 347 + 586 Answer:", "Problem: 1 + 2 Answer: 3.\nProblem: 40 + 2 Answer:", "Problem:"]
    return [[ids.bos] + encode(tokenizer, t) + [ids.sol, ids.prior] for t in texts], ids


def test_sampled_logprobs_equal_teacher_forced_rescoring(tokenizer, tiny_model):
    prompts, ids = prompts_for(tokenizer)
    out = sample(tiny_model, prompts, max_new_tokens=30, stop_ids=[ids.eol], seed=1, pad_id=ids.pad, batch_size=2)
    rescored = score(tiny_model, prompts, [s.tokens for s in out], pad_id=ids.pad, batch_size=3)
    for s, r in zip(out, rescored):
        assert len(s.tokens) == len(r) > 0
        assert max(abs(a - b) for a, b in zip(s.logprobs, r)) < 1e-4
        assert s.logprob == pytest.approx(sum(r), abs=1e-3)


def test_no_top_k_or_top_p_truncation(tokenizer, tiny_model):
    """A near-uniform model sampled at T=1 must reach far more than 50 distinct tokens,
    and each token's log-prob is its log-softmax over the *whole* vocabulary."""
    ids = SpecialIds.of(tokenizer)
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.mul_(1e-3)  # logits ≈ 0: the distribution is close to uniform
    prompts = [[ids.bos]] * 64
    out = sample(tiny_model, prompts, max_new_tokens=8, seed=0, pad_id=ids.pad)
    distinct = {t for s in out for t in s.tokens}
    assert len(distinct) > 100
    v = tiny_model.config.vocab_size
    for s in out[:4]:
        for lp in s.logprobs:
            assert lp == pytest.approx(-math.log(v), abs=0.05)


def test_same_seed_same_samples_and_greedy_ignores_seed(tokenizer, tiny_model):
    prompts, ids = prompts_for(tokenizer)
    a = sample(tiny_model, prompts, max_new_tokens=12, seed=5, pad_id=ids.pad)
    b = sample(tiny_model, prompts, max_new_tokens=12, seed=5, pad_id=ids.pad)
    c = sample(tiny_model, prompts, max_new_tokens=12, seed=6, pad_id=ids.pad)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    assert [s.tokens for s in a] != [s.tokens for s in c]
    g1 = sample(tiny_model, prompts, max_new_tokens=12, greedy=True, seed=1, pad_id=ids.pad)
    g2 = sample(tiny_model, prompts, max_new_tokens=12, greedy=True, seed=2, pad_id=ids.pad, batch_size=1)
    assert [s.tokens for s in g1] == [s.tokens for s in g2]  # also independent of batching/padding


def test_stops_at_stop_token_and_respects_max_tokens(tokenizer, tiny_model):
    ids = SpecialIds.of(tokenizer)
    prompts = [[ids.bos]] * 32
    free = sample(tiny_model, prompts, max_new_tokens=40, seed=0, pad_id=ids.pad)
    assert all(len(s.tokens) == 40 and not s.finished for s in free)
    stop = free[0].tokens[3]  # a token the model does produce
    out = sample(tiny_model, prompts, max_new_tokens=40, stop_ids=[stop], seed=0, pad_id=ids.pad)
    assert out[0].finished and out[0].tokens == free[0].tokens[:4]
    for s in out:
        assert stop not in s.tokens[:-1]
        assert s.finished == (s.tokens[-1] == stop)


def test_banned_tokens_never_appear(tokenizer, tiny_model):
    ids = SpecialIds.of(tokenizer)
    with torch.no_grad():
        tiny_model.lm_head.weight.mul_(1e-3)
    banned = list(range(0, 200))
    out = sample(tiny_model, [[ids.bos]] * 16, max_new_tokens=20, seed=0, banned_ids=banned, pad_id=ids.pad)
    assert not any(t in banned for s in out for t in s.tokens)


def test_zero_temperature_sampling_is_refused(tokenizer, tiny_model):
    with pytest.raises(ValueError, match="temperature"):
        sample(tiny_model, [[0]], max_new_tokens=1, temperature=0.0)
