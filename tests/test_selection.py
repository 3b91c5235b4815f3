"""The selection sweep: each rule's chance of choosing a right thought, and the weights of a thought kept, not drawn."""

import math

import numpy as np
import pytest
import torch

from lt_utils.data import chunk_document
from lt_utils.estep import EStepConfig, normalized_weights, run_estep
from lt_utils.stages.em_estep import rescore
from lt_utils.sweeps import selection
from lt_utils.tokens import SpecialIds
from test_estep import EolBias   # a tiny model that closes its thoughts

torch.set_num_threads(1)


def test_resampling_is_scored_by_its_expectation_and_argmax_by_its_pick():
    log_w = [math.log(0.2), math.log(0.5), math.log(0.3)]
    got = selection.chosen_correctness(log_w, [True, True, True], [True, False, True])
    assert got["resample"] == pytest.approx(0.5)          # 0.2 + 0.3 of the weight sits on right thoughts
    assert got["argmax"] == 0.0                            # the heaviest candidate is wrong
    assert got["best_of_k"] == 1.0
    assert got["sample"] == pytest.approx(2 / 3)


def test_unterminated_candidates_are_never_chosen_unless_none_terminated():
    # the heaviest candidate never closed its thought: weight 0, as in the E-step
    got = selection.chosen_correctness([0.0, -5.0, -6.0], [False, True, True], [True, False, False])
    assert got["resample"] == 0.0 and got["argmax"] == 0.0
    none = selection.chosen_correctness([-3.0, -1.0], [False, False], [False, True])
    assert none["resample"] == none["argmax"] == 1.0      # the E-step's fallback: argmax of log w


def test_the_kept_thought_joins_the_first_k_candidates():
    cands = [{"log_w": -10.0, "terminated": True}, {"log_w": -1.0, "terminated": True},
             {"log_w": -2.0, "terminated": True}]
    right = [False, False, True]
    rules = selection.chunk_rules(cands, right, {"log_w": -1.5, "right": True}, ks=[1, 2, 3])
    assert rules[(1, "argmax")] == 0.0 and rules[(1, "memory_argmax")] == 1.0   # kept (-1.5) beats -10
    assert rules[(2, "memory_argmax")] == 0.0                                      # -1.0 beats the kept -1.5
    w = normalized_weights([-10.0, -1.0, -1.5], [True] * 3)
    assert rules[(2, "memory")] == pytest.approx(w[2])
    assert rules[(3, "best_of_k")] == 1.0 and rules[(2, "best_of_k")] == 0.0
    assert (1, "memory") not in selection.chunk_rules(cands, right, None, ks=[1])


def test_summary_is_the_mean_over_chunks():
    rows = [{(1, "resample"): 1.0}, {(1, "resample"): 0.0}, {(1, "resample"): 0.5}]
    assert selection.summarize(rows) == {(1, "resample"): pytest.approx(0.5)}


def test_a_rescored_sample_gets_the_weights_it_was_drawn_with(tiny_model, tokenizer, docs):
    chunks = []
    for d in docs[:4]:
        chunks += chunk_document(d.doc_id, [d.head, *d.suffixes], mean_units=1.0, prefix_chunks=1)[1]
    chunks = chunks[:6]
    cfg = EStepConfig(k=3, max_thought_tokens=8, batch_chunks=3, seed=5)
    model = EolBias(tiny_model, SpecialIds.of(tokenizer).eol, 5.0).eval()
    records = run_estep(model, tokenizer, chunks, cfg, progress=False)
    done = [(c, x) for c, r in zip(chunks, records) for x in r["candidates"] if x["terminated"]]
    assert len(done) >= 6
    got = rescore(model, tokenizer, [c for c, _ in done], [x["tokens"] for _, x in done], cfg)
    np.testing.assert_allclose([g[0] for g in got], [x["log_q"] for _, x in done], atol=1e-4)
    np.testing.assert_allclose([g[1] for g in got], [x["log_p"] for _, x in done], atol=1e-4)


def test_bad_params_name_the_key():
    with pytest.raises(ValueError, match="runs"):
        selection.SelectionConfig(runs=[])
    with pytest.raises(ValueError, match="chunks"):
        selection.SelectionConfig(runs=["x"], chunks=0)


def test_the_figure_draws_from_its_table(tmp_path):
    rows = [{"source": "cpu seed 0", "estep": e, "generator": g, "k": k, "rule": rule, "correct": v,
             "n_chunks": 10}
            for e, g in ((1, "warmstart"), (2, "iter1")) for k in (1, 2, 4)
            for rule, v in (("sample", 0.3), ("resample", 0.3 + 0.05 * k), ("best_of_k", 0.3 + 0.1 * k))]
    df = selection.build_table(rows)
    paths = selection.draw(df, tmp_path)
    assert {p.suffix for p in paths} == {".pdf", ".png"} and all(p.stat().st_size > 0 for p in paths)
    lam = selection.lift_table(df)
    assert lam.loc[("cpu seed 0", 1, 4), "resample"] == pytest.approx(0.5 / 0.3, abs=1e-3)


def test_paired_differences_use_only_chunks_with_both_sides():
    per_chunk = [{(4, "argmax"): 1.0, (4, "resample"): 0.5, (4, "memory"): 1.0},
                 {(4, "argmax"): 0.0, (4, "resample"): 0.5},
                 {(4, "argmax"): 1.0, (4, "resample"): 0.25, (4, "memory"): 0.75}]
    rows = {r["comparison"]: r for r in selection.paired_rows(per_chunk, source="s", estep=2)}
    a = rows["argmax@4 − resample@4"]
    assert a["n_chunks"] == 3 and a["diff"] == pytest.approx((0.5 - 0.5 + 0.75) / 3)
    assert a["ci_low"] < a["diff"] < a["ci_high"]
    m = rows["memory@4 − resample@4"]
    assert m["n_chunks"] == 2 and m["diff"] == pytest.approx(0.5)
    assert "argmax@16 − resample@16" not in rows    # no K = 16 here
