"""The sampler's log-probs are exact, untruncated and reproducible."""

import math

import pytest
import torch

from lt_utils.sample import sample, score, score_order
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


def test_shared_prompts_give_the_unshared_samples_and_log_probs(tokenizer, tiny_model):
    """K copies of each prompt: one prefill and a copied KV cache, the same rows and random stream as K prefills."""
    prompts, ids = prompts_for(tokenizer)
    rows = [p for p in prompts for _ in range(4)]
    kw = dict(max_new_tokens=20, stop_ids=[ids.eol], seed=3, pad_id=ids.pad)
    shared = sample(tiny_model, rows, share=True, **kw)
    plain = sample(tiny_model, rows, share=False, **kw)
    assert [s.tokens for s in shared] == [s.tokens for s in plain]
    for a, b in zip(shared, plain):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5
    assert len({tuple(s.tokens) for s in shared}) > len(prompts)   # copies of a prompt do draw different thoughts


def test_shared_context_scoring_equals_full_sequences(tokenizer, tiny_model):
    prompts, ids = prompts_for(tokenizer)
    ctxs = [p for p in prompts for _ in range(3)]
    conts = [[5, 6, 7][:j + 1] + [ids.eol] for _ in prompts for j in range(3)]
    conts[1] = []   # an empty continuation scores nothing
    shared = score(tiny_model, ctxs, conts, pad_id=ids.pad, batch_size=4, share=True)
    plain = score(tiny_model, ctxs, conts, pad_id=ids.pad, batch_size=2, share=False)
    assert [len(x) for x in shared] == [len(c) for c in conts]
    for a, b in zip(shared, plain):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("share", [True, False])
def test_scoring_the_batches_of_score_order_alone_gives_the_same_scores(tokenizer, tiny_model, share):
    """The E-step's lanes score a group batch by batch, cut from `score_order`: each batch alone is the batch
    `score` forms itself, so the scores are identical, not merely close."""
    prompts, ids = prompts_for(tokenizer)
    ctxs = [p[:len(p) - i % 3] for i, p in enumerate(prompts) for _ in range(3)]   # contexts of several lengths
    conts = [[5, 6, 7][:j + 1] + [ids.eol] for _ in prompts for j in range(3)]
    whole = score(tiny_model, ctxs, conts, pad_id=ids.pad, batch_size=4, share=share)
    order = score_order(ctxs, conts, share)
    assert sorted(order) == list(range(len(ctxs)))
    for a in range(0, len(order), 4):
        part = order[a:a + 4]
        alone = score(tiny_model, [ctxs[i] for i in part], [conts[i] for i in part], pad_id=ids.pad, batch_size=4,
                      share=share)
        assert alone == [whole[i] for i in part]


def _rescored(model, prompts, samples, ids, *, temperature=1.0, banned=()):
    """Teacher-forced log-probs of the samples under softmax((logits with `banned` at −inf) / temperature)."""
    out = []
    for p, s in zip(prompts, samples):
        seq = torch.tensor([p + s.tokens])
        with torch.no_grad():
            logits = model(input_ids=seq).logits[0, len(p) - 1:-1].float()
        logits[:, list(banned)] = float("-inf")
        logp = torch.log_softmax(logits / temperature, dim=-1)
        out.append(logp.gather(-1, torch.tensor(s.tokens)[:, None]).squeeze(-1).tolist())
    return out


def test_tempered_log_q_is_the_tempered_density(tokenizer, tiny_model):
    """At T ≠ 1 the recorded log-probs are log softmax(logits / T): the proposal's own density, not the model's."""
    prompts, ids = prompts_for(tokenizer)
    for t in (0.5, 1.7):
        out = sample(tiny_model, prompts, max_new_tokens=12, seed=2, temperature=t, pad_id=ids.pad)
        tempered = _rescored(tiny_model, prompts, out, ids, temperature=t)
        model_lp = score(tiny_model, prompts, [s.tokens for s in out], pad_id=ids.pad, share=False)
        for s, want, raw in zip(out, tempered, model_lp):
            assert s.logprobs == pytest.approx(want, abs=1e-4)
            assert abs(s.logprob - sum(raw)) > 1e-2   # and differ from the untempered model's


def test_banned_tokens_renormalise_the_recorded_log_probs(tokenizer, tiny_model):
    ids = SpecialIds.of(tokenizer)
    with torch.no_grad():
        tiny_model.lm_head.weight.mul_(1e-2)  # a flat model: the banned mass is large enough to matter
    prompts = [[ids.bos, ids.sol, ids.prior]] * 6
    banned = list(range(0, 120))
    out = sample(tiny_model, prompts, max_new_tokens=8, seed=1, banned_ids=banned, pad_id=ids.pad)
    want = _rescored(tiny_model, prompts, out, ids, banned=banned)
    unbanned = _rescored(tiny_model, prompts, out, ids)
    for s, w, u in zip(out, want, unbanned):
        assert s.logprobs == pytest.approx(w, abs=1e-4)
        assert all(a > b for a, b in zip(s.logprobs, u))   # renormalised over fewer tokens: every log-prob rises


# --------------------------------------------------------------------------- the preallocated, prefix-shared cache
def _full_forward_logps(model, prompt, tokens, *, temperature=1.0, banned=()):
    """log softmax((logits with `banned` at −inf) / T) of `tokens` after `prompt`: one plain forward, no cache."""
    seq = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(input_ids=seq, use_cache=False).logits[0, len(prompt) - 1:-1].float()
    logits[:, list(banned)] = float("-inf")
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def mixed_prompts(tokenizer):
    """Prompts of many lengths (1 to ~40 tokens): repeated ones (one shared copy each, the empty prefix of a lone
    BOS included) and distinct ones that share only a common head."""
    ids = SpecialIds.of(tokenizer)
    head = [ids.bos] + encode(tokenizer, "Problem: 1 + 2 Answer: 3.\n")
    texts = ["Problem: 347 + 586 Answer:", "Problem: 9 + 9 Answer:", "Problem: 12 + 30 + 7 + 100 + 5 Answer:"]
    uniq = [head + encode(tokenizer, t) + [ids.sol, ids.prior] for t in texts]
    single = [head + encode(tokenizer, "Problem: 5 + 5 Answer:"), head + encode(tokenizer, "Problem: 77 Answer:"), head]
    return [[ids.bos], [ids.bos]] + [p for p in uniq for _ in range(3)] + single, ids


def test_kv_cache_path_is_the_one_used_for_llama(tiny_model):
    from lt_utils.kv_forward import supports

    assert supports(tiny_model)


def test_log_q_and_log_p_equal_a_plain_forward_with_bans_stops_early_finishes_and_buckets(tokenizer, tiny_model):
    """Sampled log q and scored log p against one uncached forward per row: banned tokens renormalised, stop ids
    ending rows at different steps (finished rows dropped from the batch), batches mixing prompt lengths."""
    prompts, ids = mixed_prompts(tokenizer)
    with torch.no_grad():
        tiny_model.lm_head.weight.mul_(0.3)   # flatter: rows stop at many different steps
    banned = list(range(5, 60))
    free = sample(tiny_model, prompts, max_new_tokens=24, seed=4, pad_id=ids.pad, banned_ids=banned)
    stops = torch.bincount(torch.tensor([t for s in free for t in s.tokens])).topk(4).indices.tolist()
    for batch_size in (4, 64):
        out = sample(tiny_model, prompts, max_new_tokens=24, stop_ids=stops, banned_ids=banned, temperature=1.3,
                     seed=7, pad_id=ids.pad, batch_size=batch_size)
        lengths = [len(s.tokens) for s in out]
        assert any(s.finished for s in out) and any(not s.finished for s in out) and len(set(lengths)) >= 4
        for p, s in zip(prompts, out):
            assert not set(s.tokens) & set(banned)
            assert s.finished == (s.tokens[-1] in stops) and not set(s.tokens[:-1]) & set(stops)
            want = _full_forward_logps(tiny_model, p, s.tokens, temperature=1.3, banned=banned)
            assert s.logprobs == pytest.approx(want.tolist(), abs=1e-4)
        for share in (True, False):
            got = score(tiny_model, prompts, [s.tokens for s in out], pad_id=ids.pad, batch_size=batch_size,
                        share=share)
            for p, s, lp in zip(prompts, out, got):
                assert lp == pytest.approx(_full_forward_logps(tiny_model, p, s.tokens).tolist(), abs=1e-4)


def test_a_row_draws_the_same_sample_whatever_its_batch(tokenizer, tiny_model):
    """Each row has its own random stream (seed, row): batch size, sharing and the other rows change nothing."""
    prompts, ids = mixed_prompts(tokenizer)
    kw = dict(max_new_tokens=16, stop_ids=[ids.eol], seed=11, pad_id=ids.pad)
    ref = [s.tokens for s in sample(tiny_model, prompts, **kw)]
    assert [s.tokens for s in sample(tiny_model, prompts, batch_size=3, **kw)] == ref
    assert [s.tokens for s in sample(tiny_model, prompts, share=False, **kw)] == ref
    assert len({tuple(t) for t in ref[2:5]}) == 3       # copies of one prompt draw different continuations


def test_greedy_decoding_matches_a_plain_argmax_loop(tokenizer, tiny_model):
    """Evaluation's path: greedy continuations equal argmax decoding by uncached forwards, stops and bans included."""
    prompts, ids = mixed_prompts(tokenizer)
    banned = list(ids.latent)
    out = sample(tiny_model, prompts, max_new_tokens=10, greedy=True, stop_ids=[ids.eol, ids.eos],
                 banned_ids=banned, pad_id=ids.pad, batch_size=5)
    for p, s in zip(prompts, out):
        seq = list(p)
        for _ in range(10):
            with torch.no_grad():
                logits = tiny_model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
            logits[banned] = float("-inf")
            seq.append(int(logits.argmax()))
            if seq[-1] in (ids.eol, ids.eos):
                break
        assert s.tokens == seq[len(p):]


def test_prompts_and_contexts_must_not_be_empty(tokenizer, tiny_model):
    with pytest.raises(ValueError, match="at least one token"):
        sample(tiny_model, [[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="at least one token"):
        score(tiny_model, [[]], [[5]])
    assert score(tiny_model, [[]], [[]]) == [[]]


def test_a_prefill_runs_its_linear_layers_on_real_tokens_only(tokenizer, tiny_model):
    """Rows of very different lengths in one prefill: the layers see the real tokens only (padding writes zero keys
    and values, read by nothing), and each row's hidden states equal that row run alone."""
    from lt_utils.kv_forward import KVLlama, right_pad

    prompts, ids = mixed_prompts(tokenizer)
    eng = KVLlama(tiny_model)
    seqs = [p[:n] for p, n in zip(prompts, (1, 2, 40, 7, 3, 25, 12, 30, 9, 5, 33))]
    tokens, valid = right_pad(seqs, ids.pad, eng.device)
    rows = eng.rows(None, [0] * len(seqs), tokens.shape[1])
    hidden = eng.extend(None, rows, tokens, valid)
    assert rows.pos.tolist() == [len(s) for s in seqs]
    for layer in range(len(eng.layers)):
        assert not rows.k[layer].transpose(1, 2)[~valid].any() and not rows.v[layer].transpose(1, 2)[~valid].any()
    assert not hidden[~valid].any()
    for i, s in enumerate(seqs):
        alone = eng.rows(None, [0], len(s))
        want = eng.extend(None, alone, torch.tensor([s]), torch.ones((1, len(s)), dtype=torch.bool))[0]
        torch.testing.assert_close(hidden[i, :len(s)], want, rtol=0, atol=1e-5)
