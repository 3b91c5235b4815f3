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
   attention kept inside each document (needed at tiny scale); there a long
   document is cut between chunks, each piece led by its question
   (`cut_at_chunks`), and `thoughts_apart` counts thoughts that a packing
   separates from their question.
4. `EpochStream` re-draws the layouts and the row order every epoch from
   (seed, epoch), so training is reproducible and resumable from a step count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from lt_utils.tokens import SpecialIds, encode

LAYOUTS = ("raw", "random", "prior", "posterior", "thought_only")


# --------------------------------------------------------------------------- chunking
@dataclass(frozen=True)
class Chunk:
    """One chunk x of a document with the raw text before it (the context a teacher sees)."""

    doc_id: str
    index: int
    prefix: str
    suffix: str
    # token ids that stand for `prefix` where it holds more than raw text (earlier chunks with their thoughts,
    # `lt_utils.prefix_layout`); None: the prefix is `prefix`, encoded
    prefix_ids: tuple[int, ...] | None = None


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


@dataclass
class LaidOut:
    """One document laid out as token ids, with where its chunks and thoughts sit (for chunk-boundary cuts).

    blocks[i]   start of chunk i's block (`SoL PRI z EoL x` / `SoL EoL x SoL POST z EoL` / `x`); a row may be cut
                there.  Block 0 starts at 0, so BOS and the head always travel with the first chunk.
    questions[i] (start, end) of the raw text just before chunk i (the head, or chunk i−1's text): the question
                whose answer chunk i states, and so what thought i derives.
    thoughts[i] (start, end) of thought i ((0, 0) in the raw layout).
    The trailing EOS belongs to the last block.
    """

    ids: list[int]
    raw: list[bool]
    blocks: list[int] = field(default_factory=list)
    questions: list[tuple[int, int]] = field(default_factory=list)
    thoughts: list[tuple[int, int]] = field(default_factory=list)


def layout_doc(doc: TokenizedDoc, layout: str, ids: SpecialIds, rng: np.random.Generator | None = None,
               no_thought_p: float = 0.0) -> LaidOut:
    """Token ids of one document in `layout`, a parallel mask of which tokens are raw text, and its chunk spans.

    raw:          BOS head x1 x2 … EOS
    prior:        BOS head [SoL PRI z1 EoL x1] … EOS
    posterior:    BOS head [SoL EoL x1 SoL POST z1 EoL] … EOS
    random:       each chunk prior or posterior with p = 0.5 (needs `rng`)
    thought_only: BOS z1 z2 … EOS (a rewrite trained without the raw text, e.g. WRAP; no chunk spans)

    `no_thought_p` > 0 (beyond the paper; needs `rng`): in the layouts with
    thoughts each chunk first tosses a coin and, with this probability, is
    laid out as raw text without its thought, so that runs of raw chunks, the
    prefix the bootstrap E-step shows the posterior, occur in training.  At 0
    no coin is drawn, so the layout and the random stream are unchanged.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}' (known: {', '.join(LAYOUTS)})")
    if layout != "raw" and doc.thoughts is None:
        raise ValueError(f"layout '{layout}' needs thoughts but the document has none")
    if not 0.0 <= no_thought_p < 1.0:
        raise ValueError(f"no_thought_p must be in [0, 1), got {no_thought_p}")
    if no_thought_p and layout != "raw" and (layout == "thought_only" or rng is None):
        raise ValueError("no_thought_p needs a layout of chunks with thoughts (prior, posterior, random) and an rng")
    out = LaidOut([ids.bos], [True])
    toks, raw = out.ids, out.raw

    def put(seq: Sequence[int], is_raw: bool) -> tuple[int, int]:
        a = len(toks)
        toks.extend(seq)
        raw.extend([is_raw] * len(seq))
        return a, len(toks)

    if layout == "thought_only":
        for z in doc.thoughts:  # type: ignore[union-attr]
            put(z, False)
    else:
        question = put(doc.head, True)
        for i, x in enumerate(doc.suffixes):
            out.blocks.append(0 if i == 0 else len(toks))
            out.questions.append(question)
            if layout == "raw" or (no_thought_p and rng.random() < no_thought_p):  # type: ignore[union-attr]
                out.thoughts.append((0, 0))
                question = put(x, True)
                continue
            z = doc.thoughts[i]  # type: ignore[index]
            form = layout if layout != "random" else ("prior" if rng.random() < 0.5 else "posterior")  # type: ignore[union-attr]
            if form == "prior":
                put([ids.sol, ids.prior], False); out.thoughts.append(put(z, False)); put([ids.eol], False)
                question = put(x, True)
            else:
                put([ids.sol, ids.eol], False); question = put(x, True); put([ids.sol, ids.posterior], False)
                out.thoughts.append(put(z, False)); put([ids.eol], False)
    toks.append(ids.eos)
    raw.append(True)
    return out


def layout_ids(doc: TokenizedDoc, layout: str, ids: SpecialIds, rng: np.random.Generator | None = None,
               no_thought_p: float = 0.0) -> tuple[list[int], list[bool]]:
    """Token ids of one document in `layout` and its raw-text mask (`layout_doc` without the spans)."""
    lo = layout_doc(doc, layout, ids, rng, no_thought_p)
    return lo.ids, lo.raw


# --------------------------------------------------------------------------- packing
@dataclass
class PackedRows:
    """Fixed-length training rows. labels = -100 where no loss is taken (padding, document starts, carried context)."""

    input_ids: np.ndarray     # [n, T] int64
    position_ids: np.ndarray  # [n, T] int64
    labels: np.ndarray        # [n, T] int64
    raw_tokens: np.ndarray    # [n] raw-text tokens trained on in each row (for the effective-raw-tokens axis)
    # what each row holds: (row, document index, ((start, end), ...) token ranges of that document) per stretch
    # of a row that attends within itself; `thoughts_apart` reads it
    segments: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def _pieces(seq: LaidOut, T: int, cut_at_chunks: bool) -> list[list[tuple[int, int, bool]]]:
    """A document as pieces of at most T tokens: each a list of (start, end, trained) ranges of its tokens.

    Row-sized cuts, or with `cut_at_chunks` cuts only between chunk blocks,
    every later piece led by the raw text of the question its first chunk
    answers (carried as context: no loss, not counted as raw tokens again).
    A group of blocks that cannot fit even so is cut into row-sized pieces.
    """
    n = len(seq.ids)
    if n <= T:
        return [[(0, n, True)]]
    if not cut_at_chunks or len(seq.blocks) < 2:
        return [[(s, min(s + T, n), True)] for s in range(0, n, T)]
    ends = seq.blocks[1:] + [n]
    groups: list[tuple[tuple[int, int] | None, int, int]] = []   # (carried question, start, end)
    carry, start = None, 0
    for i in range(1, len(seq.blocks)):
        clen = carry[1] - carry[0] if carry else 0
        if clen + ends[i] - start > T:          # block i does not fit beside the blocks gathered so far
            groups.append((carry, start, seq.blocks[i]))
            carry, start = seq.questions[i], seq.blocks[i]
    groups.append((carry, start, n))
    out = []
    for carry, a, b in groups:
        clen = carry[1] - carry[0] if carry else 0
        if clen + b - a <= T:
            out.append(([(carry[0], carry[1], False)] if clen else []) + [(a, b, True)])
        else:
            out.extend([[(s, min(s + T, b), True)] for s in range(a, b, T)])
    return out


class _FirstFit:
    """The leftmost row with at least `need` free positions, in O(log rows).

    First fit scanned every open row for every piece: quadratic, 9.4 s per
    epoch for the 10,102 rows of the default study's WRAP-CoT corpus, paid
    again each epoch.  A max-tree over the rows' free space finds the same row
    (the leftmost that fits), so the packing is unchanged.
    """

    def __init__(self):
        self.n, self.size, self.tree = 0, 1, [-1, -1]   # tree[size + i]: free positions of row i; -1: no row

    def find(self, need: int) -> int | None:
        if self.n == 0 or self.tree[1] < need:
            return None
        i = 1
        while i < self.size:
            i = 2 * i if self.tree[2 * i] >= need else 2 * i + 1
        return i - self.size

    def set(self, row: int, free: int) -> None:
        i = row + self.size
        self.tree[i] = free
        while i > 1:
            i //= 2
            self.tree[i] = max(self.tree[2 * i], self.tree[2 * i + 1])

    def append(self, free: int) -> int:
        if self.n == self.size:   # double the leaves, keep the rows' order
            leaves = self.tree[self.size:] + [-1] * self.size
            self.size *= 2
            self.tree = [-1] * self.size + leaves
            for i in range(self.size - 1, 0, -1):
                self.tree[i] = max(self.tree[2 * i], self.tree[2 * i + 1])
        self.n += 1
        self.set(self.n - 1, free)
        return self.n - 1


def _as_laid(seq) -> LaidOut:
    return seq if isinstance(seq, LaidOut) else LaidOut(list(seq[0]), list(seq[1]))


def pack_rows(seqs: Sequence, seq_len: int, pad_id: int, attend_across_docs: bool, cut_at_chunks: bool = False
              ) -> PackedRows:
    """Pack laid-out documents (`LaidOut`s or (ids, raw mask) pairs) into rows of `seq_len`.

    attend_across_docs=True: one stream cut into windows, positions 0..T−1
    (the paper's packing; the model sees the previous document's end).
    False: whole documents placed into rows in order, positions restarting at
    0 for each document; transformers then masks attention within each
    document (it detects packed sequences from the position ids).  A document
    longer than a row is cut: into row-sized pieces, or, with `cut_at_chunks`,
    between chunks with each later piece led by its question (`_pieces`), so
    no thought is trained apart from the question it derives.
    """
    T = seq_len
    laid = [_as_laid(s) for s in seqs]
    if attend_across_docs:
        stream = [t for s in laid for t in s.ids]
        rawm = [r for s in laid for r in s.raw]
        n = max(1, -(-len(stream) // T))
        pad = n * T - len(stream)
        ids = np.array(stream + [pad_id] * pad, dtype=np.int64).reshape(n, T)
        raw = np.array(rawm + [False] * pad, dtype=bool).reshape(n, T)
        labels = ids.copy()
        labels.reshape(-1)[len(stream):] = -100
        pos = np.tile(np.arange(T, dtype=np.int64), (n, 1))
        segments, off = [], 0
        for d, s in enumerate(laid):
            for r in range(off // T, -(-(off + len(s.ids)) // T)):
                segments.append((r, d, ((max(r * T, off) - off, min((r + 1) * T, off + len(s.ids)) - off),)))
            off += len(s.ids)
        return PackedRows(ids, pos, labels, raw.sum(1), segments)

    # first fit: each piece goes into the first row with room for it (little padding, order kept within rows)
    rows: list[tuple[list[int], list[int], list[int], list[int]]] = []  # ids, pos, labels, [raw count]
    fit = _FirstFit()
    segments = []
    for d, seq in enumerate(laid):
        for ranges in _pieces(seq, T, cut_at_chunks):
            piece, lab, n_raw = [], [], 0
            for a, b, trained in ranges:
                piece.extend(seq.ids[a:b])
                lab.extend(seq.ids[a:b] if trained else [-100] * (b - a))
                n_raw += int(sum(seq.raw[a:b])) if trained else 0
            k = fit.find(len(piece))
            if k is None:
                k = fit.append(T)
                rows.append(([], [], [], [0]))
            target = rows[k]
            if target[0]:
                lab[0] = -100  # the first token of a document is not predictable from the one before
            target[0].extend(piece)
            target[1].extend(range(len(piece)))
            target[2].extend(lab)
            target[3][0] += n_raw
            fit.set(k, T - len(target[0]))
            segments.append((k, d, tuple((a, b) for a, b, _ in ranges)))
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
    return PackedRows(ids, pos, labels, raw, segments)


def thoughts_apart(laid: Sequence[LaidOut], rows: PackedRows) -> dict:
    """How many thoughts of a packed corpus are trained apart from the question they derive.

    A thought is *with* its question when one stretch of a row that attends
    within itself (a document piece; a whole row in the paper's stream
    packing) holds all of the thought and all of the raw text before its chunk
    (the head, or the previous chunk).  `laid` are the documents as packed, in
    the order given to `pack_rows`.
    """
    from collections import defaultdict

    cover: dict[int, list] = defaultdict(list)
    for _, d, ranges in rows.segments:
        cover[d].append(ranges)

    def inside(span, ranges) -> bool:
        return span[1] <= span[0] or any(a <= span[0] and span[1] <= b for a, b in ranges)

    n = cut = 0
    for d, lo in enumerate(laid):
        for q, z in zip(lo.questions, lo.thoughts):
            if z[1] <= z[0]:
                continue   # no thought (raw layout)
            n += 1
            cut += not any(inside(z, rs) and inside(q, rs) for rs in cover[d])
    return {"thoughts": n, "apart": cut, "share_apart": cut / n if n else 0.0}


class EpochStream:
    """Deterministic batches: epoch e re-draws layouts and row order from (seed, e).

    `batch(step)` depends only on the step, so a resumed run sees exactly the
    batches it would have seen without the interruption.
    """

    def __init__(self, docs: Sequence[TokenizedDoc], layout: str, ids: SpecialIds, *, seq_len: int,
                 batch_size: int, seed: int, attend_across_docs: bool, cut_at_chunks: bool = False, rank: int = 0,
                 world_size: int = 1, no_thought_p: float = 0.0):
        if not docs:
            raise ValueError("no documents to train on")
        self.docs, self.layout, self.ids = list(docs), layout, ids
        self.no_thought_p = no_thought_p if layout != "raw" else 0.0
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.attend_across_docs, self.cut_at_chunks = attend_across_docs, cut_at_chunks
        self.rank, self.world_size = rank, world_size
        self._epoch = -1
        self._rows: PackedRows | None = None
        self._order: np.ndarray | None = None
        self._per_epoch: int | None = None

    def rows_for_epoch(self, epoch: int) -> tuple[PackedRows, np.ndarray]:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch, 7])
            doc_order = rng.permutation(len(self.docs))
            self._laid = [layout_doc(self.docs[i], self.layout, self.ids, rng, self.no_thought_p) for i in doc_order]
            self._rows = pack_rows(self._laid, self.seq_len, self.ids.pad, self.attend_across_docs,
                                   self.cut_at_chunks)
            self._order = rng.permutation(len(self._rows))
            self._epoch = epoch
        return self._rows, self._order  # type: ignore[return-value]

    def thoughts_apart(self, epoch: int = 0) -> dict:
        """`thoughts_apart` of the epoch's packed rows: thoughts trained without their question."""
        rows, _ = self.rows_for_epoch(epoch)
        return thoughts_apart(self._laid, rows)

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


def token_ratio(docs: Sequence[TokenizedDoc], layout: str, ids: SpecialIds, seed: int = 0,
                no_thought_p: float = 0.0) -> float:
    """Training tokens per raw-text token for a corpus in `layout` (the synthetic-to-raw ratio)."""
    rng = np.random.default_rng(seed)
    total = raw = 0
    for d in docs:
        toks, _ = layout_ids(d, layout, ids, rng, no_thought_p)
        total += len(toks)
        raw += d.raw_len
    return total / max(raw, 1)
