"""The base model: one pretrained model that every training run of a study continues from.

In the paper every run continues pretraining one pretrained TinyLlama: a seed
varies the data order and the latent layout, never the initialisation.  The
CPU study has no downloaded checkpoint, so stage 01 makes one: a tiny Llama
trained on the world's base corpus (`world.base_corpus`: raw worksheets over
every family and a range of difficulties, plus a share of documents worked in
prose).  Stages 02 and 03 start every run from it with `init: base`
(`init: scratch` keeps the random init as an ablation).

The base is cached like a downloaded checkpoint, under
`<run_root>/base/<hash>/`, keyed by everything that determines it: the base
corpus (world seed, difficulty mix, worked share, documents per split of
problems), the model size, the optimisation, and the tokenizer file.  The
first study builds it; any later study with the same key reuses it, and a
changed parameter (or a rebuilt tokenizer) gives a new key and a new base.
The directory is an ordinary training run (`train.run_train_job`: run.json,
metrics.jsonl, model/, DONE) plus `key.json`, `env.json`, the corpus and its
stats, and `evals/`: its few-shot accuracy on each study's held-out problems.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lt_utils.runtime.config import ConfigError, pick, require, require_min
from lt_utils.model import ModelSpec
from lt_utils.runtime.runs import (MissingInputError, RunDir, environment, read_json, read_jsonl, sha256_file, write_json,
                    write_jsonl)

BASE_DIR = "base"          # <run_root>/base/<hash>/
BASE_INFO = "base.json"    # what stage 01 records about its base model
# Bump when the base corpus's text or the base recipe changes meaning, so stale caches are not reused.
BASE_FORMAT = 1
# Architecture fields a stage's parameters must share with the base model it continues.
SIZE_FIELDS = ("n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size", "tie_embeddings")


@dataclass(frozen=True)
class BaseParams:
    """Stage-01 parameters of the base model (mixed into `corpus.DataPrepConfig`)."""

    base_steps: int = 0                     # optimizer steps of the base model (0: no base model)
    base_docs: int = 2000                   # documents in the base corpus
    base_families: list[str] = field(default_factory=list)   # families of the base corpus (empty: every family)
    base_difficulty: dict[str, list[int]] = field(default_factory=dict)  # per family, difficulties mixed uniformly
    base_worked_share: float = 0.0          # share of base documents whose working is written out in prose
    base_n_layer: int = 2                   # base model: transformer blocks (stages continuing it must match)
    base_n_embd: int = 32                   # base model: hidden size
    base_n_head: int = 4                    # base model: attention heads
    base_n_kv_head: int = 4                 # base model: key/value heads
    base_intermediate_size: int = 128       # base model: SwiGLU hidden size
    base_tie_embeddings: bool = True        # base model: tie input/output embeddings
    base_init_std: float = 0.02             # base model: std of its random init
    base_batch_size: int = 8                # rows per optimizer step
    base_seq_len: int = 256                 # tokens per row
    base_lr: float = 3e-3                   # peak learning rate
    base_min_lr_ratio: float = 0.1          # cosine floor (fraction of base_lr)
    base_warmup_steps: int = 10             # linear warmup steps
    base_weight_decay: float = 0.01         # AdamW weight decay
    base_eval_shots: int = 3                # solved exemplars in each prompt of the base model's evaluation
    base_threads: int = 1                   # torch threads while building and evaluating it

    def check_base_params(self) -> None:
        from lt_utils import world

        require(self.base_steps >= 0, f"base_steps must be ≥ 0, got {self.base_steps}")
        require_min(self, 1, "base_n_layer", "base_n_embd", "base_n_head", "base_n_kv_head", "base_intermediate_size",
                    "base_batch_size", "base_seq_len", "base_threads")
        require_min(self, 0, "base_init_std", "base_lr", strict=True)
        require_min(self, 0, "base_min_lr_ratio", "base_warmup_steps", "base_weight_decay", "base_eval_shots")
        require(self.base_lr < 1, f"base_lr must be < 1, got {self.base_lr}")
        require(self.base_min_lr_ratio <= 1, f"base_min_lr_ratio must be ≤ 1, got {self.base_min_lr_ratio}")
        require(self.base_docs > 0, f"base_docs must be > 0, got {self.base_docs}")
        require(0 <= self.base_worked_share <= 1, f"base_worked_share must be in [0, 1], got {self.base_worked_share}")
        unknown = [f for f in [*self.base_families, *self.base_difficulty] if f not in world.FAMILIES]
        require(not unknown, f"base_families / base_difficulty: unknown family '{unknown[0] if unknown else ''}' "
                             f"(known: {', '.join(world.FAMILIES)})")
        for name, levels in self.base_difficulty.items():
            try:
                [world.FAMILIES[name].check_difficulty(d) for d in levels]
            except ValueError as e:
                require(False, f"base_difficulty.{name}: {e}")
            require(len(levels) > 0, f"base_difficulty.{name}: the list is empty")
        require(self.base_eval_shots >= 0 and self.base_threads >= 1,
                "base_eval_shots must be ≥ 0 and base_threads ≥ 1")
        require(getattr(self, "study", "") != BASE_DIR, f"study must not be '{BASE_DIR}' (that is where base models live)")
        try:
            self.model_spec()
            self.train_spec()
        except (ValueError, TypeError) as e:
            raise ConfigError(f"base model: {e}") from None

    def model_spec(self) -> ModelSpec:
        return ModelSpec(n_layer=self.base_n_layer, n_embd=self.base_n_embd, n_head=self.base_n_head,
                         n_kv_head=self.base_n_kv_head, intermediate_size=self.base_intermediate_size,
                         max_seq_len=max(self.base_seq_len, 64), tie_embeddings=self.base_tie_embeddings,
                         init_std=self.base_init_std)

    def train_spec(self):
        from lt_utils.train import TrainSpec

        steps = max(self.base_steps, 1)
        return TrainSpec(steps=steps, batch_size=self.base_batch_size, seq_len=self.base_seq_len, lr=self.base_lr,
                         min_lr_ratio=self.base_min_lr_ratio, warmup_steps=self.base_warmup_steps,
                         weight_decay=self.base_weight_decay, eval_every=min(steps, 250))


# --------------------------------------------------------------------------- identity

def _mix(cfg) -> dict[str, tuple[int, ...]]:
    from lt_utils.world import FAMILIES
    from lt_utils.world.base_corpus import difficulty_mix

    return difficulty_mix(list(cfg.base_families) or list(FAMILIES), cfg.difficulty, cfg.base_difficulty)


def base_key(cfg, tokenizer_dir: str | Path) -> dict[str, Any]:
    """Everything that determines the base model (nothing about where or how fast it is built)."""
    return {"format": BASE_FORMAT,
            "corpus": {"seed": cfg.seed, "docs": cfg.base_docs, "worked_share": cfg.base_worked_share,
                       "mix": {k: list(v) for k, v in _mix(cfg).items()},
                       "units_per_doc": [cfg.units_per_doc_min, cfg.units_per_doc_max]},
            "model": dataclasses.asdict(cfg.model_spec()), "train": dataclasses.asdict(cfg.train_spec()),
            "train_seed": cfg.seed, "tokenizer": sha256_file(Path(tokenizer_dir) / "tokenizer.json")}


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def base_root(run_root: str | Path) -> Path:
    from lt_utils.runtime.paths import resolve

    return resolve(run_root) / BASE_DIR


@contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on `path`, so two studies never build the same base at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- building
def write_corpus(base_dir: Path, cfg, key: dict, tokenizer_dir: str | Path) -> dict:
    """Generate the base corpus as raw-layout training records, and its stats (skipped if present)."""
    from collections import Counter

    from lt_utils.data import ThoughtDoc
    from lt_utils.tokens import encode, load_tokenizer
    from lt_utils.world.base_corpus import generate_base_documents

    path, stats_path = base_dir / "corpus.jsonl", base_dir / "corpus_stats.json"
    if path.exists() and stats_path.exists():
        return read_json(stats_path)
    c = key["corpus"]
    docs = generate_base_documents(c["docs"], mix=c["mix"], worked_share=c["worked_share"],
                                   units_per_doc=tuple(c["units_per_doc"]), seed=c["seed"])
    write_jsonl(path, ({**ThoughtDoc(d.doc.doc_id, "", [d.text], None).to_dict(), "worked": d.worked,
                        "uids": [u.uid for u in d.doc.units]} for d in docs))
    tok = load_tokenizer(tokenizer_dir)
    tokens = [len(encode(tok, d.text)) + 2 for d in docs]
    units = Counter(f"{u.family}/{u.difficulty}" for d in docs for u in d.doc.units)
    stats = {"docs": len(docs), "worked_docs": sum(d.worked for d in docs), "tokens": sum(tokens),
             "worked_tokens": sum(t for t, d in zip(tokens, docs) if d.worked),
             "units": sum(units.values()), "units_by_family_difficulty": dict(sorted(units.items()))}
    stats["worked_token_share"] = stats["worked_tokens"] / max(stats["tokens"], 1)
    write_json(stats_path, stats)
    return stats


def build_base(cfg, tokenizer_dir: str | Path, progress: bool = True) -> tuple[Path, bool]:
    """The base model's directory for `cfg`, trained now unless cached; returns (directory, built now)."""
    from lt_utils.runtime.parallel import available_cores, run_parallel
    from lt_utils.train import TrainJob, run_train_job

    key = base_key(cfg, tokenizer_dir)
    digest = key_hash(key)
    base_dir = base_root(cfg.run_root) / digest
    if (base_dir / "DONE").exists():
        return base_dir, False
    with _locked(base_root(cfg.run_root) / f".{digest}.lock"):
        if (base_dir / "DONE").exists():   # built by another study while this one waited
            return base_dir, False
        base_dir.mkdir(parents=True, exist_ok=True)
        write_json(base_dir / "key.json", {**key, "hash": digest})
        write_json(base_dir / "env.json", environment())
        write_corpus(base_dir, cfg, key, tokenizer_dir)
        job = TrainJob(out_dir=str(base_dir), tokenizer_dir=str(tokenizer_dir), corpus_path=str(base_dir / "corpus.jsonl"),
                       layout="raw", model=cfg.model_spec(), train=cfg.train_spec(), seed=key["train_seed"],
                       threads=cfg.base_threads, info={"name": "base", "arm": "base", "base": digest},
                       progress=progress)
        # alone on the machine: on every core where that gives the same weights (`parallel.spare_threads`)
        run_parallel(run_train_job, [job], workers=available_cores(), threads_per_worker=cfg.base_threads,
                     desc="base model")
    return base_dir, True


def base_exemplars(data_dir: Path, shots: int) -> list[dict]:
    """A world study's few-shot exemplars: solved problems of its validation split, the same for every stage.

    Here rather than in stage 01's module, which imports this one; `data_prep.eval_exemplars` calls it.
    """
    from lt_utils import world
    from lt_utils.evaluate import exemplar_units

    if not shots:
        return []
    docs = [world.Document.from_dict(r) for r in read_jsonl(Path(data_dir) / "docs" / "valid.jsonl")]
    return exemplar_units(docs, shots)


def evaluate_base(base_dir: Path, data_dir: Path, shots: int, threads: int = 1,
                  problems_file: str = "eval_problems.jsonl") -> dict:
    """Few-shot accuracy (overall and per family) of the base model on a study's held-out problems (cached).

    `problems_file` is the test set by default; `dev_problems.jsonl` gives the dev numbers calibration may look at.
    """
    import torch

    from lt_utils.evaluate import evaluate_problems
    from lt_utils.model import load_model
    from lt_utils.tokens import load_tokenizer
    from lt_utils.train import EVAL_NEW_TOKENS, load_problems

    problems_path = data_dir / problems_file
    exemplars = base_exemplars(data_dir, shots)
    ekey = hashlib.sha256(json.dumps({"problems": sha256_file(problems_path), "shots": exemplars,
                                      "max_new_tokens": EVAL_NEW_TOKENS["direct"]}, sort_keys=True).encode()
                          ).hexdigest()[:16]
    path = base_dir / "evals" / f"{ekey}.json"
    if path.exists():
        return read_json(path)
    torch.set_num_threads(threads)
    problems = load_problems(problems_path)
    res = evaluate_problems(load_model(base_dir / "model"), load_tokenizer(data_dir / "tokenizer"), problems,
                            style="direct", shots=exemplars, max_new_tokens=EVAL_NEW_TOKENS["direct"])
    out = {**res.metrics(), "problems": len(problems), "shots": len(exemplars)}
    write_json(path, out)
    return out


def build(run: RunDir, cfg) -> dict | None:
    """Stage 01: build (or reuse) the study's base model, evaluate it, and record it in `base.json`.

    Returns what `base.json` holds, or None when `base_steps` is 0 (no base model).
    """
    if not cfg.base_steps:
        return None
    recorded = run.file(BASE_INFO)
    if run.already_done and recorded.exists() and (Path(read_json(recorded)["model"]) / "config.json").exists():
        return read_json(recorded)   # a finished stage is reused as it is (and logs nothing twice)
    tok_dir = run.file("tokenizer")
    base_dir, built = build_base(cfg, tok_dir, progress=True)
    evals = evaluate_base(base_dir, run.path, cfg.base_eval_shots, cfg.base_threads)
    if run.file("dev_problems.jsonl").exists():
        evals["dev"] = evaluate_base(base_dir, run.path, cfg.base_eval_shots, cfg.base_threads, "dev_problems.jsonl")
    final = read_json(base_dir / "final.json")
    info = {"hash": base_dir.name, "path": str(base_dir), "model": str(base_dir / "model"),
            "spec": dataclasses.asdict(cfg.model_spec()), "corpus": read_json(base_dir / "corpus_stats.json"),
            "train": {k: final[k] for k in ("step", "tokens", "train_seconds", "tokens_per_s") if k in final},
            "eval": evals}
    write_json(run.file(BASE_INFO), info)
    run.add_artifact(BASE_INFO, "the base model every run continues from: where it is cached and how it scores")
    run.log(kind="base", hash=base_dir.name, built=built, **{k: v for k, v in evals.items()
                                                            if isinstance(v, (int, float))})
    return info


def accuracy_table(info: dict | None):
    """The base model's few-shot accuracy, overall and per family, for the notebook."""
    import pandas as pd

    if not info:
        return pd.DataFrame()
    ev = info["eval"]
    rows = [{"family": k.split("/", 1)[1] if "/" in k else "all", "accuracy_%": round(100 * v, 1)}
            for k, v in ev.items() if k == "accuracy" or k.startswith("accuracy/")]
    return pd.DataFrame(rows).set_index("family")


# --------------------------------------------------------------------------- continuing from it
def base_info(data_dir: str | Path) -> dict:
    """What stage 01 recorded about its base model (a one-line error when it built none)."""
    path = Path(data_dir) / BASE_INFO
    if not path.exists():
        raise MissingInputError(f"init: base needs a base model, but {data_dir} has none "
                                f"(set base_steps > 0 in 01_data_prep)")
    return read_json(path)


def stage_model_spec(cfg, data_dir: str | Path) -> ModelSpec:
    """The ModelSpec every run of a stage starts from: its own sizes (scratch) or the study's base model (base)."""
    spec = pick(ModelSpec, cfg, max_seq_len=max(cfg.seq_len, 64))
    if cfg.init != "base":
        return spec
    info = base_info(data_dir)
    base = ModelSpec(**info["spec"])
    bad = [f for f in SIZE_FIELDS if getattr(spec, f) != getattr(base, f)]
    if bad:
        f = bad[0]
        raise ConfigError(f"init: base: {f} is {getattr(spec, f)} here but {getattr(base, f)} in the base model "
                          f"{info['path']} (set base_{f} in 01_data_prep or {f} here to match)")
    if base.max_seq_len < cfg.seq_len:
        raise ConfigError(f"init: base: seq_len {cfg.seq_len} exceeds the base model's {base.max_seq_len} positions "
                          f"(raise base_seq_len in 01_data_prep)")
    model = Path(info["model"])
    if not (model / "config.json").exists():
        raise MissingInputError(f"init: base: the base model {model} is missing (re-run 01_data_prep)")
    return dataclasses.replace(spec, init_from=str(model), max_seq_len=base.max_seq_len)
