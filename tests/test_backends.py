"""The E-step's pluggable sampling/scoring backend and the vLLM settings, without vLLM installed."""

import json

import pytest
import torch

from lt_utils import sample as sample_mod
from lt_utils.data import chunk_document
from lt_utils.estep import CandidateCache, EStepConfig, run_estep
from lt_utils.paper.vllm_backend import engine_kwargs, row_seed, sampling_kwargs

torch.set_num_threads(1)


class LocalBackend:
    """The transformers path behind the backend interface, counting calls."""

    name = "local"

    def __init__(self, model):
        self.model, self.model_key, self.calls = model, "local-model", {"sample": 0, "score": 0}

    def sample(self, prompts, **kw):
        self.calls["sample"] += 1
        return sample_mod.sample(self.model, prompts, **kw)

    def score(self, contexts, continuations, **kw):
        self.calls["score"] += 1
        return sample_mod.score(self.model, contexts, continuations, **kw)


def chunks_of(docs, n):
    out = []
    for d in docs:
        out.extend(chunk_document(d.doc_id, [d.head, *d.suffixes], mean_units=1.0, prefix_chunks=1)[1])
    return out[:n]


def test_estep_runs_through_a_backend_with_its_own_cache_keys(tiny_model, tokenizer, docs, tmp_path):
    chunks = chunks_of(docs, 6)
    cfg = EStepConfig(k=2, max_thought_tokens=5, batch_chunks=3, seed=4)
    direct = run_estep(tiny_model, tokenizer, chunks, cfg, model_key="local-model", cache_path=tmp_path / "a.db",
                       progress=False)
    be = LocalBackend(tiny_model)
    via = run_estep(None, tokenizer, chunks, cfg, backend=be, cache_path=tmp_path / "b.db", progress=False)
    assert be.calls == {"sample": 2, "score": 2}  # one sampling and one scoring call per group
    assert via == direct  # same sampler, same seeds: the backend changes nothing but who runs it
    # same weights key, but the backend is part of the cache key: another engine's samples are never reused
    keys_a = {k for (k,) in CandidateCache(tmp_path / "a.db").db.execute("SELECT key FROM candidates")}
    keys_b = {k for (k,) in CandidateCache(tmp_path / "b.db").db.execute("SELECT key FROM candidates")}
    assert len(keys_a) == len(keys_b) == 12 and not keys_a & keys_b


def test_vllm_settings_sample_the_full_distribution():
    eng = engine_kwargs("/ckpt", dtype="float32", max_model_len=256, enforce_eager=True)
    assert eng["logprobs_mode"] == "processed_logprobs"   # log-probs after temperature/bans: what was sampled
    assert eng["generation_config"] == "vllm"             # no sampling defaults from generation_config.json
    assert eng["skip_tokenizer_init"] and eng["model"] == "/ckpt" and eng["max_model_len"] == 256
    kw = sampling_kwargs(max_new_tokens=9, stop_ids=[5, 3, 5], seed=11)
    assert (kw["temperature"], kw["top_p"], kw["top_k"], kw["min_p"]) == (1.0, 1.0, 0, 0.0)  # no truncation
    assert kw["logprobs"] == 0 and kw["ignore_eos"] and kw["stop_token_ids"] == [3, 5]
    assert kw["max_tokens"] == 9 and kw["seed"] == 11 and "allowed_token_ids" not in kw
    assert sampling_kwargs(max_new_tokens=1, greedy=True, temperature=0.7)["temperature"] == 0.0
    assert sampling_kwargs(max_new_tokens=1, allowed_ids=[1, 2])["allowed_token_ids"] == [1, 2]
    json.dumps(kw)  # plain values: the settings can be logged with a run


def test_row_seeds_are_distinct_stable_and_in_range():
    seeds = [row_seed(7, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2 ** 31 for s in seeds)
    assert seeds == [row_seed(7, i) for i in range(1000)] and row_seed(8, 0) != seeds[0]


def test_sampler_passes_the_kv_cache_under_the_installed_name(tiny_model, tokenizer):
    """A cache passed under the wrong keyword is dropped silently; decoding must match teacher forcing."""
    name = sample_mod._cache_kw()
    assert name in ("cache", "past_key_values")
    prompt = tokenizer("Problem: 12 + 30 Answer:", add_special_tokens=False)["input_ids"]
    s = sample_mod.sample(tiny_model, [prompt], max_new_tokens=6, seed=1)[0]
    tf = sample_mod.score(tiny_model, [prompt], [s.tokens], share=False)[0]   # no cache in this path
    assert s.logprobs == pytest.approx(tf, abs=1e-4)
    assert sample_mod.score(tiny_model, [prompt], [s.tokens], share=True)[0] == pytest.approx(tf, abs=1e-4)
