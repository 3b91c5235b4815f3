"""From documents to packed training rows, in the paper's latent-thought layouts.

1. `chunk_document` splits a document into (prefix, suffix) chunks with
   random sizes seeded by the document's own text, so every stage and every
   EM iteration chunks a document identically.
2. `layout_ids` writes one document as token ids: raw text, or each chunk with
   its thought in the prior form `SoL PRI z EoL x` or the posterior form
   `SoL EoL x SoL POST z EoL`, chosen per chunk by a fair coin (Ruan et al.
   2025, §3 of our method notes).  Loss is on every token.
3. `pack_rows` packs documents into fixed-length rows, either as one stream
   attending across documents (the paper's code) or with positions reset and
   attention kept inside each document (needed at tiny scale).
4. `EpochStream` re-draws the layouts and the row order every epoch from
   (seed, epoch), so training is reproducible and resumable from a step count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .tokens import SpecialIds, encode

LAYOUTS = ("raw", "random", "prior", "posterior", "thought_only")


# --------------------------------------------------------------------------- chunking
@dataclass(frozen=True)
class Chunk:
    """One chunk x of a document with the raw text before it (the context a teacher sees)."""

    doc_id: str
    index: int
    prefix: str
    suffix: str


def text_seed(text: str, seed: int) -> int:
    """Per-document seed from the text itself (md5, as the paper's chunker), independent of sharding."""
    return (int(hashlib.md5(text.encode()).hexdigest(), 16) + seed) & 0xFFFFFFFF


def chunk_sizes(n_units: int, rng: np.random.Generator, mean_units: float, max_units: int, min_units: int = 1) -> list[int]:
    """Poisson(mean − min) + min units per chunk, capped at max and at what is left."""
    sizes = []
    left = n_units
    while left > 0:
        k = int(rng.poisson(max(mean_units - min_units, 0.0))) + min_units
        k = max(1, min(k, max_units, left))
        sizes.append(k)
        left -= k
    return sizes


def chunk_document(doc_id: str, segments: Sequence[str], *, mean_units: float = 1.0, max_units: int = 20,
                   min_units: int = 1, prefix_chunks: int = 1, seed: int = 42) -> tuple[str, list[Chunk]]:
    """Split `segments` (segment 0 = the head, then one unit each) into chunks.

    Returns the head (kept as raw text before the first chunk) and the chunks.
    The prefix of chunk i is the raw text of the `prefix_chunks` chunks before
    it, where the head counts as chunk −1.
    """
    head, units = segments[0], list(segments[1:])
    rng = np.random.default_rng(text_seed("".join(segments), seed))
    pieces = [head]
    pos = 0
    for k in chunk_sizes(len(units), rng, mean_units, max_units, min_units):
        pieces.append("".join(units[pos:pos + k]))
        pos += k
    chunks = []
    for i in range(1, len(pieces)):
        prefix = "".join(pieces[max(0, i - prefix_chunks):i])
        chunks.append(Chunk(doc_id=doc_id, index=i - 1, prefix=prefix, suffix=pieces[i]))
    return head, chunks


# --------------------------------------------------------------------------- documents with thoughts
@dataclass
class ThoughtDoc:
    """A document as the trainer sees it: head, chunk texts and (optionally) one thought per chunk."""

    doc_id: str
    head: str
    suffixes: list[str]
    thoughts: list[str] | None = None

    def to_dict(self) -> dict:
        return {"doc_id": self.doc_id, "head": self.head, "suffixes": self.suffixes, "thoughts": self.thoughts}

    @classmethod
    def from_dict(cls, d: dict) -> "ThoughtDoc":
        return cls(d["doc_id"], d["head"], list(d["suffixes"]), d.get("thoughts"))

    @property
    def text(self) -> str:
        return self.head + "".join(self.suffixes)


@dataclass
class TokenizedDoc:
    """Pre-tokenized pieces of a ThoughtDoc, so each epoch's layout is just concatenation."""

    head: list[int]
    suffixes: list[list[int]]
    thoughts: list[list[int]] | None
    raw_len: int = field(init=False)

    def __post_init__(self):
        self.raw_len = 2 + len(self.head) + sum(len(s) for s in self.suffixes)  # + BOS + EOS


def tokenize_docs(tokenizer, docs: Sequence[ThoughtDoc]) -> list[TokenizedDoc]:
    out = []
    for d in docs:
        thoughts = [encode(tokenizer, t) for t in d.thoughts] if d.thoughts is not None else None
        out.append(TokenizedDoc(encode(tokenizer, d.head), [encode(tokenizer, s) for s in d.suffixes], thoughts))
    return out


def layout_ids(doc: TokenizedDoc, layout: str, ids: SpecialIds, rng: np.random.Generator | None = None
               ) -> tuple[list[int], list[bool]]:
    """Token ids of one document in `layout`, and a parallel mask of which tokens are raw text.

    raw:          BOS head x1 x2 … EOS
    prior:        BOS head [SoL PRI z1 EoL x1] … EOS
    posterior:    BOS head [SoL EoL x1 SoL POST z1 EoL] … EOS
    random:       each chunk prior or posterior with p = 0.5 (needs `rng`)
    thought_only: BOS z1 z2 … EOS (a rewrite trained without the raw text, e.g. WRAP)
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}' (known: {', '.join(LAYOUTS)})")
    if layout != "raw" and doc.thoughts is None:
        raise ValueError(f"layout '{layout}' needs thoughts but the document has none")
    toks: list[int] = [ids.bos]
    raw: list[bool] = [True]

    def put(seq: Sequence[int], is_raw: bool) -> None:
        toks.extend(seq)
        raw.extend([is_raw] * len(seq))

    if layout == "thought_only":
        for z in doc.thoughts:  # type: ignore[union-attr]
            put(z, False)
    else:
        put(doc.head, True)
        for i, x in enumerate(doc.suffixes):
            if layout == "raw":
                put(x, True)
                continue
            z = doc.thoughts[i]  # type: ignore[index]
            form = layout if layout != "random" else ("prior" if rng.random() < 0.5 else "posterior")  # type: ignore[union-attr]
            if form == "prior":
                put([ids.sol, ids.prior], False); put(z, False); put([ids.eol], False); put(x, True)
            else:
                put([ids.sol, ids.eol], False); put(x, True); put([ids.sol, ids.posterior], False)
                put(z, False); put([ids.eol], False)
    toks.append(ids.eos)
    raw.append(True)
    return toks, raw


# --------------------------------------------------------------------------- packing
@dataclass
class PackedRows:
    """Fixed-length training rows. labels = -100 where no loss is taken (padding, document starts)."""

    input_ids: np.ndarray     # [n, T] int64
    position_ids: np.ndarray  # [n, T] int64
    labels: np.ndarray        # [n, T] int64
    raw_tokens: np.ndarray    # [n] raw-text tokens in each row (for the effective-raw-tokens axis)

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_rows(seqs: Sequence[tuple[list[int], list[bool]]], seq_len: int, pad_id: int, attend_across_docs: bool
              ) -> PackedRows:
    """Pack token sequences into rows of `seq_len`.

    attend_across_docs=True: one stream cut into windows, positions 0..T−1
    (the paper's packing; the model sees the previous document's end).
    False: whole documents placed into rows in order, positions restarting at
    0 for each document; transformers then masks attention within each
    document (it detects packed sequences from the position ids).  A document
    longer than a row is cut into row-sized pieces.
    """
    T = seq_len
    if attend_across_docs:
        stream = [t for s, _ in seqs for t in s]
        rawm = [r for _, m in seqs for r in m]
        n = max(1, -(-len(stream) // T))
        pad = n * T - len(stream)
        ids = np.array(stream + [pad_id] * pad, dtype=np.int64).reshape(n, T)
        raw = np.array(rawm + [False] * pad, dtype=bool).reshape(n, T)
        labels = ids.copy()
        labels.reshape(-1)[len(stream):] = -100
        pos = np.tile(np.arange(T, dtype=np.int64), (n, 1))
        return PackedRows(ids, pos, labels, raw.sum(1))

    # first fit: each document goes into the first row with room for it (little padding, order kept within rows)
    rows: list[tuple[list[int], list[int], list[int], list[int]]] = []  # ids, pos, labels, [raw count]
    for seq, rawm in seqs:
        for start in range(0, len(seq), T):
            piece, praw = list(seq[start:start + T]), rawm[start:start + T]
            target = next((r for r in rows if len(r[0]) + len(piece) <= T), None)
            if target is None:
                target = ([], [], [], [0])
                rows.append(target)
            lab = list(piece)
            if target[0]:
                lab[0] = -100  # the first token of a document is not predictable from the one before
            target[0].extend(piece)
            target[1].extend(range(len(piece)))
            target[2].extend(lab)
            target[3][0] += int(sum(praw))
    if not rows:
        rows.append(([], [], [], [0]))
    n = len(rows)
    ids = np.full((n, T), pad_id, dtype=np.int64)
    labels = np.full((n, T), -100, dtype=np.int64)
    pos = np.zeros((n, T), dtype=np.int64)
    raw = np.zeros(n, dtype=np.int64)
    for i, (r_ids, r_pos, r_lab, r_raw) in enumerate(rows):
        k = len(r_ids)
        ids[i, :k], labels[i, :k], pos[i, :k], raw[i] = r_ids, r_lab, r_pos, r_raw[0]
        pos[i, k:] = np.arange(T - k)  # padding counts as its own "document", never joined to a real one
    return PackedRows(ids, pos, labels, raw)


class EpochStream:
    """Deterministic batches: epoch e re-draws layouts and row order from (seed, e).

    `batch(step)` depends only on the step, so a resumed run sees exactly the
    batches it would have seen without the interruption.
    """

    def __init__(self, docs: Sequence[TokenizedDoc], layout: str, ids: SpecialIds, *, seq_len: int,
                 batch_size: int, seed: int, attend_across_docs: bool, rank: int = 0, world_size: int = 1):
        if not docs:
            raise ValueError("no documents to train on")
        self.docs, self.layout, self.ids = list(docs), layout, ids
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.attend_across_docs = attend_across_docs
        self.rank, self.world_size = rank, world_size
        self._epoch = -1
        self._rows: PackedRows | None = None
        self._order: np.ndarray | None = None
        self._per_epoch: int | None = None

    def rows_for_epoch(self, epoch: int) -> tuple[PackedRows, np.ndarray]:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch, 7])
            doc_order = rng.permutation(len(self.docs))
            seqs = [layout_ids(self.docs[i], self.layout, self.ids, rng) for i in doc_order]
            self._rows = pack_rows(seqs, self.seq_len, self.ids.pad, self.attend_across_docs)
            self._order = rng.permutation(len(self._rows))
            self._epoch = epoch
        return self._rows, self._order  # type: ignore[return-value]

    @property
    def batches_per_epoch(self) -> int:
        """Fixed from epoch 0 (later epochs differ by a few rows; indices wrap around)."""
        if self._per_epoch is None:
            rows, _ = self.rows_for_epoch(0)
            self._per_epoch = max(1, len(rows) // (self.batch_size * self.world_size))
        return self._per_epoch

    def batch(self, step: int) -> dict[str, np.ndarray]:
        per_epoch = self.batches_per_epoch
        epoch, b = divmod(step, per_epoch)
        rows, order = self.rows_for_epoch(epoch)
        global_bs = self.batch_size * self.world_size
        sel = order[np.arange(b * global_bs, (b + 1) * global_bs) % len(order)][self.rank::self.world_size]
        return {"input_ids": rows.input_ids[sel], "position_ids": rows.position_ids[sel],
                "labels": rows.labels[sel], "raw_tokens": int(rows.raw_tokens[sel].sum()), "epoch": epoch}

    def __iter__(self) -> Iterator[dict]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


def token_ratio(docs: Sequence[TokenizedDoc], layout: str, ids: SpecialIds, seed: int = 0) -> float:
    """Training tokens per raw-text token for a corpus in `layout` (the synthetic-to-raw ratio)."""
    rng = np.random.default_rng(seed)
    total = raw = 0
    for d in docs:
        toks, _ = layout_ids(d, layout, ids, rng)
        total += len(toks)
        raw += d.raw_len
    return total / max(raw, 1)
