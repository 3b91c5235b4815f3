"""Chunking, the paper's two latent layouts, packing and reproducible epochs."""

import numpy as np
import pytest
import torch

from lt_utils.data import (EpochStream, chunk_document, layout_ids, pack_rows, token_ratio, tokenize_docs)
from lt_utils.tokens import SpecialIds


def test_chunking_is_seeded_by_text_and_concatenates_back():
    segs = ["Problem: 1 + 1 Answer:"] + [f" {i}.\nProblem: {i} + 1 Answer:" for i in range(2, 30)]
    head, chunks = chunk_document("d", segs, mean_units=3.0, max_units=5, prefix_chunks=1)
    head2, chunks2 = chunk_document("other-id", segs, mean_units=3.0, max_units=5, prefix_chunks=1)
    assert chunks == [c.__class__("d", c.index, c.prefix, c.suffix) for c in chunks2]  # same text → same chunks
    assert head + "".join(c.suffix for c in chunks) == "".join(segs)
    assert chunks[0].prefix == head
    for prev, cur in zip(chunks, chunks[1:]):
        assert cur.prefix == prev.suffix
    sizes = [c.suffix.count("\n") for c in chunks]
    assert max(sizes) <= 5 and min(sizes) >= 1 and len(set(sizes)) > 1
    _, other_seed = chunk_document("d", segs, mean_units=3.0, max_units=5, seed=7)
    assert [c.suffix for c in other_seed] != [c.suffix for c in chunks]


def test_prefix_of_several_chunks():
    segs = ["H"] + [f"<{i}>" for i in range(6)]
    head, chunks = chunk_document("d", segs, mean_units=1.0, max_units=1, prefix_chunks=3)
    assert [c.suffix for c in chunks] == [f"<{i}>" for i in range(6)]
    assert chunks[0].prefix == "H" and chunks[2].prefix == "H<0><1>" and chunks[5].prefix == "<2><3><4>"


def test_prior_and_posterior_layouts_are_exact(docs, tokenizer):
    ids = SpecialIds.of(tokenizer)
    d = tokenize_docs(tokenizer, docs[:1])[0]
    prior, raw_mask = layout_ids(d, "prior", ids)
    expect = [ids.bos] + d.head
    for x, z in zip(d.suffixes, d.thoughts):
        expect += [ids.sol, ids.prior] + z + [ids.eol] + x
    assert prior == expect + [ids.eos]
    assert sum(raw_mask) == d.raw_len
    post, _ = layout_ids(d, "posterior", ids)
    expect = [ids.bos] + d.head
    for x, z in zip(d.suffixes, d.thoughts):
        expect += [ids.sol, ids.eol] + x + [ids.sol, ids.posterior] + z + [ids.eol]
    assert post == expect + [ids.eos]
    raw, mask = layout_ids(d, "raw", ids)
    assert tokenizer.decode(raw[1:-1]) == docs[0].text and all(mask)
    only, mask = layout_ids(d, "thought_only", ids)
    assert only[1:-1] == [t for z in d.thoughts for t in z] and sum(mask) == 2


def test_random_layout_is_a_fair_coin_per_chunk(docs, tokenizer):
    ids = SpecialIds.of(tokenizer)
    tdocs = tokenize_docs(tokenizer, docs)
    rng = np.random.default_rng(0)
    n_prior = n_post = 0
    for d in tdocs * 10:
        toks, _ = layout_ids(d, "random", ids, rng)
        n_prior += toks.count(ids.prior)
        n_post += toks.count(ids.posterior)
    frac = n_prior / (n_prior + n_post)
    assert abs(frac - 0.5) < 0.04, frac


def test_layout_needs_thoughts(tokenizer):
    from lt_utils.data import TokenizedDoc
    with pytest.raises(ValueError, match="needs thoughts"):
        layout_ids(TokenizedDoc([1], [[2]], None), "random", SpecialIds.of(tokenizer), np.random.default_rng(0))


def test_masked_packing_resets_positions_and_keeps_documents_whole(docs, tokenizer):
    ids = SpecialIds.of(tokenizer)
    seqs = [layout_ids(d, "raw", ids) for d in tokenize_docs(tokenizer, docs)]
    rows = pack_rows(seqs, 128, ids.pad, attend_across_docs=False)
    assert rows.input_ids.shape[1] == 128
    n_docs = int((rows.input_ids == ids.bos).sum())
    assert n_docs == len(seqs)
    for r in range(len(rows)):
        starts = np.where(rows.input_ids[r] == ids.bos)[0]
        assert all(rows.position_ids[r, s] == 0 for s in starts)
        assert all(rows.labels[r, s] == -100 for s in starts if s > 0)
        pad = rows.input_ids[r] == ids.pad
        assert (rows.labels[r][pad] == -100).all()
    assert rows.raw_tokens.sum() == sum(len(s) for s, _ in seqs)
    assert (rows.input_ids != ids.pad).sum() == sum(len(s) for s, _ in seqs)


def test_unmasked_packing_is_one_stream(docs, tokenizer):
    ids = SpecialIds.of(tokenizer)
    seqs = [layout_ids(d, "raw", ids) for d in tokenize_docs(tokenizer, docs)]
    rows = pack_rows(seqs, 128, ids.pad, attend_across_docs=True)
    flat = rows.input_ids.reshape(-1)[: sum(len(s) for s, _ in seqs)]
    assert flat.tolist() == [t for s, _ in seqs for t in s]
    assert (rows.position_ids == np.arange(128)).all()


def test_packing_puts_each_document_in_the_leftmost_row_with_room():
    """The packer's row index finds what a scan of every row would: the leftmost row that still fits the piece."""
    rng = np.random.default_rng(3)
    T = 32
    lengths = [int(x) for x in rng.integers(1, T + 1, size=400)] + [T, 1, T, 2]
    seqs = [(list(range(10, 10 + n)), [True] * n) for n in lengths]
    rows = pack_rows(seqs, T, pad_id=0, attend_across_docs=False)
    used, expected = [], []
    for n in lengths:   # first fit by scanning
        k = next((i for i, u in enumerate(used) if u + n <= T), len(used))
        if k == len(used):
            used.append(0)
        used[k] += n
        expected.append(k)
    assert [row for row, _, _ in rows.segments] == expected
    assert len(rows) == len(used) and len(set(expected)) < len(expected)   # rows were shared, not one per piece
    assert [int((r != -100).sum()) for r in rows.labels] == [u - sum(1 for k in expected if k == i) + 1
                                                             for i, u in enumerate(used)]


def test_packed_documents_do_not_see_each_other(docs, tokenizer, tiny_model):
    """With positions reset, transformers masks attention per document: logits equal the document alone."""
    ids = SpecialIds.of(tokenizer)
    seqs = [layout_ids(d, "raw", ids) for d in tokenize_docs(tokenizer, docs[:6])]
    rows = pack_rows(seqs, 256, ids.pad, attend_across_docs=False)
    row, pos = rows.input_ids[0], rows.position_ids[0]
    starts = list(np.where(row == ids.bos)[0])
    assert len(starts) >= 2
    s, e = starts[1], (starts[2] if len(starts) > 2 else int((row != ids.pad).sum()))
    with torch.no_grad():
        packed = tiny_model(input_ids=torch.tensor(row)[None], position_ids=torch.tensor(pos)[None],
                            use_cache=False).logits[0, s:e]
        alone = tiny_model(input_ids=torch.tensor(row[s:e])[None], use_cache=False).logits[0]
    assert torch.allclose(packed, alone, atol=1e-5)


def test_epoch_stream_is_a_function_of_the_step(docs, tokenizer):
    ids = SpecialIds.of(tokenizer)
    tdocs = tokenize_docs(tokenizer, docs)
    kw = dict(seq_len=128, batch_size=4, seed=3, attend_across_docs=False)
    a = EpochStream(tdocs, "random", ids, **kw)
    b = EpochStream(tdocs, "random", ids, **kw)
    per = a.batches_per_epoch
    seq_a = [a.batch(s)["input_ids"] for s in range(2 * per + 1)]
    late = b.batch(2 * per)["input_ids"]  # jump straight to epoch 2, as a resumed run does
    assert np.array_equal(seq_a[2 * per], late)
    assert not np.array_equal(a.batch(0)["input_ids"], a.batch(per)["input_ids"])  # layouts re-drawn per epoch
    assert a.batch(per)["epoch"] == 1


def test_token_ratio_of_latent_layout(docs, tokenizer):
    ids = SpecialIds.of(tokenizer)
    tdocs = tokenize_docs(tokenizer, docs)
    assert token_ratio(tdocs, "raw", ids) == pytest.approx(1.0)
    raw = sum(d.raw_len for d in tdocs)
    thought = sum(len(t) for d in tdocs for t in d.thoughts)
    n_chunks = sum(len(d.suffixes) for d in tdocs)
    # prior adds SoL PRI EoL (3 tokens) per chunk, posterior SoL EoL SoL POST EoL (5): on average 4
    r = token_ratio(tdocs, "random", ids)
    assert (raw + thought + 3 * n_chunks) / raw < r < (raw + thought + 5 * n_chunks) / raw
    assert token_ratio(tdocs, "prior", ids) == pytest.approx((raw + thought + 3 * n_chunks) / raw)


def test_layout_spans_name_each_thought_and_its_question(docs, tokenizer):
    from lt_utils.data import layout_doc

    ids = SpecialIds.of(tokenizer)
    d = tokenize_docs(tokenizer, docs[:1])[0]
    for layout in ("prior", "posterior"):
        lo = layout_doc(d, layout, ids)
        assert (lo.ids, lo.raw) == layout_ids(d, layout, ids)
        assert lo.blocks[0] == 0 and lo.blocks == sorted(lo.blocks)
        assert [lo.ids[a:b] for a, b in lo.thoughts] == d.thoughts
        assert [lo.ids[a:b] for a, b in lo.questions] == [d.head] + d.suffixes[:-1]


def _long_docs(tokenizer, n_docs=12):
    """Worksheets of three toy documents each, stitched so every problem's question precedes its answer."""
    from conftest import toy_docs

    short = toy_docs(n_docs, seed=5)
    out = []
    for i in range(0, len(short), 3):
        a, b, c = short[i:i + 3]
        sa = a.suffixes[:-1] + [a.suffixes[-1] + b.head]
        sb = b.suffixes[:-1] + [b.suffixes[-1] + c.head]
        out.append(type(a)(a.doc_id, a.head, sa + sb + c.suffixes, a.thoughts + b.thoughts + c.thoughts))
    return tokenize_docs(tokenizer, out)


@pytest.mark.parametrize("layout", ["random", "prior", "posterior"])
def test_chunk_cuts_keep_every_thought_with_its_question(tokenizer, layout):
    from lt_utils.data import layout_doc, thoughts_apart

    ids = SpecialIds.of(tokenizer)
    tdocs = _long_docs(tokenizer)
    T = 64
    laid = [layout_doc(d, layout, ids, np.random.default_rng(i)) for i, d in enumerate(tdocs)]
    assert max(len(lo.ids) for lo in laid) > 2 * T           # every document needs cutting
    tokens = pack_rows(laid, T, ids.pad, attend_across_docs=False)
    chunks = pack_rows(laid, T, ids.pad, attend_across_docs=False, cut_at_chunks=True)
    before, after = thoughts_apart(laid, tokens), thoughts_apart(laid, chunks)
    assert before["thoughts"] == after["thoughts"] == sum(len(d.thoughts) for d in tdocs)
    assert before["apart"] > 0 and after["apart"] == 0
    # every token is placed once outside the carried questions, which are context without loss
    placed = sum(ranges[-1][1] - ranges[-1][0] for _, _, ranges in chunks.segments)
    carried = sum(ranges[0][1] - ranges[0][0] for _, _, ranges in chunks.segments if len(ranges) == 2)
    assert placed == sum(len(lo.ids) for lo in laid) and carried > 0
    assert (chunks.labels != -100).sum() <= placed
    assert chunks.raw_tokens.sum() == tokens.raw_tokens.sum() == sum(sum(lo.raw) for lo in laid)
    # a carried question repeats the raw text before the piece's first chunk
    for r, d, ranges in chunks.segments:
        if len(ranges) == 2:
            (qa, qb), (a, _) = ranges
            assert (qa, qb) in laid[d].questions and a in laid[d].blocks


def test_thoughts_apart_counts_a_cut_by_hand(tokenizer):
    from lt_utils.data import TokenizedDoc, layout_doc, thoughts_apart

    ids = SpecialIds.of(tokenizer)
    d = TokenizedDoc([10, 11], [[20, 21], [30, 31]], [[40], [50]])
    lo = layout_doc(d, "prior", ids)
    # BOS 10 11 | SoL PRI 40 EoL 20 21 | SoL PRI 50 EoL 30 31 EOS : 16 tokens
    assert len(lo.ids) == 16 and lo.blocks == [0, 9] and lo.questions == [(1, 3), (7, 9)]
    whole = pack_rows([lo], 16, ids.pad, attend_across_docs=False)
    assert thoughts_apart([lo], whole)["apart"] == 0
    cut = pack_rows([lo], 8, ids.pad, attend_across_docs=False)   # the cut after token 7 splits question 2
    assert thoughts_apart([lo], cut) == {"thoughts": 2, "apart": 1, "share_apart": 0.5}
    kept = pack_rows([lo], 9, ids.pad, attend_across_docs=False, cut_at_chunks=True)
    assert thoughts_apart([lo], kept)["apart"] == 0
    row = kept.input_ids[1].tolist()
    assert row[:9] == [20, 21] + lo.ids[9:]                       # question 20 21 carried before chunk 2
    assert kept.labels[1, :2].tolist() == [-100, -100]
    stream = pack_rows([lo], 8, ids.pad, attend_across_docs=True)
    assert thoughts_apart([lo], stream)["apart"] == 1


def test_epoch_stream_reports_its_cut_share(docs, tokenizer):
    tdocs = _long_docs(tokenizer)
    ids = SpecialIds.of(tokenizer)
    kw = dict(seq_len=64, batch_size=2, seed=0, attend_across_docs=False)
    assert EpochStream(tdocs, "random", ids, **kw).thoughts_apart()["share_apart"] > 0
    assert EpochStream(tdocs, "random", ids, cut_at_chunks=True, **kw).thoughts_apart()["share_apart"] == 0
