"""Stage 02: teacher thoughts for the method-comparison corpus, and training every arm at equal raw data.

Each arm is a layout over a corpus of the same raw documents: `raw_repeat`
trains on the raw text (repeated as needed), `latent_thoughts` on the raw text
with one teacher thought per chunk in the random prior/posterior layout.
Every arm trains for the same number of tokens, over the same seeds, and is
evaluated along the way on the same held-out problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import pick, require
from .corpus import load_documents
from .data import ThoughtDoc, chunk_document, token_ratio, tokenize_docs
from .model import ModelSpec
from .parallel import run_parallel
from .runs import RunDir, read_json, read_jsonl, require_done, write_json, write_jsonl
from .teacher import OracleTeacher, ThoughtCache, write_thoughts
from .tokens import SpecialIds, load_tokenizer
from .train import TrainJob, TrainSpec, run_train_job


@dataclass(frozen=True)
class Arm:
    """How an arm turns the corpus into training text."""

    layout: str          # data.LAYOUTS entry
    source: str          # which split's raw documents it trains on
    thoughts: bool       # needs teacher thoughts
    latent_eval: bool    # evaluate by thinking first (SoL PRI ...)


ARMS = {
    "raw_repeat": Arm(layout="raw", source="comparison", thoughts=False, latent_eval=False),
    "latent_thoughts": Arm(layout="random", source="comparison", thoughts=True, latent_eval=True),
}


@dataclass(frozen=True)
class SyntheticThoughtsConfig:
    study: str = "smoke"                    # runs/<study>/... groups every stage of one study
    run_root: str = "runs"                  # where run directories live
    data_stage: str = "01_data_prep"        # input: runs/<study>/<data_stage>
    arms: list[str] = field(default_factory=lambda: ["raw_repeat", "latent_thoughts"])  # arms to train
    seeds: list[int] = field(default_factory=lambda: [0])   # one training run per arm and seed
    teacher: str = "oracle"                 # who writes the thoughts
    chunk_mean_units: float = 1.0           # mean problems per chunk (Poisson(mean−1)+1)
    chunk_max_units: int = 20               # cap on problems per chunk
    prefix_chunks: int = 1                  # previous chunks the teacher sees as context (paper: 1)
    n_layer: int = 2                        # model: transformer blocks
    n_embd: int = 32                        # model: hidden size
    n_head: int = 4                         # model: attention heads
    n_kv_head: int = 4                      # model: key/value heads
    intermediate_size: int = 128            # model: SwiGLU hidden size
    tie_embeddings: bool = True             # model: tie input/output embeddings
    init_std: float = 0.02                  # model: std of the random init
    init_from: str = ""                     # model: HF checkpoint to start from ("" = train from scratch)
    steps: int = 40                         # optimizer steps per run (same for every arm)
    batch_size: int = 8                     # rows per step
    seq_len: int = 256                      # tokens per row
    lr: float = 3e-3                        # peak learning rate
    min_lr_ratio: float = 0.1               # cosine floor, as a fraction of lr
    warmup_steps: int = 10                  # linear warmup steps
    weight_decay: float = 0.01              # AdamW weight decay
    grad_clip: float = 1.0                  # gradient-norm clip
    eval_every: int = 20                    # steps between evaluations
    attend_across_docs: bool = False        # paper packing (True) or per-document attention (False)
    max_eval_problems: int = 0              # 0 = every held-out problem
    workers: int = 2                        # parallel training processes
    threads_per_worker: int = 1             # torch threads per process
    overwrite: bool = False                 # redo a finished stage

    def __post_init__(self):
        bad = [a for a in self.arms if a not in ARMS]
        require(not bad, f"arms: unknown arm '{bad[0] if bad else ''}' (known: {', '.join(ARMS)})")
        require(len(self.seeds) > 0, "seeds must list at least one seed")
        require(self.teacher == "oracle", f"teacher: unknown teacher '{self.teacher}' (known: oracle)")
        require(self.chunk_mean_units >= 1, "chunk_mean_units must be ≥ 1")
        require(self.workers >= 1 and self.threads_per_worker >= 1, "workers and threads_per_worker must be ≥ 1")


def data_dir_of(cfg: SyntheticThoughtsConfig) -> Path:
    from .paths import resolve

    return require_done(resolve(cfg.run_root) / cfg.study / cfg.data_stage, "data-prep run")


def make_teacher(name: str):
    if name == "oracle":
        return OracleTeacher()
    raise ValueError(f"unknown teacher '{name}'")


def thought_docs(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path, split: str) -> Path:
    """Chunk the split's documents and attach one teacher thought per chunk (cached)."""
    path = run.file(f"thoughts/{split}.jsonl")
    if not path.exists():
        docs = load_documents(data_dir, split)
        heads, all_chunks, spans = [], [], []
        for d in docs:
            head, chunks = chunk_document(d.doc_id, d.segments(), mean_units=cfg.chunk_mean_units,
                                          max_units=cfg.chunk_max_units, prefix_chunks=cfg.prefix_chunks)
            heads.append(head)
            spans.append((len(all_chunks), len(all_chunks) + len(chunks)))
            all_chunks.extend(chunks)
        cache = ThoughtCache(run.file("thought_cache.sqlite"))
        thoughts = write_thoughts(make_teacher(cfg.teacher), all_chunks, cache)
        cache.close()
        records = [ThoughtDoc(d.doc_id, h, [c.suffix for c in all_chunks[a:b]], thoughts[a:b]).to_dict()
                   for d, h, (a, b) in zip(docs, heads, spans)]
        write_jsonl(path, records)
    run.add_artifact(f"thoughts/{split}.jsonl", f"{split} documents chunked, with one {cfg.teacher} thought per chunk")
    return path


def raw_docs(run: RunDir, data_dir: Path, split: str) -> Path:
    """The split's documents as ThoughtDocs without thoughts (one chunk per document)."""
    path = run.file(f"thoughts/{split}_raw.jsonl")
    if not path.exists():
        recs = []
        for d in load_documents(data_dir, split):
            segs = d.segments()
            recs.append(ThoughtDoc(d.doc_id, segs[0], ["".join(segs[1:])], None).to_dict())
        write_jsonl(path, recs)
    run.add_artifact(f"thoughts/{split}_raw.jsonl", f"{split} documents, raw")
    return path


def arm_corpus(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path, arm: str) -> Path:
    spec = ARMS[arm]
    return thought_docs(run, cfg, data_dir, spec.source) if spec.thoughts else raw_docs(run, data_dir, spec.source)


def arm_token_ratios(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path) -> dict[str, float]:
    """Training tokens per raw token of each arm's corpus, measured on our data (for the effective-raw axis)."""
    tok = load_tokenizer(data_dir / "tokenizer")
    ids = SpecialIds.of(tok)
    ratios = {}
    for arm in cfg.arms:
        docs = tokenize_docs(tok, [ThoughtDoc.from_dict(r) for r in read_jsonl(arm_corpus(run, cfg, data_dir, arm))])
        ratios[arm] = token_ratio(docs, ARMS[arm].layout, ids)
    write_json(run.file("token_ratios.json"), ratios)
    run.add_artifact("token_ratios.json", "training tokens per raw token, per arm")
    return ratios


def make_jobs(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path, progress: bool) -> list[TrainJob]:
    model = pick(ModelSpec, cfg, max_seq_len=max(cfg.seq_len, 64))
    train = pick(TrainSpec, cfg)
    jobs = []
    for arm in cfg.arms:
        corpus = arm_corpus(run, cfg, data_dir, arm)
        for seed in cfg.seeds:
            jobs.append(TrainJob(
                out_dir=str(run.file(f"train/{arm}/seed{seed}")), tokenizer_dir=str(data_dir / "tokenizer"),
                corpus_path=str(corpus), layout=ARMS[arm].layout, model=model, train=train, seed=seed,
                eval_problems_path=str(data_dir / "eval_problems.jsonl"),
                valid_path=str(raw_docs(run, data_dir, "valid")), latent_eval=ARMS[arm].latent_eval,
                max_eval_problems=cfg.max_eval_problems, threads=cfg.threads_per_worker,
                info={"arm": arm, "stage": run.path.name, "name": f"{arm}/seed{seed}"}, progress=progress))
    return jobs


def train_arms(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path) -> list[dict]:
    """Train every arm × seed (finished runs are skipped, interrupted ones resume); returns final metrics."""
    jobs = make_jobs(run, cfg, data_dir, progress=cfg.workers <= 1)
    finals = run_parallel(run_train_job, jobs, workers=cfg.workers, threads_per_worker=cfg.threads_per_worker,
                          names=[j.info["name"] for j in jobs], desc="training runs")
    rows = [{**j.info, "seed": j.seed, **f} for j, f in zip(jobs, finals)]
    write_json(run.file("final_metrics.json"), rows)
    run.add_artifact("final_metrics.json", "final metrics of every arm × seed")
    return rows


def sample_thoughts(run: RunDir, split: str = "comparison", n: int = 3) -> str:
    """A few chunks with their teacher thoughts, for the notebook."""
    recs = read_jsonl(run.file(f"thoughts/{split}.jsonl"))[:n]
    lines = []
    for r in recs:
        lines.append(f"── {r['doc_id']} ──\n{r['head']}")
        for x, z in zip(r["suffixes"], r["thoughts"]):
            lines.append(f"   [thought: {z}]\n{x.rstrip()}")
    return "\n".join(lines)
