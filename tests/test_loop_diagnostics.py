"""Loop diagnostics on a hand-built E-step whose ρ, λ, G, AUCs and distinct counts are worked out below."""

import pytest

from lt_utils.loop_diagnostics import Check, auc, auc_within_groups, distinct_per_chunk, estep_diagnostics, ratio

OK, WRONG = Check(True, True, False), Check(False, False, False)
RIGHT_ANSWER_WRONG_STEP = Check(False, True, True)


def record(tokens, log_w, terminated, selected):
    return {"candidates": [{"tokens": t, "log_w": w, "terminated": d} for t, w, d in zip(tokens, log_w, terminated)],
            "selected": selected}


RECORDS = [
    record([[1, 2], [1, 2], [3]], [-1.0, -1.0, -5.0], [True, True, True], 0),   # 2 distinct
    record([[4], [5], [6]], [-2.0, -3.0, -0.5], [True, True, False], 0),        # 3 distinct, one unterminated
    record([[7], [7], [7]], [-4.0, -4.0, -4.0], [True, True, True], 2),         # 1 distinct
]
CHECKS = [[OK, OK, WRONG], [RIGHT_ANSWER_WRONG_STEP, OK, WRONG], [WRONG, WRONG, WRONG]]


def test_rank_auc_against_pair_counting():
    # positives -1, -1, -3 vs negatives -5, -2, -4, -4, -4: each -1 beats all 5, -3 beats 4 of 5 -> 14 / 15
    assert auc([-1, -1, -3, -5, -2, -4, -4, -4], [1, 1, 1, 0, 0, 0, 0, 0]) == pytest.approx(14 / 15)
    assert auc([1.0, 1.0], [True, False]) == 0.5          # a tie counts one half
    assert auc([2.0, 1.0], [False, True]) == 0.0
    assert auc([1.0, 2.0], [True, True]) is None          # one class only
    # within groups: group a has 2 of 2 pairs right, group b 0 of 1, group c no positive -> 2 / 3
    assert auc_within_groups([-1, -1, -5, -2, -3, -4], [1, 1, 0, 0, 1, 0], "aaabbc") == pytest.approx(2 / 3)


def test_loop_gain_on_a_constructed_estep():
    d = estep_diagnostics(RECORDS, CHECKS, trained_on_correct=0.5, prior_checks={0: WRONG, 2: OK})
    assert d["posterior_sample_correct"] == pytest.approx(3 / 9)    # 2 + 1 + 0 of 9 samples
    assert d["selected_correct"] == pytest.approx(1 / 3)            # OK, right-answer-wrong-step, WRONG
    assert d["best_of_k_correct"] == pytest.approx(2 / 3)
    assert d["rho"] == pytest.approx((1 / 3) / 0.5)
    assert d["lift"] == pytest.approx(1.0)
    assert d["lift_best_of_k"] == pytest.approx(2.0)
    assert d["gain"] == pytest.approx(2 / 3)
    assert d["gain"] == pytest.approx(d["selected_correct"] / d["trained_on_correct"])  # G = ρλ telescopes
    assert d["selected_right_answer_wrong_step"] == pytest.approx(1 / 3)
    assert d["selected_right_answer_unverified"] == pytest.approx(1 / 3)
    assert distinct_per_chunk(RECORDS) == [2, 3, 1]
    assert d["distinct_per_chunk"] == pytest.approx(2.0)
    assert d["auc_log_w"] == pytest.approx(14 / 15)                 # the unterminated -0.5 is left out
    assert d["auc_log_w_within_chunk"] == pytest.approx(2 / 3)
    assert d["prior_chunks"] == 2 and d["prior_sample_correct"] == pytest.approx(0.5)
    assert d["posterior_sample_correct_same_chunks"] == pytest.approx(2 / 6)


def test_missing_denominators_give_none():
    d = estep_diagnostics(RECORDS, CHECKS, trained_on_correct=None)
    assert d["rho"] is None and d["gain"] is None and d["lift"] == pytest.approx(1.0)
    assert "prior_sample_correct" not in d
    assert ratio(1.0, 0.0) is None
    with pytest.raises(ValueError, match="checks"):
        estep_diagnostics(RECORDS, CHECKS[:2], trained_on_correct=0.5)


def test_retention_and_repair_split_rho_by_what_each_chunk_was_trained_on():
    import pytest

    from lt_utils.loop_diagnostics import retention_repair

    trained = [True, True, True, False]            # c = 0.75
    samples = [[True, True], [True, False], [False, False], [True, False]]
    out = retention_repair(trained, samples)
    assert out == {"retention": 0.5, "repair": 0.5, "n_trained_right": 3, "n_trained_wrong": 1}
    # the identity of the loop notes: rho = s / c = r1 + r0 (1 - c) / c
    s, c = 4 / 8, 0.75   # 4 of the 8 samples are right
    assert s / c == pytest.approx(out["retention"] + out["repair"] * (1 - c) / c)
    assert retention_repair([True], [[True]])["repair"] is None
    with pytest.raises(ValueError):
        retention_repair([True], [])
