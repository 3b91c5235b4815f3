"""Stage 03: bootstrapping latent thoughts (BoLT), the EM loop, with its raw baselines and K ablation.

Following Ruan et al. (2025, §5 of our method notes):

* **warmstart** (iteration 0): latent training on a small teacher-thought
  corpus, disjoint from the bootstrap corpus;
* **iteration k**: E-step with the seed-0 model of iteration k−1 on the fixed
  bootstrap corpus (K posterior samples per chunk, importance resampling, see
  `lt_utils.estep`), then an M-step that **restarts from the base
  initialisation** and trains every seed on the bootstrap corpus + the new
  thoughts for a fixed token budget;
* **baselines**: raw text of the bootstrap corpus with the same raw tokens as
  one M-step (token-match) and with the same training tokens (FLOP-match);
* **K ablation**: iteration 1 with K ∈ `k_ablation`, taken as the first K of
  the largest K's candidates, so the comparison is paired.

Every selected thought is scored by the world's verifier (a text corpus has
none), with the loop diagnostics of `lt_utils.loop_diagnostics` (retention ρ,
lift λ, loop gain G = ρλ, prior vs posterior samples, AUC of log w), and the
validation ELBO of each iteration's generator is tracked beside the direct
log p(x) of the same chunks.

At paper scale the E-step runs on vLLM (`estep_backend: vllm`) or as
`estep_shards` independent jobs (a Slurm array, `lt_utils.paper.estep_jobs`): the
stage prepares the shards, stops with the command to submit them, and on the
next run merges them and carries on.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import progress
from ..config import pick, require, require_min, require_study_name
from .base_model import stage_model_spec
from .data_prep import (dev_problems_path, eval_exemplars, eval_tasks, is_text, iter_documents, load_documents,
                     raw_record)
from ..data import Chunk, ThoughtDoc, chunk_document, token_ratio, tokenize_docs
from ..estep import (EStepConfig, direct_log_px, model_fingerprint, run_estep, sample_prior, save_records,
                    select_first_k, summarize)
from ..fidelity import dev_chunks, fidelity_report
from ..loop_diagnostics import Check, estep_diagnostics, retention_repair
from ..model import load_model
from ..parallel import torch_threads
from ..paths import resolve
from ..runs import RunDir, read_json, read_jsonl, require_done, write_json, write_jsonl
from ..teacher import OracleTeacher, ThoughtCache, chunk_units, split_unit_thoughts, write_thoughts
from ..tokens import SpecialIds, load_tokenizer
from ..train import TrainingParams, TrainJob, TrainSpec, eval_options, run_jobs


@dataclass(frozen=True)
class BootstrapConfig(TrainingParams):
    study: str = "smoke"                    # runs/<study>/... groups every stage of one study
    run_root: str = "runs"                  # where run directories live
    data_stage: str = "01_data_prep"        # input: runs/<study>/<data_stage>
    seeds: list[int] = field(default_factory=lambda: [0])  # M-step seeds; seed `seeds[0]` generates the next thoughts
    iterations: int = 2                     # EM iterations after the warmstart
    k: int = 4                              # Monte Carlo samples per chunk in each E-step
    k_ablation: list[int] = field(default_factory=list)   # extra K values trained at iteration 1 (first K of max K)
    max_thought_tokens: int = 64            # cap on a sampled thought
    estep_batch_chunks: int = 64            # chunks per sampling call
    elbo_k: int = 4                         # samples for the validation ELBO
    baselines: list[str] = field(default_factory=lambda: ["raw_token_match", "raw_flop_match"])
    chunk_mean_units: float = 1.0           # mean problems per chunk (Poisson(mean−1)+1)
    chunk_max_units: int = 20               # cap on problems per chunk
    prefix_chunks: int = 3                  # raw chunks the posterior sees as context (paper: 3)
    warmstart_split: str = "warmstart"      # documents the warmstart's teacher thoughts are written for
    warmstart_max_docs: int = 0             # use the split's first n documents (0 = all)
    warmstart_thoughts_stage: str = ""      # reuse this stage's teacher thoughts for the warmstart ("" = oracle)
    warmstart_steps: int = 40               # optimizer steps of the warmstart
    steps: int = 40                         # optimizer steps of every M-step and of the FLOP-match baseline
    max_prefix_tokens: int = 0              # E-step: keep the last n prefix tokens (paper: 1024; 0 = all)
    estep_temperature: float = 1.0          # E-step proposal temperature (paper: 1; < 1: tempered-proposal ablation)
    ban_special_in_thought: bool = False    # E-step: mask special tokens (all but the closing EoL) inside a thought
    prior_sample_chunks: int = 64           # chunks that also get a thought sampled from the prior (diagnostic)
    estep_backend: str = "transformers"     # E-step sampler: transformers (in process) or vllm
    vllm_engine_args: dict[str, Any] = field(default_factory=dict)   # vllm.LLM keywords (dtype, max_model_len, ...)
    estep_shards: int = 0                   # > 0: run each E-step as this many independent jobs (Slurm array)
    overwrite: bool = False                 # redo a finished stage

    def __post_init__(self):
        require(self.iterations >= 1, "iterations must be ≥ 1")
        require(self.k >= 1 and all(x >= 1 for x in self.k_ablation), "k and k_ablation values must be ≥ 1")
        require(len(self.seeds) > 0, "seeds must list at least one seed")
        require(self.warmstart_split in ("warmstart", "fresh", "comparison"),
                f"warmstart_split must be warmstart, fresh or comparison (never the bootstrap corpus), "
                f"got '{self.warmstart_split}'")
        require(self.warmstart_max_docs >= 0, "warmstart_max_docs must be ≥ 0")
        require(self.estep_backend in ("transformers", "vllm"),
                f"estep_backend must be transformers or vllm, got '{self.estep_backend}'")
        require(self.estep_shards >= 0 and self.max_prefix_tokens >= 0,
                "estep_shards and max_prefix_tokens must be ≥ 0")
        require(self.estep_temperature > 0, f"estep_temperature must be > 0, got {self.estep_temperature}")
        require(self.prior_sample_chunks >= 0, "prior_sample_chunks must be ≥ 0")
        require_min(self, 1, "max_thought_tokens", "estep_batch_chunks", "elbo_k", "chunk_mean_units",
                    "chunk_max_units", "warmstart_steps", "steps")
        require_min(self, 0, "seeds", "prefix_chunks")
        require_study_name(self.study)
        self.check_training_params()
        bad = [b for b in self.baselines if b not in ("raw_token_match", "raw_flop_match")]
        require(not bad, f"baselines: unknown baseline '{bad[0] if bad else ''}' (known: raw_token_match, raw_flop_match)")

    @property
    def k_max(self) -> int:
        return max([self.k, *self.k_ablation])


def data_dir_of(cfg: BootstrapConfig) -> Path:
    return require_done(resolve(cfg.run_root) / cfg.study / cfg.data_stage, "data-prep run")


def _chunks(cfg: BootstrapConfig, docs, prefix_chunks: int) -> tuple[list[str], list[Chunk], list[tuple[int, int]]]:
    heads, chunks, spans = [], [], []
    for d in docs:
        head, cs = chunk_document(d.doc_id, d.segments(), mean_units=cfg.chunk_mean_units,
                                  max_units=cfg.chunk_max_units, prefix_chunks=prefix_chunks)
        heads.append(head)
        spans.append((len(chunks), len(chunks) + len(cs)))
        chunks.extend(cs)
    return heads, chunks, spans


def _write_corpus(path: Path, docs, heads, chunks, spans, thoughts) -> Path:
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

        from ..paper.vllm_backend import VLLMBackend

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
    from .. import world

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


class Study:
    """The files and jobs of one stage-03 run (a thin namespace so the notebook stays short)."""

    def __init__(self, run: RunDir, cfg: BootstrapConfig):
        self.run, self.cfg = run, cfg
        self.data = data_dir_of(cfg)
        self.tok_dir = self.data / "tokenizer"
        self.model = stage_model_spec(cfg, self.data)   # every run's start: the study's base model with init: base
        self.shots = tuple(eval_exemplars(self.data, cfg.eval_shots))
        self.text = is_text(self.data)
        self.tasks = eval_tasks(self.data)

    # ------------------------------------------------------------------ the bootstrap corpus, chunked when first needed
    @functools.cached_property
    def _boot(self) -> tuple[list, list[str], list[Chunk], list[tuple[int, int]]]:
        # chunking a paper-scale corpus takes a while: a rerun whose E-steps are done never does it
        docs = load_documents(self.data, "bootstrap")
        return (docs, *_chunks(self.cfg, docs, self.cfg.prefix_chunks))

    @property
    def boot_docs(self) -> list:
        return self._boot[0]

    @property
    def boot_heads(self) -> list[str]:
        return self._boot[1]

    @property
    def boot_chunks(self) -> list[Chunk]:
        return self._boot[2]

    @property
    def boot_spans(self) -> list[tuple[int, int]]:
        return self._boot[3]

    # ------------------------------------------------------------------ training jobs
    def job(self, name: str, corpus: Path, layout: str, steps: int, seed: int, **info) -> TrainJob:
        train = pick(TrainSpec, self.cfg, steps=steps)
        return TrainJob(out_dir=str(self.run.file(f"train/{name}/seed{seed}")), tokenizer_dir=str(self.tok_dir),
                        corpus_path=str(corpus), layout=layout, model=self.model, train=train, seed=seed,
                        eval_problems_path="" if self.tasks else str(self.data / "eval_problems.jsonl"),
                        dev_problems_path=dev_problems_path(self.data), max_dev_problems=self.cfg.eval_dev_problems,
                        valid_path=str(self.raw_corpus("valid")), latent_eval=layout != "raw",
                        eval_style="direct" if layout == "raw" else "latent", eval_shots=self.shots,
                        max_eval_problems=self.cfg.max_eval_problems, eval_tasks=self.tasks,
                        eval_options=eval_options(self.cfg), threads=self.cfg.threads_per_worker,
                        info={"stage": self.run.path.name, "name": f"{name}/seed{seed}", **info},
                        progress=self.cfg.n_workers <= 1)

    def train(self, jobs: list[TrainJob], desc: str) -> list[dict]:
        finals = run_jobs(jobs, self.cfg, self.run.file("jobs"), desc=desc)
        self.run.add_training_runs(j.out_dir for j in jobs)
        return [{**j.info, "seed": j.seed, **f} for j, f in zip(jobs, finals)]

    def model_dir(self, name: str, seed: int | None = None) -> Path:
        return self.run.file(f"train/{name}/seed{self.cfg.seeds[0] if seed is None else seed}/model")

    # ------------------------------------------------------------------ corpora
    def raw_corpus(self, split: str) -> Path:
        path = self.run.file(f"corpora/{split}_raw.jsonl")
        if not path.exists():
            write_jsonl(path, (raw_record(d) for d in iter_documents(self.data, split)))
        return path

    def warmstart_corpus(self) -> Path:
        """Warmstart documents with one teacher thought per chunk (teacher context: 1 previous chunk).

        The oracle writes them, or, with `warmstart_thoughts_stage`, they are the
        thoughts that stage wrote for the same split (as the paper's warmstart
        reuses its GPT-4o-mini latents).
        """
        path = self.run.file("corpora/warmstart_thoughts.jsonl")
        if self.cfg.warmstart_thoughts_stage:
            if not path.exists():
                stage_dir = resolve(self.cfg.run_root) / self.cfg.study / self.cfg.warmstart_thoughts_stage
                src_stage = require_done(stage_dir, "warmstart thoughts stage")
                src = src_stage / "thoughts" / f"{self.cfg.warmstart_split}.jsonl"
                if not src.exists():
                    raise FileNotFoundError(f"warmstart_thoughts_stage: {src} does not exist (that stage wrote no "
                                            f"thoughts for the {self.cfg.warmstart_split} split)")
                recs = read_jsonl(src)
                write_jsonl(path, recs[:self.cfg.warmstart_max_docs] if self.cfg.warmstart_max_docs else recs)
            return path
        if self.text:
            raise ValueError("warmstart_thoughts_stage: a text corpus has no oracle; name the stage whose teacher "
                             "thoughts the warmstart trains on (e.g. 02_synthetic_thoughts)")
        docs = load_documents(self.data, self.cfg.warmstart_split)
        docs = docs[:self.cfg.warmstart_max_docs] if self.cfg.warmstart_max_docs else docs
        heads, chunks, spans = _chunks(self.cfg, docs, 1)
        if not path.exists():
            cache = ThoughtCache(self.run.file("thought_cache.sqlite"))
            thoughts = write_thoughts(OracleTeacher(), chunks, cache, progress=False)
            cache.close()
            _write_corpus(path, docs, heads, chunks, spans, thoughts)
        return path

    # ------------------------------------------------------------------ the loop
    def warmstart(self) -> list[dict]:
        """Train the warmstart of the first seed (the next E-step needs only it), plus as many more as cores allow.

        The remaining warmstart seeds join the later M-step pools as fillers.
        """
        jobs = self.warmstart_jobs()[:self.cfg.n_workers]
        self.run.add_artifact("corpora/warmstart_thoughts.jsonl", "warmstart documents with oracle thoughts")
        return self.train(jobs, "warmstart runs")

    def warmstart_jobs(self) -> list[TrainJob]:
        corpus = self.warmstart_corpus()
        return [self.job("warmstart", corpus, "random", self.cfg.warmstart_steps, s, arm="warmstart", iteration=0)
                for s in self.cfg.seeds]

    def e_step(self, iteration: int) -> dict:
        """Thoughts for the bootstrap corpus from the previous iteration's seed-0 model; returns their summary."""
        out = self.run.file(f"iter{iteration}/estep.jsonl")
        summary_path = self.run.file(f"iter{iteration}/estep_summary.json")
        if summary_path.exists():
            return read_json(summary_path)
        t0 = time.time()
        gen = self.model_dir("warmstart" if iteration == 1 else f"iter{iteration - 1}")
        k = self.cfg.k_max if iteration == 1 else self.cfg.k
        ecfg = self.estep_config(k=k, seed=1000 * iteration)
        # prior thoughts for a spread of chunks: only a verifier can tell how good they are
        prior_pos = [] if self.text else spread_positions(len(self.boot_chunks), self.cfg.prior_sample_chunks)
        prior_chunks = [self.boot_chunks[i] for i in prior_pos]
        if self.cfg.estep_shards:
            records = self.sharded_e_step(iteration, gen, ecfg)
            prior = self.with_generator(gen, lambda m, tok, be: sample_prior(m, tok, prior_chunks, ecfg, backend=be)
                                        ) if prior_chunks else []
        else:
            key, cache = model_fingerprint(gen), self.run.file(f"iter{iteration}/candidates.sqlite")

            def work(m, tok, be):
                recs = run_estep(m, tok, self.boot_chunks, ecfg, backend=be, cache_path=cache, model_key=key)
                return recs, sample_prior(m, tok, prior_chunks, ecfg, backend=be)

            records, prior = self.with_generator(gen, work)
        save_records(out, records)
        summary = self.summarize_estep(iteration, records, prior_pos, prior, seed=ecfg.seed)
        summary["k"] = k
        summary["threads"] = 0 if self.cfg.estep_shards else torch_threads()  # 0: shard jobs
        if not self.text:   # f of this generator: needs the world's oracle thoughts
            summary["fidelity"] = self.fidelity(gen, ecfg)
        ks = sorted({self.cfg.k, *self.cfg.k_ablation}) if iteration == 1 else [self.cfg.k]
        summary["selected_correct_by_k"] = {}
        for kk in ks:
            thoughts = [r["candidates"][select_first_k(r, kk, ecfg.seed)]["text"] for r in records]
            name = f"iter{iteration}/corpus.jsonl" if kk == self.cfg.k else f"iter{iteration}/corpus_k{kk}.jsonl"
            _write_corpus(self.run.file(name), self.boot_docs, self.boot_heads, self.boot_chunks,
                          self.boot_spans, thoughts)
            if not self.text:
                summary["selected_correct_by_k"][str(kk)] = float(np.mean(
                    [chunk_is_correct(c, t) for c, t in zip(self.boot_chunks, thoughts)]))
        write_json(summary_path, summary)
        self.run.add_artifact(f"iter{iteration}/estep.jsonl", "every chunk's K candidates with log q, log p, log w")
        self.run.add_artifact(f"iter{iteration}/corpus.jsonl", "bootstrap corpus with the selected thoughts")
        self.run.add_artifact(f"iter{iteration}/estep_summary.json", "weights, ESS, verifier scores, loop diagnostics")
        self.run.log(kind="estep", iteration=iteration, **{k2: v for k2, v in summary.items()
                                                           if isinstance(v, (int, float))})
        progress.emit("estep_done", iteration=iteration, seconds=time.time() - t0,
                      summary={k2: summary[k2] for k2 in ("n_chunks", "mean_ess", "frac_selected_correct") if k2 in summary})
        return summary

    def fidelity(self, gen: Path, ecfg: EStepConfig, decode_chunks: int = 256) -> dict:
        """Fidelity of generator `gen` (`lt_utils.fidelity`) on the bootstrap corpus and the dev problems,
        in the E-step's own layout and proposal (prefix, temperature, banned tokens); never on test problems."""
        path = dev_problems_path(self.data)
        dev = dev_chunks(read_jsonl(path)) if path else []
        return with_generator(gen, self.tok_dir, lambda m, tok, _: fidelity_report(
            m, tok, self.boot_chunks, dev, chunk_is_correct, max_prefix_tokens=ecfg.max_prefix_tokens,
            ban_special_in_thought=ecfg.ban_special_in_thought, temperature=ecfg.temperature,
            max_thought_tokens=ecfg.max_thought_tokens, seed=ecfg.seed, decode_chunks=decode_chunks),
            threads=self.cfg.n_workers * self.cfg.threads_per_worker)

    def estep_config(self, **kw) -> EStepConfig:
        """The stage's proposal settings (cap, temperature, bans, prefix) with `kw` (k, seed, ...) on top."""
        base = dict(max_thought_tokens=self.cfg.max_thought_tokens, batch_chunks=self.cfg.estep_batch_chunks,
                    max_prefix_tokens=self.cfg.max_prefix_tokens, temperature=self.cfg.estep_temperature,
                    ban_special_in_thought=self.cfg.ban_special_in_thought)
        return EStepConfig(**{**base, **kw})

    def with_generator(self, gen: Path, fn):
        return with_generator(gen, self.tok_dir, fn, backend=self.cfg.estep_backend,
                              engine_args=self.cfg.vllm_engine_args,
                              threads=self.cfg.n_workers * self.cfg.threads_per_worker)

    def sample_and_score(self, gen: Path, chunks: list[Chunk], ecfg: EStepConfig, cache: Path,
                         progress: bool = True) -> list[dict]:
        return sample_and_score(gen, self.tok_dir, chunks, ecfg, cache, backend=self.cfg.estep_backend,
                                engine_args=self.cfg.vllm_engine_args,
                                threads=self.cfg.n_workers * self.cfg.threads_per_worker, progress=progress)

    def summarize_estep(self, iteration: int, records: list[dict], prior_pos: list[int], prior: list[dict],
                        seed: int = 0) -> dict:
        """`estep.summarize` plus, with a verifier, the loop diagnostics (prior samples saved beside the records).

        The loop diagnostics follow the loop itself: when the E-step drew more
        candidates than `k` (for the K ablation), they use the first `k` and the
        thought selected among them, which is what the next M-step trains on.
        """
        if self.text:
            return summarize(records)
        chunks = {r["position"]: c for r, c in zip(records, self.boot_chunks)}
        checks = [[chunk_check(chunks[r["position"]], c["text"]) for c in r["candidates"]] for r in records]
        verdict = {(r["position"], c["text"]): v.correct for r, cs in zip(records, checks)
                   for c, v in zip(r["candidates"], cs)}
        summary = summarize(records, verify_fn=lambda r, t: verdict[(r["position"], t)])
        row = {r["position"]: i for i, r in enumerate(records)}
        prior_checks = {row[pos]: chunk_check(self.boot_chunks[pos], p["text"])
                        for pos, p in zip(prior_pos, prior) if pos in row}
        write_jsonl(self.run.file(f"iter{iteration}/prior_samples.jsonl"),
                    [{"position": pos, **p, "correct": chunk_check(self.boot_chunks[pos], p["text"]).correct}
                     for pos, p in zip(prior_pos, prior)])
        k = self.cfg.k
        loop_records = [r if len(r["candidates"]) <= k else
                        {**r, "candidates": r["candidates"][:k], "selected": select_first_k(r, k, seed)}
                        for r in records]
        diag = estep_diagnostics(loop_records, [cs[:k] for cs in checks],
                                 trained_on_correct=self.trained_on_correct(iteration), prior_checks=prior_checks)
        diag.update(self.retention_repair(iteration, records, checks))
        summary.update({f"loop_{k}": v for k, v in diag.items()})
        return summary

    def retention_repair(self, iteration: int, records: list[dict], checks: list[list[Check]]) -> dict:
        """ρ split over chunks by whether the thought the generator trained on verified (iteration ≥ 2)."""
        prev_path = self.run.file(f"iter{iteration - 1}/estep.jsonl")
        if iteration < 2 or not prev_path.exists():
            return {}
        k = self.cfg.k
        trained = {p["position"]: chunk_is_correct(self.boot_chunks[p["position"]],
                                                   p["candidates"][select_first_k(p, k, 1000 * (iteration - 1))]["text"])
                   for p in read_jsonl(prev_path)}
        pairs = [(trained[r["position"]], [c.correct for c in cs[:k]]) for r, cs in zip(records, checks)
                 if r["position"] in trained]
        return retention_repair([t for t, _ in pairs], [s for _, s in pairs])

    def trained_on_correct(self, iteration: int) -> float | None:
        """Correctness of the thoughts the iteration's generator was trained on (warmstart: the teacher's)."""
        if iteration > 1:  # the thoughts selected with the loop's K (iteration 1 may have drawn more for the ablation)
            prev = read_json(self.run.file(f"iter{iteration - 1}/estep_summary.json"))
            return prev.get("selected_correct_by_k", {}).get(str(self.cfg.k), prev.get("frac_selected_correct"))
        path = self.run.file("corpora/warmstart_thoughts.jsonl")
        if not path.exists():
            return None
        ok = []
        for rec in read_jsonl(path):
            d = ThoughtDoc.from_dict(rec)
            for i, (suffix, thought) in enumerate(zip(d.suffixes, d.thoughts or [])):
                prefix = d.head + "".join(d.suffixes[:i])
                ok.append(chunk_is_correct(Chunk(d.doc_id, i, prefix, suffix), thought or ""))
        return float(np.mean(ok)) if ok else None

    def sharded_e_step(self, iteration: int, gen: Path, ecfg: EStepConfig) -> list[dict]:
        """The E-step as `estep_shards` independent jobs: prepare them, or merge them once all have run."""
        from ..paper import estep_jobs

        out = self.run.file(f"iter{iteration}/shards")
        if not (out / "estep.json").exists():
            estep_jobs.prepare(out, self.boot_chunks, model=str(gen), tokenizer=str(self.tok_dir), cfg=ecfg,
                               num_shards=self.cfg.estep_shards)
        missing = estep_jobs.missing_shards(out)
        if missing:
            raise RuntimeError(
                f"E-step {iteration} is prepared as {self.cfg.estep_shards} shard jobs in {out}; {len(missing)} have "
                f"not run. Submit them (bash params/paper/slurm/estep_array.sh {out}, or "
                f"python -m lt_utils.paper.estep_jobs shard --out {out} --shard-index I --backend "
                f"{self.cfg.estep_backend} for each I), then rerun this notebook")
        return read_jsonl(estep_jobs.merge(out))

    def m_step(self, iteration: int) -> list[dict]:
        """Train every seed from the base init on the bootstrap corpus + this iteration's thoughts.

        The seed that generates the next E-step's thoughts goes first.  Runs no
        later E-step waits for (the other warmstart seeds, the raw baselines and
        the K ablation) are spread over the iterations' pools, so the cores stay
        busy instead of idling at each E-step barrier.
        """
        jobs = [self.job(f"iter{iteration}", self.run.file(f"iter{iteration}/corpus.jsonl"), "random",
                         self.cfg.steps, s, arm=f"bolt_iter{iteration}", iteration=iteration, k=self.cfg.k)
                for s in self.cfg.seeds]
        self.write_token_ratios()
        jobs += self.fillers(iteration)
        return self.train(jobs, f"iteration {iteration} runs")

    def extra_jobs(self) -> list[TrainJob]:
        """Runs that feed no later E-step: warmstart seeds beyond the first pool, baselines, K ablation."""
        return self.warmstart_jobs()[self.cfg.n_workers:] + self.baseline_jobs() + self.ablation_jobs()

    def fillers(self, iteration: int) -> list[TrainJob]:
        """This iteration's contiguous share of `extra_jobs` (shares differ by at most one run)."""
        extras = self.extra_jobs()
        n = self.cfg.iterations
        bounds = [round(i * len(extras) / n) for i in range(n + 1)]
        return extras[bounds[iteration - 1]:bounds[iteration]]

    def latent_ratio(self, corpus: str) -> float:
        tok = load_tokenizer(self.tok_dir)
        if self.text:   # a paper-scale corpus: counted from the token store training reads anyway
            from ..token_store import layout_ratio, open_store

            return layout_ratio(open_store(self.run.file(corpus), tok), "random")
        docs = tokenize_docs(tok, [ThoughtDoc.from_dict(r) for r in read_jsonl(self.run.file(corpus))])
        return token_ratio(docs, "random", SpecialIds.of(tok))

    def token_match_steps(self) -> int:
        """Steps of raw training that see as many raw tokens as one M-step (latent corpus ratio measured)."""
        return max(1, round(self.cfg.steps / self.write_token_ratios()["bolt_iter1"]))

    def write_token_ratios(self) -> dict[str, float]:
        """Training tokens per raw token of every arm trained so far (for the effective-raw-tokens axis).

        Each corpus is tokenized once: ratios already stored are kept.
        """
        path = self.run.file("token_ratios.json")
        ratios = read_json(path) if path.exists() else {"raw_token_match": 1.0, "raw_flop_match": 1.0}
        corpora = {"warmstart": "corpora/warmstart_thoughts.jsonl"}
        corpora.update({f"bolt_iter{it}": f"iter{it}/corpus.jsonl" for it in range(1, self.cfg.iterations + 1)})
        corpora.update({f"bolt_iter1_k{kk}": f"iter1/corpus_k{kk}.jsonl" for kk in self.cfg.k_ablation})
        for arm, corpus in corpora.items():
            if arm not in ratios and self.run.file(corpus).exists():
                ratios[arm] = self.latent_ratio(corpus)
        write_json(path, ratios)
        return ratios

    def baseline_jobs(self) -> list[TrainJob]:
        raw = self.raw_corpus("bootstrap")
        jobs = []
        if "raw_token_match" in self.cfg.baselines:
            steps = self.token_match_steps()
            jobs += [self.job("raw_token_match", raw, "raw", steps, s, arm="raw_token_match") for s in self.cfg.seeds]
        if "raw_flop_match" in self.cfg.baselines:
            jobs += [self.job("raw_flop_match", raw, "raw", self.cfg.steps, s, arm="raw_flop_match")
                     for s in self.cfg.seeds]
        return jobs

    def ablation_jobs(self) -> list[TrainJob]:
        return [self.job(f"iter1_k{kk}", self.run.file(f"iter1/corpus_k{kk}.jsonl"), "random", self.cfg.steps, s,
                         arm=f"bolt_iter1_k{kk}", iteration=1, k=kk)
                for kk in sorted(set(self.cfg.k_ablation) - {self.cfg.k}) for s in self.cfg.seeds]

    def validation_elbo(self, name: str) -> float:
        """Mean ELBO (elbo_k samples) per raw token of the validation docs under one model (seed 0)."""
        path = self.run.file(f"elbo/{name}.json")
        if path.exists():
            return read_json(path)["elbo_per_token"]
        valid = load_documents(self.data, "valid")
        _, chunks, _ = _chunks(self.cfg, valid, self.cfg.prefix_chunks)
        gen = self.model_dir(name)
        ecfg = self.estep_config(k=self.cfg.elbo_k, seed=7)
        key, cache = model_fingerprint(gen), self.run.file(f"elbo/{name}.sqlite")
        records, direct = self.with_generator(gen, lambda m, tok, be: (
            run_estep(m, tok, chunks, ecfg, backend=be, cache_path=cache, model_key=key, progress=False),
            direct_log_px(m, tok, chunks, ecfg, backend=be)))
        n_tok = sum(r["n_suffix_tokens"] for r in records)
        bounds = [r["elbo"][str(self.cfg.elbo_k)] if str(self.cfg.elbo_k) in r["elbo"]
                  else r["elbo"][max(r["elbo"], key=int)] for r in records]
        # A chunk none of whose samples terminated has bound −inf (no complete thought, so p(z, x) = 0):
        # the strict value is kept, and the finite-chunk average is stored beside it with the failure count,
        # so a single runaway sample cannot hide how the rest of the bound moves.
        value = sum(bounds) / max(n_tok, 1)
        finite = [(b, r["n_suffix_tokens"]) for b, r in zip(bounds, records) if math.isfinite(b)]
        finite_value = sum(b for b, _ in finite) / max(sum(n for _, n in finite), 1) if finite else -math.inf
        # log p(x | prefix) with no thought at all, so a rising ELBO can be told from a better text model
        write_json(path, {"model": str(gen), "elbo_k": self.cfg.elbo_k, "elbo_per_token": value,
                          "elbo_finite_per_token": finite_value, "chunks": len(bounds),
                          "chunks_without_finite_bound": len(bounds) - len(finite),
                          "direct_log_px_per_token": sum(direct) / max(n_tok, 1)})
        self.run.add_artifact(f"elbo/{name}.json", f"validation ELBO of the {name} generator")
        self.run.log(kind="elbo", model=name, elbo_per_token=value, direct_log_px_per_token=sum(direct) / max(n_tok, 1),
                     threads=torch_threads())
        return value
