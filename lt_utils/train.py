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
from typing import Any

import torch

from .config import require
from .data import EpochStream, ThoughtDoc, pack_rows, layout_ids, tokenize_docs
from .model import ModelSpec, build_model, load_model
from .runs import append_jsonl, read_json, read_jsonl, seed_everything, write_json, write_jsonl
from .tokens import SpecialIds, load_tokenizer


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation settings of one run (names match the notebooks' parameters)."""

    steps: int = 300                 # optimizer steps
    batch_size: int = 16             # rows per step (per process)
    seq_len: int = 256               # tokens per row
    lr: float = 3e-3                 # peak learning rate
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50           # linear warmup
    weight_decay: float = 0.01       # AdamW weight decay (all parameters, as the paper's code)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100            # steps between evaluations (and checkpoints)
    attend_across_docs: bool = False  # True = the paper's packing; False = positions reset + per-document attention
    compile: bool = False            # torch.compile the model (GPU)

    def __post_init__(self):
        require(self.steps > 0, f"steps must be > 0, got {self.steps}")
        require(self.batch_size > 0 and self.seq_len > 0, "batch_size and seq_len must be > 0")
        require(0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        require(self.eval_every > 0, "eval_every must be > 0")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


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
    batch_size: int = 8                     # rows per step
    seq_len: int = 256                      # tokens per row
    lr: float = 3e-3                        # peak learning rate
    min_lr_ratio: float = 0.1               # cosine floor (fraction of lr)
    warmup_steps: int = 10                  # linear warmup steps
    weight_decay: float = 0.01              # AdamW weight decay
    grad_clip: float = 1.0                  # gradient-norm clip
    eval_every: int = 20                    # steps between evaluations
    attend_across_docs: bool = False        # paper packing (True) or per-document attention (False)
    max_eval_problems: int = 0              # 0 means every held-out problem
    eval_shots: int = 0                     # solved exemplars in every evaluation prompt (same for all arms)
    workers: int = 2                        # parallel training processes
    threads_per_worker: int = 1             # torch threads per process

    def check_training_params(self) -> None:
        require(self.workers >= 1 and self.threads_per_worker >= 1, "workers and threads_per_worker must be ≥ 1")
        require(self.eval_shots >= 0, f"eval_shots must be ≥ 0, got {self.eval_shots}")


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
    eval_problems_path: str = ""     # jsonl of eval problems (question, answer, family)
    valid_path: str = ""             # jsonl of raw validation ThoughtDocs (for NLL)
    latent_eval: bool = False        # prompt with SoL PRI so the model thinks before answering
    eval_style: str = ""             # "direct", "cot" or "latent" ("" = from latent_eval); see evaluate.py
    eval_shots: tuple = ()           # exemplar dicts put before every eval problem (evaluate.exemplar_units)
    max_eval_problems: int = 0       # 0 = all
    threads: int = 1                 # torch threads in this process
    info: dict = field(default_factory=dict)   # arm, seed, ... copied into run.json for the analysis
    progress: bool = True


EVAL_NEW_TOKENS = {"direct": 64, "cot": 96, "latent": 96}   # answer budget per eval style (room to reason)


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


def _save_ckpt(out: Path, model, optimizer, scheduler, state: dict) -> None:
    tmp, final, old = out / "ckpt.tmp", out / "ckpt", out / "ckpt.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), **state}, tmp / "trainer_state.pt")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _latest_ckpt(out: Path) -> Path | None:
    for name in ("ckpt", "ckpt.old"):
        p = out / name
        if (p / "trainer_state.pt").exists() and (p / "config.json").exists():
            return p
    return None


def run_train_job(job: TrainJob) -> dict[str, Any]:
    """Train (or resume, or skip if finished) one run; returns its final metrics."""
    out = Path(job.out_dir)
    if (out / "DONE").exists():
        return read_json(out / "final.json")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(job.threads)
    from accelerate import Accelerator
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-save "Writing model shards" bars would drown the run's own bar
    from accelerate.utils import set_seed

    use_cuda = torch.cuda.is_available()
    bf16 = use_cuda and torch.cuda.is_bf16_supported()
    acc = Accelerator(cpu=not use_cuda, mixed_precision="bf16" if bf16 else "no")
    set_seed(job.seed)
    seed_everything(job.seed)

    tokenizer = load_tokenizer(job.tokenizer_dir)
    ids = SpecialIds.of(tokenizer)
    docs = tokenize_docs(tokenizer, load_docs(job.corpus_path))
    stream = EpochStream(docs, job.layout, ids, seq_len=job.train.seq_len, batch_size=job.train.batch_size,
                         seed=job.seed, attend_across_docs=job.train.attend_across_docs,
                         rank=acc.process_index, world_size=acc.num_processes)
    problems = load_problems(job.eval_problems_path, job.max_eval_problems) if job.eval_problems_path else []
    valid_rows = None
    if job.valid_path:
        vdocs = tokenize_docs(tokenizer, load_docs(job.valid_path))
        valid_rows = pack_rows([layout_ids(d, "raw", ids) for d in vdocs], job.train.seq_len, ids.pad,
                               attend_across_docs=False)

    ckpt = _latest_ckpt(out)
    model = load_model(ckpt) if ckpt else build_model(job.model, tokenizer, seed=job.seed)
    spec = job.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2),
                                  weight_decay=spec.weight_decay, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec))
    step, tokens, raw_tokens = 0, 0, 0
    if ckpt:
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, tokens, raw_tokens = state["step"], state["tokens"], state["raw_tokens"]
        # drop records logged after the checkpoint, so the resumed run's log has no duplicates
        write_jsonl(out / "metrics.jsonl", [r for r in read_jsonl(out / "metrics.jsonl") if r["step"] <= step])
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    write_json(out / "run.json", {"layout": job.layout, "seed": job.seed, "model": asdict(job.model),
                                  "eval": {"style": job.eval_style or ("latent" if job.latent_eval else "direct"),
                                           "shots": len(job.eval_shots)},
                                  "train": asdict(spec), **job.info})
    if spec.compile:
        model = torch.compile(model)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    model.train()

    def evaluate_now() -> dict:
        from .evaluate import evaluate_problems, validation_nll

        m = acc.unwrap_model(model)
        rec: dict[str, Any] = {}
        if problems:
            style = job.eval_style or ("latent" if job.latent_eval else "direct")
            rec.update(evaluate_problems(m, tokenizer, problems, style=style, shots=job.eval_shots,
                                         max_new_tokens=EVAL_NEW_TOKENS[style]).metrics())
        if valid_rows is not None:
            rec["val_nll"] = validation_nll(m, valid_rows)
        model.train()
        return rec

    if step == 0 and acc.is_main_process:
        append_jsonl(out / "metrics.jsonl", {"kind": "eval", "step": 0, "tokens": 0, "raw_tokens": 0,
                                             **evaluate_now()})
    bar = None
    if job.progress and acc.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.steps, initial=step, desc=job.info.get("name", out.name), unit="step",
                   dynamic_ncols=True, mininterval=2.0)
    t0, tok0 = time.perf_counter(), tokens
    loss_acc, n_acc = 0.0, 0
    device = acc.device
    while step < spec.steps:
        batch = stream.batch(step)
        inp = torch.as_tensor(batch["input_ids"], device=device)
        with acc.autocast():
            out_ = model(input_ids=inp, position_ids=torch.as_tensor(batch["position_ids"], device=device),
                         labels=torch.as_tensor(batch["labels"], device=device), use_cache=False)
        acc.backward(out_.loss)
        if spec.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += inp.numel() * acc.num_processes
        raw_tokens += batch["raw_tokens"] * acc.num_processes
        loss_acc += float(out_.loss.detach())
        n_acc += 1
        if bar is not None:
            bar.update(1)
        if step % 25 == 0 or step == spec.steps:
            dt = time.perf_counter() - t0
            rec = {"kind": "train", "step": step, "tokens": tokens, "raw_tokens": raw_tokens,
                   "loss": loss_acc / n_acc, "lr": scheduler.get_last_lr()[0],
                   "tokens_per_s": (tokens - tok0) / max(dt, 1e-9), "epoch": batch["epoch"]}
            if acc.is_main_process:
                append_jsonl(out / "metrics.jsonl", rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
            loss_acc, n_acc = 0.0, 0
        if step % spec.eval_every == 0 or step == spec.steps:
            if acc.is_main_process:
                rec = {"kind": "eval", "step": step, "tokens": tokens, "raw_tokens": raw_tokens, **evaluate_now()}
                append_jsonl(out / "metrics.jsonl", rec)
                if step < spec.steps:
                    _save_ckpt(out, acc.unwrap_model(model), optimizer, scheduler,
                               {"step": step, "tokens": tokens, "raw_tokens": raw_tokens})
            acc.wait_for_everyone()
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    final = {"step": step, "tokens": tokens, "raw_tokens": raw_tokens, "train_seconds": wall,
             "tokens_per_s": (tokens - tok0) / max(wall, 1e-9),
             **{k: v for k, v in read_jsonl(out / "metrics.jsonl")[-1].items() if k not in ("kind", "time")}}
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(model)
        shutil.rmtree(out / "model", ignore_errors=True)
        unwrapped.save_pretrained(out / "model.tmp")
        (out / "model.tmp").rename(out / "model")
        write_json(out / "final.json", final)
        write_json(out / "DONE", {"step": step})
        shutil.rmtree(out / "ckpt", ignore_errors=True)
    return final
