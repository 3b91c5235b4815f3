"""Stage 01: the study's documents, evaluation problems and tokenizer, from one of two sources.

`source: world` (the CPU default) generates the synthetic compressed-math world
and trains a small BPE.  `source: text` reads any text corpus in FineMath's
schema from local files (FineMath-4+ at paper scale), cuts the paper's
interleaved splits to token budgets while streaming, takes a pretrained
tokenizer (TinyLlama's) plus the four latent tokens, and copies local MATH and
GSM8K test files for evaluation.

Writes, inside the stage's run directory:
  docs/<split>.jsonl      documents of every training split and the validation docs
  eval_problems.jsonl     world: held-out test problems with answers, family and difficulty
  dev_problems.jsonl      world: held-out dev problems, disjoint from the test problems (training-time evaluation)
  eval/<task>.jsonl       text: MATH / GSM8K problems in their hub schema
  source.json             text: where the corpus came from and how it was cut
  tokenizer/              a PreTrainedTokenizerFast with the latent tokens
  stats.json              documents and tokens per split (world: also units and families)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lt_utils import world
from lt_utils.runtime.config import require, require_min, require_study_name
from lt_utils.runtime.skipped_inputs import Rejects
from lt_utils.runtime.runs import RunDir, read_json, read_jsonl, write_json, write_jsonl
from lt_utils.tokens import encode, load_tokenizer, train_tokenizer
from lt_utils.stages.base_model import BaseParams, base_exemplars

DOC_SPLITS = ("comparison", "fresh", "warmstart", "bootstrap", "valid")
SOURCES = ("world", "text")
# Text source: which of the paper's slices (text_corpus.paper_splits) each split of ours is cut from.  As in the
# paper, the method comparison and the EM warmstart share one corpus (its "warmstart" slice), raw_fresh reads the
# whole train split and the EM corpus is the disjoint "bootstrap" slice.
TEXT_SPLITS = {"comparison": "warmstart", "fresh": "train", "bootstrap": "bootstrap", "valid": "val"}


@dataclass(frozen=True)
class DataPrepConfig(BaseParams):
    study: str = "smoke"                   # runs/<study>/... groups every stage of one study
    run_root: str = "runs"                 # where run directories live (relative to the project root)
    seed: int = 0                          # world generation seed
    families: list[str] = field(default_factory=lambda: ["addition"])  # problem families in the documents
    difficulty: dict[str, int] = field(default_factory=dict)          # per-family difficulty overrides
    units_per_doc_min: int = 3             # problems per document, inclusive range
    units_per_doc_max: int = 6
    comparison_docs: int = 200             # method-comparison corpus
    fresh_docs: int = 200                  # fresh-data pool (raw_fresh baseline)
    warmstart_docs: int = 50               # EM warmstart corpus (teacher thoughts)
    bootstrap_docs: int = 100              # EM bootstrap corpus (raw only; thoughts inferred)
    valid_docs: int = 50                   # validation documents (NLL)
    eval_problems: int = 100               # held-out test problems with answers (the final evaluation)
    dev_problems: int = 100                # world: held-out dev problems, disjoint from test (evaluated in training)
    vocab_size: int = 384                  # BPE vocabulary incl. 256 byte symbols and 7 special tokens
    source: str = "world"                  # "world" (synthetic) or "text" (a local corpus in FineMath's schema)
    text_source: str = ""                  # text: local jsonl / jsonl.gz / parquet file, directory or glob
    text_field: str = "text"               # text: field holding the document
    id_field: str = ""                     # text: field holding a stable id ("" = file stem and line number)
    split_specs: dict[str, str] = field(default_factory=dict)   # text: 'a:b:n' overrides of the paper's slices
    comparison_tokens: int = 0             # text: token budget of the comparison (= warmstart) corpus
    fresh_tokens: int = 0                  # text: token budget of the fresh pool (raw_fresh)
    bootstrap_tokens: int = 0              # text: token budget of the fixed EM corpus
    tokenizer_from: str = ""               # text: HF tokenizer (hub id or local dir) to add the latent tokens to
    math_eval_path: str = ""               # text: local MATH test jsonl (problem, solution, level, type)
    gsm8k_eval_path: str = ""              # text: local GSM8K test jsonl (question, answer)
    overwrite: bool = False                # redo a finished stage

    def __post_init__(self):
        require(self.source in SOURCES, f"source must be one of {', '.join(SOURCES)}, got '{self.source}'")
        self.check_base_params()   # the base model's parameters (base_model.BaseParams)
        require(self.source == "world" or not self.base_steps,
                "base_steps: a base model is built from the world; with source: text, runs start from init_from")
        require_study_name(self.study)
        require_min(self, 0, "seed", "fresh_docs", "warmstart_docs", "bootstrap_docs", "comparison_tokens",
                    "fresh_tokens", "bootstrap_tokens")
        bad = [k for k in self.split_specs if k not in ("val", "train", "warmstart", "bootstrap")]
        require(not bad, f"split_specs: unknown split '{bad[0] if bad else ''}' (known: val, train, warmstart, "
                         f"bootstrap)")
        from lt_utils.paper.text_corpus import parse_slice

        for name, spec in self.split_specs.items():
            try:
                parse_slice(spec)
            except ValueError as e:
                require(False, f"split_specs.{name}: {e}")
        if self.source == "text":
            require(bool(self.text_source),
                    "text_source: a local file, directory or glob is required with source: text")
            require(bool(self.tokenizer_from), "tokenizer_from: an HF tokenizer is required with source: text")
            require(self.comparison_tokens > 0, "comparison_tokens must be > 0 with source: text")
            require(self.fresh_tokens >= 0 and self.bootstrap_tokens >= 0, "token budgets must be ≥ 0")
            require(self.valid_docs > 0 and self.eval_problems >= 0,
                    "valid_docs must be > 0 and eval_problems ≥ 0 (0 means every problem)")
            return
        unknown = [f for f in self.families if f not in world.FAMILIES]
        require(not unknown, f"families: unknown family '{unknown[0] if unknown else ''}' "
                             f"(known: {', '.join(world.FAMILIES)})")
        require(len(self.families) > 0, "families must name at least one family")
        bad = [k for k in self.difficulty if k not in world.FAMILIES]
        require(not bad, f"difficulty: unknown family '{bad[0] if bad else ''}'")
        require_min(self, 1, "units_per_doc_min")
        require(self.units_per_doc_max >= self.units_per_doc_min,
                f"units_per_doc_max must be ≥ units_per_doc_min ({self.units_per_doc_min}), "
                f"got {self.units_per_doc_max}")
        require(self.comparison_docs > 0 and self.valid_docs > 0 and self.eval_problems > 0,
                "comparison_docs, valid_docs and eval_problems must be > 0")
        require(self.dev_problems >= 0, f"dev_problems must be ≥ 0, got {self.dev_problems}")
        require(self.vocab_size >= 270, "vocab_size must be ≥ 270 (256 bytes + special tokens + a few merges)")


def build_world(run: RunDir, cfg: DataPrepConfig) -> dict:
    """Generate every split and the tokenizer (skipping files that already exist); returns stats."""
    units = (cfg.units_per_doc_min, cfg.units_per_doc_max)
    sizes = {"comparison": cfg.comparison_docs, "fresh": cfg.fresh_docs, "warmstart": cfg.warmstart_docs,
             "bootstrap": cfg.bootstrap_docs, "valid": cfg.valid_docs}
    for split in DOC_SPLITS:
        path = run.file(f"docs/{split}.jsonl")
        if not path.exists():
            docs = world.generate_documents(split, sizes[split], families=cfg.families, difficulty=cfg.difficulty,
                                            units_per_doc=units, seed=cfg.seed) if sizes[split] else []
            write_jsonl(path, [d.to_dict() for d in docs])
        run.add_artifact(f"docs/{split}.jsonl", f"{sizes[split]} documents of the {split} split")
    eval_path, dev_path = run.file("eval_problems.jsonl"), run.file("dev_problems.jsonl")
    if not (eval_path.exists() and dev_path.exists()):
        # one draw of distinct held-out problems: the test set is its first part (the same problems as a draw of
        # the test set alone), the dev set the rest, so the two are disjoint
        problems = world.generate_problems("eval", cfg.eval_problems + cfg.dev_problems, families=cfg.families,
                                           difficulty=cfg.difficulty, seed=cfg.seed)
        recs = [{"question": u.question, "answer": u.answer, "family": u.family, "difficulty": u.difficulty,
                 "uid": u.uid} for u in problems]
        write_jsonl(eval_path, recs[:cfg.eval_problems])
        write_jsonl(dev_path, recs[cfg.eval_problems:])
    run.add_artifact("eval_problems.jsonl", f"{cfg.eval_problems} held-out test problems with answers")
    run.add_artifact("dev_problems.jsonl", f"{cfg.dev_problems} held-out dev problems, disjoint from the test set")
    tok_dir = run.file("tokenizer")
    if not (tok_dir / "tokenizer.json").exists():
        texts = []
        for split in ("comparison", "fresh", "warmstart", "bootstrap"):
            for d in load_documents(run.path, split):
                texts.append(d.text)
                texts.extend(u.thought for u in d.units)
        tok = train_tokenizer(texts, cfg.vocab_size)
        tmp = run.file("tokenizer.tmp")
        tok.save_pretrained(str(tmp))
        tmp.rename(tok_dir)
    run.add_artifact("tokenizer/tokenizer.json", "byte-level BPE with digits split and latent special tokens")
    stats = corpus_stats(run.path)
    write_json(run.file("stats.json"), stats)
    run.add_artifact("stats.json", "documents, units and tokens per split and family")
    return stats


# --------------------------------------------------------------------------- text source
@dataclass(frozen=True)
class TextDocument:
    """A document of a text corpus: no problems with known answers, cut into sentence units for chunking."""

    doc_id: str
    text: str
    units: tuple = ()

    def segments(self) -> list[str]:
        """An empty head, then the paper's sentence units (what `data.chunk_document` chunks)."""
        from lt_utils.paper.text_corpus import sentence_units

        return ["", *sentence_units(self.text)]

    def to_dict(self) -> dict:
        return {"doc_id": self.doc_id, "text": self.text}


def source_of(data_dir: str | Path) -> str:
    """"text" when stage 01 read a text corpus, else "world"."""
    path = Path(data_dir) / "source.json"
    return read_json(path)["source"] if path.exists() else "world"


def is_text(data_dir: str | Path) -> bool:
    return source_of(data_dir) == "text"


def _write_stream(path: Path, records, tokenizer, budget: int, desc: str) -> dict:
    """Write records as jsonl while counting tokens (text + BOS + EOS); stop once `budget` is reached.

    Streams through `runs.write_jsonl`, so a corpus of billions of tokens never
    sits in memory and the file appears only when complete.
    (`text_corpus.take_until_tokens` cuts the same way but would tokenize every
    document a second time for the count.)
    """
    from tqdm.auto import tqdm

    count = {"docs": 0, "raw_tokens": 0}

    def counted():
        with tqdm(total=budget or None, desc=desc, unit="tok", unit_scale=True, mininterval=2.0) as bar:
            for r in records:
                n = len(encode(tokenizer, r.text)) + 2
                count["docs"] += 1
                count["raw_tokens"] += n
                bar.update(n)
                yield {"doc_id": r.doc_id, "text": r.text}
                if budget and count["raw_tokens"] >= budget:
                    return

    write_jsonl(path, counted())
    return count


def _text_split(cfg: DataPrepConfig, name: str, rejects=None):
    """Records of the paper's slice `name` (with the config's overrides), streamed from the source files.

    Unusable records met on the way are counted in `rejects` (a `skipped_inputs.Rejects`) and skipped.
    """
    from lt_utils.paper.text_corpus import iter_records, paper_split

    records = iter_records(cfg.text_source, text_field=cfg.text_field, id_field=cfg.id_field or None,
                           rejects=rejects)
    return paper_split(records, name, cfg.split_specs)


def build_text_corpus(run: RunDir, cfg: DataPrepConfig) -> dict:
    """Tokenizer, the budgeted splits and the evaluation files of a text corpus; returns stats."""
    import itertools

    from lt_utils.paper.pretrained import add_llama_names
    from lt_utils.tokens import add_latent_tokens

    tok_dir = run.file("tokenizer")
    if not (tok_dir / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.tokenizer_from)
        add_llama_names(tok)
        add_latent_tokens(tok)
        tmp = run.file("tokenizer.tmp")
        tok.save_pretrained(str(tmp))
        tmp.rename(tok_dir)
    run.add_artifact("tokenizer/tokenizer_config.json", f"{cfg.tokenizer_from} with the four latent tokens")
    tok = load_tokenizer(tok_dir)
    stats_path = run.file("split_stats.json")
    stats = read_json(stats_path) if stats_path.exists() else {}
    budgets = {"comparison": cfg.comparison_tokens, "fresh": cfg.fresh_tokens, "bootstrap": cfg.bootstrap_tokens}
    for split, paper_name in TEXT_SPLITS.items():
        path = run.file(f"docs/{split}.jsonl")
        if split not in stats or not path.exists():
            rejects = Rejects()
            if split == "valid":
                records = itertools.islice(_text_split(cfg, paper_name, rejects), cfg.valid_docs)
                stats[split] = _write_stream(path, records, tok, 0, f"{split} docs")
            else:
                records = _text_split(cfg, paper_name, rejects) if budgets[split] else iter(())
                stats[split] = _write_stream(path, records, tok, budgets[split], f"{split} tokens")
            stats[split]["rejected"] = rejects.as_dict()   # records read for this split but unusable, by reason
            run.log(kind="rejected", source=split, **rejects.as_dict())
            write_json(stats_path, stats)
        run.add_artifact(f"docs/{split}.jsonl", f"{stats[split]['docs']} documents of the {split} split "
                                                f"(paper slice '{paper_name}')")
    for task, src in (("math", cfg.math_eval_path), ("gsm8k", cfg.gsm8k_eval_path)):
        if src:
            rejects = Rejects()
            n = copy_eval_problems(src, task, run.file(f"eval/{task}.jsonl"), cfg.eval_problems, rejects)
            stats[f"eval_{task}"] = {"docs": n, "rejected": rejects.as_dict()}
            run.log(kind="rejected", source=f"eval_{task}", **rejects.as_dict())
            run.add_artifact(f"eval/{task}.jsonl", f"{n} {task} test problems")
    write_json(run.file("source.json"), {"source": "text", "text_source": cfg.text_source,
                                         "tokenizer_from": cfg.tokenizer_from, "splits": TEXT_SPLITS})
    write_json(run.file("stats.json"), stats)
    run.add_artifact("stats.json", "documents and tokens per split")
    return stats


def copy_eval_problems(src: str | Path, task: str, dest: Path, limit: int = 0, rejects=None) -> int:
    """Validate a local MATH / GSM8K file (math_eval.load_problems) and store its first `limit` problems (0: all).

    With `rejects`, problems without a usable answer are counted there and skipped; a file with none left is an error.
    """
    from lt_utils.math_eval import load_problems

    problems = load_problems(src, task, limit=limit or None, rejects=rejects)
    if not problems:
        raise ValueError(f"{src}: no usable {task} problem"
                         + (f" (rejected: {rejects.as_dict()['by_reason']})" if rejects is not None else ""))
    if task == "math":
        recs = [{"problem": p.question, "solution": p.solution, "level": p.level, "type": p.type} for p in problems]
    else:
        recs = [{"question": p.question, "answer": p.solution} for p in problems]
    write_jsonl(dest, recs)
    return len(recs)


def dev_problems_path(data_dir: str | Path) -> str:
    """The world's dev problems stage 01 stored, or "" (a text corpus has none: its MATH/GSM8K files are test)."""
    path = Path(data_dir) / "dev_problems.jsonl"
    return str(path) if path.exists() else ""


def eval_tasks(data_dir: str | Path) -> dict[str, str]:
    """The MATH / GSM8K files stage 01 stored (text source), task -> path."""
    return {t: str(p) for t in ("math", "gsm8k") if (p := Path(data_dir) / "eval" / f"{t}.jsonl").exists()}


def build(run: RunDir, cfg: DataPrepConfig) -> dict:
    """Stage 01 for the configured source."""
    return build_text_corpus(run, cfg) if cfg.source == "text" else build_world(run, cfg)


def _document(rec: dict):
    return world.Document.from_dict(rec) if "units" in rec else TextDocument(rec["doc_id"], rec["text"])


def load_documents(data_dir: str | Path, split: str) -> list:
    """The split's documents: `world.Document`s, or `TextDocument`s for a text corpus."""
    return [_document(r) for r in read_jsonl(Path(data_dir) / "docs" / f"{split}.jsonl")]


def iter_documents(data_dir: str | Path, split: str):
    """The split's documents one at a time (a text split of billions of tokens is never loaded whole)."""
    from lt_utils.runtime.runs import iter_jsonl

    return (_document(r) for r in iter_jsonl(Path(data_dir) / "docs" / f"{split}.jsonl"))


def raw_record(doc) -> dict:
    """A document as a ThoughtDoc record without thoughts, for the raw layout.

    World: the first problem's prompt is the head and the rest one chunk.
    Text: the whole text as one chunk (no sentence splitting needed to train on raw text).
    """
    from lt_utils.data import ThoughtDoc

    if isinstance(doc, TextDocument):
        return ThoughtDoc(doc.doc_id, "", [doc.text], None).to_dict()
    segs = doc.segments()
    return ThoughtDoc(doc.doc_id, segs[0], ["".join(segs[1:])], None).to_dict()


def eval_exemplars(data_dir: str | Path, n_shots: int) -> list[dict]:
    """The few-shot exemplars every training run is evaluated with: solved problems of the validation split.

    A text corpus has no solved problems; MATH / GSM8K prompts bring their own exemplars (math_eval).
    """
    if is_text(data_dir):
        return []
    return base_exemplars(Path(data_dir), n_shots)


def corpus_stats(data_dir: str | Path) -> dict:
    """Counts per split: documents, units per family, raw tokens and ground-truth-thought tokens."""
    tok = load_tokenizer(Path(data_dir) / "tokenizer")
    out = {}
    for split in DOC_SPLITS:
        docs = load_documents(data_dir, split)
        fam = Counter(u.family for d in docs for u in d.units)
        raw = sum(len(encode(tok, d.text)) + 2 for d in docs)
        thought = sum(len(encode(tok, u.thought)) for d in docs for u in d.units)
        out[split] = {"docs": len(docs), "units": sum(fam.values()), "families": dict(fam),
                      "raw_tokens": raw, "thought_tokens": thought,
                      "thought_to_raw": thought / raw if raw else 0.0}
    problems = read_jsonl(Path(data_dir) / "eval_problems.jsonl")
    out["eval"] = {"problems": len(problems), "families": dict(Counter(p["family"] for p in problems))}
    if (dev_path := Path(data_dir) / "dev_problems.jsonl").exists():
        dev = read_jsonl(dev_path)
        out["dev"] = {"problems": len(dev), "families": dict(Counter(p["family"] for p in dev))}
    return out


def stats_table(stats: dict):
    """The stats as a DataFrame for display."""
    import pandas as pd

    rows = [{"split": s, **{k: v for k, v in d.items() if k != "families"},
             "families": ", ".join(f"{k}: {v}" for k, v in d.get("families", {}).items())} for s, d in stats.items()]
    return pd.DataFrame(rows).set_index("split")


def show_examples(data_dir: str | Path, split: str = "comparison", n: int = 2, max_chars: int = 600) -> str:
    """A few documents with the ground-truth thought behind each problem (world), or their sentence units (text)."""
    lines = []
    if is_text(data_dir):
        for d in load_documents(data_dir, split)[:n]:
            units = d.segments()[1:]
            lines.append(f"── {d.doc_id} ({len(units)} sentence units) ──")
            lines.extend(f"   [{i}] {u.strip()[:200]}" for i, u in enumerate(units[:max(1, max_chars // 100)]))
        return "\n".join(lines)
    for d in load_documents(data_dir, split)[:n]:
        lines.append(f"── {d.doc_id} ──")
        lines.append(d.text.rstrip())
        lines.append("   thoughts:")
        lines.extend(f"   • {u.thought}" for u in d.units)
    return "\n".join(lines)
