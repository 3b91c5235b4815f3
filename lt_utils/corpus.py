"""Stage 01: generate the synthetic world's splits and the study's tokenizer.

Writes, inside the stage's run directory:
  docs/<split>.jsonl      documents of every training split and the validation docs
  eval_problems.jsonl     held-out problems with answers, family and difficulty
  tokenizer/              the trained PreTrainedTokenizerFast
  stats.json              documents, units and tokens per split and family
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import world
from .config import require
from .runs import RunDir, read_jsonl, write_json, write_jsonl
from .tokens import encode, load_tokenizer, train_tokenizer

DOC_SPLITS = ("comparison", "fresh", "warmstart", "bootstrap", "valid")


@dataclass(frozen=True)
class DataPrepConfig:
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
    eval_problems: int = 100               # held-out problems with answers
    vocab_size: int = 384                  # BPE vocabulary incl. 256 byte symbols and 7 special tokens
    overwrite: bool = False                # redo a finished stage

    def __post_init__(self):
        unknown = [f for f in self.families if f not in world.FAMILIES]
        require(not unknown, f"families: unknown family '{unknown[0] if unknown else ''}' "
                             f"(known: {', '.join(world.FAMILIES)})")
        require(len(self.families) > 0, "families must name at least one family")
        bad = [k for k in self.difficulty if k not in world.FAMILIES]
        require(not bad, f"difficulty: unknown family '{bad[0] if bad else ''}'")
        require(1 <= self.units_per_doc_min <= self.units_per_doc_max,
                "units_per_doc_min must be ≥ 1 and ≤ units_per_doc_max")
        require(self.comparison_docs > 0 and self.valid_docs > 0 and self.eval_problems > 0,
                "comparison_docs, valid_docs and eval_problems must be > 0")
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
    eval_path = run.file("eval_problems.jsonl")
    if not eval_path.exists():
        problems = world.generate_problems("eval", cfg.eval_problems, families=cfg.families,
                                           difficulty=cfg.difficulty, seed=cfg.seed)
        write_jsonl(eval_path, [{"question": u.question, "answer": u.answer, "family": u.family,
                                 "difficulty": u.difficulty, "uid": u.uid} for u in problems])
    run.add_artifact("eval_problems.jsonl", f"{cfg.eval_problems} held-out problems with answers")
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


def load_documents(data_dir: str | Path, split: str) -> list[world.Document]:
    return [world.Document.from_dict(r) for r in read_jsonl(Path(data_dir) / "docs" / f"{split}.jsonl")]


def eval_exemplars(data_dir: str | Path, n_shots: int) -> list[dict]:
    """The few-shot exemplars every training run is evaluated with: solved problems of the validation split."""
    from .evaluate import exemplar_units

    return exemplar_units(load_documents(data_dir, "valid"), n_shots) if n_shots else []


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
    return out


def stats_table(stats: dict):
    """The stats as a DataFrame for display."""
    import pandas as pd

    rows = [{"split": s, **{k: v for k, v in d.items() if k != "families"},
             "families": ", ".join(f"{k}: {v}" for k, v in d["families"].items())} for s, d in stats.items()]
    return pd.DataFrame(rows).set_index("split")


def show_examples(data_dir: str | Path, split: str = "comparison", n: int = 2) -> str:
    """A few documents with the ground-truth thought behind each problem, as text."""
    lines = []
    for d in load_documents(data_dir, split)[:n]:
        lines.append(f"── {d.doc_id} ──")
        lines.append(d.text.rstrip())
        lines.append("   thoughts:")
        lines.extend(f"   • {u.thought}" for u in d.units)
    return "\n".join(lines)
