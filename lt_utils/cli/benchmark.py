"""Throughput benchmark: training against plain torch, and the E-step and evaluation against the model's forward.

    python -m lt_utils.cli.benchmark [--steps 60] [--threads 1] [--estep-threads 0] [--old c2e619a]

Prints, measured in one run on this machine, on the study's model size
(Llama, 4 layers, d = 64, vocabulary 384) trained briefly so that thoughts end:
  * training tokens/s of `train.run_train_job` against a minimal plain-torch
    causal LM of the same size (same batch, `--threads`), and their ratio;
  * forward_tokens_per_s: a no-grad forward of the same model at the
    E-step's batch (its rows × 128 tokens), and the page faults a lane's pass
    takes (glibc maps each of its largest tensors afresh, so this forward pays
    for its memory every time; docs/engineering.md, "Throughput");
  * decode_tokens_per_s: bare sampling (`sample.sample`) of the E-step's
    posterior prompts, K rows each, in new tokens per second;
  * estep_tokens_per_s: `estep.run_estep` (K posterior samples per chunk,
    joint scoring, weights, resampling, records) in sampled plus scored
    tokens (the continuation tokens whose log p is taken) per second, and
    the page faults of one E-step;
  * the same E-step work and a greedy evaluation with the sampler of commit
    `--old` (read from git), the E-step on one thread as the study ran it
    then, the evaluation on one thread as training workers run it, and the
    speed-ups;
  * decode_vs_forward, and estep_vs_forward_if_only_sampling: the ratio the
    E-step would read if its scoring, weights and resampling cost nothing and
    it sampled at bare decoding's rate, the ceiling today's decoding sets;
  * last, ``estep_vs_forward``: E-step tokens/s ÷ forward tokens/s.

    python -m lt_utils.cli.benchmark --keep DIR            # also keep the model, tokenizer and figures in DIR
    python -m lt_utils.cli.benchmark --vllm-peer DIR       # in the vLLM environment (make bench runs both)

    python -m lt_utils.cli.benchmark --study-estep runs/cpu/03_bootstrap_em   # make bench-study

``--study-estep`` times the study's own E-step work: iteration 1's E-step of a
finished stage-03 run (its bootstrap chunks, K and settings), redone from its
warmstart model without the candidate cache, by this sampler on every core
and by the sampler of `--old` on one thread, one after the other in one
process; it prints both wall times, their ratio, tokens per second (and ours
over the no-grad forward of the same model, as above, at the E-step's rows),
and how many of our records equal the run's own (all of them, on the machine
and thread count that ran the study).

``--vllm-peer`` times the E-step through `lt_utils.paper.vllm_backend` beside
ours, in one process of the vLLM environment: the peer reference for which
backend is faster here.  vLLM's CPU attention kernel has no head size 16 (the
study's 4 heads of d = 64), so both time a twin of the study's model with
2 heads of 32 -- the same sizes, parameters and FLOPs otherwise -- that the
``--keep`` run trains beside it (same corpus and steps).  Same chunks, K, cap
and seed; vLLM's random stream differs from ours, so its samples (and token
counts) differ, and both are counted the same way, in tokens per second.
The E-step, decoding and forward run on `--estep-threads` cores (0: every
available core, as the study's ``workers: 0``), each as that many lanes of
one torch thread (the E-step's groups side by side; the forward as one pass
per lane; decoding one group of rows per lane).  Each figure is the fastest
of `--rounds` interleaved rounds, so a burst of load from another process
skews neither side of a ratio.  Numbers are figures to read, not assertions.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
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


def load_old_sampler(commit: str):
    """`lt_utils/sample.py` as it was at `commit`, loaded as a module of its own (None without git or the commit)."""
    try:
        src = subprocess.run(["git", "show", f"{commit}:lt_utils/sample.py"], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parent).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="lt-old-sampler-")) / "old_sample.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"lt_old_sample_{commit}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod     # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


class _OldBackend:
    """The old sampler behind `run_estep`'s backend interface (sample/score without the model argument)."""

    name, model_key = "old-sampler", "bench-old"

    def __init__(self, mod, model):
        self.mod, self.model = mod, model

    def sample(self, prompts, **kw):
        return self.mod.sample(self.model, prompts, **kw)

    def score(self, contexts, continuations, **kw):
        return self.mod.score(self.model, contexts, continuations, **kw)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _page_faults() -> int:
    """Minor page faults of this process so far: pages the OS handed it afresh (each one zeroed and mapped)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def in_lanes(fn, items, lanes: int) -> list:
    """fn(item) for each item on `lanes` threads of one torch thread each: how the E-step uses its cores, so the
    forward and bare decoding beside it are measured the same way."""
    from concurrent.futures import ThreadPoolExecutor

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max(1, lanes)) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(before)


def _forward_pass(model, vocab: int, rows: int):
    """One lane's no-grad forward of `rows` × 128 random tokens (fixed), returning the tokens it ran."""
    ids = torch.randint(0, vocab, (rows, 128), generator=torch.Generator().manual_seed(0))

    def forward_one(_):
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        return ids.numel()
    return forward_one


def estep_tokens(records) -> tuple[int, int]:
    """(sampled tokens, scored tokens) of E-step records: each candidate's thought (+ the EoL that ended it), and
    its scored continuation ``SoL PRI z EoL x``."""
    sampled = sum(c["n_tokens"] + int(c["terminated"]) for r in records for c in r["candidates"])
    scored = sum(c["n_tokens"] + 3 + r["n_suffix_tokens"] for r in records for c in r["candidates"])
    return sampled, scored


def bench_inference(model, tok, docs, *, k: int, max_thought_tokens: int, threads: int, rounds: int,
                    old_commit: str) -> dict:
    """E-step, bare decoding, forward and evaluation throughput (see the module note)."""
    from lt_utils import evaluate
    from lt_utils.estep import EStepConfig, posterior_prompt, run_estep
    from lt_utils.sample import sample
    from lt_utils.tokens import SpecialIds

    ids = SpecialIds.of(tok)
    chunks = bench_chunks(docs)
    cfg = EStepConfig(k=k, max_thought_tokens=max_thought_tokens, seed=0, batch_chunks=64)
    rows = cfg.batch_chunks * k
    prompts = [posterior_prompt(tok, c) for c in chunks for _ in range(k)]
    forward_one = _forward_pass(model, len(tok), rows)
    problems = [u for d in docs for u in d.units]
    shots = evaluate.exemplar_units(docs[-10:], 3)
    old = load_old_sampler(old_commit) if old_commit else None

    def decode_one(part):
        out = sample(model, part, max_new_tokens=max_thought_tokens, stop_ids=[ids.eol], pad_id=ids.pad, seed=0,
                     batch_size=rows)
        return sum(len(s.tokens) for s in out)

    parts = [prompts[s:s + rows] for s in range(0, len(prompts), rows)]

    def run_eval():
        return evaluate.evaluate_problems(model, tok, problems, style="latent", shots=shots)

    torch.set_num_threads(threads)
    run_estep(model, tok, chunks[:8], EStepConfig(k=k, max_thought_tokens=4, seed=1, batch_chunks=8),
              model_key="warm-up", progress=False)
    best: dict[str, float] = {}

    def keep(name, value, larger=True):
        best[name] = value if name not in best else (max if larger else min)(best[name], value)

    for _ in range(max(1, rounds)):
        faults = _page_faults()
        n, dt = _timed(lambda: sum(in_lanes(forward_one, range(threads), threads)))
        keep("forward", n / dt)
        keep("forward_faults", (_page_faults() - faults) / threads, larger=False)
        torch.set_num_threads(threads)
        faults = _page_faults()
        records, dt = _timed(lambda: run_estep(model, tok, chunks, cfg, model_key="bench", progress=False))
        keep("estep_faults", _page_faults() - faults, larger=False)
        sampled, scored = estep_tokens(records)
        keep("estep", (sampled + scored) / dt)
        keep("estep_s", dt, larger=False)
        n, dt = _timed(lambda: sum(in_lanes(decode_one, parts, threads)))
        keep("decode", n / dt)
        torch.set_num_threads(1)
        keep("eval_s", _timed(run_eval)[1], larger=False)
        if old is not None:
            keep("old_estep_s", _timed(lambda: run_estep(None, tok, chunks, cfg, backend=_OldBackend(old, model),
                                                         progress=False))[1], larger=False)
            real = evaluate.sample
            evaluate.sample = old.sample
            try:
                keep("old_eval_s", _timed(run_eval)[1], larger=False)
            finally:
                evaluate.sample = real
    res = {"estep_threads": threads, "estep_chunks": len(chunks), "estep_k": k, "estep_rows_per_batch": rows,
           "estep_sampled_tokens": sampled, "estep_scored_tokens": scored, "rounds": max(1, rounds),
           "forward_tokens_per_s": round(best["forward"]), "decode_tokens_per_s": round(best["decode"]),
           "estep_tokens_per_s": round(best["estep"]), "estep_seconds": round(best["estep_s"], 2),
           "forward_page_faults_per_pass": round(best["forward_faults"]),
           "estep_page_faults": round(best["estep_faults"]),
           "eval_problems": len(problems), "eval_seconds_1_thread": round(best["eval_s"], 2)}
    if old is not None:
        res.update({"old_commit": old_commit,
                    "old_estep_seconds_1_thread": round(best["old_estep_s"], 2),
                    "estep_speedup_over_old": round(best["old_estep_s"] / best["estep_s"], 2),
                    "old_eval_seconds_1_thread": round(best["old_eval_s"], 2),
                    "eval_speedup_over_old": round(best["old_eval_s"] / best["eval_s"], 2)})
    decode_vs_forward = best["decode"] / best["forward"]
    res["decode_vs_forward"] = round(decode_vs_forward, 3)
    # the E-step's ratio if everything but its sampling (scoring, weights, resampling) took no time, its sampled
    # tokens drawn at bare decoding's rate: what this decoding leaves within reach
    res["estep_vs_forward_if_only_sampling"] = round((sampled + scored) / sampled * decode_vs_forward, 3)
    res["estep_vs_forward"] = round(best["estep"] / best["forward"], 3)
    return res


def main(argv=None) -> dict:
    from lt_utils.data import ThoughtDoc
    from lt_utils.model import ModelSpec, load_model
    from lt_utils.runtime.parallel import available_cores
    from lt_utils.runtime.runs import write_jsonl
    from lt_utils.tokens import train_tokenizer
    from lt_utils.train import TrainJob, TrainSpec, run_train_job
    from lt_utils import world

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1, help="training threads (the study's workers use 1)")
    ap.add_argument("--estep-threads", type=int, default=0, help="E-step/decoding/forward threads (0: every core)")
    ap.add_argument("--docs", type=int, default=40, help="documents whose chunks the E-step samples")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--old", default="c2e619a", help="commit whose sampler is timed beside ('' to skip)")
    ap.add_argument("--out", help="write the figures as JSON here too")
    ap.add_argument("--keep", help="keep the trained model, tokenizer and figures in this directory")
    ap.add_argument("--vllm-peer", help="time the E-step through vLLM on the model a --keep run left here")
    ap.add_argument("--study-estep", help="time iteration 1's E-step of this finished stage-03 run, ours and --old")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.study_estep:
        from lt_utils.runtime.runs import MissingInputError

        try:
            res = study_estep(Path(args.study_estep), old_commit=args.old,
                              threads=args.estep_threads or available_cores())
        except (MissingInputError, FileNotFoundError) as exc:
            sys.exit(f"error: {exc}")
        for k, v in res.items():
            print(f"{k:36s} {v}")
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
        return res

    docs = world.generate_documents("comparison", 300, families=["addition"], seed=0)
    if args.vllm_peer:
        res = vllm_peer(Path(args.vllm_peer), docs[:args.docs], k=4, max_thought_tokens=64, rounds=args.rounds)
        for k, v in res.items():
            print(f"{k:36s} {v}")
        return res
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lt-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer([d.text for d in docs] + [u.thought for d in docs for u in d.units], 384)
    tok.save_pretrained(str(tmp / "tok"))
    recs = [ThoughtDoc(d.doc_id, d.segments()[0], d.segments()[1:], [u.thought for u in d.units]).to_dict()
            for d in docs]
    write_jsonl(tmp / "corpus.jsonl", recs)
    spec = ModelSpec(n_layer=4, n_embd=64, n_head=4, n_kv_head=4, intermediate_size=256, max_seq_len=256)
    train = TrainSpec(steps=args.steps, batch_size=16, seq_len=256, eval_every=10 ** 9)
    job = TrainJob(out_dir=str(tmp / "run"), tokenizer_dir=str(tmp / "tok"), corpus_path=str(tmp / "corpus.jsonl"),
                   layout="random", model=spec, train=train, seed=0, threads=args.threads, progress=False)
    ours = run_train_job(job)["tokens_per_s"]
    if args.keep:   # the twin for the vLLM peer: 2 heads of 32 (vLLM's CPU kernel has no head size 16)
        twin = dataclasses.replace(spec, n_head=2, n_kv_head=2)
        run_train_job(dataclasses.replace(job, out_dir=str(tmp / "twin_run"), model=twin))
    plain = bench_plain(len(tok), spec, train, args.steps)
    res = {"threads": args.threads, "train_tokens_per_s_lt_utils": round(ours), "train_tokens_per_s_plain_torch":
           round(plain), "train_ratio_lt_utils_over_plain": round(ours / plain, 3),
           "model": f"Llama d={spec.n_embd} L={spec.n_layer} H={spec.n_head} vocab={len(tok)}, "
                    f"training batch {train.batch_size}x{train.seq_len}"}
    model = load_model(tmp / "run" / "model").eval()   # trained for a moment: thoughts end at EoL
    res.update(bench_inference(model, tok, docs[:args.docs], k=4, max_thought_tokens=64,
                               threads=args.estep_threads or available_cores(), rounds=args.rounds,
                               old_commit=args.old))
    for k, v in res.items():
        print(f"{k}: {v}" if k == "estep_vs_forward" else f"{k:36s} {v}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    if args.keep:
        (tmp / "bench.json").write_text(json.dumps(res, indent=2))
    return res


def study_estep(stage_dir: Path, *, old_commit: str, threads: int) -> dict:
    """Iteration 1's E-step of a finished stage-03 run, redone by this sampler and by `old_commit`'s (see the
    module note).  Nothing is written: no candidate cache, so every candidate is sampled and scored again."""
    from lt_utils.estep import model_fingerprint, run_estep
    from lt_utils.model import load_model
    from lt_utils.runtime.runs import MissingInputError, read_jsonl
    from lt_utils.stages.bootstrap_em import Study
    from lt_utils.stages.em_estep import iteration_config
    from lt_utils.tokens import load_tokenizer

    study = Study.of_finished(stage_dir)
    gen, ref_path = study.model_dir("warmstart"), study.run.file("iter1/estep.jsonl")
    if not ref_path.is_file():
        raise MissingInputError(f"{ref_path}: the run has no E-step 1 records (run its stage 03 to the end first)")
    cfg = iteration_config(study.cfg, 1)
    tok, model = load_tokenizer(study.tok_dir), load_model(gen).eval()
    chunks = study.boot_chunks
    out = {"stage_dir": str(stage_dir), "chunks": len(chunks), "k": cfg.k,
           "max_thought_tokens": cfg.max_thought_tokens, "threads": threads}
    torch.set_num_threads(threads)
    records, dt = _timed(lambda: run_estep(model, tok, chunks, cfg, model_key=model_fingerprint(gen), progress=True))
    sampled, scored = estep_tokens(records)
    ref = [json.dumps(r, sort_keys=True) for r in read_jsonl(ref_path)]
    same = sum(json.dumps(r, sort_keys=True) == x for r, x in zip(records, ref))
    forward_one = _forward_pass(model, len(tok), cfg.batch_chunks * cfg.k)
    forward = max(n / t for n, t in (_timed(lambda: sum(in_lanes(forward_one, range(threads), threads)))
                                     for _ in range(3)))
    out.update({"seconds": round(dt, 1), "sampled_tokens": sampled, "scored_tokens": scored,
                "tokens_per_s": round((sampled + scored) / dt), "records_equal_to_the_run": f"{same} of {len(ref)}",
                "forward_tokens_per_s": round(forward),
                "estep_vs_forward": round((sampled + scored) / dt / forward, 3)})
    old = load_old_sampler(old_commit) if old_commit else None
    if old_commit and old is None:
        out["old_commit"] = f"{old_commit}: not found (the old sampler is read from this checkout's git history)"
    if old is not None:
        torch.set_num_threads(1)
        records, dt_old = _timed(lambda: run_estep(None, tok, chunks, cfg, backend=_OldBackend(old, model),
                                                   progress=True))
        sampled, scored = estep_tokens(records)
        out.update({"old_commit": old_commit, "old_seconds_1_thread": round(dt_old, 1),
                    "old_tokens_per_s": round((sampled + scored) / dt_old), "speedup_over_old": round(dt_old / dt, 2)})
    return out


def bench_chunks(docs):
    from lt_utils.data import chunk_document

    return [c for d in docs for c in chunk_document(d.doc_id, d.segments(), mean_units=1.0, max_units=20,
                                                    prefix_chunks=3)[1]]


def vllm_peer(kept: Path, docs, *, k: int, max_thought_tokens: int, rounds: int) -> dict:
    """The E-step of `bench_inference`, ours and through vLLM (`VLLMBackend.for_cpu`), on the twin model."""
    from lt_utils.estep import EStepConfig, run_estep
    from lt_utils.model import load_model
    from lt_utils.paper.vllm_backend import VLLMBackend
    from lt_utils.runtime.parallel import available_cores
    from lt_utils.tokens import load_tokenizer

    tok = load_tokenizer(kept / "tok")
    model_dir = kept / "twin_run" / "model"
    chunks = bench_chunks(docs)
    cfg = EStepConfig(k=k, max_thought_tokens=max_thought_tokens, seed=0, batch_chunks=64)
    warm = EStepConfig(k=k, max_thought_tokens=4, seed=1, batch_chunks=8)
    threads = available_cores()

    def best_of(fn):
        best = None
        for _ in range(max(1, rounds)):
            records, dt = _timed(fn)
            if best is None or dt < best[0]:
                best = (dt, *estep_tokens(records))
        return best

    model = load_model(model_dir).eval()
    torch.set_num_threads(threads)
    run_estep(model, tok, chunks[:8], warm, model_key="warm-up", progress=False)
    ours = best_of(lambda: run_estep(model, tok, chunks, cfg, model_key="bench-ours", progress=False))
    t0 = time.perf_counter()
    backend = VLLMBackend.for_cpu(model_dir, max_model_len=256)   # the model's positions
    start = time.perf_counter() - t0
    run_estep(None, tok, chunks[:8], warm, backend=backend, model_key="warm-up", progress=False)
    theirs = best_of(lambda: run_estep(None, tok, chunks, cfg, backend=backend, model_key="bench-vllm",
                                       progress=False))
    out = {"twin_model": "Llama d=64 L=4, 2 heads of 32", "estep_chunks": len(chunks), "estep_k": k,
           "ours_threads": threads, "vllm_engine_start_seconds": round(start, 1)}
    for name, (dt, sampled, scored) in (("ours", ours), ("vllm", theirs)):
        out.update({f"{name}_estep_seconds": round(dt, 2), f"{name}_estep_sampled_tokens": sampled,
                    f"{name}_estep_scored_tokens": scored,
                    f"{name}_estep_tokens_per_s": round((sampled + scored) / dt)})
    out["ours_over_vllm_tokens_per_s"] = round(out["ours_estep_tokens_per_s"] / out["vllm_estep_tokens_per_s"], 2)
    return out


if __name__ == "__main__":
    main()
