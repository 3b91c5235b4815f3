"""The E-step of one BoLT iteration, top to bottom (`run`).

The previous iteration's seed-0 model (the warmstart at iteration 1) samples
K thoughts per chunk of the fixed bootstrap corpus from its posterior, scores
them and resamples one (`lt_utils.estep`); then, with the world's verifier,
every candidate is checked, the loop diagnostics (ρ, λ, G, retention and
repair) and the generator's fidelity f are computed, and the corpora the next
M-step trains on are written: the loop's K, plus each K of the ablation at
iteration 1.  `Study` in `bootstrap_em` holds the stage's paths and the loop's
order; what happens between two M-steps is here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lt_utils import em_plan

from lt_utils.runtime import progress_events
from lt_utils.data import Chunk, ThoughtDoc
from lt_utils.estep import (EStepConfig, chunk_pieces, joint_ids, model_fingerprint, posterior_prompt_ids, run_estep,
                            sample_prior, save_records, select_first_k, select_index, summarize, thought_banned_ids)
from lt_utils.fidelity import dev_chunks, fidelity_report, thought_logprobs
from lt_utils.loop_diagnostics import Check, estep_diagnostics, ratio, retention_repair
from lt_utils.model import load_model
from lt_utils.runtime.parallel import torch_threads
from lt_utils.runtime.runs import read_json, read_jsonl, write_json, write_jsonl
from lt_utils.sample import score
from lt_utils.teacher import chunk_units, split_unit_thoughts
from lt_utils.tokens import SpecialIds, load_tokenizer
from lt_utils.stages.data_prep import dev_problems_path

# `study` below is a `bootstrap_em.Study` and `cfg` its `BootstrapConfig` (not imported: the stage imports this)
Study = BootstrapConfig = Any


def write_corpus(path: Path, docs, heads, chunks, spans, thoughts) -> Path:
    """Documents with one thought per chunk (None: raw), written once."""
    if not path.exists():
        write_jsonl(path, [ThoughtDoc(d.doc_id, h, [c.suffix for c in chunks[a:b]],
                                      None if thoughts is None else list(thoughts[a:b])).to_dict()
                           for d, h, (a, b) in zip(docs, heads, spans)])
    return path


def with_generator(gen: Path, tok_dir: Path, fn, *, backend: str = "transformers", engine_args: dict | None = None,
                   threads: int = 1):
    """``fn(model, tokenizer, engine)`` with generator `gen` loaded once: a transformers model in this process
    (GPU if any; engine None) or a vLLM engine (model None).

    The engine is released before returning, so a training run launched next
    finds the GPU memory free.
    """
    tok = load_tokenizer(tok_dir)
    if backend == "vllm":
        import gc

        from lt_utils.paper.vllm_backend import VLLMBackend

        engine = VLLMBackend(gen, **(engine_args or {}))
        try:
            return fn(None, tok, engine)
        finally:
            del engine
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    import torch

    torch.set_num_threads(max(1, threads))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return fn(load_model(gen, device=device), tok, None)


def sample_and_score(gen: Path, tok_dir: Path, chunks: list[Chunk], ecfg: EStepConfig, cache: Path, *,
                     backend: str = "transformers", engine_args: dict | None = None, threads: int = 1,
                     progress: bool = True) -> list[dict]:
    """`run_estep` with generator `gen` (see :func:`with_generator`)."""
    key = model_fingerprint(gen)
    return with_generator(gen, tok_dir, lambda m, tok, be: run_estep(m, tok, chunks, ecfg, backend=be, cache_path=cache,
                                                                     model_key=key, progress=progress),
                          backend=backend, engine_args=engine_args, threads=threads)


def chunk_check(chunk: Chunk, thought: str) -> Check:
    """The verifier's verdict on a chunk thought: every problem correct, every final answer right, any false step."""
    from lt_utils import world

    units = chunk_units(chunk)
    pieces = split_unit_thoughts(thought, len(units))
    verdicts = [world.verify(u.question, p) for u, p in zip(units, pieces)]
    complete = len(pieces) == len(units)
    return Check(correct=complete and all(v.correct for v in verdicts),
                 right_answer=complete and all(v.final_answer == str(u.answer) for u, v in zip(units, verdicts)),
                 wrong_step=any(v.n_wrong_steps > 0 for v in verdicts))


def chunk_is_correct(chunk: Chunk, thought: str) -> bool:
    """Every problem the chunk answers has a thought the world's verifier accepts."""
    return chunk_check(chunk, thought).correct


def spread_positions(n: int, m: int) -> list[int]:
    """`m` positions spread evenly over range(n) (all of them when m ≥ n)."""
    if m <= 0 or n <= 0:
        return []
    return sorted({int(x) for x in np.linspace(0, n - 1, min(m, n)).round()})


def progress_line(summary: Mapping) -> dict:
    """The E-step's line in the terminal: its size, ESS and the correctness of what the next M-step trains on.

    That is the loop's K (and rule), not iteration 1's largest K, which the K ablation draws and
    `frac_selected_correct` describes.
    """
    line = {k: summary[k] for k in ("n_chunks", "mean_ess") if k in summary}
    trained = summary.get("loop_selected_correct", summary.get("frac_selected_correct"))
    if trained is not None:   # absent without a verifier (paper scale)
        line["selected_correct"] = trained
    return line


def run(study: Study, iteration: int) -> dict:
    """Thoughts for the bootstrap corpus from the previous iteration's seed-0 model; returns their summary.

    Skipped (its summary read back) once the iteration's summary exists: every file it writes comes before it.
    """
    out = study.run.file(f"iter{iteration}/estep.jsonl")
    summary_path = study.run.file(f"iter{iteration}/estep_summary.json")
    if summary_path.exists():
        return read_json(summary_path)
    t0 = time.time()
    gen = study.model_dir("warmstart" if iteration == 1 else f"iter{iteration - 1}")
    ecfg = iteration_config(study.cfg, iteration)
    k = ecfg.k
    # prior thoughts for a spread of chunks: only a verifier can tell how good they are
    prior_pos = [] if study.text else spread_positions(len(study.boot_chunks), study.cfg.prior_sample_chunks)
    prior_chunks = [study.boot_chunks[i] for i in prior_pos]
    if study.cfg.estep_shards:
        records = sharded(study, iteration, gen, ecfg)
        prior = with_stage_generator(study.cfg, study.tok_dir, gen, lambda m, tok, be: sample_prior(m, tok, prior_chunks, ecfg, backend=be)
                                    ) if prior_chunks else []
    else:
        key, cache = model_fingerprint(gen), study.run.file(f"iter{iteration}/candidates.sqlite")

        def work(m, tok, be):
            recs = run_estep(m, tok, study.boot_chunks, ecfg, backend=be, cache_path=cache, model_key=key)
            return recs, sample_prior(m, tok, prior_chunks, ecfg, backend=be)

        records, prior = with_stage_generator(study.cfg, study.tok_dir, gen, work)
    save_records(out, records)
    memory = remember(study, iteration, records, gen, ecfg) if study.cfg.estep_memory and iteration > 1 else None
    summary = summarize_with_verifier(study, iteration, records, prior_pos, prior, seed=ecfg.seed, memory=memory)
    summary["k"] = k
    summary["threads"] = 0 if study.cfg.estep_shards else torch_threads()  # 0: shard jobs
    if not study.text:   # f of this generator: needs the world's oracle thoughts
        summary["fidelity"] = fidelity(study, gen, ecfg)
    ks = em_plan.selected_ks(study.cfg, iteration)
    summary["selected_correct_by_k"] = {}
    for kk in ks:
        if memory is not None and kk == study.cfg.k:
            thoughts = [m["chosen"]["text"] for m in memory]
        else:
            thoughts = [r["candidates"][select_first_k(r, kk, ecfg.seed, ecfg.selection)]["text"] for r in records]
        name = f"iter{iteration}/corpus.jsonl" if kk == study.cfg.k else f"iter{iteration}/corpus_k{kk}.jsonl"
        write_corpus(study.run.file(name), study.boot_docs, study.boot_heads, study.boot_chunks,
                      study.boot_spans, thoughts)
        if not study.text:
            summary["selected_correct_by_k"][str(kk)] = float(np.mean(
                [chunk_is_correct(c, t) for c, t in zip(study.boot_chunks, thoughts)]))
    write_json(summary_path, summary)
    study.run.add_artifact(f"iter{iteration}/estep.jsonl", "every chunk's K candidates with log q, log p, log w")
    study.run.add_artifact(f"iter{iteration}/corpus.jsonl", "bootstrap corpus with the selected thoughts")
    if memory is not None:
        study.run.add_artifact(f"iter{iteration}/memory.jsonl", "the kept thought per chunk, its weight, the choice")
    study.run.add_artifact(f"iter{iteration}/estep_summary.json", "weights, ESS, verifier scores, loop diagnostics")
    study.run.log(kind="estep", iteration=iteration, **{k2: v for k2, v in summary.items()
                                                       if isinstance(v, (int, float))})
    progress_events.emit("estep_done", iteration=iteration, seconds=time.time() - t0, summary=progress_line(summary))
    return summary


def estep_seed(cfg: BootstrapConfig, iteration: int) -> int:
    """The seed of an iteration's samples and selection: 1000 × iteration, moved by `estep_seed` for another
    run of the same loop (the runs of one loop differ by more than its gain: docs/results.md)."""
    return 1000 * iteration + cfg.estep_seed


def fidelity(study: Study, gen: Path, ecfg: EStepConfig, decode_chunks: int = 256) -> dict:
    """Fidelity of generator `gen` (`lt_utils.fidelity`) on the bootstrap corpus and the dev problems,
    in the E-step's own layout and proposal (prefix, temperature, banned tokens); never on test problems."""
    path = dev_problems_path(study.data)
    dev = dev_chunks(read_jsonl(path)) if path else []
    return with_generator(gen, study.tok_dir, lambda m, tok, _: fidelity_report(
        m, tok, study.boot_chunks, dev, chunk_is_correct, max_prefix_tokens=ecfg.max_prefix_tokens,
        ban_special_in_thought=ecfg.ban_special_in_thought, temperature=ecfg.temperature,
        max_thought_tokens=ecfg.max_thought_tokens, seed=ecfg.seed, decode_chunks=decode_chunks,
        thought_style=study.cfg.thought_style),
        threads=study.cfg.n_workers * study.cfg.threads_per_worker)


def iteration_config(cfg: BootstrapConfig, iteration: int) -> EStepConfig:
    """The proposal of E-step `iteration` as the stage runs it: K drawn (the ablation's largest K at iteration 1),
    the iteration's seed."""
    return estep_config(cfg, k=em_plan.k_drawn(cfg, iteration), seed=estep_seed(cfg, iteration))


def estep_config(cfg: BootstrapConfig, **kw) -> EStepConfig:
    """The stage's proposal settings (cap, temperature, bans, prefix) with `kw` (k, seed, ...) on top."""
    base = dict(max_thought_tokens=cfg.max_thought_tokens, batch_chunks=cfg.estep_batch_chunks,
                max_prefix_tokens=cfg.max_prefix_tokens, temperature=cfg.estep_temperature,
                ban_special_in_thought=cfg.ban_special_in_thought, selection=cfg.estep_selection)
    return EStepConfig(**{**base, **kw})


def with_stage_generator(cfg: BootstrapConfig, tok_dir: Path, gen: Path, fn):
    """`with_generator` on the stage's backend and every core its training pools use."""
    return with_generator(gen, tok_dir, fn, backend=cfg.estep_backend,
                          engine_args=cfg.vllm_engine_args,
                          threads=cfg.n_workers * cfg.threads_per_worker)


def stage_sample_and_score(cfg: BootstrapConfig, tok_dir: Path, gen: Path, chunks: list[Chunk], ecfg: EStepConfig, cache: Path,
                     progress: bool = True) -> list[dict]:
    return sample_and_score(gen, tok_dir, chunks, ecfg, cache, backend=cfg.estep_backend,
                            engine_args=cfg.vllm_engine_args,
                            threads=cfg.n_workers * cfg.threads_per_worker, progress=progress)


def summarize_with_verifier(study: Study, iteration: int, records: list[dict], prior_pos: list[int], prior: list[dict],
                    seed: int = 0, memory: list[dict] | None = None) -> dict:
    """`estep.summarize` plus, with a verifier, the loop diagnostics (prior samples saved beside the records).

    The loop diagnostics follow the loop itself: when the E-step drew more
    candidates than `k` (for the K ablation), they use the first `k` and the
    thought selected among them, which is what the next M-step trains on.  With the memory rule (`remember`), the
    selected correctness, λ and G are those of the thoughts it chose (BoLT's own among the K samples stays as
    `loop_selected_correct_bolt`).
    """
    if study.text:
        return summarize(records)
    chunks = {r["position"]: c for r, c in zip(records, study.boot_chunks)}
    checks = [[chunk_check(chunks[r["position"]], c["text"]) for c in r["candidates"]] for r in records]
    verdict = {(r["position"], c["text"]): v.correct for r, cs in zip(records, checks)
               for c, v in zip(r["candidates"], cs)}
    summary = summarize(records, verify_fn=lambda r, t: verdict[(r["position"], t)])
    row = {r["position"]: i for i, r in enumerate(records)}
    prior_checks = {row[pos]: chunk_check(study.boot_chunks[pos], p["text"])
                    for pos, p in zip(prior_pos, prior) if pos in row}
    write_jsonl(study.run.file(f"iter{iteration}/prior_samples.jsonl"),
                [{"position": pos, **p, "correct": chunk_check(study.boot_chunks[pos], p["text"]).correct}
                 for pos, p in zip(prior_pos, prior)])
    k = study.cfg.k
    loop_records = [r if len(r["candidates"]) <= k else
                    {**r, "candidates": r["candidates"][:k],
                     "selected": select_first_k(r, k, seed, study.cfg.estep_selection)}
                    for r in records]
    diag = estep_diagnostics(loop_records, [cs[:k] for cs in checks],
                             trained_on_correct=trained_on_correct(study, iteration), prior_checks=prior_checks)
    diag.update(retention_and_repair(study, iteration, records, checks))
    if memory is not None:
        chosen = float(np.mean([chunk_is_correct(chunks[m["position"]], m["chosen"]["text"]) for m in memory]))
        diag.update(selected_correct_bolt=diag["selected_correct"], selected_correct=chosen,
                    lift=ratio(chosen, diag["posterior_sample_correct"]),
                    gain=ratio(chosen, diag["trained_on_correct"]),
                    memory_chosen=float(np.mean([m["chose_kept"] for m in memory])),
                    memory_kept_correct=float(np.mean([chunk_is_correct(chunks[m["position"]], m["kept"]["text"])
                                                       for m in memory])))
    summary.update({f"loop_{k}": v for k, v in diag.items()})
    return summary


def retention_and_repair(study: Study, iteration: int, records: list[dict], checks: list[list[Check]]) -> dict:
    """ρ split over chunks by whether the thought the generator trained on verified (iteration ≥ 2)."""
    if iteration < 2 or not study.run.file(f"iter{iteration - 1}/estep.jsonl").exists():
        return {}
    k = study.cfg.k
    trained = {pos: chunk_is_correct(study.boot_chunks[pos], t["text"])
               for pos, t in trained_on(study, iteration - 1).items()}
    pairs = [(trained[r["position"]], [c.correct for c in cs[:k]]) for r, cs in zip(records, checks)
             if r["position"] in trained]
    return retention_repair([t for t, _ in pairs], [s for _, s in pairs])


def rescore(model, tokenizer, chunks: Sequence[Chunk], thoughts: Sequence[Sequence[int]],
            cfg: EStepConfig) -> list[tuple[float, float]]:
    """(log q(z | x), log p(z, x)) of given thought tokens under `model`, in the E-step's proposal density
    (temperature, banned tokens) and joint layout: the weights a candidate would get had it been sampled."""
    ids = SpecialIds.of(tokenizer)
    banned = thought_banned_ids(tokenizer, ids) if cfg.ban_special_in_thought else []
    prompts, targets, contexts, continuations = [], [], [], []
    for c, z in zip(chunks, thoughts):
        prefix, suffix = chunk_pieces(tokenizer, c, cfg.max_prefix_tokens)
        prompts.append(posterior_prompt_ids(ids, prefix, suffix))
        targets.append([*z, ids.eol])
        a, b = joint_ids(ids, prefix, z, suffix)
        contexts.append(a)
        continuations.append(b)
    lq = thought_logprobs(model, prompts, targets, banned_ids=banned, temperature=cfg.temperature, pad_id=ids.pad)
    lp = score(model, contexts, continuations, pad_id=ids.pad, batch_size=cfg.score_batch_size)
    return [(float(sum(a)), float(sum(b))) for a, b in zip(lq, lp)]


def trained_on(study: Study, iteration: int) -> dict[int, dict]:
    """Per chunk position, the thought iteration `iteration`'s M-step trained on ({tokens, text, terminated}): the
    memory rule's choice where it ran, else the loop's K selection."""
    memory = study.run.file(f"iter{iteration}/memory.jsonl")
    if memory.exists():
        return {m["position"]: m["chosen"] for m in read_jsonl(memory)}
    out = {}
    for r in read_jsonl(study.run.file(f"iter{iteration}/estep.jsonl")):
        c = r["candidates"][select_first_k(r, study.cfg.k, estep_seed(study.cfg, iteration), study.cfg.estep_selection)]
        out[r["position"]] = {"tokens": c["tokens"], "text": c["text"], "terminated": c["terminated"]}
    return out


def remember(study: Study, iteration: int, records: list[dict], gen: Path, ecfg: EStepConfig) -> list[dict]:
    """Beyond the paper (`estep_memory`): the thought the previous M-step trained on joins each chunk's K samples,
    weighed by the current generator as a sample would be (log q teacher-forced in the proposal, log p in the joint
    layout), and the E-step's rule chooses among the K + 1.  The kept thought was not drawn from q, so its w is a
    heuristic weight, not an importance weight.  Written to iter<i>/memory.jsonl, read back on a rerun."""
    path = study.run.file(f"iter{iteration}/memory.jsonl")
    if path.exists():
        return read_jsonl(path)
    kept = trained_on(study, iteration - 1)
    prev = [kept[r["position"]] for r in records]
    chunks = [study.boot_chunks[r["position"]] for r in records]
    scores = with_stage_generator(study.cfg, study.tok_dir, gen,
                                  lambda m, tok, be: rescore(m, tok, chunks, [p["tokens"] for p in prev], ecfg))
    k, out = study.cfg.k, []
    for r, p, (log_q, log_p) in zip(records, prev, scores):
        cands = r["candidates"][:k]
        j = select_index([c["log_w"] for c in cands] + [log_p - log_q],
                         [c["terminated"] for c in cands] + [p["terminated"]], ecfg.seed, r["doc_id"], r["index"],
                         ecfg.selection)
        pick = p if j == k else cands[j]
        out.append({"position": r["position"], "chose_kept": j == k,
                    "kept": {**p, "log_q": log_q, "log_p": log_p, "log_w": log_p - log_q},
                    "chosen": {"tokens": pick["tokens"], "text": pick["text"], "terminated": pick["terminated"]}})
    write_jsonl(path, out)
    return out


def trained_on_correct(study: Study, iteration: int) -> float | None:
    """Correctness of the thoughts the iteration's generator was trained on (warmstart: the teacher's)."""
    if iteration > 1:  # the thoughts selected with the loop's K (iteration 1 may have drawn more for the ablation)
        prev = read_json(study.run.file(f"iter{iteration - 1}/estep_summary.json"))
        return prev.get("selected_correct_by_k", {}).get(str(study.cfg.k), prev.get("frac_selected_correct"))
    path = study.run.file("corpora/warmstart_thoughts.jsonl")
    if not path.exists():
        return None
    ok = []
    for rec in read_jsonl(path):
        d = ThoughtDoc.from_dict(rec)
        for i, (suffix, thought) in enumerate(zip(d.suffixes, d.thoughts or [])):
            prefix = d.head + "".join(d.suffixes[:i])
            ok.append(chunk_is_correct(Chunk(d.doc_id, i, prefix, suffix), thought or ""))
    return float(np.mean(ok)) if ok else None


def sharded(study: Study, iteration: int, gen: Path, ecfg: EStepConfig) -> list[dict]:
    """The E-step as `estep_shards` independent jobs: prepare them, or merge them once all have run."""
    from lt_utils.paper import estep_jobs

    out = study.run.file(f"iter{iteration}/shards")
    if not (out / "estep.json").exists():
        estep_jobs.prepare(out, study.boot_chunks, model=str(gen), tokenizer=str(study.tok_dir), cfg=ecfg,
                           num_shards=study.cfg.estep_shards)
    missing = estep_jobs.missing_shards(out)
    if missing:
        raise RuntimeError(
            f"E-step {iteration} is prepared as {study.cfg.estep_shards} shard jobs in {out}; {len(missing)} have "
            f"not run. Submit them (bash params/paper/slurm/estep_array.sh {out}, or "
            f"python -m lt_utils.paper.estep_jobs shard --out {out} --shard-index I --backend "
            f"{study.cfg.estep_backend} for each I), then rerun this notebook")
    return read_jsonl(estep_jobs.merge(out))
