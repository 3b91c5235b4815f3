"""Throughput benchmark: is lt_utils' training loop as fast as plain torch, and how fast is sampling?

    python -m lt_utils.benchmark [--steps 60] [--threads 1]

Prints, measured in one run on this machine:
  * training tokens/s of `train.run_train_job` (transformers Llama + accelerate)
    against a minimal plain-torch causal LM of the same size (same batch, same
    threads), and their ratio;
  * sampling tokens/s of `sample.sample` (temperature 1, exact log-probs)
    against transformers' `generate` on the same prompts;
  * E-step tokens/s (`estep.run_estep`: K posterior samples per chunk, joint
    scoring, weights, resampling, records) against bare sampling of the same
    posterior prompts with the same K, i.e. what the E-step's second pass and
    bookkeeping cost on top of the unavoidable sampling (fastest of three
    interleaved rounds each).  Bare sampling is
    timed twice: with each prompt copied K times and encoded per copy (what
    the E-step did before it shared the prompt's KV cache) and with the
    sharing the E-step now uses.  A short warm-up runs first, so neither
    pays for one-off initialisation.
Numbers are figures to read, not assertions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class PlainBlock(nn.Module):
    def __init__(self, d: int, n_head: int, ffn: int):
        super().__init__()
        self.n_head = n_head
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d))
        gate, up = self.up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class PlainLM(nn.Module):
    """The smallest honest baseline: token + learned positions, pre-norm blocks, tied head."""

    def __init__(self, vocab: int, d: int, n_layer: int, n_head: int, ffn: int, max_len: int):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(PlainBlock(d, n_head, ffn) for _ in range(n_layer))
        self.norm = nn.RMSNorm(d)

    def forward(self, idx, targets):
        x = self.emb(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        logits = self.norm(x) @ self.emb.weight.T
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1))


def bench_plain(vocab, spec, train, steps: int) -> float:
    model = PlainLM(vocab, spec.n_embd, spec.n_layer, spec.n_head, spec.intermediate_size, train.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (train.batch_size, train.seq_len), generator=g)
    for i in range(steps + 5):
        if i == 5:
            t0 = time.perf_counter()
        loss = model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * train.batch_size * train.seq_len / (time.perf_counter() - t0)


def bench_estep(model, tok, docs, *, k: int, max_thought_tokens: int, repeats: int = 3) -> dict:
    """E-step vs bare sampling of the same posterior prompts (K each), in sampled tokens per second.

    The three are timed in turn `repeats` times and each keeps its fastest
    round, so a burst of load from another process on a shared machine skews
    neither side of the ratio.
    """
    from .data import chunk_document
    from .estep import EStepConfig, posterior_prompt, run_estep
    from .sample import sample
    from .tokens import SpecialIds

    ids = SpecialIds.of(tok)
    chunks = [c for d in docs for c in chunk_document(d.doc_id, d.segments(), mean_units=1.0, max_units=20,
                                                      prefix_chunks=3)[1]]
    cfg = EStepConfig(k=k, max_thought_tokens=max_thought_tokens, seed=0, batch_chunks=64)
    run_estep(model, tok, chunks[:8], EStepConfig(k=k, max_thought_tokens=4, seed=1, batch_chunks=8),
              model_key="warm-up", progress=False)
    prompts = [posterior_prompt(tok, c) for c in chunks for _ in range(k)]
    best = {"estep": 0.0, False: 0.0, True: 0.0}
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        records = run_estep(model, tok, chunks, cfg, model_key="bench", progress=False)  # a fresh in-memory cache
        n = sum(c["n_tokens"] + int(c["terminated"]) for r in records for c in r["candidates"])
        best["estep"] = max(best["estep"], n / (time.perf_counter() - t0))
        for share in (False, True):
            t0 = time.perf_counter()
            out = sample(model, prompts, max_new_tokens=max_thought_tokens, stop_ids=[ids.eol], pad_id=ids.pad,
                         seed=0, batch_size=64 * k, share=share)
            best[share] = max(best[share], sum(len(s.tokens) for s in out) / (time.perf_counter() - t0))
    return {"estep_chunks": len(chunks), "estep_k": k, "estep_rounds": max(1, repeats),
            "estep_tokens_per_s": round(best["estep"]),
            "bare_sampling_tokens_per_s": round(best[False]),
            "bare_sampling_shared_prompt_tokens_per_s": round(best[True]),
            "estep_ratio_over_bare_sampling": round(best["estep"] / best[False], 3),
            "estep_ratio_over_bare_shared_sampling": round(best["estep"] / best[True], 3)}


def main(argv=None) -> dict:
    from .data import ThoughtDoc
    from .model import ModelSpec, build_model
    from .runs import write_jsonl
    from .sample import sample
    from .tokens import SpecialIds, encode, train_tokenizer
    from .train import TrainJob, TrainSpec, run_train_job
    from . import world

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the figures as JSON here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    docs = world.generate_documents("comparison", 300, families=["addition"], seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-"))
    tok = train_tokenizer([d.text for d in docs] + [u.thought for d in docs for u in d.units], 384)
    tok.save_pretrained(str(tmp / "tok"))
    recs = [ThoughtDoc(d.doc_id, d.segments()[0], d.segments()[1:], [u.thought for u in d.units]).to_dict()
            for d in docs]
    write_jsonl(tmp / "corpus.jsonl", recs)
    spec = ModelSpec(n_layer=3, n_embd=64, n_head=4, n_kv_head=4, intermediate_size=256, max_seq_len=256)
    train = TrainSpec(steps=args.steps, batch_size=16, seq_len=256, eval_every=10 ** 9)
    job = TrainJob(out_dir=str(tmp / "run"), tokenizer_dir=str(tmp / "tok"), corpus_path=str(tmp / "corpus.jsonl"),
                   layout="random", model=spec, train=train, seed=0, threads=args.threads, progress=False)
    ours = run_train_job(job)["tokens_per_s"]
    plain = bench_plain(len(tok), spec, train, args.steps)

    ids = SpecialIds.of(tok)
    model = build_model(spec, tok).eval()
    prompts = [[ids.bos] + encode(tok, f"Problem: {u.question} Answer:") + [ids.sol, ids.prior]
               for d in docs[:64] for u in d.units[:1]]
    n_new = 48
    t0 = time.perf_counter()
    out = sample(model, prompts, max_new_tokens=n_new, seed=0, pad_id=ids.pad, batch_size=64)
    ours_sample = sum(len(s.tokens) for s in out) / (time.perf_counter() - t0)
    from transformers import GenerationConfig

    width = max(len(p) for p in prompts)
    inp = torch.tensor([[ids.pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    gc = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n_new,
                          min_new_tokens=n_new, pad_token_id=ids.pad, eos_token_id=None)
    t0 = time.perf_counter()
    with torch.no_grad():
        gen = model.generate(input_ids=inp, attention_mask=mask, generation_config=gc)
    hf_sample = (gen.shape[1] - width) * len(prompts) / (time.perf_counter() - t0)

    est = bench_estep(model, tok, docs[:40], k=4, max_thought_tokens=n_new)

    res = {"threads": args.threads, "train_tokens_per_s_lt_utils": round(ours), "train_tokens_per_s_plain_torch":
           round(plain), "train_ratio_lt_utils_over_plain": round(ours / plain, 3),
           "sample_tokens_per_s_lt_utils": round(ours_sample), "sample_tokens_per_s_hf_generate": round(hf_sample),
           "sample_ratio_lt_utils_over_hf": round(ours_sample / hf_sample, 3),
           **est,
           "model": f"Llama d={spec.n_embd} L={spec.n_layer} H={spec.n_head}, batch {train.batch_size}x{train.seq_len}"}
    for k, v in res.items():
        print(f"{k:36s} {v}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
