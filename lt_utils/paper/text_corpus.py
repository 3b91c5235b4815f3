"""Paper-scale data path for any text corpus (FineMath-4+ in Ruan et al. 2025).

1. `resolve_source` / `iter_records` stream documents from local jsonl,
   jsonl.gz or parquet files, one record at a time, each with a stable id, and
   apply the paper's interleaved slices `a:b:n` (keep record i when
   a <= i mod n < b) and rank sharding.  The paper shuffled the whole corpus
   once (terashuf, seed 42) before slicing; records here come in file order, so
   pass an already shuffled corpus to reproduce its splits exactly.
2. `paper_splits` / `paper_split` name the paper's val, train, warmstart and
   bootstrap slices; `take_until_tokens` cuts a stream at a token budget.
3. `sentence_units` and `chunk_text` cut a document into (prefix, suffix)
   chunks of Poisson-many sentences, seeded by the text itself, as the paper's
   chunker; `to_thought_doc` hands them to `data.layout_ids`.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from lt_utils.data import Chunk, ThoughtDoc, chunk_sizes, text_seed
from lt_utils.runtime.skipped_inputs import Rejects
from lt_utils.tokens import encode

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


# --------------------------------------------------------------------------- sources and records
@dataclass
class Record:
    """One document: a stable id, its text, its position in the whole stream and every source field."""

    doc_id: str
    text: str
    index: int   # global position over all files, before slicing and sharding
    fields: dict


def _kind(path: Path) -> str | None:
    return next((s for s in SUFFIXES if path.name.endswith(s)), None)


def resolve_source(source: str | Path) -> list[Path]:
    """Local data files of a file, a directory (searched recursively) or a glob, sorted.

    Hub dataset ids are refused: reading never touches the network, so the
    data must be downloaded once and the local directory passed instead.
    """
    s = str(source)
    p = Path(s).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f))
        if not files:
            raise FileNotFoundError(f"no {', '.join(SUFFIXES)} files under {p}")
        return files
    if any(c in s for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file() and _kind(Path(f)))
        if not files:
            raise FileNotFoundError(f"glob {s!r} matches no {', '.join(SUFFIXES)} files")
        return files
    repo, _, subset = s.partition(":")
    include = f" --include '{subset}/*'" if subset else ""
    raise FileNotFoundError(
        f"{s!r} is not a local file, directory or glob; hub datasets must be downloaded first, e.g. "
        f"`huggingface-cli download {repo} --repo-type dataset{include} --local-dir data/{repo.split('/')[-1]}`, "
        f"then pass that local directory")


def parse_slice(spec: str) -> tuple[int, int, int]:
    """'a:b:n' -> (a, b, n) with 0 <= a < b <= n."""
    try:
        a, b, n = (int(x) for x in str(spec).split(":"))
    except ValueError:
        a = b = n = -1
    if not 0 <= a < b <= n:
        raise ValueError(f"bad slice_spec {spec!r}: expected 'a:b:n' with integers 0 <= a < b <= n")
    return a, b, n


def subset(records: Iterable, slice_spec: str | None) -> Iterator:
    """Keep the i-th item of `records` (its own position, from 0) when a <= i mod n < b."""
    if slice_spec is None:
        return iter(records)
    a, b, n = parse_slice(slice_spec)
    return (r for i, r in enumerate(records) if a <= i % n < b)


def _check_shard(shard_index: int, num_shards: int) -> None:
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards})")


def shard(records: Iterable, shard_index: int = 0, num_shards: int = 1) -> Iterator:
    """Item i of `records` goes to shard i mod num_shards (one shard per worker or rank)."""
    _check_shard(shard_index, num_shards)
    return (r for i, r in enumerate(records) if i % num_shards == shard_index)


# A document longer than this is rejected as runaway (a concatenated dump, a binary blob read as text):
# FineMath-4+ documents are a few thousand characters, and one such record would stall chunking.
MAX_DOC_CHARS = 2_000_000


def _reject(rejects: Rejects | None, reason: str, where: str, message: str) -> None:
    """Count a bad record in `rejects`, or raise `message` when the caller keeps no count."""
    if rejects is None:
        raise ValueError(f"{where}: {message}")
    rejects.add(reason, where)


def _rows(path: Path, rejects: Rejects | None = None) -> Iterator[tuple[int, dict]]:
    """(line or row number from 1, record) of one file, read lazily; unreadable lines go to `rejects`."""
    if _kind(path) == ".parquet":
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        yield from enumerate((row for b in batches for row in b.to_pylist()), 1)
        return
    with (gzip.open if _kind(path) == ".jsonl.gz" else open)(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _reject(rejects, "non_utf8", f"{path}:{n}", f"not UTF-8 ({e.reason} at byte {e.start})")
                continue
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    _reject(rejects, "invalid_json", f"{path}:{n}", f"not valid JSON ({e.msg})")
                    continue
                yield n, row


def iter_records(paths: str | Path | Sequence[str | Path], *, text_field: str = "text", id_field: str | None = None,
                 shard_index: int = 0, num_shards: int = 1, slice_spec: str | None = None,
                 rejects: Rejects | None = None, max_chars: int = MAX_DOC_CHARS) -> Iterator[Record]:
    """Stream `Record`s from local files in order, then slice (global index), then shard.

    doc_id is the `id_field` value when the record has one, else
    "<file stem>:<line number>" (row number from 1 for parquet), so it does
    not depend on slicing or sharding.  Blank jsonl lines are skipped and not
    counted as records.  Files are checked before anything is read, so a
    missing pyarrow or a bad spec fails at once, not hours into a run.

    A bad record -- not UTF-8, not JSON, not an object, without `text_field`,
    text that is not a string, blank, or longer than `max_chars` -- raises a
    one-line error naming file and line; with `rejects` it is counted there
    by reason instead, skipped, and takes no index.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = [f for p in items for f in resolve_source(p)]
    for f in files:
        if _kind(f) is None:
            raise ValueError(f"{f}: unsupported file type (expected {', '.join(SUFFIXES)})")
        if _kind(f) == ".parquet":
            try:
                import pyarrow.parquet  # noqa: F401
            except ImportError:
                raise ImportError(f"{f}: reading parquet needs pyarrow, which is not installed "
                                  f"(install it or convert the data to jsonl)") from None
    _check_shard(shard_index, num_shards)

    def stream() -> Iterator[Record]:
        i = 0
        for f in files:
            stem = f.name[: -len(_kind(f))]
            for n, row in _rows(f, rejects):
                where = f"{f}:{n}"
                if not isinstance(row, dict):
                    _reject(rejects, "not_an_object", where, f"expected a JSON object, got {type(row).__name__}")
                    continue
                if text_field not in row:
                    _reject(rejects, "missing_field", where, f"record has no {text_field!r} field")
                    continue
                text = row[text_field]
                if not isinstance(text, str):
                    _reject(rejects, "not_text", where, f"field {text_field!r} is {type(text).__name__}, not text")
                    continue
                if not text.strip():
                    _reject(rejects, "empty", where, f"field {text_field!r} is empty")
                    continue
                if len(text) > max_chars:
                    _reject(rejects, "too_long", where, f"{len(text)} characters (more than {max_chars})")
                    continue
                rid = row.get(id_field) if id_field else None
                yield Record(str(rid) if rid is not None else f"{stem}:{n}", row[text_field], i, row)
                i += 1

    return shard(subset(stream(), slice_spec), shard_index, num_shards)


# --------------------------------------------------------------------------- the paper's splits and budgets
def paper_splits() -> dict[str, str]:
    """The paper's slices as 'a:b:n' specs.

    val and train index the globally shuffled corpus (6,700 and 6,692,793
    FineMath-4+ docs); warmstart (GPT-4o-mini thoughts, ~480M tokens) and
    bootstrap (the fixed EM corpus, ~1.92B tokens) index the *train split's
    own* record order, so they are disjoint from val and from each other.
    """
    return {"val": "0:1:1000", "train": "1:1000:1000", "warmstart": "0:1:20", "bootstrap": "13:17:20"}


def paper_split(records: Iterable, name: str, overrides: dict[str, str] | None = None) -> Iterator:
    """Records of the paper's split `name` from the whole (shuffled) corpus stream.

    `overrides` replaces some of the `paper_splits` specs (e.g. for a small corpus), keeping their nesting.
    """
    specs = {**paper_splits(), **(overrides or {})}
    if name not in specs:
        raise ValueError(f"unknown split {name!r} (known: {', '.join(specs)})")
    if name in ("val", "train"):
        return subset(records, specs[name])
    return subset(subset(records, specs["train"]), specs[name])


def take_until_tokens(records: Iterable, tokenizer, budget_tokens: int) -> Iterator:
    """Yield records until their tokens (text + BOS + EOS) reach `budget_tokens`.

    The record that reaches the budget is included (a corpus of "N tokens" is
    the smallest prefix with at least N); no record after it is read.
    """
    total = 0
    if budget_tokens <= 0:
        return
    for r in records:
        text = r.text if hasattr(r, "text") else r["text"] if isinstance(r, dict) else str(r)
        total += len(encode(tokenizer, text)) + 2
        yield r
        if total >= budget_tokens:
            return


# --------------------------------------------------------------------------- sentences and chunks
_BLANK_LINES = re.compile(r"\n[^\S\n]*\n(?:[^\S\n]*\n)*")
_PUNKT = None


def _punkt():
    global _PUNKT
    if _PUNKT is None:
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        _PUNKT = PunktSentenceTokenizer()  # untrained, like the paper: no abbreviation list, no data download
    return _PUNKT


def sentence_units(text: str) -> list[str]:
    """Sentence units as the paper's chunker: paragraphs at blank lines, then untrained Punkt.

    Each unit is one sentence preceded by the whitespace before it (spaces, or
    the blank lines that ended the previous paragraph); whitespace after the
    last sentence stays on the last unit.  Hence
    `"".join(sentence_units(text)) == text.lstrip("\\n")`: only newlines at the
    very start of the text are dropped (spaces there are kept).  Text with no
    non-whitespace character gives no units.  Untrained Punkt knows no
    abbreviations, so "e.g. Dr. Smith" may end a unit after "e.g." and "Dr.";
    a decimal point inside a number ("3.5") never does.
    """
    ends = []
    start = 0
    for para_end in [m.start() for m in _BLANK_LINES.finditer(text)] + [len(text)]:
        para = text[start:para_end]
        ends.extend(start + e for s, e in _punkt().span_tokenize(para) if para[s:e].strip())
        start = para_end
    if not ends:
        return []
    pos = len(text) - len(text.lstrip("\n"))
    units = []
    for e in ends[:-1]:
        units.append(text[pos:e])
        pos = e
    units.append(text[pos:])
    return units


def chunk_text(doc_id: str, text: str, *, mean_units: float = 8, min_units: int = 1, max_units: int = 20,
               prefix_chunks: int = 1, seed: int = 42, first_prefix: str = "") -> list[Chunk]:
    """Chunks of Poisson(mean − min) + min sentence units (capped at max and at what is left).

    The RNG seed is md5(text) + seed, so a document is chunked the same way in
    every stage, shard and EM iteration whatever its id.  Chunk 0's prefix is
    `first_prefix` (the paper shows "N/A" to its API teacher, "" when
    bootstrapping); chunk i's prefix is the raw text of the previous
    `prefix_chunks` chunks (1 for the API teacher, 3 for bootstrap thoughts).
    """
    units = sentence_units(text)
    rng = np.random.default_rng(text_seed(text, seed))
    pieces, pos = [], 0
    for k in chunk_sizes(len(units), rng, mean_units, max_units, min_units):
        pieces.append("".join(units[pos:pos + k]))
        pos += k
    return [Chunk(doc_id, i, "".join(pieces[max(0, i - prefix_chunks):i]) if i else first_prefix, piece)
            for i, piece in enumerate(pieces)]


def to_thought_doc(doc_id: str, chunks: Sequence[Chunk], thoughts: Sequence[str] | None = None) -> ThoughtDoc:
    """The chunks (and one thought per chunk, if given) as a ThoughtDoc with an empty head."""
    if thoughts is not None and len(thoughts) != len(chunks):
        raise ValueError(f"{doc_id}: {len(thoughts)} thoughts for {len(chunks)} chunks")
    return ThoughtDoc(doc_id, "", [c.suffix for c in chunks], list(thoughts) if thoughts is not None else None)
