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

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lt_utils import em_plan
import yaml

from lt_utils.runtime import config as config_lib
from lt_utils.runtime.config import pick, require, require_min, require_study_name
from lt_utils.data import Chunk, ThoughtDoc, chunk_document, token_ratio, tokenize_docs
from lt_utils.estep import SELECTIONS, EStepConfig, direct_log_px, model_fingerprint, run_estep
from lt_utils.runtime.parallel import torch_threads
from lt_utils.runtime.paths import resolve
from lt_utils.runtime.runs import RunDir, read_json, read_jsonl, require_done, write_json, write_jsonl
from lt_utils.teacher import OracleTeacher, ThoughtCache, write_thoughts
from lt_utils.tokens import SpecialIds, load_tokenizer
from lt_utils.world.units import THOUGHT_STYLES
from lt_utils.train import TrainingParams, TrainJob, TrainSpec, eval_options, run_jobs
from lt_utils.stages import em_estep
from lt_utils.stages.base_model import stage_model_spec
from lt_utils.stages.data_prep import (dev_problems_path, eval_exemplars, eval_tasks, is_text, iter_documents, load_documents,
                        raw_record)
from lt_utils.stages.em_estep import write_corpus


@dataclass(frozen=True)
class BootstrapConfig(TrainingParams):
    study: str = "smoke"                    # runs/<study>/... groups every stage of one study
    run_root: str = "runs"                  # where run directories live
    data_stage: str = "01_data_prep"        # input: runs/<study>/<data_stage>
    seeds: list[int] = field(default_factory=lambda: [0])  # M-step seeds; seed `seeds[0]` generates the next thoughts
    iterations: int = 2                     # EM iterations after the warmstart
    middle_iteration_seeds: list[int] = field(default_factory=list)   # M-step seeds of the iterations between the
                                            # first and the last ([]: all of `seeds`); C3 and C4 read only those two
    k: int = 4                              # Monte Carlo samples per chunk in each E-step
    k_ablation: list[int] = field(default_factory=list)   # extra K values trained at iteration 1 (first K of max K)
    k_ablation_train: bool = True           # False: the ablation's K only select thoughts (C6), no M-step (C5)
    max_thought_tokens: int = EStepConfig.max_thought_tokens   # cap on a sampled thought
    estep_batch_chunks: int = EStepConfig.batch_chunks         # chunks per sampling call
    elbo_k: int = 4                         # samples for the validation ELBO
    baselines: list[str] = field(default_factory=lambda: ["raw_token_match", "raw_flop_match"])
    chunk_mean_units: float = 1.0           # mean problems per chunk (Poisson(mean−1)+1)
    chunk_max_units: int = 20               # cap on problems per chunk
    prefix_chunks: int = 3                  # raw chunks the posterior sees as context (paper: 3)
    warmstart_split: str = "warmstart"      # documents the warmstart's teacher thoughts are written for
    warmstart_max_docs: int = 0             # use the split's first n documents (0 = all)
    warmstart_thoughts_stage: str = ""      # reuse this stage's teacher thoughts for the warmstart ("" = oracle)
    thought_style: str = "compact"          # the oracle's thoughts (warmstart, fidelity's z*): world.THOUGHT_STYLES
    warmstart_steps: int = 40               # optimizer steps of the warmstart
    steps: int = 40                         # optimizer steps of every M-step and of the FLOP-match baseline
    max_prefix_tokens: int = EStepConfig.max_prefix_tokens   # keep the last n prefix tokens (paper: 1024; 0 = all)
    estep_temperature: float = EStepConfig.temperature    # proposal temperature (paper: 1; < 1: tempered ablation)
    ban_special_in_thought: bool = EStepConfig.ban_special_in_thought   # only the closing EoL inside a thought
    estep_selection: str = EStepConfig.selection   # resample (BoLT) | argmax (ablation beyond the paper)
    estep_seed: int = 0       # added to every E-step's seed (1000 × iteration): n > 0 draws another run of the same loop
    estep_memory: bool = False              # from E-step 2, the thought trained on joins the K samples (beyond the paper)
    no_thought_p: float = 0.0               # warmstart and M-steps: each chunk trained without its thought with this
                                            # probability, so raw prefixes occur in training (beyond the paper)
    prior_sample_chunks: int = 64           # chunks that also get a thought sampled from the prior (diagnostic)
    estep_backend: str = "transformers"     # E-step sampler: transformers (in process) or vllm
    vllm_engine_args: dict[str, Any] = field(default_factory=dict)   # vllm.LLM keywords (dtype, max_model_len, ...)
    estep_shards: int = 0                   # > 0: run each E-step as this many independent jobs (Slurm array)
    overwrite: bool = False                 # redo a finished stage

    def __post_init__(self):
        require(self.iterations >= 1, "iterations must be ≥ 1")
        require(self.k >= 1 and all(x >= 1 for x in self.k_ablation), "k and k_ablation values must be ≥ 1")
        require(len(self.seeds) > 0, "seeds must list at least one seed")
        require(not self.middle_iteration_seeds or (self.middle_iteration_seeds[0] == self.seeds[0]
                                                     and set(self.middle_iteration_seeds) <= set(self.seeds)),
                f"middle_iteration_seeds must start with seeds[0] ({self.seeds[0]}, whose model generates the next "
                f"thoughts) and be drawn from seeds, got {self.middle_iteration_seeds}")
        require(self.warmstart_split in ("warmstart", "fresh", "comparison"),
                f"warmstart_split must be warmstart, fresh or comparison (never the bootstrap corpus), "
                f"got '{self.warmstart_split}'")
        require(self.warmstart_max_docs >= 0, "warmstart_max_docs must be ≥ 0")
        require(self.estep_backend in ("transformers", "vllm"),
                f"estep_backend must be transformers or vllm, got '{self.estep_backend}'")
        require(self.estep_shards >= 0 and self.max_prefix_tokens >= 0,
                "estep_shards and max_prefix_tokens must be ≥ 0")
        require(0 <= self.estep_seed < 1000, f"estep_seed must be in 0..999 (1000 would repeat the next iteration's seed), "
                                              f"got {self.estep_seed}")
        require(self.estep_temperature > 0, f"estep_temperature must be > 0, got {self.estep_temperature}")
        require(self.estep_selection in SELECTIONS,
                f"estep_selection: must be one of {', '.join(SELECTIONS)}, got {self.estep_selection!r}")
        require(not self.estep_memory or (self.estep_backend == "transformers" and not self.estep_shards),
                "estep_memory: re-weighs the kept thought with the generator in process; it needs "
                "estep_backend: transformers and estep_shards: 0")
        require(self.thought_style in THOUGHT_STYLES,
                f"thought_style: must be one of {', '.join(THOUGHT_STYLES)}, got {self.thought_style!r}")
        require(self.thought_style == "compact" or not self.warmstart_thoughts_stage,
                "thought_style: the oracle's style; with warmstart_thoughts_stage the warmstart reads that stage's "
                "thoughts instead, so leave it compact")
        require(self.prior_sample_chunks >= 0, "prior_sample_chunks must be ≥ 0")
        require(0 <= self.no_thought_p < 1, f"no_thought_p must be in [0, 1), got {self.no_thought_p}")
        require(not (self.no_thought_p and self.attend_across_docs),
                "no_thought_p: the per-chunk coin is laid out by the per-document packing only (attend_across_docs: false)")
        require_min(self, 1, "max_thought_tokens", "estep_batch_chunks", "elbo_k", "chunk_mean_units",
                    "chunk_max_units", "warmstart_steps", "steps")
        require_min(self, 0, "seeds", "prefix_chunks")
        require_study_name(self.study)
        self.check_training_params()
        bad = [b for b in self.baselines if b not in ("raw_token_match", "raw_flop_match")]
        require(not bad, f"baselines: unknown baseline '{bad[0] if bad else ''}' (known: raw_token_match, raw_flop_match)")


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

    @classmethod
    def of_finished(cls, stage_dir: Path, writes_to: Path | None = None) -> "Study":
        """A stage-03 run read back from its directory, its data stage found beside it, so a sweep can measure
        its models and corpora again; the sweep's own runs and files go to `writes_to` (default: the run's own
        directory, for sweeps that write nothing there)."""
        from lt_utils.runtime.runs import MissingInputError

        stage_dir = Path(stage_dir)
        if not (stage_dir / "config.yaml").is_file():
            raise MissingInputError(f"{stage_dir}: no stage-03 run here (make study writes runs/cpu/03_bootstrap_em)")
        cfg = config_lib.load(BootstrapConfig, yaml.safe_load((stage_dir / "config.yaml").read_text()) or {},
                              where=str(stage_dir / "config.yaml"))
        cfg = dataclasses.replace(cfg, run_root=str(stage_dir.parent.parent), study=stage_dir.parent.name)
        if writes_to is not None:
            Path(writes_to).mkdir(parents=True, exist_ok=True)
        out = stage_dir if writes_to is None else Path(writes_to)
        return cls(RunDir(path=out, config=cfg, config_hash="", already_done=writes_to is None), cfg)

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

    def train(self, jobs: list[TrainJob], desc: str, then=None, then_needs=()) -> list[dict]:
        finals = run_jobs(jobs, self.cfg, self.run.file("jobs"), desc=desc, then=then, then_needs=then_needs)
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
            thoughts = write_thoughts(OracleTeacher(self.cfg.thought_style), chunks, cache, progress=False)
            cache.close()
            write_corpus(path, docs, heads, chunks, spans, thoughts)
        return path

    # ------------------------------------------------------------------ the loop
    def warmstart(self) -> list[dict]:
        """Train the warmstart of the first seed (the next E-step needs only it), plus as many more as cores allow.

        The remaining warmstart seeds join the later M-step pools as fillers.
        """
        jobs = [self.job_of(r) for r in em_plan.warmstarts(self.cfg)[:self.cfg.n_workers]]
        self.run.add_artifact("corpora/warmstart_thoughts.jsonl", "warmstart documents with oracle thoughts")
        return self.train(jobs, "warmstart runs")

    def job_of(self, r: em_plan.PlannedRun) -> TrainJob:
        """The training job of one planned run: its corpus on disk and its steps resolved."""
        if r.role == "warmstart":
            corpus = self.warmstart_corpus()   # written on first use
        else:
            corpus = self.raw_corpus("bootstrap") if r.corpus == "raw:bootstrap" else self.run.file(r.corpus)
        ratio = self.write_token_ratios()["bolt_iter1"] if r.steps_of == em_plan.TOKEN_MATCH else None
        info = {"arm": r.arm, **({} if r.iteration is None else {"iteration": r.iteration}),
                **({} if r.k is None else {"k": r.k})}
        return self.job(r.name, corpus, r.layout, r.steps(self.cfg, ratio), r.seed, **info)

    def e_step(self, iteration: int) -> dict:
        """The E-step of `iteration` (`em_estep.run`); returns its summary."""
        return em_estep.run(self, iteration)

    def m_step(self, iteration: int) -> list[dict]:
        """Train every seed from the base init on the bootstrap corpus + this iteration's thoughts.

        The seed that generates the next E-step's thoughts goes first.  Runs no
        later E-step waits for (the other warmstart seeds, the raw baselines and
        the K ablation) are spread over the iterations' pools, so the cores stay
        busy instead of idling at each E-step barrier.  On CPU, what reads only
        that seed's model (the next E-step; after the last M-step, the validation
        ELBOs) starts once it is done and a core is idle, beside the pool's last
        run; it runs on the threads it would have alone, so no number changes.
        """
        self.write_token_ratios()
        m_steps = em_plan.m_steps(self.cfg, iteration)
        alongside = em_plan.side_runs_of_iteration(self.cfg, iteration, self.cfg.n_workers)
        desc = f"M-step {iteration} ({len(m_steps)} seeds)" + "".join(
            f" + {r.name}/seed{r.seed}" for r in alongside)
        jobs = [self.job_of(r) for r in m_steps + alongside]
        if not self.next_beside_training():
            return self.train(jobs, desc)
        nxt = (lambda: self.e_step(iteration + 1)) if iteration < self.cfg.iterations else self.validation_elbos
        return self.train(jobs, desc, then=nxt, then_needs=[0])   # jobs[0]: the generator, seeds[0]

    def next_beside_training(self) -> bool:
        """Whether an E-step may share the machine with training runs: on CPU with transformers (a GPU's memory
        belongs to its training run; a sharded E-step runs elsewhere)."""
        import torch

        return (self.cfg.estep_backend == "transformers" and not self.cfg.estep_shards and not self.cfg.launcher
                and not torch.cuda.is_available())

    def latent_ratio(self, corpus: str) -> float:
        tok = load_tokenizer(self.tok_dir)
        if self.text:   # a paper-scale corpus: counted from the token store training reads anyway
            from lt_utils.token_store import layout_ratio, open_store

            return layout_ratio(open_store(self.run.file(corpus), tok), "random")
        docs = tokenize_docs(tok, [ThoughtDoc.from_dict(r) for r in read_jsonl(self.run.file(corpus))])
        return token_ratio(docs, "random", SpecialIds.of(tok), no_thought_p=self.cfg.no_thought_p)

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

    def generators(self) -> list[str]:
        """The models that generate thoughts: the warmstart and each iteration's seed 0."""
        return ["warmstart"] + [f"iter{i}" for i in range(1, self.cfg.iterations + 1)]

    def validation_elbos(self) -> dict[str, float]:
        """`validation_elbo` of every generator (each read back once stored)."""
        return {name: self.validation_elbo(name) for name in self.generators()}

    def validation_elbo(self, name: str) -> float:
        """Mean ELBO (elbo_k samples) per raw token of the validation docs under one model (seed 0)."""
        path = self.run.file(f"elbo/{name}.json")
        if path.exists():
            return read_json(path)["elbo_per_token"]
        valid = load_documents(self.data, "valid")
        _, chunks, _ = _chunks(self.cfg, valid, self.cfg.prefix_chunks)
        gen = self.model_dir(name)
        ecfg = em_estep.estep_config(self.cfg, k=self.cfg.elbo_k, seed=7)
        key, cache = model_fingerprint(gen), self.run.file(f"elbo/{name}.sqlite")
        records, direct = em_estep.with_stage_generator(self.cfg, self.tok_dir, gen, lambda m, tok, be: (
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
