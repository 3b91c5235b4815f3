"""E-step: exact importance weights, resampling (not argmax), IWAE bounds, resume and shard invariance."""

import json
from dataclasses import replace
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from lt_utils import estep
from lt_utils.data import Chunk, chunk_document
from lt_utils.estep import (EStepConfig, direct_log_px, iwae_bounds, joint_continuation, merge_shards,
                            model_fingerprint, posterior_prompt, resample_index, run_estep, sample_prior, save_records,
                            select_first_k, selected_thoughts, shard_positions, summarize, thought_banned_ids)
from lt_utils.sample import score
from lt_utils.tokens import SpecialIds, encode

torch.set_num_threads(1)


# --------------------------------------------------------------------------- helpers
class Bigram(torch.nn.Module):
    """Next-token logits depend only on the current token: log p of any sequence is a sum of table entries.

    It takes the sampler's call signature and returns logits for exactly the
    positions it is given, so it is correct with or without a KV cache (the
    sampler feeds only the new token once the prompt is encoded).
    """

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False, **kw):
        return SimpleNamespace(logits=self.table[input_ids])


def bigram_table(tokenizer, eol_logit: float, seed: int = 0) -> torch.Tensor:
    """A tiny thought vocabulary (a few digit/operator tokens + EoL) carries the mass; every other id sits at −6."""
    ids = SpecialIds.of(tokenizer)
    v = len(tokenizer)
    g = torch.Generator().manual_seed(seed)
    words = sorted(set(encode(tokenizer, "1+2=3. so 45")))[:8]
    table = torch.full((v, v), -6.0)
    table[:, words] = torch.randn(v, len(words), generator=g)
    table[:, ids.eol] = eol_logit
    return table


def hand_logprob(table: torch.Tensor, prev: int, seq) -> float:
    logp = torch.log_softmax(table.double(), dim=-1)
    total = 0.0
    for t in seq:
        total += float(logp[prev, t])
        prev = t
    return total


class EolBias(torch.nn.Module):
    """A real transformer whose EoL logit is raised, so sampled thoughts often terminate within a short cap."""

    def __init__(self, inner, eol: int, bias: float):
        super().__init__()
        self.inner, self.eol, self.bias = inner, eol, bias

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits[..., self.eol] += self.bias
        return out


def make_chunks(docs, n: int) -> list[Chunk]:
    out = []
    for d in docs:
        _, cs = chunk_document(d.doc_id, [d.head, *d.suffixes], mean_units=1.0, prefix_chunks=1)
        out.extend(cs)
    return out[:n]


def roundtrip(records):
    return json.loads(json.dumps(records))


# --------------------------------------------------------------------------- layouts
def test_prompt_and_joint_layouts(tokenizer, docs):
    ids = SpecialIds.of(tokenizer)
    c = make_chunks(docs, 2)[1]
    pre, suf = encode(tokenizer, c.prefix), encode(tokenizer, c.suffix)
    assert posterior_prompt(tokenizer, c) == [ids.bos, *pre, ids.sol, ids.eol, *suf, ids.sol, ids.posterior]
    ctx, cont = joint_continuation(tokenizer, c, [7, 8])
    assert ctx == [ids.bos, *pre]
    assert cont == [ids.sol, ids.prior, 7, 8, ids.eol, *suf]
    assert posterior_prompt(tokenizer, c, max_prefix_tokens=2)[1:3] == pre[-2:]


# --------------------------------------------------------------------------- exact weights by hand
def test_importance_weights_by_hand_on_a_bigram_model(tokenizer, docs):
    ids = SpecialIds.of(tokenizer)
    table = bigram_table(tokenizer, eol_logit=0.5)
    chunks = make_chunks(docs, 5)
    cfg = EStepConfig(k=4, max_thought_tokens=6, batch_chunks=2, seed=3)
    recs = run_estep(Bigram(table), tokenizer, chunks, cfg, model_key="bigram", progress=False)
    assert [(r["doc_id"], r["index"]) for r in recs] == [(c.doc_id, c.index) for c in chunks]
    n_term = 0
    for r, c in zip(recs, chunks):
        prompt = posterior_prompt(tokenizer, c)
        ctx, _ = joint_continuation(tokenizer, c, [])
        assert len(r["candidates"]) == 4
        for cand in r["candidates"]:
            z = cand["tokens"]
            assert ids.eol not in z and cand["n_tokens"] == len(z)
            assert cand["terminated"] or len(z) == cfg.max_thought_tokens
            n_term += cand["terminated"]
            # log q: every sampled token from the POST position on, including the EoL that stopped it
            lq = hand_logprob(table, prompt[-1], z + ([ids.eol] if cand["terminated"] else []))
            # log p: SoL PRI z EoL x after BOS prefix (prefix itself not scored)
            lp = hand_logprob(table, ctx[-1], [ids.sol, ids.prior, *z, ids.eol, *encode(tokenizer, c.suffix)])
            assert cand["log_q"] == pytest.approx(lq, abs=1e-4)
            assert cand["log_p"] == pytest.approx(lp, abs=1e-4)
            assert cand["log_w"] == pytest.approx(lp - lq, abs=2e-4)
            assert cand["text"] == tokenizer.decode(z, skip_special_tokens=False)
        lw = np.array([x["log_w"] for x in r["candidates"]])
        term = np.array([x["terminated"] for x in r["candidates"]])
        eff = np.where(term, lw, -np.inf) if term.any() else lw
        w = np.exp(eff - eff.max())
        w /= w.sum()
        assert r["weights"] == pytest.approx(list(w), abs=1e-9)
        assert r["ess"] == pytest.approx(1 / np.sum(w ** 2))
        for n, v in r["elbo"].items():
            lwn = np.where(term, lw, -np.inf)[: int(n)]
            want = -math.inf if not term[: int(n)].any() else float(np.logaddexp.reduce(lwn) - math.log(int(n)))
            assert v == pytest.approx(want)
        assert set(r["elbo"]) == {"1", "2", "4"}
    assert 0 < n_term < 20  # both kinds occur, so the unterminated rule is exercised


def test_unterminated_are_counted_and_never_selected(tokenizer, docs):
    chunks = make_chunks(docs, 8)
    cfg = EStepConfig(k=4, max_thought_tokens=3, batch_chunks=4)
    recs = run_estep(Bigram(bigram_table(tokenizer, eol_logit=0.5)), tokenizer, chunks, cfg, model_key="b",
                     progress=False)
    assert sum(r["n_unterminated"] for r in recs) > 0
    for r in recs:
        term = [c["terminated"] for c in r["candidates"]]
        assert r["n_unterminated"] == term.count(False)
        assert r["no_terminated"] == (not any(term))
        if any(term):
            assert term[r["selected"]]
            assert all(w == 0 for w, t in zip(r["weights"], term) if not t)
    # the selection rule itself: a huge weight on an unterminated candidate never wins
    rng = np.random.default_rng(0)
    assert all(resample_index([0.0, 50.0, -1.0], [True, False, True], rng) != 1 for _ in range(200))

    # no candidate terminates: the largest log w is taken and the chunk is flagged
    recs = run_estep(Bigram(bigram_table(tokenizer, eol_logit=-40.0)), tokenizer, chunks[:3], cfg, model_key="b2",
                     progress=False)
    s = summarize(recs)
    assert s["frac_unterminated"] == 1.0 and s["n_chunks_no_terminated"] == 3
    for r in recs:
        assert r["no_terminated"] and r["n_unterminated"] == 4
        assert r["selected"] == int(np.argmax([c["log_w"] for c in r["candidates"]]))
        assert r["elbo"]["1"] == -math.inf


# --------------------------------------------------------------------------- selection and bounds
def test_resampling_frequencies_match_normalised_weights():
    log_w = [0.0, -1.0, -2.0, -30.0]
    rec = {"doc_id": "d", "index": 0, "candidates": [{"log_w": v, "terminated": True} for v in log_w]}
    n = 4000
    counts = np.bincount([select_first_k(rec, 4, seed) for seed in range(n)], minlength=4)
    p = np.exp(log_w) / np.exp(log_w).sum()
    assert counts[3] == 0
    chi = stats.chisquare(counts[:3], n * p[:3] / p[:3].sum())
    assert chi.pvalue > 1e-3, (counts, n * p)
    assert counts[1] > 0.15 * n and counts[2] > 0.05 * n  # argmax would put everything on index 0


def test_paired_k_ablation_reuses_the_same_samples():
    rec = {"doc_id": "doc", "index": 2,
           "candidates": [{"log_w": v, "terminated": t} for v, t in
                          [(-3.0, True), (-1.0, True), (5.0, False), (-2.0, True), (-0.5, True), (-4.0, True),
                           (-1.5, True), (-2.5, True)]]}
    for seed in range(50):
        assert select_first_k(rec, 1, seed) == 0
        assert select_first_k(rec, 2, seed) in (0, 1)
        assert select_first_k(rec, 4, seed) in (0, 1, 3)  # never the unterminated index 2
        assert 0 <= select_first_k(rec, 8, seed) < 8
    with pytest.raises(ValueError):
        select_first_k(rec, 9, 0)


def test_iwae_bound_is_the_formula():
    lw = [-3.0, -1.0, -2.5, 0.5, -7.0]
    out = iwae_bounds(lw)
    assert set(out) == {1, 2, 4}
    for n in (1, 2, 4):
        assert out[n] == pytest.approx(math.log(sum(math.exp(x) for x in lw[:n]) / n), abs=1e-12)
    assert iwae_bounds([-1000.0, -1001.0])[2] == pytest.approx(-1000 + math.log1p(math.exp(-1)) - math.log(2))
    assert iwae_bounds([-math.inf, -2.0])[1] == -math.inf
    assert iwae_bounds([-math.inf, -2.0])[2] == pytest.approx(-2.0 - math.log(2))


# --------------------------------------------------------------------------- real model: log q, resume, shards
@pytest.fixture()
def biased_model(tiny_model, tokenizer):
    return EolBias(tiny_model, SpecialIds.of(tokenizer).eol, 5.0).eval()


CFG = EStepConfig(k=3, max_thought_tokens=6, batch_chunks=4, seed=11)


def test_log_q_and_log_p_match_teacher_forced_rescoring(biased_model, tokenizer, docs):
    ids = SpecialIds.of(tokenizer)
    chunks = make_chunks(docs, 4)
    recs = run_estep(biased_model, tokenizer, chunks, CFG, progress=False)
    assert any(c["terminated"] for r in recs for c in r["candidates"])
    ctxs, conts, want_q, jc, jx, want_p = [], [], [], [], [], []
    for r, c in zip(recs, chunks):
        for cand in r["candidates"]:
            ctxs.append(posterior_prompt(tokenizer, c))
            conts.append(cand["tokens"] + ([ids.eol] if cand["terminated"] else []))
            want_q.append(cand["log_q"])
            a, b = joint_continuation(tokenizer, c, cand["tokens"])
            jc.append(a), jx.append(b), want_p.append(cand["log_p"])
    # rescored one sequence at a time, with no shared prompt or prefix cache
    got_q = [sum(x) for x in score(biased_model, ctxs, conts, pad_id=ids.pad, batch_size=1, share=False)]
    got_p = [sum(x) for x in score(biased_model, jc, jx, pad_id=ids.pad, batch_size=1, share=False)]
    assert got_q == pytest.approx(want_q, abs=1e-4)
    assert got_p == pytest.approx(want_p, abs=1e-4)


def test_kv_sharing_changes_nothing_but_float_rounding(biased_model, tokenizer, docs, monkeypatch):
    """The E-step with shared prompt/prefix caches against the same E-step encoding every row in full."""
    chunks = make_chunks(docs, 8)
    shared = run_estep(biased_model, tokenizer, chunks, CFG, model_key="m", progress=False)
    real_sample, real_score = estep.sample, estep.score
    monkeypatch.setattr(estep, "sample", lambda *a, **kw: real_sample(*a, **kw, share=False))
    monkeypatch.setattr(estep, "score", lambda *a, **kw: real_score(*a, **kw, share=False))
    plain = run_estep(biased_model, tokenizer, chunks, CFG, model_key="m", progress=False)
    for a, b in zip(shared, plain):
        assert a["selected"] == b["selected"]
        for x, y in zip(a["candidates"], b["candidates"]):
            assert x["tokens"] == y["tokens"] and x["terminated"] == y["terminated"]
            assert x["log_q"] == pytest.approx(y["log_q"], abs=1e-4)
            assert x["log_p"] == pytest.approx(y["log_p"], abs=1e-4)


# --------------------------------------------------------------------------- proposals other than q at T = 1
def _specials_likely(tokenizer):
    """A bigram table in which the special tokens (EoL aside) carry much of the mass."""
    ids = SpecialIds.of(tokenizer)
    table = bigram_table(tokenizer, eol_logit=0.0)
    table[:, [ids.bos, ids.eos, ids.pad, ids.sol, ids.prior, ids.posterior]] = 1.0
    return table


def test_banned_specials_never_appear_and_log_q_is_renormalised(tokenizer, docs, tmp_path):
    ids = SpecialIds.of(tokenizer)
    table = _specials_likely(tokenizer)
    banned = thought_banned_ids(tokenizer)
    assert ids.eol not in banned and {ids.sol, ids.prior, ids.posterior, ids.bos} <= set(banned)
    chunks = make_chunks(docs, 4)
    cfg = EStepConfig(k=4, max_thought_tokens=6, batch_chunks=2, seed=5)
    free = run_estep(Bigram(table), tokenizer, chunks, cfg, model_key="t", progress=False)
    assert any(t in banned for r in free for c in r["candidates"] for t in c["tokens"])   # the ban has work to do
    ban_cfg = EStepConfig(k=4, max_thought_tokens=6, batch_chunks=2, seed=5, ban_special_in_thought=True)
    db = tmp_path / "c.db"
    run_estep(Bigram(table), tokenizer, chunks, cfg, model_key="t", cache_path=db, progress=False)
    recs = run_estep(Bigram(table), tokenizer, chunks, ban_cfg, model_key="t", cache_path=db, progress=False)
    assert len(estep.CandidateCache(db)) == 2 * 4 * 4   # the banned proposal reuses none of the free samples
    masked = table.clone()
    masked[:, banned] = float("-inf")
    for r, c in zip(recs, chunks):
        prompt = posterior_prompt(tokenizer, c)
        ctx, _ = joint_continuation(tokenizer, c, [])
        for cand in r["candidates"]:
            z = cand["tokens"]
            assert not set(z) & set(banned)
            end = [ids.eol] if cand["terminated"] else []
            assert cand["log_q"] == pytest.approx(hand_logprob(masked, prompt[-1], z + end), abs=1e-4)
            # log p stays the model's own, unmasked
            lp = hand_logprob(table, ctx[-1], [ids.sol, ids.prior, *z, ids.eol, *encode(tokenizer, c.suffix)])
            assert cand["log_p"] == pytest.approx(lp, abs=1e-4)


def test_tempered_proposal_records_the_tempered_log_q_and_the_untempered_log_p(tokenizer, docs):
    ids = SpecialIds.of(tokenizer)
    table = bigram_table(tokenizer, eol_logit=0.5)
    chunks = make_chunks(docs, 4)
    t = 0.6
    cfg = EStepConfig(k=4, max_thought_tokens=6, batch_chunks=2, seed=5, temperature=t)
    recs = run_estep(Bigram(table), tokenizer, chunks, cfg, model_key="t", progress=False)
    for r, c in zip(recs, chunks):
        prompt = posterior_prompt(tokenizer, c)
        ctx, _ = joint_continuation(tokenizer, c, [])
        for cand in r["candidates"]:
            z = cand["tokens"] + ([ids.eol] if cand["terminated"] else [])
            assert cand["log_q"] == pytest.approx(hand_logprob(table / t, prompt[-1], z), abs=1e-4)
            assert cand["log_q"] != pytest.approx(hand_logprob(table, prompt[-1], z), abs=1e-3)
            lp = hand_logprob(table, ctx[-1], [ids.sol, ids.prior, *cand["tokens"], ids.eol,
                                               *encode(tokenizer, c.suffix)])
            assert cand["log_p"] == pytest.approx(lp, abs=1e-4)
            assert cand["log_w"] == pytest.approx(cand["log_p"] - cand["log_q"], abs=2e-4)


def test_prior_samples_and_direct_likelihood_by_hand(tokenizer, docs):
    ids = SpecialIds.of(tokenizer)
    table = bigram_table(tokenizer, eol_logit=0.5)
    chunks = make_chunks(docs, 5)
    cfg = EStepConfig(k=2, max_thought_tokens=6, batch_chunks=2, seed=9)
    prior = sample_prior(Bigram(table), tokenizer, chunks, cfg)
    assert len(prior) == 5 and sample_prior(Bigram(table), tokenizer, [], cfg) == []
    for p in prior:   # the prior prompt ends in PRI: its first token is drawn from that row of the table
        z = p["tokens"] + ([ids.eol] if p["terminated"] else [])
        assert p["log_q"] == pytest.approx(hand_logprob(table, ids.prior, z), abs=1e-4)
        assert p["text"] == tokenizer.decode(p["tokens"], skip_special_tokens=False)
    direct = direct_log_px(Bigram(table), tokenizer, chunks, cfg)
    for d, c in zip(direct, chunks):   # x scored after the empty SoL EoL: its first token follows EoL
        assert d == pytest.approx(hand_logprob(table, ids.eol, encode(tokenizer, c.suffix)), abs=1e-4)


def counting_sampler(monkeypatch, fail_on_call: int | None = None):
    calls = {"n": 0, "rows": 0}
    real = estep.sample

    def wrapped(model, prompts, **kw):
        calls["n"] += 1
        if fail_on_call is not None and calls["n"] == fail_on_call:
            raise RuntimeError("killed")
        calls["rows"] += len(prompts)
        return real(model, prompts, **kw)

    monkeypatch.setattr(estep, "sample", wrapped)
    return calls


def test_resume_after_a_kill_regenerates_nothing_and_selects_the_same(biased_model, tokenizer, docs, tmp_path,
                                                                      monkeypatch):
    chunks = make_chunks(docs, 12)  # 3 groups of 4 chunks × 3 candidates
    ref = run_estep(biased_model, tokenizer, chunks, CFG, progress=False)

    db = tmp_path / "cand.db"
    counting_sampler(monkeypatch, fail_on_call=2)
    with pytest.raises(RuntimeError, match="killed"):
        run_estep(biased_model, tokenizer, chunks, CFG, cache_path=db, progress=False)
    assert len(estep.CandidateCache(db)) == 4 * 3  # the first group was saved

    calls = counting_sampler(monkeypatch)
    resumed = run_estep(biased_model, tokenizer, chunks, CFG, cache_path=db, progress=False)
    assert calls["rows"] == 8 * 3  # only the two missing groups were sampled
    assert resumed == ref

    # killed after sampling, before scoring: the samples are kept, only scoring is redone
    db2 = tmp_path / "cand2.db"
    real_score = estep.score
    monkeypatch.setattr(estep, "score", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        run_estep(biased_model, tokenizer, chunks, CFG, cache_path=db2, progress=False)
    monkeypatch.setattr(estep, "score", real_score)
    calls = counting_sampler(monkeypatch)
    assert run_estep(biased_model, tokenizer, chunks, CFG, cache_path=db2, progress=False) == ref
    assert calls["rows"] == 8 * 3

    # a complete cache: nothing is sampled, same records
    calls = counting_sampler(monkeypatch)
    assert run_estep(biased_model, tokenizer, chunks, CFG, cache_path=db, progress=False) == ref
    assert calls["n"] == 0


def test_sharded_runs_merge_to_the_unsharded_run(biased_model, tokenizer, docs, tmp_path):
    chunks = make_chunks(docs, 14)
    cfg = EStepConfig(k=3, max_thought_tokens=6, batch_chunks=2, seed=11)
    whole = run_estep(biased_model, tokenizer, chunks, cfg, progress=False)
    parts, paths = [], []
    for s in range(3):
        part = run_estep(biased_model, tokenizer, chunks, cfg, shard_index=s, num_shards=3,
                         cache_path=tmp_path / f"s{s}.db", progress=False)
        assert part and {r["position"] for r in part} == {i for g in shard_positions(14, 2, s, 3) for i in g}
        parts.append(part)
        paths.append(save_records(tmp_path / f"s{s}.jsonl", part))
    assert merge_shards(parts[::-1]) == whole
    assert merge_shards(paths) == roundtrip(whole)
    with pytest.raises(ValueError, match="two shards"):
        merge_shards([parts[0], parts[0]])
    # selection agrees with the paired ablation at k = K, and K = 1 is the first sample
    for r in whole:
        assert select_first_k(r, cfg.k, cfg.seed) == r["selected"]
        assert select_first_k(r, 1, cfg.seed) == 0
    th = selected_thoughts(whole)
    assert th[(whole[0]["doc_id"], whole[0]["index"])] == whole[0]["thought"]


def test_summarize_and_fingerprint(biased_model, tokenizer, docs, tmp_path):
    chunks = make_chunks(docs, 6)
    recs = run_estep(biased_model, tokenizer, chunks, CFG, progress=False)

    def verify(rec, text):  # stand-in for a question-aware check
        return len(text) % 2 == 0

    s = summarize(recs, verify)
    assert s["n_chunks"] == 6 and s["k"] == 3
    assert s["frac_selected_correct"] == pytest.approx(
        np.mean([len(r["candidates"][r["selected"]]["text"]) % 2 == 0 for r in recs]))
    assert s["frac_first_correct"] == pytest.approx(np.mean([len(r["candidates"][0]["text"]) % 2 == 0 for r in recs]))
    assert s["n_correct_candidates"] + s["n_incorrect_candidates"] == sum(
        c["terminated"] for r in recs for c in r["candidates"])
    assert set(s["elbo_mean"]) == {"1", "2"}
    assert summarize([]) == {"n_chunks": 0}

    inner = biased_model.inner
    fp = model_fingerprint(inner)
    assert fp == model_fingerprint(inner)
    inner.save_pretrained(str(tmp_path / "ckpt"))
    fp_file = model_fingerprint(tmp_path / "ckpt")
    with torch.no_grad():
        next(inner.parameters()).add_(1e-3)
    assert model_fingerprint(inner) != fp
    inner.save_pretrained(str(tmp_path / "ckpt"))
    assert model_fingerprint(tmp_path / "ckpt") != fp_file


def test_damaged_candidate_cache_is_moved_aside_and_rebuilt(biased_model, tokenizer, docs, tmp_path, capsys):
    chunks = make_chunks(docs, 4)
    db = tmp_path / "cand.db"
    ref = run_estep(biased_model, tokenizer, chunks, CFG, cache_path=db, progress=False)
    with open(db, "r+b") as fh:   # junk over the file header
        fh.write(b"\x00" * 100)
    capsys.readouterr()
    cache = estep.CandidateCache(db)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(db) in err[0]
    assert len(cache) == 0 and cache.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cache.close()
    assert len(list(tmp_path.glob("cand.db.damaged-*"))) == 1
    assert run_estep(biased_model, tokenizer, chunks, CFG, cache_path=db, progress=False) == ref


def test_argmax_selection_takes_the_largest_weight_of_a_finished_thought(biased_model, tokenizer, docs):
    chunks = make_chunks(docs, 6)
    cfg = EStepConfig(k=3, max_thought_tokens=6, batch_chunks=3, seed=11)
    resampled = run_estep(biased_model, tokenizer, chunks, cfg, progress=False)
    mode = run_estep(biased_model, tokenizer, chunks, replace(cfg, selection="argmax"), progress=False)
    for r, m in zip(resampled, mode):
        assert [c["tokens"] for c in r["candidates"]] == [c["tokens"] for c in m["candidates"]]  # same samples
        lw = estep.effective_log_weights([c["log_w"] for c in m["candidates"]],
                                         [c["terminated"] for c in m["candidates"]])
        assert m["selected"] == int(np.argmax(lw)) and m["thought"] == m["candidates"][m["selected"]]["text"]
    with pytest.raises(ValueError, match="selection"):
        EStepConfig(selection="best")


def test_re_selection_from_the_first_k_follows_the_e_steps_rule(biased_model, tokenizer, docs):
    chunks = make_chunks(docs, 6)
    cfg = EStepConfig(k=3, max_thought_tokens=6, batch_chunks=3, seed=11, selection="argmax")
    for r in run_estep(biased_model, tokenizer, chunks, cfg, progress=False):
        assert select_first_k(r, 3, cfg.seed, cfg.selection) == r["selected"]   # what the stage writes as corpus
        lw = estep.effective_log_weights([c["log_w"] for c in r["candidates"][:2]],
                                         [c["terminated"] for c in r["candidates"][:2]])
        assert select_first_k(r, 2, cfg.seed, "argmax") == int(np.argmax(lw))
