"""vLLM backend against the transformers backend on a tiny checkpoint of ours (needs `make test-vllm`).

The E-step's importance weights are only right if log q is the density the
thought was drawn from and log p is the model's joint.  These tests sample
with stock vLLM (CPU build, fp32) and check every reported log-prob against
teacher forcing in transformers on the same weights, and the reverse.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

pytestmark = pytest.mark.vllm
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("vllm")

from lt_utils.data import chunk_document  # noqa: E402
from lt_utils.estep import EStepConfig, joint_continuation, posterior_prompt, run_estep  # noqa: E402
from lt_utils.model import ModelSpec, build_model, load_model  # noqa: E402
from lt_utils.paper.vllm_backend import VLLMBackend  # noqa: E402
from lt_utils.sample import score  # noqa: E402
from lt_utils.tokens import SpecialIds  # noqa: E402

TOL = 1e-3  # nats, on sums of up to ~60 fp32 token log-probs (measured differences are ~1e-5)


@pytest.fixture(scope="module")
def ckpt(tokenizer, tmp_path_factory):
    """A random-init Llama with head size 32 (the smallest the vLLM CPU attention kernel takes), saved as HF."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(n_layer=2, n_embd=64, n_head=2, n_kv_head=1, intermediate_size=128,
                                  max_seq_len=512, init_std=0.2), tokenizer, seed=0)
    path = tmp_path_factory.mktemp("vllm") / "ckpt"
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def engine(ckpt):
    return VLLMBackend.for_cpu(ckpt, max_model_len=512, seed=0)


@pytest.fixture(scope="module")
def hf_model(ckpt):
    torch.set_num_threads(1)
    return load_model(ckpt)


def chunks_of(docs, n):
    out = []
    for d in docs:
        out.extend(chunk_document(d.doc_id, [d.head, *d.suffixes], mean_units=1.0, prefix_chunks=1)[1])
    return out[:n]


def teacher_forced_logprobs(model, prompt, tokens, *, temperature=1.0, banned=()):
    """log softmax(logits / T) of each token, banned ids removed, from one transformers forward."""
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].double() / temperature
    if banned:
        logits[:, list(banned)] = -math.inf
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1).tolist()


def test_sampled_logprobs_are_the_sampling_distribution(engine, hf_model, tokenizer, docs):
    ids = SpecialIds.of(tokenizer)
    prompts = [posterior_prompt(tokenizer, c) for c in chunks_of(docs, 6)]
    stops = set(range(40, 100))  # many stop ids, so rows both terminate and run into the cap
    outs = engine.sample(prompts, max_new_tokens=10, stop_ids=stops, seed=3)
    assert len(outs) == len(prompts)
    assert any(s.finished for s in outs) and not all(s.finished for s in outs)
    worst = 0.0
    for p, s in zip(prompts, outs):
        assert len(s.tokens) == len(s.logprobs) > 0
        if s.finished:
            assert s.tokens[-1] in stops and not set(s.tokens[:-1]) & stops  # the stop id is kept, once, last
        else:
            assert len(s.tokens) == 10
        want = teacher_forced_logprobs(hf_model, p, s.tokens)
        worst = max(worst, max(abs(a - b) for a, b in zip(s.logprobs, want)))
    print(f"max |sampled logprob - teacher forced| = {worst:.2e}")
    assert worst < 1e-4
    # the same seed gives the same rows; rows of one call are seeded apart (K copies of a prompt differ)
    again = engine.sample(prompts, max_new_tokens=10, stop_ids=stops, seed=3)
    assert [s.tokens for s in again] == [s.tokens for s in outs]
    copies = engine.sample([prompts[0]] * 4, max_new_tokens=10, stop_ids=[ids.eol], seed=3)
    assert len({tuple(s.tokens) for s in copies}) > 1


def test_temperature_and_bans_are_in_the_reported_logprobs(engine, hf_model, tokenizer, docs):
    """With processed log-probs a temperature or a ban shows up in them (raw log-probs would not)."""
    ids = SpecialIds.of(tokenizer)
    prompts = [posterior_prompt(tokenizer, c) for c in chunks_of(docs, 4)]
    banned = list(ids.latent) + list(range(100, 200))
    outs = engine.sample(prompts, max_new_tokens=8, temperature=0.7, banned_ids=banned, seed=5)
    for p, s in zip(prompts, outs):
        assert not set(s.tokens) & set(banned)
        want = teacher_forced_logprobs(hf_model, p, s.tokens, temperature=0.7, banned=banned)
        assert s.logprobs == pytest.approx(want, abs=1e-4)


def test_score_equals_transformers_score(engine, hf_model, tokenizer, docs):
    ids = SpecialIds.of(tokenizer)
    pairs = [joint_continuation(tokenizer, c, [7, 8, 9]) for c in chunks_of(docs, 5)]
    got = engine.score([a for a, _ in pairs], [b for _, b in pairs])
    want = score(hf_model, [a for a, _ in pairs], [b for _, b in pairs], pad_id=ids.pad)
    for g, w, (_, b) in zip(got, want, pairs):
        assert len(g) == len(b)
        assert g == pytest.approx(w, abs=1e-4)
    assert engine.score([[ids.bos]], [[]]) == [[]]


def _rescore(model_or_engine, tokenizer, chunks, records):
    """(log q, log p) of every candidate of `records`, recomputed by teacher forcing."""
    ids = SpecialIds.of(tokenizer)
    qa, qb, pa, pb = [], [], [], []
    for r, c in zip(records, chunks):
        for cand in r["candidates"]:
            qa.append(posterior_prompt(tokenizer, c))
            qb.append(cand["tokens"] + ([ids.eol] if cand["terminated"] else []))
            a, b = joint_continuation(tokenizer, c, cand["tokens"])
            pa.append(a), pb.append(b)
    if isinstance(model_or_engine, VLLMBackend):
        lq, lp = model_or_engine.score(qa, qb), model_or_engine.score(pa, pb)
    else:
        lq = score(model_or_engine, qa, qb, pad_id=ids.pad, batch_size=1)
        lp = score(model_or_engine, pa, pb, pad_id=ids.pad, batch_size=1)
    return [sum(x) for x in lq], [sum(x) for x in lp]


def _max_diffs(records, lq, lp):
    cands = [c for r in records for c in r["candidates"]]
    dq = max(abs(c["log_q"] - q) for c, q in zip(cands, lq))
    dp = max(abs(c["log_p"] - p) for c, p in zip(cands, lp))
    dw = max(abs(c["log_w"] - (p - q)) for c, q, p in zip(cands, lq, lp))
    return dq, dp, dw


def test_estep_log_q_log_p_log_w_agree_across_backends(engine, hf_model, tokenizer, docs, tmp_path):
    chunks = chunks_of(docs, 8)
    cfg = EStepConfig(k=3, max_thought_tokens=12, batch_chunks=4, seed=7)

    # thoughts sampled by vLLM, rescored by transformers
    by_vllm = run_estep(None, tokenizer, chunks, cfg, backend=engine, cache_path=tmp_path / "v.db", progress=False)
    assert len(by_vllm) == len(chunks) and all(len(r["candidates"]) == 3 for r in by_vllm)
    dq, dp, dw = _max_diffs(by_vllm, *_rescore(hf_model, tokenizer, chunks, by_vllm))
    print(f"vLLM-sampled thoughts, transformers rescoring: max |Δlog q| {dq:.2e}, |Δlog p| {dp:.2e}, "
          f"|Δlog w| {dw:.2e}")
    assert max(dq, dp, dw) < TOL
    assert all(math.isfinite(c["log_w"]) for r in by_vllm for c in r["candidates"])

    # thoughts sampled by transformers, rescored by vLLM
    by_hf = run_estep(hf_model, tokenizer, chunks, cfg, progress=False)
    dq, dp, dw = _max_diffs(by_hf, *_rescore(engine, tokenizer, chunks, by_hf))
    print(f"transformers-sampled thoughts, vLLM rescoring: max |Δlog q| {dq:.2e}, |Δlog p| {dp:.2e}, "
          f"|Δlog w| {dw:.2e}")
    assert max(dq, dp, dw) < TOL

    # the cache names the backend: a vLLM rerun reuses its own samples, never the transformers ones
    again = run_estep(None, tokenizer, chunks, cfg, backend=engine, cache_path=tmp_path / "v.db", progress=False)
    assert again == by_vllm


def test_stage_three_e_step_on_vllm(ckpt, docs, tmp_path):
    """`em_estep.sample_and_score`, what notebook 03 calls with `estep_backend: vllm`, on a CPU engine."""
    from lt_utils.stages.em_estep import sample_and_score

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    chunks = chunks_of(docs, 6)
    cfg = EStepConfig(k=2, max_thought_tokens=16, seed=3)
    cache = tmp_path / "candidates.sqlite"
    args = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512}
    recs = sample_and_score(ckpt, ckpt, chunks, cfg, cache, backend="vllm", engine_args=args, progress=False)
    assert [(r["doc_id"], r["index"]) for r in recs] == [(c.doc_id, c.index) for c in chunks]
    for r in recs:
        assert len(r["candidates"]) == 2 and 0 <= r["selected"] < 2
        for c in r["candidates"]:
            assert math.isfinite(c["log_q"]) and math.isfinite(c["log_p"])
            assert abs(c["log_w"] - (c["log_p"] - c["log_q"])) < 1e-9
    again = sample_and_score(ckpt, ckpt, chunks, cfg, cache, backend="vllm", engine_args=args, progress=False)
    assert again == recs                                   # the second pass reads every candidate from the cache
    hf = sample_and_score(ckpt, ckpt, chunks, cfg, cache, backend="transformers", progress=False)
    assert [c["tokens"] for r in hf for c in r["candidates"]] != [c["tokens"] for r in recs for c in r["candidates"]]
