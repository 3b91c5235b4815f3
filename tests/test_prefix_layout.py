"""The raw-prefix gap's levers: prefixes rebuilt raw or carrying thoughts, the no-thought coin in the training
layouts, and the sweep that measures both (its cells, its table and figure, and a tiny end-to-end run)."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from lt_utils.data import EpochStream, TokenizedDoc, chunk_document, layout_doc, tokenize_docs
from lt_utils.estep import chunk_pieces, posterior_prompt
from lt_utils.prefix_layout import relayout
from lt_utils.runtime.config import ConfigError, load
from lt_utils.stages.bootstrap_em import BootstrapConfig
from lt_utils.sweeps import fidelity_curve, loop_map
from lt_utils.sweeps import prefix_layout as pl
from lt_utils.tokens import SpecialIds, encode
from lt_utils.train import TrainSpec


def _chunked(docs, prefix_chunks):
    heads, chunks, spans = [], [], []
    for d in docs:
        head, cs = chunk_document(d.doc_id, [d.head, *d.suffixes], mean_units=1.5, max_units=3,
                                  prefix_chunks=prefix_chunks)
        heads.append(head)
        spans.append((len(chunks), len(chunks) + len(cs)))
        chunks.extend(cs)
    return heads, chunks, spans


def test_raw_prefixes_rebuilt_from_one_chunk_are_the_chunkers_own(docs, tokenizer):
    heads, one, spans = _chunked(docs, 1)
    assert max(b - a for a, b in spans) >= 4     # documents long enough for 3 earlier chunks to matter
    for n in (0, 1, 2, 3, 5):
        want = _chunked(docs, n)[1]
        got = relayout(heads, one, spans, tokenizer, n)
        assert got == want
        assert all(c.prefix_ids is None for c in got)


def test_a_thoughts_prefix_holds_each_earlier_chunk_in_the_joints_training_form(docs, tokenizer):
    heads, one, spans = _chunked(docs, 1)
    ids = SpecialIds.of(tokenizer)
    thought = lambda c: f"thought {c.index}."   # noqa: E731
    got = relayout(heads, one, spans, tokenizer, 2, layout="thoughts", thought_of=thought)
    a, b = next(s for s in spans if s[1] - s[0] >= 3)
    doc = one[a:b]
    head = encode(tokenizer, heads[spans.index((a, b))])
    # the same document in the joint's own prior form, as training lays it out: BOS head [SoL PRI z EoL x] ... EOS
    prior = layout_doc(TokenizedDoc(head, [encode(tokenizer, c.suffix) for c in doc],
                                    [encode(tokenizer, thought(c)) for c in doc]), "prior", ids)
    assert got[a].prefix_ids == tuple(head)                         # chunk 0: the head, which has no thought
    assert got[a + 1].prefix_ids == tuple(prior.ids[1:prior.blocks[1]])
    assert got[a + 2].prefix_ids == tuple(prior.ids[1 + len(head):prior.blocks[2]])
    assert ids.prior in got[a + 2].prefix_ids and ids.posterior not in got[a + 2].prefix_ids
    # the raw text stays the prefix the verifier reads; the prompt is built from the ids
    raw2 = relayout(heads, one, spans, tokenizer, 2)
    assert [c.prefix for c in got] == [c.prefix for c in raw2]
    c = got[a + 2]
    assert chunk_pieces(tokenizer, c)[0] == list(c.prefix_ids)
    assert posterior_prompt(tokenizer, c) == [ids.bos, *c.prefix_ids, ids.sol, ids.eol,
                                              *encode(tokenizer, c.suffix), ids.sol, ids.posterior]
    assert chunk_pieces(tokenizer, c, max_prefix_tokens=5)[0] == list(c.prefix_ids)[-5:]


def test_relayout_rejects_what_it_cannot_build(docs, tokenizer):
    heads, one, spans = _chunked(docs[:2], 1)
    with pytest.raises(ValueError, match="thought_of"):
        relayout(heads, one, spans, tokenizer, 3, layout="thoughts")
    with pytest.raises(ValueError, match="unknown prefix layout"):
        relayout(heads, one, spans, tokenizer, 3, layout="notes")
    shuffled = [one[1], one[0], *one[2:]]
    with pytest.raises(ValueError, match="not indexed"):
        relayout(heads, shuffled, spans, tokenizer, 3)


def test_the_no_thought_coin_drops_thoughts_at_its_rate_and_costs_nothing_at_zero(docs, tokenizer):
    ids = SpecialIds.of(tokenizer)
    tdocs = tokenize_docs(tokenizer, docs)
    # p = 0: no coin drawn, so the layout and the generator's stream are those of the layout without the argument
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    for d in tdocs:
        assert layout_doc(d, "random", ids, r1).ids == layout_doc(d, "random", ids, r2, 0.0).ids
    assert r1.random() == r2.random()
    # p = 0.5: about half the chunks lose their thought and are laid out as raw text, with no special token
    rng = np.random.default_rng(0)
    kept = dropped = 0
    for d in tdocs * 20:
        lo = layout_doc(d, "random", ids, rng, 0.5)
        for i, span in enumerate(lo.thoughts):
            if span == (0, 0):
                dropped += 1
                start = lo.blocks[i]
                end = lo.blocks[i + 1] if i + 1 < len(lo.blocks) else len(lo.ids) - 1
                block, x = lo.ids[start:end], d.suffixes[i]   # block 0 also holds BOS and the head
                assert block[len(block) - len(x):] == x and all(lo.raw[start:end]) and ids.sol not in block
            else:
                kept += 1
        assert lo.ids[0] == ids.bos and lo.ids[-1] == ids.eos
        assert sum(lo.raw) == d.raw_len   # every raw token is still there
    assert 0.46 < dropped / (kept + dropped) < 0.54   # 2,500 coins: 0.01 is one standard deviation
    with pytest.raises(ValueError, match="no_thought_p"):
        layout_doc(tdocs[0], "random", ids, rng, 1.0)
    with pytest.raises(ValueError, match="no_thought_p"):
        layout_doc(tdocs[0], "prior", ids, None, 0.3)


def test_the_epoch_stream_lays_out_the_coin_and_is_unchanged_without_it(docs, tokenizer):
    ids = SpecialIds.of(tokenizer)
    tdocs = tokenize_docs(tokenizer, docs)
    kw = dict(seq_len=64, batch_size=4, seed=1, attend_across_docs=False, cut_at_chunks=True)
    plain, zero = EpochStream(tdocs, "random", ids, **kw), EpochStream(tdocs, "random", ids, no_thought_p=0.0, **kw)
    for step in (0, 3):
        assert (plain.batch(step)["input_ids"] == zero.batch(step)["input_ids"]).all()
    coin = EpochStream(tdocs, "random", ids, no_thought_p=0.5, **kw)
    count = lambda s: int(np.isin(s.rows_for_epoch(0)[0].input_ids, [ids.prior, ids.posterior]).sum())  # noqa: E731
    assert 0 < count(coin) < count(plain)
    assert EpochStream(tdocs, "raw", ids, no_thought_p=0.5, **kw).no_thought_p == 0.0   # raw text has no thoughts
    # the training tokens per raw token (the FLOP-matched baseline's ratio) count the dropped thoughts
    from lt_utils.data import token_ratio

    full, half = token_ratio(tdocs, "random", ids), token_ratio(tdocs, "random", ids, no_thought_p=0.5)
    assert token_ratio(tdocs, "random", ids, no_thought_p=0.0) == full and 1.0 < half < full
    assert 0.3 < (half - 1.0) / (full - 1.0) < 0.7   # about half the thoughts (and their markers) are gone


def test_the_coin_is_a_checked_stage_03_parameter():
    with pytest.raises(ConfigError, match="no_thought_p"):
        load(BootstrapConfig, {"no_thought_p": 1.0})
    with pytest.raises(ConfigError, match="attend_across_docs"):
        load(BootstrapConfig, {"no_thought_p": 0.25, "attend_across_docs": True})
    with pytest.raises(ConfigError, match="no_thought_p"):
        TrainSpec(no_thought_p=-0.1)
    cfg = load(BootstrapConfig, {"no_thought_p": 0.25})
    from lt_utils.runtime.config import pick

    assert pick(TrainSpec, cfg).no_thought_p == 0.25


def test_cells_at_coin_zero_are_the_fidelity_curves_own_and_coin_cells_are_new():
    cfg = pl.PrefixLayoutConfig(budgets=[1000, 3000], coins=[0.0, 0.5])
    cells = pl.cells(cfg)
    assert [(coin, c.row_value) for coin, c in cells] == [(0.0, 1000), (0.0, 3000), (0.5, 1000), (0.5, 3000)]
    curve = {c.row_value: c for w, c in fidelity_curve.cells(fidelity_curve.load_curve()) if w == 64}
    for coin, c in cells:
        same = (c.warm_id, c.estep_id) == (curve[c.row_value].warm_id, curve[c.row_value].estep_id)
        assert same == (coin == 0.0) and c.data_id == curve[c.row_value].data_id
        assert c.boot_params.get("no_thought_p", 0.0) == coin
    two = pl.cells(dataclasses.replace(cfg, seeds=[0, 1], coins=[0.5], budgets=[1000]))
    assert [c.boot_params["seeds"] for _, c in two] == [[0], [1]] and two[0][1].warm_id != two[1][1].warm_id


def test_layout_names_and_bad_params():
    assert pl.parse_layout("raw3") == ("raw", 3) and pl.parse_layout("thoughts1") == ("thoughts", 1)
    assert pl.parse_layout("raw0") is None and pl.parse_layout("notes2") is None and pl.parse_layout("raw") is None
    with pytest.raises(ConfigError, match="layouts"):
        pl.PrefixLayoutConfig(layouts=["raw3", "thoughts"])
    with pytest.raises(ConfigError, match="coins"):
        pl.PrefixLayoutConfig(coins=[1.0])
    import yaml

    path = pl.PARAMS_DIR / "prefix_layout" / pl.PARAMS_FILE      # the committed params load and name known layouts
    cfg = load(pl.PrefixLayoutConfig, yaml.safe_load(path.read_text()), where=str(path))
    assert {pl.parse_layout(x)[0] for x in cfg.layouts} == {"raw", "thoughts"} and 0.0 in cfg.coins


def _table():
    rows = []
    for coin in (0.0, 0.5):
        for steps in (1000, 3000):
            for kind, n in (("raw", 1), ("raw", 3), ("thoughts", 1), ("thoughts", 3)):
                f = 0.3 + 0.4 * (steps == 3000) - 0.2 * (n == 3 and kind == "raw" and not coin)
                rows.append(dict(no_thought_p=coin, steps=steps, seed=0, prefix_chunks=n, prefix_layout=kind, f=f,
                                 f_first_chunks=f + 0.05, f_later_chunks=f, n_first=10, n_later=30,
                                 greedy_correct=f, greedy_first=f + 0.1, greedy_later=f, n_greedy=40,
                                 p_addition=0.9, p_linear=f, p_word=0.8, f_dev=f, dev_accuracy=0.5, warmstart="w"))
    return pl.build_table(rows)


def test_seed_comparisons_pair_each_layout_with_raw1_and_each_coin_with_none():
    rows = []
    for seed in (0, 1, 2):
        for coin in (0.0, 0.5):
            for kind, n in (("raw", 1), ("raw", 3)):
                f = 0.8 - (0.3 if n == 3 and not coin else 0.05 if n == 3 else 0.0) - 0.02 * coin + 0.01 * seed
                rows.append(dict(no_thought_p=coin, steps=3000, seed=seed, prefix_chunks=n, prefix_layout=kind,
                                 f_later_chunks=f))
    comps = {(c.label_a, c.label_b): c for c in pl.seed_comparisons(pd.DataFrame(rows))}
    gap = comps[("raw3, coin 0, 3,000 steps", "raw1, coin 0, 3,000 steps")]
    assert gap.n_a == 3 and gap.diff == pytest.approx(-0.3)
    assert comps[("raw3, coin 0.5, 3,000 steps", "raw1, coin 0.5, 3,000 steps")].diff == pytest.approx(-0.05)
    assert comps[("coin 0.5, raw3, 3,000 steps", "coin 0, raw3, 3,000 steps")].diff == pytest.approx(0.24)
    assert comps[("coin 0.5, raw1, 3,000 steps", "coin 0, raw1, 3,000 steps")].diff == pytest.approx(-0.01)
    assert len(comps) == 4


def test_the_table_draws_its_figure(tmp_path):
    df = _table()
    pl.tables.publish(df, tmp_path, pl.TABLE, pl.FIGURE, pl.MAKER)
    back = pl.read_table(tmp_path / "data" / pl.TABLE)
    pd.testing.assert_frame_equal(back, df)
    assert sorted(p.name for p in tmp_path.glob("prefix_layout.*")) == ["prefix_layout.pdf", "prefix_layout.png"]


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path, monkeypatch):
    """A smoke-sized warmstart per coin, scored in two layouts: finished, self-describing runs and a table whose
    raw one-chunk f is the warmstart's standard fidelity (the same prompts)."""
    smoke = dataclasses.replace(loop_map.load_map("loop_map_smoke"), run_root=str(tmp_path), ablation={},
                                ablation_rows=[], row_values=[0.0], col_values=[2],
                                bootstrap={**loop_map.load_map("loop_map_smoke").bootstrap, "prefix_chunks": 1})
    monkeypatch.setattr(loop_map, "load_map", lambda name, **kw: smoke)
    cfg = pl.PrefixLayoutConfig(map="loop_map_smoke", budgets=[3], coins=[0.0, 0.5], layouts=["raw1", "thoughts3"],
                                decode_chunks=4, workers=1, figures_dir=str(tmp_path / "fig"))
    df = pl.run(cfg)
    assert len(df) == 4 and set(df["prefix_layout"]) == {"raw", "thoughts"}
    assert (tmp_path / "fig" / "data" / pl.TABLE).is_file() and (tmp_path / "fig" / "prefix_layout.png").is_file()
    runs = sorted(tmp_path.glob("smoke/d_*/03_prefix_*"))
    assert len(runs) == 4 and all((r / "DONE").exists() and (r / "prefix_fidelity.json").exists() for r in runs)
    # the raw one-chunk layout is the E-step's own: its f is each warmstart's standard fidelity, exactly
    standard = sorted(json.loads(p.read_text())["fidelity"]["bootstrap"]["f"]
                      for p in tmp_path.glob("smoke/d_*/03_fidelity_*/fidelity.json"))
    assert sorted(df.loc[df["prefix_layout"] == "raw", "f"]) == pytest.approx(standard, rel=1e-9)
    assert (df["n_first"] > 0).all() and df["f"].between(0, 1).all()
    # each layout against the same warmstart's raw one-chunk layout, paired over its later chunks
    raw = df[df["prefix_layout"] == "raw"]
    assert (raw["later_vs_raw1"] == 0).all()
    other = df[df["prefix_layout"] == "thoughts"]
    assert other["later_vs_raw1"].tolist() == pytest.approx(
        (other["f_later_chunks"].values - raw["f_later_chunks"].values).tolist(), abs=1e-12)
    assert (other["later_vs_raw1_lo"] <= other["later_vs_raw1"]).all()
    again = pl.run(cfg)
    pd.testing.assert_frame_equal(again, df)
