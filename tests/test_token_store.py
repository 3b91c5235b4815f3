"""The on-disk token store and its lazily packed epochs give exactly the in-memory stream's batches."""

import numpy as np
import pytest

from lt_utils.data import EpochStream, ThoughtDoc, tokenize_docs
from lt_utils.runtime.runs import write_jsonl
from lt_utils.token_store import StreamingEpochs, TokenStore, build_store
from lt_utils.tokens import SpecialIds

from conftest import toy_docs


@pytest.fixture()
def corpus(tmp_path):
    docs = toy_docs(23)
    docs.append(ThoughtDoc("empty-body", "Problem: 1 + 1 Answer:", [], []))   # a document without chunks
    path = tmp_path / "corpus.jsonl"
    write_jsonl(path, [d.to_dict() for d in docs])
    return path, docs


@pytest.mark.parametrize("layout", ["random", "raw", "prior", "posterior", "thought_only"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_streaming_epochs_equal_the_in_memory_stream(corpus, tokenizer, tmp_path, layout, world_size):
    path, docs = corpus
    store = TokenStore(build_store(path, tokenizer, tmp_path / "store", batch_docs=5, progress=False))
    ids = SpecialIds.of(tokenizer)
    tdocs = tokenize_docs(tokenizer, docs)
    assert len(store) == len(docs) and list(store.raw_len) == [d.raw_len for d in tdocs]
    for rank in range(world_size):
        kw = dict(seq_len=64, batch_size=3, seed=5, rank=rank, world_size=world_size)
        ref = EpochStream(tdocs, layout, ids, attend_across_docs=True, **kw)
        lazy = StreamingEpochs(store, layout, ids, **kw)
        assert lazy.batches_per_epoch == ref.batches_per_epoch
        for step in range(3 * ref.batches_per_epoch + 2):     # crosses epoch boundaries
            a, b = ref.batch(step), lazy.batch(step)
            for k in ("input_ids", "labels", "position_ids"):
                assert np.array_equal(a[k], b[k]), (step, k)
            assert a["raw_tokens"] == b["raw_tokens"] and a["epoch"] == b["epoch"]


def test_rewrites_without_chunk_text_stream_as_thought_only(tokenizer, tmp_path):
    """WRAP corpora: one thought, no chunk text, per document."""
    docs = [ThoughtDoc(f"d{i}#r{r}", "", [], [f"A rewrite {i}.{r} of the text, with {i * r} words."])
            for i in range(9) for r in range(2)]
    path = tmp_path / "wrap.jsonl"
    write_jsonl(path, [d.to_dict() for d in docs])
    store = TokenStore(build_store(path, tokenizer, tmp_path / "w", progress=False))
    ids = SpecialIds.of(tokenizer)
    kw = dict(seq_len=32, batch_size=2, seed=1)
    ref = EpochStream(tokenize_docs(tokenizer, docs), "thought_only", ids, attend_across_docs=True, **kw)
    lazy = StreamingEpochs(store, "thought_only", ids, **kw)
    for step in range(2 * ref.batches_per_epoch + 1):
        assert np.array_equal(ref.batch(step)["input_ids"], lazy.batch(step)["input_ids"]), step
    from lt_utils.data import token_ratio
    from lt_utils.token_store import layout_ratio

    assert layout_ratio(store, "thought_only") == pytest.approx(token_ratio(tokenize_docs(tokenizer, docs),
                                                                            "thought_only", ids))
    with pytest.raises(ValueError, match="one thought per chunk"):
        StreamingEpochs(store, "random", ids, **kw)


def test_layout_ratio_matches_the_laid_out_corpus(corpus, tokenizer, tmp_path):
    from lt_utils.data import token_ratio
    from lt_utils.token_store import layout_ratio

    path, docs = corpus
    store = TokenStore(build_store(path, tokenizer, tmp_path / "s", progress=False))
    tdocs = tokenize_docs(tokenizer, docs)
    ids = SpecialIds.of(tokenizer)
    for layout in ("raw", "prior", "posterior"):
        assert layout_ratio(store, layout) == pytest.approx(token_ratio(tdocs, layout, ids))
    lo, hi = layout_ratio(store, "prior"), layout_ratio(store, "posterior")
    assert layout_ratio(store, "random") == pytest.approx((lo + hi) / 2)


def test_store_is_built_once_and_refuses_mixed_corpora(corpus, tokenizer, tmp_path):
    path, docs = corpus
    out = build_store(path, tokenizer, tmp_path / "s", progress=False)
    mtime = (out / "tokens.bin").stat().st_mtime_ns
    assert build_store(path, tokenizer, out, progress=False) == out and (out / "tokens.bin").stat().st_mtime_ns == mtime
    d = TokenStore(out).doc(0)
    assert list(d.thoughts[0]) == tokenizer(docs[0].thoughts[0], add_special_tokens=False)["input_ids"]
    mixed = tmp_path / "mixed.jsonl"
    write_jsonl(mixed, [docs[0].to_dict(), ThoughtDoc("raw", "h", ["x"]).to_dict()])
    with pytest.raises(ValueError, match="lacks thoughts"):
        build_store(mixed, tokenizer, tmp_path / "m", progress=False)
    raw_only = TokenStore(build_store(tmp_path / "raw.jsonl" if write_jsonl(
        tmp_path / "raw.jsonl", [ThoughtDoc("r", "h", ["x y"]).to_dict()]) else None, tokenizer, tmp_path / "r",
        progress=False))
    with pytest.raises(ValueError, match="needs thoughts"):
        StreamingEpochs(raw_only, "random", SpecialIds.of(tokenizer), seq_len=8, batch_size=1, seed=0)
