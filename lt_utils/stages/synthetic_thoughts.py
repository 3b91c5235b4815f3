"""Stage 02: teacher thoughts for the method-comparison corpus, and training every arm at equal raw data.

Each arm turns the same raw documents into training text (Ruan et al. 2025,
§4): `raw_repeat` repeats the raw text; `raw_fresh` reads fresh documents
instead (the unconstrained-data reference); `wrap_orig` trains only on WRAP
rephrasings in four styles and `wrap_cot` on rephrasings with the reasoning
written in; `latent_thoughts` trains on the raw text with one teacher thought
per chunk in the random prior/posterior layout.  Every arm trains for the same
number of tokens, over the same seeds, and is evaluated along the way on the
same held-out problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lt_utils.runtime.config import pick, require, require_min, require_study_name
from lt_utils.stages.base_model import stage_model_spec
from lt_utils.stages.data_prep import (dev_problems_path, eval_exemplars, eval_tasks, is_text, iter_documents, load_documents,
                     raw_record)
from lt_utils.data import ThoughtDoc, chunk_document, layout_ids, token_ratio, tokenize_docs
from lt_utils.paper.llm_teacher import TEACHERS
from lt_utils.runtime.runs import RunDir, read_json, read_jsonl, require_done, write_json, write_jsonl
from lt_utils.teacher import NoisyOracleTeacher, OracleTeacher, ThoughtCache, thought_quality, write_thoughts
from lt_utils.tokens import SpecialIds, load_tokenizer
from lt_utils.world.units import THOUGHT_STYLES
from lt_utils.train import TrainingParams, TrainJob, TrainSpec, eval_options, run_jobs


@dataclass(frozen=True)
class Arm:
    """How an arm turns the corpus into training text."""

    layout: str          # data.LAYOUTS entry
    source: str          # which split's raw documents it is built from
    text: str            # "raw", "teacher" (thoughts per chunk), "wrap_orig" or "wrap_cot" (rewrites only)
    eval_style: str      # few-shot exemplar style at evaluation (evaluate.STYLES)
    error_rate: float | None = None   # teacher error rate of this arm (None: the config's)

    @property
    def latent_eval(self) -> bool:
        return self.eval_style == "latent"


ARMS = {
    "raw_repeat": Arm(layout="raw", source="comparison", text="raw", eval_style="direct"),
    "raw_fresh": Arm(layout="raw", source="fresh", text="raw", eval_style="direct"),
    "wrap_orig": Arm(layout="thought_only", source="comparison", text="wrap_orig", eval_style="direct"),
    "wrap_cot": Arm(layout="thought_only", source="comparison", text="wrap_cot", eval_style="cot"),
    "latent_thoughts": Arm(layout="random", source="comparison", text="teacher", eval_style="latent"),
}
SWEEP_PREFIX = "latent_err"


def sweep_arm_name(error_rate: float) -> str:
    """Name of the latent arm whose teacher errs at `error_rate` (the teacher-quality sweep)."""
    return f"{SWEEP_PREFIX}{error_rate:g}"


def teacher_quality_file(split: str, error_rate: float | None = None) -> str:
    """Where stage 02 stores the verified quality of a teacher setting's thoughts (None: the config's teacher)."""
    tag = split if error_rate is None else f"{split}_{sweep_arm_name(error_rate)}"
    return f"teacher_quality_{tag}.json"


def sweep_error_rate(arm: str) -> float | None:
    """The teacher error rate of a sweep arm's name, None for any other arm."""
    return float(arm[len(SWEEP_PREFIX):]) if arm.startswith(SWEEP_PREFIX) else None


@dataclass(frozen=True)
class SyntheticThoughtsConfig(TrainingParams):
    study: str = "smoke"                    # runs/<study>/... groups every stage of one study
    run_root: str = "runs"                  # where run directories live
    data_stage: str = "01_data_prep"        # input: runs/<study>/<data_stage>
    arms: list[str] = field(default_factory=lambda: ["raw_repeat", "latent_thoughts"])  # arms to train
    seeds: list[int] = field(default_factory=lambda: [0])   # one training run per arm and seed
    arm_seeds: dict[str, list[int]] = field(default_factory=dict)   # arm -> its seeds, where not `seeds`
    teacher: str = "oracle"                 # who writes the thoughts: oracle (world), api or local (llm_teacher)
    teacher_options: dict[str, Any] = field(default_factory=dict)  # api / local: keyword arguments of the teacher
    chunk_mean_units: float = 1.0           # mean problems per chunk (Poisson(mean−1)+1)
    chunk_max_units: int = 20               # cap on problems per chunk
    prefix_chunks: int = 1                  # previous chunks the teacher sees as context (paper: 1)
    teacher_error_rate: float = 0.0         # oracle: chance a unit's thought has one wrong step
    teacher_drop_rate: float = 0.0          # oracle: chance a unit's thought misses one step
    thought_style: str = "compact"          # oracle: compact (sums/differences in one step) or spelled (by columns;
                                            # world.THOUGHT_STYLES)
    teacher_sweep: list[float] = field(default_factory=list)  # extra latent arms whose teacher errs at these rates
    wrap_orig_repeats: int = 5              # WRAP-Orig rewrites per document (paper: 5)
    wrap_cot_repeats: int = 4               # WRAP-CoT rewrites per document (paper: 4)
    rewrite_seed: int = 42                  # seed of the rephraser's style and wording draws
    steps: int = 40                         # optimizer steps per run (same for every arm)
    overwrite: bool = False                 # redo a finished stage

    def __post_init__(self):
        bad = [a for a in self.arms if a not in ARMS]
        require(not bad, f"arms: unknown arm '{bad[0] if bad else ''}' (known: {', '.join(ARMS)})")
        require(len(self.seeds) > 0, "seeds must list at least one seed")
        bad = sorted(set(self.arm_seeds) - set(arm_names(self.arms, self.teacher_sweep)))
        require(not bad, f"arm_seeds: '{bad[0] if bad else ''}' is not an arm this config trains")
        require(all(v and min(v) >= 0 for v in self.arm_seeds.values()), "arm_seeds: each arm needs seeds ≥ 0")
        require(self.teacher in TEACHERS, f"teacher: unknown teacher '{self.teacher}' (known: {', '.join(TEACHERS)})")
        require(self.thought_style in THOUGHT_STYLES,
                f"thought_style: must be one of {', '.join(THOUGHT_STYLES)}, got {self.thought_style!r}")
        require(self.teacher == "oracle" or self.thought_style == "compact",
                "thought_style: only the oracle teacher writes thoughts in a chosen style")
        require(self.teacher != "oracle" or not self.teacher_options,
                "teacher_options: the oracle teacher takes none (use teacher_error_rate / teacher_drop_rate)")
        if self.teacher != "oracle":
            import inspect

            known = set(inspect.signature(TEACHERS[self.teacher].__init__).parameters) - {"self", "prompt"}
            bad = sorted(set(self.teacher_options) - known)
            require(not bad, f"teacher_options: unknown option '{bad[0] if bad else ''}' for the {self.teacher} "
                             f"teacher (known: {', '.join(sorted(known))})")
        degraded = self.teacher_sweep or self.teacher_error_rate or self.teacher_drop_rate
        require(self.teacher == "oracle" or not degraded,
                "teacher_sweep, teacher_error_rate and teacher_drop_rate degrade the oracle teacher only")
        require(self.chunk_mean_units >= 1, "chunk_mean_units must be ≥ 1")
        require(0 <= self.teacher_error_rate <= 1 and 0 <= self.teacher_drop_rate <= 1,
                "teacher_error_rate and teacher_drop_rate must be in [0, 1]")
        require(all(0 < r <= 1 for r in self.teacher_sweep), "teacher_sweep rates must be in (0, 1]")
        require_min(self, 1, "wrap_orig_repeats", "wrap_cot_repeats", "chunk_max_units", "steps")
        require_min(self, 0, "seeds", "prefix_chunks", "rewrite_seed")
        require_study_name(self.study)
        self.check_training_params()


def arm_names(arms, teacher_sweep) -> list[str]:
    """The arms a config trains: the chosen `arms`, then one latent arm per teacher-sweep rate."""
    return list(arms) + [sweep_arm_name(r) for r in teacher_sweep]


def run_count(arms, teacher_sweep, seeds, arm_seeds) -> int:
    """Training runs of the stage, from plain values (the compute estimate counts them without a config)."""
    return sum(len(arm_seeds.get(a, seeds)) for a in arm_names(arms, teacher_sweep))


def seeds_of(cfg: SyntheticThoughtsConfig, arm: str) -> list[int]:
    """An arm's seeds: `arm_seeds[arm]` where set (fewer seeds where a claim's margin allows), else `seeds`."""
    return list(cfg.arm_seeds.get(arm, cfg.seeds))


def n_runs(cfg: SyntheticThoughtsConfig) -> int:
    """Training runs of the stage: every arm's seeds."""
    return run_count(cfg.arms, cfg.teacher_sweep, cfg.seeds, cfg.arm_seeds)


def arm_specs(cfg: SyntheticThoughtsConfig) -> dict[str, Arm]:
    """Every arm this config trains: the chosen `arms`, then one latent arm per teacher-sweep rate."""
    specs = {a: ARMS[a] for a in cfg.arms}
    for r in cfg.teacher_sweep:
        specs[sweep_arm_name(r)] = Arm(layout="random", source="comparison", text="teacher", eval_style="latent",
                                       error_rate=r)
    return specs


def data_dir_of(cfg: SyntheticThoughtsConfig) -> Path:
    from lt_utils.runtime.paths import resolve

    return require_done(resolve(cfg.run_root) / cfg.study / cfg.data_stage, "data-prep run")


def make_teacher(cfg: SyntheticThoughtsConfig, error_rate: float | None = None, prompt: str = "latent"):
    """The configured teacher.

    oracle: the world's ground truth, degraded to `error_rate` (default: the
    config's) and the config's drop rate.  api / local: a language model
    (`llm_teacher`) built from `teacher_options`, writing with `prompt`
    ("latent" thoughts, or a WRAP rewrite style).
    """
    if cfg.teacher != "oracle":
        from lt_utils.paper import llm_teacher

        try:
            return llm_teacher.make_teacher(cfg.teacher, **{**cfg.teacher_options, "prompt": prompt})
        except TypeError as e:
            raise ValueError(f"teacher_options: {e}") from None
    err = cfg.teacher_error_rate if error_rate is None else error_rate
    if err or cfg.teacher_drop_rate:
        return NoisyOracleTeacher(err, cfg.teacher_drop_rate, style=cfg.thought_style)
    return OracleTeacher(cfg.thought_style)


def chunks_of(cfg: SyntheticThoughtsConfig, docs):
    """Chunk documents as the teacher sees them: (heads, flat chunk list, (start, end) per document)."""
    heads, all_chunks, spans = [], [], []
    for d in docs:
        head, chunks = chunk_document(d.doc_id, d.segments(), mean_units=cfg.chunk_mean_units,
                                      max_units=cfg.chunk_max_units, prefix_chunks=cfg.prefix_chunks)
        heads.append(head)
        spans.append((len(all_chunks), len(all_chunks) + len(chunks)))
        all_chunks.extend(chunks)
    return heads, all_chunks, spans


def thought_docs(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path, split: str,
                 error_rate: float | None = None) -> Path:
    """Chunk the split's documents and attach one teacher thought per chunk (cached).

    With `error_rate` (a teacher-sweep arm) the teacher errs at that rate and
    the files carry the arm's name.
    """
    tag = split if error_rate is None else f"{split}_{sweep_arm_name(error_rate)}"
    path = run.file(f"thoughts/{tag}.jsonl")
    if not path.exists():
        docs = load_documents(data_dir, split)
        heads, all_chunks, spans = chunks_of(cfg, docs)
        teacher = make_teacher(cfg, error_rate)
        cache = ThoughtCache(run.file("thought_cache.sqlite"))
        try:
            thoughts = write_thoughts(teacher, all_chunks, cache)
        finally:
            cache.close()
        quality = teacher_quality_file(split, error_rate)
        # a text corpus has no verifier: only lengths are recorded
        verified = {} if is_text(data_dir) else thought_quality(all_chunks, thoughts)
        # an LLM teacher's replies this run: cut off, empty, refused (not text, over-long) -- never silent
        replies = teacher.tally() if hasattr(teacher, "tally") else {}
        if replies:
            run.log(kind="teacher_replies", split=tag, **replies)
        write_json(run.file(quality), {**verified, "teacher": teacher.name, "chunks": len(all_chunks),
                                       **({"replies": replies} if replies else {}),
                                       "mean_thought_chars": sum(map(len, thoughts)) / max(len(thoughts), 1),
                                       "error_rate": cfg.teacher_error_rate if error_rate is None else error_rate,
                                       "drop_rate": cfg.teacher_drop_rate})
        run.add_artifact(quality, "teacher thought statistics (world: fraction of units whose thought verifies)")
        records = [ThoughtDoc(d.doc_id, h, [c.suffix for c in all_chunks[a:b]], thoughts[a:b]).to_dict()
                   for d, h, (a, b) in zip(docs, heads, spans)]
        write_jsonl(path, records)
    run.add_artifact(f"thoughts/{tag}.jsonl", f"{split} documents chunked, with one {cfg.teacher} thought per chunk")
    return path


def raw_docs(run: RunDir, data_dir: Path, split: str) -> Path:
    """The split's documents as ThoughtDocs without thoughts (one chunk per document)."""
    path = run.file(f"thoughts/{split}_raw.jsonl")
    if not path.exists():
        write_jsonl(path, (raw_record(d) for d in iter_documents(data_dir, split)))
    run.add_artifact(f"thoughts/{split}_raw.jsonl", f"{split} documents, raw")
    return path


def wrap_docs(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path, split: str, kind: str) -> Path:
    """WRAP rewrites of the split's documents (only the rewrite is trained on, never the raw text)."""
    from lt_utils.wrap_baselines import rephrase_corpus

    path = run.file(f"thoughts/{split}_{kind}.jsonl")
    if not path.exists():
        repeats = cfg.wrap_orig_repeats if kind == "wrap_orig" else cfg.wrap_cot_repeats
        if is_text(data_dir):
            docs = llm_rephrase_corpus(run, cfg, load_documents(data_dir, split), kind, repeats)
        else:
            docs = rephrase_corpus(load_documents(data_dir, split), kind, repeats, cfg.rewrite_seed)
        write_jsonl(path, [d.to_dict() for d in docs])
    run.add_artifact(f"thoughts/{split}_{kind}.jsonl", f"{kind} rewrites of the {split} documents")
    return path


def llm_rephrase_corpus(run: RunDir, cfg: SyntheticThoughtsConfig, docs, kind: str, repeats: int) -> list[ThoughtDoc]:
    """WRAP rewrites of text documents by the configured language-model teacher (cached like thoughts).

    WRAP-Orig draws one of the four styles per document and repeat (seeded by
    document id and repeat, as `wrap_baselines.rewrite_rng`); WRAP-CoT has one style.
    Each rewrite is a thought-only document `doc_id#r<repeat>`, the same shape
    as the world's `wrap_baselines.rephrase_corpus`.
    """
    from lt_utils.data import Chunk
    from lt_utils.paper.llm_teacher import WRAP_STYLES
    from lt_utils.wrap_baselines import rewrite_rng

    if cfg.teacher == "oracle":
        raise ValueError("WRAP arms on a text corpus need a language-model teacher (teacher: api or local)")
    jobs = []   # (doc_id, repeat, style)
    for d in docs:
        for r in range(repeats):
            draw = int(rewrite_rng(kind, cfg.rewrite_seed, d.doc_id, r).integers(len(WRAP_STYLES)))
            style = "wrap_cot" if kind == "wrap_cot" else WRAP_STYLES[draw]
            jobs.append((d, r, style))
    texts: dict[tuple[str, int], str] = {}
    cache = ThoughtCache(run.file("thought_cache.sqlite"))
    try:
        for style in sorted({s for _, _, s in jobs}):
            mine = [(d, r) for d, r, s in jobs if s == style]
            chunks = [Chunk(d.doc_id, r, "", d.text) for d, r in mine]
            out = write_thoughts(make_teacher(cfg, prompt=style), chunks, cache)
            texts.update({(d.doc_id, r): t for (d, r), t in zip(mine, out)})
    finally:
        cache.close()
    return [ThoughtDoc(f"{d.doc_id}#r{r}", "", [], [texts[(d.doc_id, r)]]) for d, r, _ in jobs]


def arm_corpus(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path, arm: str) -> Path:
    spec = arm_specs(cfg)[arm]
    if spec.text == "teacher":
        return thought_docs(run, cfg, data_dir, spec.source, spec.error_rate)
    if spec.text == "raw":
        return raw_docs(run, data_dir, spec.source)
    return wrap_docs(run, cfg, data_dir, spec.source, spec.text)


def arm_token_ratios(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path) -> dict[str, float]:
    """Training tokens per raw token of each arm's corpus, measured on our data (for the effective-raw axis).

    For raw and latent arms it is the laid-out corpus over its own raw text; for
    WRAP arms, the rewrite tokens over the raw tokens of the documents they
    rewrite (times the number of rewrites per document).
    """
    tok = load_tokenizer(data_dir / "tokenizer")
    ids = SpecialIds.of(tok)

    def tokenized(path):
        return tokenize_docs(tok, [ThoughtDoc.from_dict(r) for r in read_jsonl(path)])

    if is_text(data_dir):   # a paper-scale corpus: counted from the token stores training reads anyway
        from lt_utils.token_store import layout_ratio, open_store

        ratios = {}
        for arm, spec in arm_specs(cfg).items():
            store = open_store(arm_corpus(run, cfg, data_dir, arm), tok)
            if spec.text.startswith("wrap"):
                source = open_store(raw_docs(run, data_dir, spec.source), tok)
                repeats = cfg.wrap_orig_repeats if spec.text == "wrap_orig" else cfg.wrap_cot_repeats
                laid_out = float(store.thought_len.sum()) + 2 * len(store)   # BOS rewrite EOS per document
                ratios[arm] = laid_out / max(float(source.raw_len.sum()), 1.0) / repeats
            else:
                ratios[arm] = layout_ratio(store, spec.layout)
        write_json(run.file("token_ratios.json"), ratios)
        run.add_artifact("token_ratios.json", "training tokens per raw token, per arm")
        return ratios
    ratios = {}
    for arm, spec in arm_specs(cfg).items():
        docs = tokenized(arm_corpus(run, cfg, data_dir, arm))
        if spec.text.startswith("wrap"):
            source_raw = sum(d.raw_len for d in tokenized(raw_docs(run, data_dir, spec.source)))
            total = sum(len(layout_ids(d, spec.layout, ids)[0]) for d in docs)
            ratios[arm] = total / max(source_raw, 1) / (cfg.wrap_orig_repeats if spec.text == "wrap_orig"
                                                           else cfg.wrap_cot_repeats)
        else:
            ratios[arm] = token_ratio(docs, spec.layout, ids)
    write_json(run.file("token_ratios.json"), ratios)
    run.add_artifact("token_ratios.json", "training tokens per raw token, per arm")
    return ratios


def make_jobs(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path, progress: bool) -> list[TrainJob]:
    model = stage_model_spec(cfg, data_dir)   # the study's base model with init: base
    train = pick(TrainSpec, cfg)
    shots = tuple(eval_exemplars(data_dir, cfg.eval_shots))
    tasks = eval_tasks(data_dir)
    jobs = []
    for arm, spec in arm_specs(cfg).items():
        corpus = arm_corpus(run, cfg, data_dir, arm)
        for seed in seeds_of(cfg, arm):
            jobs.append(TrainJob(
                out_dir=str(run.file(f"train/{arm}/seed{seed}")), tokenizer_dir=str(data_dir / "tokenizer"),
                corpus_path=str(corpus), layout=spec.layout, model=model, train=train, seed=seed,
                eval_problems_path="" if tasks else str(data_dir / "eval_problems.jsonl"),
                dev_problems_path=dev_problems_path(data_dir), max_dev_problems=cfg.eval_dev_problems,
                valid_path=str(raw_docs(run, data_dir, "valid")), latent_eval=spec.latent_eval,
                eval_style=spec.eval_style, eval_shots=shots, max_eval_problems=cfg.max_eval_problems,
                eval_tasks=tasks, eval_options=eval_options(cfg), threads=cfg.threads_per_worker,
                info={"arm": arm, "stage": run.path.name, "name": f"{arm}/seed{seed}"}, progress=progress))
    return jobs


def train_arms(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path) -> list[dict]:
    """Train every arm × seed (finished runs are skipped, interrupted ones resume); returns final metrics."""
    jobs = make_jobs(run, cfg, data_dir, progress=cfg.n_workers <= 1)
    finals = run_jobs(jobs, cfg, run.file("jobs"), desc="training runs")
    run.add_training_runs(j.out_dir for j in jobs)
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


def teacher_settings(cfg: SyntheticThoughtsConfig) -> list[float | None]:
    """Error rates of the teachers this config needs: None for the config's own, then each sweep rate."""
    own = [None] if any(s.text == "teacher" and s.error_rate is None for s in arm_specs(cfg).values()) else []
    return own + list(cfg.teacher_sweep)


def teacher_quality_table(run: RunDir, cfg: SyntheticThoughtsConfig, data_dir: Path):
    """Verified quality of every teacher setting's thoughts on the comparison corpus (writes them if needed)."""
    import pandas as pd

    rows = []
    for err in teacher_settings(cfg):
        thought_docs(run, cfg, data_dir, "comparison", err)
        q = read_json(run.file(teacher_quality_file("comparison", err)))
        row = {"arm": "latent_thoughts" if err is None else sweep_arm_name(err),
               "teacher": q.get("teacher", cfg.teacher), "error_rate": q.get("error_rate"),
               "drop_rate": q.get("drop_rate")}
        if "fraction_correct" in q:
            row.update({"units": q["units"], "thoughts_that_verify_%": round(100 * q["fraction_correct"], 1)})
        else:   # a text corpus: nothing to verify against
            row.update({"chunks": q.get("chunks"), "mean_thought_chars": round(q.get("mean_thought_chars", 0), 1)})
        rows.append(row)
    return pd.DataFrame(rows)
