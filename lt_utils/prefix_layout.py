"""The posterior's context: how many chunks before x it sees, and whether they carry their thoughts.

The E-step asks the posterior for chunk i's thought given the text before it,
``BOS prefix SoL EoL x_i SoL POST``.  The paper's bootstrap E-step shows 3 raw
chunks there.  But every training document carries a thought at every chunk,
so a run of raw chunks is a context the generator never trained on; its
fidelity on later chunks falls far below that on a document's first chunk
(docs/loop_regime.md).  This module rebuilds a corpus' chunks with another
prefix, to measure which context the posterior reads best:

* ``raw``: the `n` previous pieces of raw text (the document's head counts as
  the piece before chunk 0), as `data.chunk_document` builds them;
* ``thoughts``: the same pieces, each chunk among them in the joint's own
  training form ``SoL PRI z_j EoL x_j`` with a given thought z_j (the world's
  oracle thought: what a prefix would hold if every earlier chunk's selected
  thought were right; or the thoughts an E-step selected).  The head has no
  thought.

The pieces are encoded one by one, as the trainer encodes a document, and set
as the chunk's `prefix_ids`; its `prefix` keeps the raw text, so the world's
verifier reads the chunk as before.
"""

from __future__ import annotations

from typing import Callable, Sequence

from lt_utils.data import Chunk
from lt_utils.tokens import SpecialIds, encode

PREFIX_LAYOUTS = ("raw", "thoughts")


def relayout(heads: Sequence[str], chunks: Sequence[Chunk], spans: Sequence[tuple[int, int]], tokenizer,
             prefix_chunks: int, *, layout: str = "raw", thought_of: Callable[[Chunk], str] | None = None
             ) -> list[Chunk]:
    """`chunks` (document d's are chunks[spans[d][0]:spans[d][1]], in order, its head heads[d]) with a prefix
    of `prefix_chunks` pieces in `layout`; ``thoughts`` needs `thought_of(chunk)`, the thought an earlier chunk
    carries."""
    if layout not in PREFIX_LAYOUTS:
        raise ValueError(f"unknown prefix layout {layout!r} (known: {', '.join(PREFIX_LAYOUTS)})")
    if layout == "thoughts" and thought_of is None:
        raise ValueError("the thoughts layout needs thought_of")
    if prefix_chunks < 0:
        raise ValueError(f"prefix_chunks must be ≥ 0, got {prefix_chunks}")
    ids = SpecialIds.of(tokenizer) if layout == "thoughts" else None
    out: list[Chunk] = []
    for head, (a, b) in zip(heads, spans):
        doc = list(chunks[a:b])
        if [c.index for c in doc] != list(range(len(doc))):
            raise ValueError(f"document {doc[0].doc_id if doc else '?'}: chunks are not indexed 0..{len(doc) - 1}")
        pieces = [head] + [c.suffix for c in doc]        # piece j + 1 is chunk j's text
        blocks: list[list[int]] = []
        if ids is not None:
            blocks = [encode(tokenizer, head) if head else []]
            blocks += [[ids.sol, ids.prior, *encode(tokenizer, thought_of(c)), ids.eol, *encode(tokenizer, c.suffix)]
                       for c in doc]
        for i, c in enumerate(doc):
            lo = max(0, i + 1 - prefix_chunks)
            prefix = "".join(pieces[lo:i + 1]) if prefix_chunks else ""
            prefix_ids = None
            if ids is not None:
                prefix_ids = tuple(t for blk in blocks[lo:i + 1] for t in blk) if prefix_chunks else ()
            out.append(Chunk(c.doc_id, c.index, prefix, c.suffix, prefix_ids))
    return out
