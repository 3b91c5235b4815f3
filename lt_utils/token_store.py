"""A training corpus tokenized once into flat arrays on disk, and the paper's packed epochs read from it lazily.

At paper scale a latent-augmented corpus is billions of tokens (6.5B per EM
iteration), so neither its token lists nor an epoch's packed rows can sit in
each rank's memory, as `data.EpochStream` keeps them.  Here:

* `build_store` tokenizes a ThoughtDoc jsonl once, streaming, into
  `tokens.bin` (int32, every piece back to back) and offset arrays: per
  document its pieces ``head, x1, ..., xn, z1, ..., zm``.  Every rank
  memory-maps the same files.
* `StreamingEpochs` serves the batches of the paper's packing
  (`attend_across_docs=True`: one stream cut into windows) without building
  the epoch: it draws the epoch's document order and prior/posterior coins,
  computes each laid-out document's length from the piece lengths, and lays
  out only the documents a requested row overlaps.  Its batches are *equal* to
  `data.EpochStream`'s for the same seed (tested): the draws come in the same
  order from the same generator.

Memory per rank: a few arrays of one number per document and per chunk.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from pathlib import Path

import numpy as np

from lt_utils.data import layout_ids
from lt_utils.runtime.runs import iter_jsonl, write_json
from lt_utils.tokens import SpecialIds


class StoredDoc:
    """One document's pieces as views into the memory-mapped token array (what `data.layout_ids` reads)."""

    __slots__ = ("head", "suffixes", "thoughts")

    def __init__(self, pieces: list[np.ndarray], n_suffixes: int, with_thoughts: bool):
        self.head = pieces[0]
        self.suffixes = pieces[1:1 + n_suffixes]
        self.thoughts = pieces[1 + n_suffixes:] if with_thoughts else None


class TokenStore:
    """Memory-mapped view of a built store (see `build_store`).

    A document's pieces are its head, its chunk texts, then its thoughts (a
    WRAP rewrite is a document with one thought and no chunk text).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = json.loads((self.path / "meta.json").read_text())
        self.with_thoughts = bool(meta["with_thoughts"])
        self.n_docs = int(meta["n_docs"])
        self.tokens = np.memmap(self.path / "tokens.bin", dtype=np.int32, mode="r") if meta["n_tokens"] \
            else np.zeros(0, dtype=np.int32)
        self.piece_start = np.load(self.path / "piece_start.npy", mmap_mode="r")   # token offset per piece, + end
        self.doc_piece = np.load(self.path / "doc_piece.npy", mmap_mode="r")       # first piece per doc, + end
        self.n_chunks = np.load(self.path / "n_suffixes.npy", mmap_mode="r")       # chunk texts per doc
        first = np.asarray(self.doc_piece[:-1])
        bounds = np.asarray(self.piece_start)
        body_end = first + 1 + np.asarray(self.n_chunks)           # first thought piece of each doc
        self.raw_len = bounds[body_end] - bounds[first] + 2          # head + chunk texts + BOS + EOS
        self.thought_len = bounds[np.asarray(self.doc_piece[1:])] - bounds[body_end]

    def __len__(self) -> int:
        return self.n_docs

    def doc(self, i: int) -> StoredDoc:
        a, b = int(self.doc_piece[i]), int(self.doc_piece[i + 1])
        starts = self.piece_start[a:b + 1]
        return StoredDoc([self.tokens[starts[k]:starts[k + 1]] for k in range(b - a)], int(self.n_chunks[i]),
                         self.with_thoughts)


def store_key(corpus_path: str | Path, tokenizer) -> str:
    """Identity of a store: the corpus file's size and mtime, and the tokenizer's vocabulary."""
    st = Path(corpus_path).stat()
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]
    return hashlib.sha256(f"{Path(corpus_path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{vocab}".encode()
                          ).hexdigest()[:16]


def store_dir(corpus_path: str | Path, tokenizer) -> Path:
    """Where a corpus's store lives: beside the corpus, named by `store_key` (shared by every run that reads it)."""
    corpus = Path(corpus_path)
    return corpus.parent / f"{corpus.name}.tokens-{store_key(corpus, tokenizer)}"


def open_store(corpus_path: str | Path, tokenizer, progress: bool = True) -> TokenStore:
    """The corpus's store, built first if needed."""
    return TokenStore(build_store(corpus_path, tokenizer, store_dir(corpus_path, tokenizer), progress=progress))


def layout_ratio(store: TokenStore, layout: str) -> float:
    """Training tokens per raw token of the corpus laid out in `layout` (for "random", the coins' expectation).

    The store-based counterpart of `data.token_ratio`, for corpora too large to tokenize in memory.
    """
    raw = float(np.sum(store.raw_len))
    thought, n = float(np.sum(store.thought_len)), float(np.sum(store.n_chunks))
    extra = {"raw": 0.0, "prior": thought + 3 * n, "posterior": thought + 5 * n, "random": thought + 4 * n}
    if layout == "thought_only":
        return (thought + 2 * len(store)) / max(raw, 1.0)
    return (raw + extra[layout]) / max(raw, 1.0)


def build_store(corpus_path: str | Path, tokenizer, out_dir: str | Path, *, batch_docs: int = 1024,
                progress: bool = True) -> Path:
    """Tokenize a ThoughtDoc jsonl into `out_dir` (skipped when it is already there); returns `out_dir`.

    Streams the corpus in batches of `batch_docs` documents (the fast
    tokenizer encodes each batch in parallel); `meta.json` is written last,
    so a crash leaves no store that looks complete.
    """
    out = Path(out_dir)
    if (out / "meta.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    piece_start, doc_piece, n_suffixes = array("q", [0]), array("q", [0]), array("q")
    n_tokens, n_docs, with_thoughts = 0, 0, None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"tokenizing {Path(corpus_path).name}", unit="doc", mininterval=2.0)
    with open(out / "tokens.bin", "wb") as fh:
        batch: list[dict] = []

        def flush() -> None:
            nonlocal n_tokens, n_docs, with_thoughts
            texts = []
            for r in batch:
                has = r.get("thoughts") is not None
                with_thoughts = has if with_thoughts is None else with_thoughts
                if has != with_thoughts:
                    raise ValueError(f"{corpus_path}: document {r['doc_id']} {'has' if has else 'lacks'} thoughts, "
                                     f"unlike the documents before it")
                pieces = [r["head"], *r["suffixes"], *(r["thoughts"] or [])]
                texts.extend(pieces)
                doc_piece.append(doc_piece[-1] + len(pieces))
                n_suffixes.append(len(r["suffixes"]))
            encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
            for ids in encoded:
                fh.write(np.asarray(ids, dtype=np.int32).tobytes())
                n_tokens += len(ids)
                piece_start.append(n_tokens)
            n_docs += len(batch)
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

        for rec in iter_jsonl(corpus_path):
            batch.append(rec)
            if len(batch) >= batch_docs:
                flush()
        flush()
    if bar is not None:
        bar.close()
    np.save(out / "piece_start.npy", np.frombuffer(piece_start, dtype=np.int64))
    np.save(out / "doc_piece.npy", np.frombuffer(doc_piece, dtype=np.int64))
    np.save(out / "n_suffixes.npy", np.frombuffer(n_suffixes, dtype=np.int64) if n_docs else np.zeros(0, np.int64))
    write_json(out / "meta.json", {"corpus": str(corpus_path), "n_docs": n_docs, "n_tokens": n_tokens,
                                   "with_thoughts": bool(with_thoughts)})
    return out


class _Coins:
    """Stands in for the generator inside `layout_ids`: hands out a document's pre-drawn coins in order."""

    def __init__(self, coins: np.ndarray):
        self._coins, self._i = coins, 0

    def random(self) -> float:
        c = self._coins[self._i]
        self._i += 1
        return float(c)


class StreamingEpochs:
    """`data.EpochStream`'s batches for the paper's packing, laid out on demand from a `TokenStore`.

    Only `attend_across_docs=True` (one stream of documents cut into
    `seq_len` windows): rows can then be located by arithmetic on document
    lengths.  The per-document packing of the CPU study is first-fit over the
    whole epoch and stays with `EpochStream`.
    """

    LAYOUT_OVERHEAD = {"raw": (0, 0), "prior": (3, 3), "posterior": (5, 5), "random": (3, 5), "thought_only": (0, 0)}

    def __init__(self, store: TokenStore, layout: str, ids: SpecialIds, *, seq_len: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if len(store) == 0:
            raise ValueError("no documents to train on")
        if layout != "raw" and not store.with_thoughts:
            raise ValueError(f"layout '{layout}' needs thoughts but the corpus has none")
        n_thoughts = np.diff(np.asarray(store.doc_piece)) - 1 - np.asarray(store.n_chunks)
        if layout in ("prior", "posterior", "random") and (n_thoughts != np.asarray(store.n_chunks)).any():
            raise ValueError(f"layout '{layout}' needs one thought per chunk; some documents differ")
        self.store, self.layout, self.ids = store, layout, ids
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._epoch = -1
        self._per_epoch: int | None = None

    def _draw(self, epoch: int) -> None:
        """Document order, coins, laid-out lengths and row order of `epoch` (the draws of EpochStream, in order)."""
        if epoch == self._epoch:
            return
        s = self.store
        rng = np.random.default_rng([self.seed, epoch, 7])
        order = rng.permutation(len(s))
        nch = np.asarray(s.n_chunks)[order]
        coin_start = np.concatenate([[0], np.cumsum(nch)])
        coins = rng.random(int(coin_start[-1])) if self.layout == "random" else np.zeros(int(coin_start[-1]))
        if self.layout == "thought_only":
            lengths = np.asarray(s.thought_len)[order] + 2
        else:
            lengths = np.asarray(s.raw_len)[order]
            if self.layout != "raw":
                lengths = lengths + np.asarray(s.thought_len)[order]
                lo, hi = self.LAYOUT_OVERHEAD[self.layout]
                if self.layout == "random":   # a coin ≥ 0.5 puts the chunk in the longer posterior form
                    cum = np.concatenate([[0], np.cumsum(coins >= 0.5)])
                    posterior = cum[coin_start[1:]] - cum[coin_start[:-1]]
                    lengths = lengths + lo * nch + (hi - lo) * posterior
                else:
                    lengths = lengths + lo * nch
        self._order, self._coins, self._coin_start = order, coins, coin_start
        self._doc_start = np.concatenate([[0], np.cumsum(lengths)])
        self._total = int(self._doc_start[-1])
        self._n_rows = max(1, -(-self._total // self.seq_len))
        self._row_order = rng.permutation(self._n_rows)
        self._epoch = epoch

    def _laid_out(self, j: int) -> tuple[list[int], list[bool]]:
        """The j-th document of the epoch's order in its layout, with its own coins."""
        doc = self.store.doc(int(self._order[j]))
        coins = _Coins(self._coins[self._coin_start[j]:self._coin_start[j + 1]])
        return layout_ids(doc, self.layout, self.ids, coins)

    def _row(self, r: int) -> tuple[np.ndarray, np.ndarray, int]:
        T = self.seq_len
        a, b = r * T, min((r + 1) * T, self._total)
        toks, raw = [], []
        j = int(np.searchsorted(self._doc_start, a, side="right") - 1)
        while j < len(self._order) and self._doc_start[j] < b:
            t, m = self._laid_out(j)
            lo, hi = max(a, int(self._doc_start[j])), min(b, int(self._doc_start[j + 1]))
            off = int(self._doc_start[j])
            toks.extend(t[lo - off:hi - off])
            raw.extend(m[lo - off:hi - off])
            j += 1
        n = len(toks)
        ids = np.full(T, self.ids.pad, dtype=np.int64)
        ids[:n] = np.asarray(toks, dtype=np.int64)
        labels = ids.copy()
        labels[n:] = -100
        return ids, labels, int(np.sum(raw))

    @property
    def batches_per_epoch(self) -> int:
        if self._per_epoch is None:
            self._draw(0)
            self._per_epoch = max(1, self._n_rows // (self.batch_size * self.world_size))
        return self._per_epoch

    def batch(self, step: int) -> dict:
        per_epoch = self.batches_per_epoch
        epoch, b = divmod(step, per_epoch)
        self._draw(epoch)
        gbs = self.batch_size * self.world_size
        sel = self._row_order[np.arange(b * gbs, (b + 1) * gbs) % self._n_rows][self.rank::self.world_size]
        rows = [self._row(int(r)) for r in sel]
        T = self.seq_len
        return {"input_ids": np.stack([r[0] for r in rows]), "labels": np.stack([r[1] for r in rows]),
                "position_ids": np.tile(np.arange(T, dtype=np.int64), (len(rows), 1)),
                "raw_tokens": int(sum(r[2] for r in rows)), "epoch": epoch}

