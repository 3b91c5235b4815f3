"""The training loop: AdamW, warmup + cosine, grad clipping, periodic eval and resumable checkpoints.

Built on `accelerate`, so the same loop runs on a CPU core, one GPU (bf16
autocast) or several (DDP/FSDP via `accelerate launch`).  A job is a plain
description (`TrainJob`) that a worker process can run from files alone, so
independent runs (arms × seeds) execute in parallel and a killed run resumes
from its last checkpoint with the same batches it would have seen.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lt_utils.runtime import faults

from lt_utils.runtime import progress_events
from lt_utils.runtime.config import require, require_min
from lt_utils.runtime.parallel import spare_threads
from lt_utils.data import EpochStream, ThoughtDoc, pack_rows, layout_ids, tokenize_docs
from lt_utils.evaluate import ANSWER_TOKENS
from lt_utils.model import ModelSpec, build_model, load_model
from lt_utils.runtime.runs import append_jsonl, read_json, read_jsonl, seed_everything, write_json, write_jsonl
from lt_utils.tokens import SpecialIds, load_tokenizer


# What a run keeps on disk: "last" = the one checkpoint resume needs (removed once the final model is written);
# "all" = also a copy of every evaluation step's checkpoint in checkpoints/step<N>/.
KEEP_CHECKPOINTS = ("last", "all")


@dataclass(frozen=True)
class TrainingParams:
    """Model and optimisation parameters shared by every stage that trains models.

    Flat, as a notebook's `parameters` cell holds them; `config.pick` turns
    them into a `ModelSpec` and a `TrainSpec`.
    """

    n_layer: int = 2                        # model: transformer blocks
    n_embd: int = 32                        # model: hidden size
    n_head: int = 4                         # model: attention heads
    n_kv_head: int = 4                      # model: key/value heads
    intermediate_size: int = 128            # model: SwiGLU hidden size
    tie_embeddings: bool = True             # model: tie input/output embeddings
    init_std: float = 0.02                  # model: std of the random init
    init_from: str = ""                     # model: HF checkpoint every run starts from (empty: from scratch)
    init: str = "scratch"                   # model: "base" continues the study's base model (stage 01), "scratch" not
    batch_size: int = 8                     # rows per micro-batch and process
    grad_accum: int = 1                     # micro-batches per optimizer step (global batch = batch x accum x GPUs)
    seq_len: int = 256                      # tokens per row
    lr: float = 3e-3                        # peak learning rate
    min_lr_ratio: float = 0.1               # cosine floor (fraction of lr)
    warmup_steps: int = 10                  # linear warmup steps
    weight_decay: float = 0.01              # AdamW weight decay
    grad_clip: float = 1.0                  # gradient-norm clip
    eval_every: int = 20                    # steps between evaluations
    attend_across_docs: bool = False        # paper packing (True) or per-document attention (False)
    cut_at_chunks: bool = True              # per-document packing: long documents cut between chunks (see data.py)
    max_eval_problems: int = 0              # 0 means every held-out (test) problem
    eval_dev_problems: int = 100            # dev problems evaluated during training (0: all); the end uses test
    eval_shots: int = 0                     # solved exemplars in every evaluation prompt (same for all arms)
    eval_max_new_tokens: int = 0            # MATH/GSM8K: generation cap (0: 512)
    eval_max_prompt_tokens: int = 0         # MATH/GSM8K: drop exemplars to fit (0: no limit)
    eval_samples: int = 1                   # MATH/GSM8K: samples per problem
    eval_temperature: float = 0.0           # MATH/GSM8K: 0 = greedy
    workers: int = 0                        # parallel training processes (0: one per available core)
    threads_per_worker: int = 1             # torch threads per process
    launcher: str = ""                      # "" = in-process workers; else a command run per job (see run_jobs)
    keep_checkpoints: str = "last"          # "last": the checkpoint resume needs, removed with the final model; "all"

    def check_training_params(self) -> None:
        require(self.init in ("scratch", "base"), f"init must be scratch or base, got '{self.init}'")
        require(self.init != "base" or not self.init_from,
                "init: base continues the study's base model; init_from must then be empty")
        require(self.workers >= 0, f"workers must be ≥ 0 (0: one per core), got {self.workers}")
        require(self.threads_per_worker >= 1, "threads_per_worker must be ≥ 1")
        require(self.eval_dev_problems >= 0, f"eval_dev_problems must be ≥ 0, got {self.eval_dev_problems}")
        require_min(self, 1, "n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size", "batch_size",
                    "grad_accum", "seq_len", "eval_every", "eval_samples", "threads_per_worker")
        require_min(self, 0, "init_std", "lr", strict=True)
        require_min(self, 0, "min_lr_ratio", "warmup_steps", "weight_decay", "grad_clip", "max_eval_problems",
                    "eval_shots", "eval_max_new_tokens", "eval_max_prompt_tokens", "eval_temperature")
        require(self.lr < 1, f"lr must be < 1, got {self.lr}")
        require(self.min_lr_ratio <= 1, f"min_lr_ratio must be ≤ 1, got {self.min_lr_ratio}")
        require(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        require(self.n_head % self.n_kv_head == 0,
                f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        require(self.keep_checkpoints in KEEP_CHECKPOINTS,
                f"keep_checkpoints must be one of {', '.join(KEEP_CHECKPOINTS)}, got '{self.keep_checkpoints}'")
        require(self.eval_shots >= 0, f"eval_shots must be ≥ 0, got {self.eval_shots}")
        require(self.grad_accum >= 1, f"grad_accum must be ≥ 1, got {self.grad_accum}")
        require(self.eval_max_new_tokens >= 0 and self.eval_max_prompt_tokens >= 0,
                "eval_max_new_tokens and eval_max_prompt_tokens must be ≥ 0")
        require(self.eval_samples >= 1 and self.eval_temperature >= 0,
                "eval_samples must be ≥ 1 and eval_temperature ≥ 0")
        require(self.eval_samples == 1 or self.eval_temperature > 0,
                "eval_samples > 1 needs eval_temperature > 0 (greedy samples are identical)")

    @property
    def n_workers(self) -> int:
        """`workers`, with 0 resolved to the cores this process may run on."""
        from lt_utils.runtime.parallel import available_cores

        return self.workers or available_cores()


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation settings of one run, picked from a stage's flat `TrainingParams` (whose defaults it shares)."""

    steps: int = 300                 # optimizer steps (a stage states its own)
    batch_size: int = TrainingParams.batch_size
    grad_accum: int = TrainingParams.grad_accum
    seq_len: int = TrainingParams.seq_len
    lr: float = TrainingParams.lr
    min_lr_ratio: float = TrainingParams.min_lr_ratio
    warmup_steps: int = TrainingParams.warmup_steps
    weight_decay: float = TrainingParams.weight_decay   # all parameters, as the paper's code
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = TrainingParams.grad_clip
    eval_every: int = TrainingParams.eval_every          # steps between evaluations (and checkpoints)
    attend_across_docs: bool = TrainingParams.attend_across_docs
    cut_at_chunks: bool = TrainingParams.cut_at_chunks
    no_thought_p: float = 0.0        # per-chunk coin: trained without its thought (stage 03's, beyond the paper)
    compile: bool = False            # torch.compile the model (GPU)
    keep_checkpoints: str = TrainingParams.keep_checkpoints

    def __post_init__(self):
        require(self.steps > 0, f"steps must be > 0, got {self.steps}")
        require(self.batch_size > 0 and self.seq_len > 0, "batch_size and seq_len must be > 0")
        require(self.grad_accum >= 1, f"grad_accum must be ≥ 1, got {self.grad_accum}")
        require(0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        require(self.eval_every > 0, "eval_every must be > 0")
        require(0 <= self.no_thought_p < 1, f"no_thought_p must be in [0, 1), got {self.no_thought_p}")
        require(not (self.no_thought_p and self.attend_across_docs),
                "no_thought_p: the per-chunk coin is laid out by the per-document packing only "
                "(attend_across_docs: false)")
        require(self.keep_checkpoints in KEEP_CHECKPOINTS,
                f"keep_checkpoints must be one of {', '.join(KEEP_CHECKPOINTS)}, got '{self.keep_checkpoints}'")

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step and process."""
        return self.batch_size * self.grad_accum * self.seq_len


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs, as files and plain values."""

    out_dir: str                     # the run's directory (metrics.jsonl, ckpt/, model/, DONE)
    tokenizer_dir: str
    corpus_path: str                 # jsonl of ThoughtDoc records
    layout: str                      # "raw", "random", ... (see data.LAYOUTS)
    model: ModelSpec
    train: TrainSpec
    seed: int
    eval_problems_path: str = ""     # jsonl of test problems (question, answer, family): the final evaluation
    dev_problems_path: str = ""      # jsonl of dev problems, evaluated during training ("" = test problems then too)
    max_dev_problems: int = 0        # dev problems evaluated (0 = all)
    valid_path: str = ""             # jsonl of raw validation ThoughtDocs (for NLL)
    latent_eval: bool = False        # prompt with SoL PRI so the model thinks before answering
    eval_style: str = ""             # "direct", "cot" or "latent" ("" = from latent_eval); see evaluate.py
    eval_shots: tuple = ()           # exemplar dicts put before every eval problem (evaluate.exemplar_units)
    max_eval_problems: int = 0       # 0 = all
    eval_tasks: dict = field(default_factory=dict)    # MATH/GSM8K instead of world problems: task -> local jsonl
    eval_options: dict = field(default_factory=dict)  # math_eval.evaluate keywords (max_new_tokens, n_samples, ...)
    threads: int = 1                 # torch threads in this process
    info: dict = field(default_factory=dict)   # arm, seed, ... copied into run.json for the analysis
    progress: bool = True


EVAL_NEW_TOKENS = ANSWER_TOKENS   # answer budget per eval style (room to reason)


def eval_options(p: TrainingParams) -> dict:
    """The MATH/GSM8K evaluation settings of a stage's parameters, as `math_eval.evaluate` keywords."""
    return {"max_new_tokens": p.eval_max_new_tokens or 512, "max_prompt_tokens": p.eval_max_prompt_tokens or None,
            "n_samples": p.eval_samples, "temperature": p.eval_temperature}


def task_metrics(model, tokenizer, tasks: dict, latent: bool, limit: int, options: dict) -> dict:
    """MATH/GSM8K accuracy as eval-record fields: `accuracy/<task>` and its SE and unparseable rate.

    `accuracy` is MATH's when MATH is evaluated (the paper's headline task), else GSM8K's, so the
    analysis reads paper-scale runs like the world's; `accuracy/<task>` plays the part of a family.
    """
    from lt_utils import math_eval

    rec: dict[str, Any] = {}
    for task, path in sorted(tasks.items()):
        out = math_eval.evaluate(model, tokenizer, math_eval.load_problems(path, task, limit=limit or None),
                                 task=task, latent=latent, **options)
        rec[f"accuracy/{task}"] = out["accuracy"]
        rec[f"accuracy_se/{task}"] = out["accuracy_se"]
        rec[f"unparseable/{task}"] = out["unparseable"]
        rec[f"truncated_prompts/{task}"] = out["truncated_prompts"]
    main = "math" if "math" in tasks else next(iter(sorted(tasks)), None)
    if main:
        rec["accuracy"], rec["unparseable"] = rec[f"accuracy/{main}"], rec[f"unparseable/{main}"]
    return rec


def packing_stats(stream) -> dict:
    """Thoughts of epoch 0 trained apart from their question (`data.thoughts_apart`), as packed and with row cuts.

    Only for the in-memory stream (per-document packing); the paper's stream
    packing cuts its windows anywhere, as the paper's code does, and is not
    measured here.
    """
    if not isinstance(stream, EpochStream) or stream.layout in ("raw", "thought_only"):
        return {}
    out = {"cut_at_chunks": stream.cut_at_chunks, **stream.thoughts_apart(0)}
    if stream.cut_at_chunks:   # the same epoch cut into row-sized pieces, for comparison
        rowcut = EpochStream(stream.docs, stream.layout, stream.ids, seq_len=stream.seq_len,
                             batch_size=stream.batch_size, seed=stream.seed, attend_across_docs=False,
                             no_thought_p=stream.no_thought_p)
        out["share_apart_row_cuts"] = rowcut.thoughts_apart(0)["share_apart"]
    return out


def lr_lambda(spec: TrainSpec):
    def f(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / max(spec.warmup_steps, 1)
        t = (step - spec.warmup_steps) / max(spec.steps - spec.warmup_steps, 1)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def load_docs(path: str | Path) -> list[ThoughtDoc]:
    return [ThoughtDoc.from_dict(r) for r in read_jsonl(path)]


def load_problems(path: str | Path, limit: int = 0):
    from types import SimpleNamespace

    recs = read_jsonl(path)
    if limit:
        recs = recs[:limit]
    return [SimpleNamespace(**r) for r in recs]


def _save_ckpt(acc, out: Path, model, optimizer, scheduler, state: dict) -> None:
    """Checkpoint: HF weights + optimizer/scheduler/RNG state, swapped in atomically.

    One process: `trainer_state.pt` beside the weights.  Several processes
    (DDP, FSDP): accelerate's `save_state` writes every rank's shard of the
    optimizer into `acc_state/`, and the weights are gathered to full tensors
    first (`get_state_dict`), so the checkpoint is one ordinary HF model.
    Every rank must call this.
    """
    tmp, final, old = out / "ckpt.tmp", out / "ckpt", out / "ckpt.old"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    weights = acc.get_state_dict(model) if acc.num_processes > 1 else None
    if acc.num_processes > 1:
        acc.save_state(str(tmp / "acc_state"))
    if acc.is_main_process:
        acc.unwrap_model(model).save_pretrained(tmp, state_dict=weights)
        faults.hit("checkpoint_write")
        extra = {} if acc.num_processes > 1 else {"optimizer": optimizer.state_dict(),
                                                   "scheduler": scheduler.state_dict()}
        torch.save({**extra, "torch_rng": torch.get_rng_state(), **state}, tmp / "trainer_state.pt")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _save_final(acc, out: Path, model) -> None:
    """The trained model as one full HF checkpoint in `model/` (gathered from every rank under FSDP)."""
    weights = acc.get_state_dict(model) if acc.num_processes > 1 else None
    if acc.is_main_process:
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.rmtree(out / "model.tmp", ignore_errors=True)
        acc.unwrap_model(model).save_pretrained(out / "model.tmp", state_dict=weights)
        (out / "model.tmp").rename(out / "model")


def _latest_ckpt(out: Path) -> Path | None:
    for name in ("ckpt", "ckpt.old"):
        p = out / name
        if (p / "trainer_state.pt").exists() and (p / "config.json").exists():
            return p
    return None


def threads_change_nothing(model, spec: TrainSpec, own: int, more: int) -> bool:
    """Whether one training step of `model` at `spec`'s batch shape gives bitwise the same loss and gradients on
    `own` and on `more` threads (a random batch from a private generator; the model's gradients are left unset).

    Matrix kernels may split a reduction between threads and so round differently; where they do here, a run keeps
    its own thread count, so which runs of a pool happen to run alone never changes a number.
    """
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (spec.batch_size, spec.seq_len), generator=gen)
    pos = torch.arange(spec.seq_len).repeat(spec.batch_size, 1)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (own, more):
            torch.set_num_threads(n)
            loss = model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss
            loss.backward()
            outs.append([loss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
            model.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(before)
    return len(outs[0]) == len(outs[1]) and all(torch.equal(a, b) for a, b in zip(*outs))


def run_train_job(job: TrainJob) -> dict[str, Any]:
    """Train (or resume, or skip if finished) one run; returns its final metrics."""
    out = Path(job.out_dir)
    if (out / "DONE").exists():
        progress_events.emit("run_skipped", name=job.info.get("name", out.name), steps=job.train.steps)
        return read_json(out / "final.json")
    run = _TrainRun(job)
    if run.step == 0:
        run.evaluate(final=False)
    run.start_clock()
    spec = run.spec
    while run.step < spec.steps:
        run.use_spare_threads()
        batch = run.train_step()
        if run.step % 25 == 0 or run.step == spec.steps:
            run.log_train(batch)
        if run.step % spec.eval_every == 0 or run.step == spec.steps:
            run.evaluate(final=run.step == spec.steps)
            if run.step < spec.steps:
                run.checkpoint()
    return run.finish()


class _TrainRun:
    """One training run in its phases: set up (or resume), evaluate, step, checkpoint, finish.

    `run_train_job` calls them in order; the state they share (model,
    optimizer, stream, counters) lives here instead of in nested closures.
    """

    def __init__(self, job: TrainJob):
        """Everything before the first step: processes, data, evaluation sets, model, optimizer, resume state."""
        self.job, self.out = job, Path(job.out_dir)
        self.name = job.info.get("name", self.out.name)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(job.threads)
        from accelerate import Accelerator
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-save "Writing model shards" bars would drown the run's own bar
        from accelerate.utils import set_seed

        use_cuda = torch.cuda.is_available()
        bf16 = use_cuda and torch.cuda.is_bf16_supported()
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        # other ranks wait while the main process evaluates: a few-shot MATH/GSM8K pass can outlast NCCL's default
        # timeout
        self.acc = acc = Accelerator(cpu=not use_cuda, mixed_precision="bf16" if bf16 else "no",
                                     kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=3))])
        set_seed(job.seed)
        seed_everything(job.seed)

        self.tokenizer = tokenizer = load_tokenizer(job.tokenizer_dir)
        ids = SpecialIds.of(tokenizer)
        if job.train.attend_across_docs:
            # the paper's packing: tokenized once to disk, memory-mapped by every rank, rows laid out on demand
            from lt_utils.token_store import StreamingEpochs, open_store

            with acc.main_process_first():
                store = open_store(job.corpus_path, tokenizer, progress=job.progress and acc.is_main_process)
            self.stream = StreamingEpochs(store, job.layout, ids, seq_len=job.train.seq_len,
                                          batch_size=job.train.batch_size, seed=job.seed, rank=acc.process_index,
                                          world_size=acc.num_processes)
        else:
            self.stream = EpochStream(tokenize_docs(tokenizer, load_docs(job.corpus_path)), job.layout, ids,
                                      seq_len=job.train.seq_len, batch_size=job.train.batch_size, seed=job.seed,
                                      attend_across_docs=False, cut_at_chunks=job.train.cut_at_chunks,
                                      rank=acc.process_index, world_size=acc.num_processes,
                                      no_thought_p=job.train.no_thought_p)
        self.problems = load_problems(job.eval_problems_path, job.max_eval_problems) if job.eval_problems_path else []
        self.dev = load_problems(job.dev_problems_path, job.max_dev_problems) if job.dev_problems_path else []
        self.style = job.eval_style or ("latent" if job.latent_eval else "direct")
        self.valid_rows = None
        if job.valid_path:
            vdocs = tokenize_docs(tokenizer, load_docs(job.valid_path))
            self.valid_rows = pack_rows([layout_ids(d, "raw", ids) for d in vdocs], job.train.seq_len, ids.pad,
                                        attend_across_docs=False)

        ckpt = _latest_ckpt(self.out)
        model = load_model(ckpt) if ckpt else build_model(job.model, tokenizer, seed=job.seed)
        self.n_shots = len(job.eval_shots)
        if job.eval_shots and (self.problems or self.dev):
            from lt_utils.evaluate import common_shot_count

            # one count for dev and test, and (from the same problems and context) for every arm
            self.n_shots = common_shot_count(tokenizer, [p.question for p in self.dev + self.problems],
                                             job.eval_shots,
                                             int(getattr(model.config, "max_position_embeddings", 0) or 0))
        self.spec = spec = job.train
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2),
                                      weight_decay=spec.weight_decay, eps=1e-8)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec))
        self.step, self.tokens, self.raw_tokens = 0, 0, 0
        state = None
        if ckpt:
            state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
            if "optimizer" in state:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            self.step, self.tokens, self.raw_tokens = state["step"], state["tokens"], state["raw_tokens"]
            # drop records logged after the checkpoint, so the resumed run's log has no duplicates
            if acc.is_main_process:
                write_jsonl(self.out / "metrics.jsonl",
                            [r for r in read_jsonl(self.out / "metrics.jsonl") if r["step"] <= self.step])
        elif (self.out / "metrics.jsonl").exists() and acc.is_main_process:
            (self.out / "metrics.jsonl").unlink()
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json(self.out / "run.json", {
                "layout": job.layout, "seed": job.seed, "model": asdict(job.model),
                "eval": {"style": self.style, "shots": self.n_shots, "dev_problems": len(self.dev),
                         "test_problems": len(self.problems),
                         **({"tasks": sorted(job.eval_tasks)} if job.eval_tasks else {})},
                "train": asdict(spec), "packing": packing_stats(self.stream), **job.info})
        if spec.compile:
            model = torch.compile(model)
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        if state is not None and "optimizer" not in state:   # saved by several processes: sharded optimizer state
            acc.load_state(str(ckpt / "acc_state"))
        self.model.train()
        if acc.is_main_process:
            progress_events.emit("run_start", name=self.name, step=self.step, steps=spec.steps)
        self.bar = None
        self.loss_acc, self.n_acc = 0.0, 0
        self.same_on: dict[int, bool] = {}   # thread count -> whether training there is bitwise this run's own

    # ------------------------------------------------------------------ evaluate
    def eval_model(self):
        """The model the main process evaluates; every rank calls this.

        Under FSDP no rank holds the whole model, and a forward on one rank alone
        would wait forever for the others' shards: the full weights are gathered
        (all ranks) into a plain copy on the main process instead.
        """
        from accelerate.utils import DistributedType

        acc = self.acc
        if acc.distributed_type != DistributedType.FSDP:
            return acc.unwrap_model(self.model)
        weights = acc.get_state_dict(self.model)
        if not acc.is_main_process:
            return None
        from transformers import AutoModelForCausalLM

        copy = AutoModelForCausalLM.from_config(acc.unwrap_model(self.model).config)
        copy.load_state_dict(weights)
        return copy.to(acc.device)

    def eval_records(self, m, final: bool) -> list[dict]:
        """Eval records: on the dev problems during training; at the end on dev and then test.

        Without dev problems (a text corpus: MATH/GSM8K test files only) every
        evaluation is on the test problems, as the paper's in-loop evaluation.
        """
        from lt_utils.evaluate import evaluate_problems, validation_nll

        job = self.job
        common: dict[str, Any] = {"eval_threads": torch.get_num_threads()}   # the worker's share of the cores
        if self.valid_rows is not None:
            common["val_nll"] = validation_nll(m, self.valid_rows)
        recs = []
        for split in (["dev"] if self.dev else []) + (["test"] if final or not self.dev else []):
            rec: dict[str, Any] = {"split": split}
            if job.eval_tasks and split == "test":
                rec.update(task_metrics(m, self.tokenizer, job.eval_tasks, self.style == "latent",
                                        job.max_eval_problems, job.eval_options))
            todo = self.dev if split == "dev" else self.problems
            if todo:
                rec.update(evaluate_problems(m, self.tokenizer, todo, style=self.style, shots=job.eval_shots,
                                             max_new_tokens=EVAL_NEW_TOKENS[self.style],
                                             n_shots=self.n_shots).metrics())
            recs.append({**rec, **common})
        self.model.train()
        return recs

    def evaluate(self, final: bool) -> None:
        """Evaluate now (every rank takes part) and log the records at the current step."""
        torch.set_num_threads(self.job.threads)   # evaluation on the run's own threads, whatever training used
        m = self.eval_model()
        if self.acc.is_main_process:
            counts = {"step": self.step, "tokens": self.tokens, "raw_tokens": self.raw_tokens}
            for rec in self.eval_records(m, final=final):
                append_jsonl(self.out / "metrics.jsonl", {"kind": "eval", **counts, **rec})
        del m
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ step
    def start_clock(self) -> None:
        """The progress bar and the throughput clock start after the step-0 evaluation."""
        if self.job.progress and self.acc.is_main_process:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.spec.steps, initial=self.step, desc=self.name, unit="step",
                            dynamic_ncols=True, mininterval=2.0)
        self.t0, self.tok0 = time.perf_counter(), self.tokens

    def use_spare_threads(self) -> None:
        """Train on the cores a pool's finished runs left idle (`parallel.spare_threads`), where that changes
        nothing but speed on this machine (`threads_change_nothing`, probed once per thread count)."""
        n = spare_threads(self.job.threads)
        if n > self.job.threads and self.acc.device.type == "cpu" and self.acc.num_processes == 1:
            if n not in self.same_on:
                self.same_on[n] = threads_change_nothing(self.acc.unwrap_model(self.model), self.spec,
                                                         self.job.threads, n)
            n = n if self.same_on[n] else self.job.threads
        else:
            n = self.job.threads
        if n != torch.get_num_threads():
            torch.set_num_threads(n)

    def train_step(self) -> dict:
        """One optimizer step (grad_accum micro-batches); returns the last micro-batch."""
        from contextlib import nullcontext

        acc, spec, model, device = self.acc, self.spec, self.model, self.acc.device
        # micro-batch m of step s is stream batch s * grad_accum + m: with grad_accum 1 the batches are the
        # ones a run without accumulation sees, and a resumed run sees the same ones
        for micro in range(spec.grad_accum):
            batch = self.stream.batch(self.step * spec.grad_accum + micro)
            inp = torch.as_tensor(batch["input_ids"], device=device)
            last = micro == spec.grad_accum - 1
            with (nullcontext() if last else acc.no_sync(model)), acc.autocast():
                out_ = model(input_ids=inp, position_ids=torch.as_tensor(batch["position_ids"], device=device),
                             labels=torch.as_tensor(batch["labels"], device=device), use_cache=False)
                loss = out_.loss / spec.grad_accum if spec.grad_accum > 1 else out_.loss
            acc.backward(loss)
            self.tokens += inp.numel() * acc.num_processes
            self.raw_tokens += batch["raw_tokens"] * acc.num_processes
            self.loss_acc += float(out_.loss.detach())
            self.n_acc += 1
        if spec.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), spec.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        faults.hit("train_step")
        if self.bar is not None:
            self.bar.update(1)
        return batch

    def log_train(self, batch: dict) -> None:
        """Mean loss since the last record, learning rate, throughput."""
        dt = time.perf_counter() - self.t0
        rec = {"kind": "train", "step": self.step, "tokens": self.tokens, "raw_tokens": self.raw_tokens,
               "loss": self.loss_acc / self.n_acc, "lr": self.scheduler.get_last_lr()[0],
               "tokens_per_s": (self.tokens - self.tok0) / max(dt, 1e-9), "epoch": batch["epoch"],
               "threads": torch.get_num_threads()}
        if self.acc.is_main_process:
            append_jsonl(self.out / "metrics.jsonl", rec)
            progress_events.emit("train", name=self.name, step=self.step, steps=self.spec.steps,
                          tokens_per_s=rec["tokens_per_s"])
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}")
        self.loss_acc, self.n_acc = 0.0, 0

    # ------------------------------------------------------------------ checkpoint, finish
    def checkpoint(self) -> None:
        """What resume needs (and, with keep_checkpoints: all, a copy per evaluation step)."""
        _save_ckpt(self.acc, self.out, self.model, self.optimizer, self.scheduler,
                   {"step": self.step, "tokens": self.tokens, "raw_tokens": self.raw_tokens})
        if self.spec.keep_checkpoints == "all" and self.acc.is_main_process:
            shutil.copytree(self.out / "ckpt", self.out / "checkpoints" / f"step{self.step}", dirs_exist_ok=True)

    def finish(self) -> dict[str, Any]:
        """The final model and metrics, the DONE marker; the resume checkpoint is removed."""
        if self.bar is not None:
            self.bar.close()
        wall = time.perf_counter() - self.t0
        out = self.out
        final = {"step": self.step, "tokens": self.tokens, "raw_tokens": self.raw_tokens, "train_seconds": wall,
                 "tokens_per_s": (self.tokens - self.tok0) / max(wall, 1e-9),
                 **{k: v for k, v in read_jsonl(out / "metrics.jsonl")[-1].items() if k not in ("kind", "time")}}
        _save_final(self.acc, out, self.model)
        if self.acc.is_main_process:
            write_json(out / "final.json", final)
            write_json(out / "DONE", {"step": self.step})
            shutil.rmtree(out / "ckpt", ignore_errors=True)
            progress_events.emit("run_done", name=self.name, steps=self.step, accuracy=final.get("accuracy"), seconds=wall)
        return final


def run_jobs(jobs: list[TrainJob], params: TrainingParams, jobs_dir: Path, desc: str = "runs",
             then: Callable[[], Any] | None = None, then_needs: Sequence[int] = ()) -> list[dict]:
    """Run training jobs: in parallel worker processes, or one after another through `params.launcher`;
    `then()` once the jobs `then_needs` are done, beside the pool's last runs where a core is idle
    (`parallel.run_parallel`), or after every job.

    With a launcher (e.g. "accelerate launch --config_file params/paper/accelerate/ddp.yaml
    --num_processes 8"), each job is written to `jobs_dir/<name>.json` and the stage runs
    `<launcher> -m lt_utils.paper.train_launch <job.json>` for it; "python" stands for this interpreter.
    A finished job is skipped either way, so a cluster may also run the job files itself
    (a Slurm array over `jobs_dir`) and the stage, rerun, only collects their results.
    """
    if not params.launcher:
        from lt_utils.runtime.parallel import run_parallel

        return run_parallel(run_train_job, jobs, workers=params.n_workers, threads_per_worker=params.threads_per_worker,
                            names=[j.info["name"] for j in jobs], desc=desc, then=then, then_needs=then_needs)
    import shlex
    import subprocess
    import sys

    from tqdm.auto import tqdm

    cmd = shlex.split(params.launcher)
    cmd = [sys.executable if c == "python" else c for c in cmd]
    beside = Path(sys.executable).parent / cmd[0]   # e.g. .venv/bin/accelerate when the venv is not on PATH
    if not shutil.which(cmd[0]) and beside.is_file():
        cmd[0] = str(beside)
    finals = []
    for job in tqdm(jobs, desc=desc, unit="run"):
        # the job file `train_launch.job_from_dict` reads (written here, so train never imports its launcher)
        path = write_json(Path(jobs_dir) / (job.info["name"].replace("/", "_") + ".json"), asdict(job))
        if not (Path(job.out_dir) / "DONE").exists():
            from lt_utils.runtime.die_with_parent import bound_command

            argv, env = bound_command([*cmd, "-m", "lt_utils.paper.train_launch", str(path)])
            proc = subprocess.run(argv, env=env)   # the launcher dies with the stage, its ranks with the launcher
            if proc.returncode != 0:
                raise RuntimeError(f"{job.info['name']}: launcher exited with {proc.returncode} "
                                   f"({' '.join(cmd)} -m lt_utils.paper.train_launch {path})")
        finals.append(read_json(Path(job.out_dir) / "final.json"))
    if then is not None:
        then()
    return finals
