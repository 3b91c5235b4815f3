"""Paper-scale text corpus: streaming, the paper's slices and shards, sentence units and chunking."""

import gzip
import json
import sys

import pytest

from lt_utils.data import Chunk, layout_ids, tokenize_docs
from lt_utils.paper import text_corpus as tc
from lt_utils.tokens import SpecialIds, encode

MULTI = ("\n\nSection 1. Fractions\n\nThe value is 3.5. Next, we double it to get 7.0 exactly. "
         "See e.g. Dr. Smith's notes for more!  Is 7 prime? Yes.\n"
         "It has no divisors but 1 and 7.\n  \n\n  Indented paragraph: 2.5 + 2.5 = 5. Done.  \n")


def finemath_row(i, text=None):
    return {"url": f"https://example.org/{i}", "text": text or f"Doc {i}. It says {i} + 1 = {i + 1}.",
            "score": 4.2, "token_count": 12}


def write_jsonl(path, rows, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture()
def corpus(tmp_path):
    """Two files in the FineMath-4+ schema: a plain jsonl (with a blank line) and a jsonl.gz."""
    d = tmp_path / "finemath-4plus"
    d.mkdir()
    write_jsonl(d / "000.jsonl", [finemath_row(i) for i in range(3)])
    with open(d / "000.jsonl", "a") as f:
        f.write("\n" + json.dumps(finemath_row(3)) + "\n")
    write_jsonl(d / "001.jsonl.gz", [finemath_row(i) for i in range(4, 7)], gz=True)
    return d


def texts(records):
    return [r.text for r in records]


def test_streaming_order_ids_and_fields(corpus):
    recs = list(tc.iter_records(corpus))
    assert texts(recs) == [finemath_row(i)["text"] for i in range(7)]
    assert [r.index for r in recs] == list(range(7))
    # "<stem>:<line number>": the blank line 4 of 000.jsonl is skipped but keeps numbering honest
    assert [r.doc_id for r in recs] == ["000:1", "000:2", "000:3", "000:5", "001:1", "001:2", "001:3"]
    assert recs[0].fields["url"] == "https://example.org/0" and recs[0].fields["token_count"] == 12
    by_url = list(tc.iter_records(corpus, id_field="url"))
    assert by_url[5].doc_id == "https://example.org/5"
    # files, globs and lists of them resolve to the same stream
    assert texts(tc.iter_records([corpus / "000.jsonl", corpus / "001.jsonl.gz"])) == texts(recs)
    assert texts(tc.iter_records(str(corpus / "*.jsonl*"))) == texts(recs)


def test_records_are_read_lazily(corpus):
    bad = corpus / "002.jsonl"
    bad.write_text(json.dumps(finemath_row(7)) + "\n{not json\n")
    it = tc.iter_records(corpus)
    assert [next(it).text for _ in range(8)][-1] == finemath_row(7)["text"]  # nothing beyond was parsed yet
    with pytest.raises(ValueError, match=r"002\.jsonl:2: not valid JSON"):
        next(it)


def test_missing_text_field_is_named(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"content": "hi"}])
    with pytest.raises(ValueError, match=r"x\.jsonl:1: record has no 'text' field"):
        list(tc.iter_records(p))
    assert [r.text for r in tc.iter_records(p, text_field="content")] == ["hi"]


def test_paper_val_and_train_slices_interleave(tmp_path):
    n = 2500
    p = write_jsonl(tmp_path / "shuffled.jsonl", [finemath_row(i) for i in range(n)])
    specs = tc.paper_splits()
    val = [r.index for r in tc.iter_records(p, slice_spec=specs["val"])]
    train = [r.index for r in tc.iter_records(p, slice_spec=specs["train"])]
    assert val == [0, 1000, 2000]
    assert set(val).isdisjoint(train) and sorted(val + train) == list(range(n))
    assert [r.index for r in tc.paper_split(tc.iter_records(p), "val")] == val


def test_warmstart_and_bootstrap_index_the_train_split():
    specs = tc.paper_splits()
    train = list(tc.subset(range(3000), specs["train"]))
    warm = list(tc.paper_split(range(3000), "warmstart"))
    boot = list(tc.paper_split(range(3000), "bootstrap"))
    assert warm == train[0::20]                                        # residue 0 of the train index
    assert boot == [x for j, x in enumerate(train) if 13 <= j % 20 < 17]
    assert len(boot) == 4 * len(warm) and set(warm).isdisjoint(boot)
    assert not set(warm + boot) & set(tc.paper_split(range(3000), "val"))
    with pytest.raises(ValueError, match="unknown split"):
        tc.paper_split(range(3), "test")


@pytest.mark.parametrize("spec", ["1:1000", "a:b:c", "5:2:10", "0:11:10", "0:0:5"])
def test_bad_slice_spec_is_one_line(corpus, spec):
    with pytest.raises(ValueError) as e:
        tc.iter_records(corpus, slice_spec=spec)  # fails at the call, before reading
    assert "bad slice_spec" in str(e.value) and "\n" not in str(e.value)


def test_shards_partition_the_slice(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", [finemath_row(i) for i in range(60)])
    whole = [r.doc_id for r in tc.iter_records(p, slice_spec="1:4:5")]
    assert len(whole) == 36
    for k in (1, 2, 3, 7):
        shards = [[r.doc_id for r in tc.iter_records(p, slice_spec="1:4:5", shard_index=s, num_shards=k)]
                  for s in range(k)]
        assert sum(len(s) for s in shards) == len(whole)                     # disjoint ...
        assert sorted(x for s in shards for x in s) == sorted(whole)          # ... and complete
        assert shards[0] == whole[0::k]                                       # sharded after slicing
    with pytest.raises(ValueError, match="shard_index"):
        tc.iter_records(p, shard_index=2, num_shards=2)


def test_parquet_without_pyarrow_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    pq = tmp_path / "train-00000.parquet"
    pq.write_bytes(b"PAR1")
    with pytest.raises(ImportError) as e:
        tc.iter_records(pq)
    msg = str(e.value)
    assert "train-00000.parquet" in msg and "pyarrow" in msg and "\n" not in msg
    assert tc.resolve_source(tmp_path) == [pq]  # still found as a data file


def test_hub_id_must_be_downloaded_first():
    with pytest.raises(FileNotFoundError) as e:
        tc.resolve_source("HuggingFaceTB/finemath:finemath-4plus")
    msg = str(e.value)
    assert "\n" not in msg and "downloaded first" in msg
    assert "huggingface-cli download HuggingFaceTB/finemath" in msg and "finemath-4plus/*" in msg
    assert "--local-dir" in msg
    with pytest.raises(FileNotFoundError, match="matches no"):
        tc.resolve_source("/nonexistent-dir-xyz/*.jsonl")


def test_sentence_units_round_trip():
    units = tc.sentence_units(MULTI)
    assert "".join(units) == MULTI.lstrip("\n")           # only the leading newlines are dropped
    assert units[0] == "Section 1."                        # untrained Punkt ends "Section 1." ...
    assert units[1] == " Fractions"                        # ... and the blank line ends a paragraph
    assert units[2] == "\n\nThe value is 3.5."             # a decimal point does not end a sentence
    assert units[3].startswith(" Next, we double it to get 7.0 exactly.")
    assert all(u.strip() for u in units)                   # every unit holds a sentence
    assert any(u.startswith("\n  \n\n  Indented") for u in units)  # whitespace joins the next unit
    assert units[-1] == " Done.  \n"                        # trailing whitespace stays on the last unit
    assert tc.sentence_units("  \n\n ") == [] and tc.sentence_units("") == []
    assert tc.sentence_units("  One. Two") == ["  One.", " Two"]


def long_text(n=120):
    return "\n\n".join(f"Step {i}: we compute {i} * 2 = {2 * i}. Hence the total grows." for i in range(n))


def test_chunk_sizes_and_determinism():
    text = long_text()
    units = tc.sentence_units(text)
    chunks = tc.chunk_text("a", text)
    assert "".join(c.suffix for c in chunks) == "".join(units) == text
    sizes = [len(tc.sentence_units(c.suffix)) for c in chunks]
    assert sum(sizes) == len(units) and all(1 <= s <= 20 for s in sizes) and len(set(sizes)) > 2
    assert 5 < len(units) / len(chunks) < 12                # Poisson(7) + 1: about 8 units per chunk
    other = tc.chunk_text("b", text)
    assert [c.suffix for c in other] == [c.suffix for c in chunks] and other[0].doc_id == "b"
    assert [c.suffix for c in tc.chunk_text("a", text, seed=7)] != [c.suffix for c in chunks]
    capped = tc.chunk_text("a", text, mean_units=30, max_units=4)
    assert all(len(tc.sentence_units(c.suffix)) <= 4 for c in capped)
    assert tc.chunk_text("e", "") == []


def test_prefixes_are_previous_chunks():
    text = long_text(60)
    one = tc.chunk_text("d", text, first_prefix="N/A")
    assert one[0].prefix == "N/A" and [c.index for c in one] == list(range(len(one)))
    assert all(cur.prefix == prev.suffix for prev, cur in zip(one, one[1:]))
    three = tc.chunk_text("d", text, prefix_chunks=3)
    assert three[0].prefix == "" and three[1].prefix == three[0].suffix
    for i in range(3, len(three)):
        assert three[i].prefix == "".join(c.suffix for c in three[i - 3:i])


def test_thought_doc_lays_out_the_raw_text(tokenizer):
    text = "Problem: 12 + 30 Answer: 42.\nSo 2+0=2. " + long_text(8)
    chunks = tc.chunk_text("doc", text, mean_units=3)
    assert len(chunks) > 2
    doc = tc.to_thought_doc("doc", chunks)
    assert doc.head == "" and doc.text == text and doc.thoughts is None
    ids = SpecialIds.of(tokenizer)
    toks, raw = layout_ids(tokenize_docs(tokenizer, [doc])[0], "raw", ids)
    assert toks == [ids.bos] + encode(tokenizer, text) + [ids.eos] and all(raw)
    with_z = tc.to_thought_doc("doc", chunks, [f"z{i}" for i in range(len(chunks))])
    prior, _ = layout_ids(tokenize_docs(tokenizer, [with_z])[0], "prior", ids)
    assert prior.count(ids.prior) == len(chunks)
    with pytest.raises(ValueError, match="thoughts for"):
        tc.to_thought_doc("doc", chunks, ["only one"])
    assert isinstance(chunks[0], Chunk)


def test_take_until_tokens_stops_at_budget(tokenizer):
    recs = [tc.Record(f"d{i}", f"Problem: {i} + {i} Answer: {2 * i}.", i, {}) for i in range(50)]
    cost = [len(encode(tokenizer, r.text)) + 2 for r in recs]
    budget = sum(cost[:5]) + 1                            # reached inside the 6th record
    source = iter(recs)
    taken = list(tc.take_until_tokens(source, tokenizer, budget))
    assert taken == recs[:6]
    assert next(source) is recs[6]                         # nothing after the budget was read
    assert list(tc.take_until_tokens(iter(recs), tokenizer, sum(cost[:5]))) == recs[:5]
    assert list(tc.take_until_tokens(iter(recs), tokenizer, 0)) == []
    assert len(list(tc.take_until_tokens(iter(recs), tokenizer, 10 ** 9))) == 50


def broken_corpus(path):
    """Good FineMath rows interleaved with one record of every kind a real dump may hold."""
    lines = [json.dumps(finemath_row(0)).encode(),
             json.dumps({"url": "u", "score": 4.0}).encode(),                 # no text field
             b'{"text": "caf\xe9 au lait"}',                                  # Latin-1 bytes, not UTF-8
             json.dumps(finemath_row(1)).encode(),
             json.dumps(finemath_row(2, text="   \n ")).encode(),             # blank
             json.dumps({"text": "x" * 5000}).encode(),                       # runaway document
             json.dumps({"text": None}).encode(),                             # not text
             b"[1, 2, 3]",                                                    # not an object
             json.dumps(finemath_row(3)).encode(),
             b'{"text": "cut off mid-rec']                                    # a torn last line
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_malformed_records_are_counted_by_reason_never_dropped_silently(tmp_path):
    from lt_utils.runtime.skipped_inputs import Rejects

    path = broken_corpus(tmp_path / "dump.jsonl")
    rejects = Rejects()
    recs = list(tc.iter_records(path, rejects=rejects, max_chars=1000))
    assert [r.doc_id for r in recs] == ["dump:1", "dump:4", "dump:9"] and [r.index for r in recs] == [0, 1, 2]
    d = rejects.as_dict()
    assert d["by_reason"] == {"empty": 1, "invalid_json": 1, "missing_field": 1, "non_utf8": 1, "not_an_object": 1,
                              "not_text": 1, "too_long": 1}
    assert d["total"] == 7 and d["first"]["non_utf8"] == f"{path}:3" and d["first"]["invalid_json"] == f"{path}:10"
    # without a count to keep, the first bad record is a one-line error naming file and line
    with pytest.raises(ValueError) as err:
        list(tc.iter_records(path, max_chars=1000))
    assert str(err.value).startswith(f"{path}:2: ") and "\n" not in str(err.value)


def test_stage_01_reports_rejected_records_in_its_metrics(tmp_path, tokenizer_dir):
    from lt_utils.runtime import config
    from lt_utils.runtime.runs import RunDir, read_json, read_jsonl
    from lt_utils.stages import data_prep as corpus

    src = tmp_path / "src"
    src.mkdir()
    broken_corpus(src / "dump.jsonl")
    math = tmp_path / "math.jsonl"
    math.write_text("\n".join(json.dumps(r) for r in (
        {"problem": "1+1?", "solution": "$\\boxed{2}$"}, {"problem": "no answer", "solution": "none"},
        {"solution": "$\\boxed{3}$"})) + "\n")
    cfg = config.load(corpus.DataPrepConfig, {
        "run_root": str(tmp_path / "runs"), "source": "text", "text_source": str(src),
        "tokenizer_from": str(tokenizer_dir), "comparison_tokens": 10_000, "valid_docs": 1,
        "math_eval_path": str(math), "split_specs": {"val": "0:1:2", "train": "1:2:2", "warmstart": "0:1:1",
                                                     "bootstrap": "0:1:1"}})
    run = RunDir.open(cfg, "01_data_prep")
    stats = corpus.build(run, cfg)
    # every bad record met on the way (the 5000-character document is within the stage's default limit)
    assert stats["comparison"]["rejected"]["by_reason"] == {"empty": 1, "invalid_json": 1, "missing_field": 1,
                                                            "non_utf8": 1, "not_an_object": 1, "not_text": 1}
    assert stats["eval_math"] == {"docs": 1, "rejected": {"total": 2, "by_reason": {"missing_field": 1,
                                                                                    "no_answer": 1},
                                                          "first": {"missing_field": f"{math}:3",
                                                                    "no_answer": f"{math}:2"}}}
    logged = {r["source"]: r["by_reason"] for r in read_jsonl(run.path / "metrics.jsonl") if r["kind"] == "rejected"}
    assert logged["eval_math"] == {"missing_field": 1, "no_answer": 1}
    assert logged["comparison"] == stats["comparison"]["rejected"]["by_reason"]
    assert read_json(run.path / "stats.json")["comparison"]["rejected"]["by_reason"]["non_utf8"] == 1
