"""The claims table: every claim gets a row, with statistics that match scipy and a verdict from its interval."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from lt_utils.report import claims
from lt_utils.stats import paired_compare

S2, S3 = claims.SYNTHETIC_STAGE, claims.EM_STAGE


def finals_of(values: dict) -> pd.DataFrame:
    """Final test points from {(stage, arm): [accuracy per seed 0, 1, ...]} (accuracy as a fraction)."""
    rows = []
    for (stage, arm), accs in values.items():
        for seed, acc in enumerate(accs):
            k = int(arm.split("_k")[1]) if "_k" in arm else (4 if arm == "bolt_iter1" else None)
            rows.append({"stage": stage, "arm": arm, "seed": seed, "accuracy": acc, "k": k, "split": "test",
                         "step": 10, "tokens": 100})
    return pd.DataFrame(rows)


def row(table, claim, comparison_start):
    hits = table[(table["claim"] == claim) & table["comparison"].str.startswith(comparison_start)]
    assert len(hits) == 1, f"{claim} {comparison_start}: {len(hits)} rows"
    return hits.iloc[0]


def test_verdict_rule():
    assert claims.verdict(0.5, 3.0) == "supported"
    assert claims.verdict(-3.0, -0.5) == "reversed"
    assert claims.verdict(-1.0, 2.0) == "not supported"
    assert claims.verdict(0.0, 2.0) == "not supported"      # touching 0 does not exclude it
    assert claims.verdict(math.nan, math.nan) == "not measurable"


def test_bimodality_flag():
    assert claims.bimodal([5.4, 39.2, 40.6])             # one seed short of the threshold, two past it
    assert not claims.bimodal([11.2, 8.4, 10.6])          # plain noise: the gap is small in points
    assert not claims.bimodal([10.0, 30.0, 50.0])         # evenly spread: the gap is half the range
    assert not claims.bimodal([5.0, 40.0])                # two seeds cannot show two groups
    assert not claims.bimodal([7.0, 7.0, 7.0])


def test_paired_compare_matches_scipy_ttest_rel():
    a, b = {0: 40.0, 1: 35.0, 2: 12.0, 3: 50.0}, {0: 30.0, 1: 31.0, 2: 10.0, 9: 99.0}   # seed 9 has no pair
    c = paired_compare(a, b)
    xa, xb = np.array([40.0, 35.0, 12.0]), np.array([30.0, 31.0, 10.0])
    ref = scipy_stats.ttest_rel(xa, xb)
    d = xa - xb
    half = scipy_stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert c.n_a == c.n_b == 3
    assert c.diff == pytest.approx(d.mean())
    assert c.p_value == pytest.approx(ref.pvalue)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert math.isnan(paired_compare({0: 1.0}, {0: 0.5}).ci_low)   # one pair: no interval


def study(latent, raw, iters=(), k=None, match=None):
    v = {(S2, "latent_thoughts"): latent, (S2, "raw_repeat"): raw}
    for i, accs in enumerate(iters, start=1):
        v[(S3, f"bolt_iter{i}")] = accs
    for kk, accs in (k or {}).items():
        v[(S3, f"bolt_iter1_k{kk}")] = accs
    for arm, accs in (match or {}).items():
        v[(S3, arm)] = accs
    return finals_of(v)


def test_welch_row_matches_scipy_and_is_supported():
    latent, raw = [0.40, 0.45, 0.43], [0.10, 0.12, 0.11]
    t = claims.claims_table(study(latent, raw))
    r = row(t, "C1", "latent_thoughts − raw_repeat")
    a, b = np.array(latent) * 100, np.array(raw) * 100
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    assert r["p"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx((ci.low, ci.high))
    assert r["verdict"] == "supported" and r["n"] == "3 vs 3" and r["test"] == "Welch t"
    assert r["values_a"] == "0:40.0 1:45.0 2:43.0" and r["values_b"] == "0:10.0 1:12.0 2:11.0"


def test_every_claim_has_a_row_and_absent_arms_are_not_measurable():
    t = claims.claims_table(study([0.4, 0.5], [0.1, 0.2]))
    assert list(t["claim"]) == ["C1", "C2", "C2", "C3", "C4", "C4", "C5", "C5", "C6", "C6"]
    assert (t.loc[t["claim"] != "C1", "verdict"] == "not measurable").all()
    assert row(t, "C2", "latent_thoughts − wrap_orig")["note"] == "arm absent"
    empty = claims.claims_table(pd.DataFrame())
    assert len(empty) == 10 and (empty["verdict"] == "not measurable").all()


def test_paired_claims_reversed_and_bimodal():
    it1, it2 = [0.388, 0.362, 0.072], [0.054, 0.082, 0.060]
    t = claims.claims_table(study([0.4] * 3, [0.1] * 3, iters=[it1, it2]))
    r = row(t, "C3", "bolt_iter2 − bolt_iter1")
    ref = scipy_stats.ttest_rel(np.array(it2) * 100, np.array(it1) * 100)
    assert r["p"] == pytest.approx(ref.pvalue) and r["test"].startswith("paired")
    assert r["diff"] == pytest.approx((np.mean(it2) - np.mean(it1)) * 100)
    assert r["bimodal"] == "bolt_iter1" and "split" in r["note"]

    t = claims.claims_table(study([0.4] * 3, [0.1] * 3, iters=[[0.30, 0.33, 0.31], [0.10, 0.12, 0.09]]))
    assert row(t, "C3", "bolt_iter2")["verdict"] == "reversed"


def test_k_rows_paired_and_slope():
    k = {1: [0.10, 0.20, 0.15], 2: [0.14, 0.22, 0.21], 8: [0.20, 0.31, 0.27]}
    base = [0.12, 0.21, 0.18]                        # bolt_iter1 itself, trained with K = 4
    t = claims.claims_table(study([0.4] * 3, [0.1] * 3, iters=[base], k=k))
    r = row(t, "C5", "K=8 − K=1")
    ref = scipy_stats.ttest_rel(np.array(k[8]) * 100, np.array(k[1]) * 100)
    assert r["p"] == pytest.approx(ref.pvalue) and r["verdict"] == "supported"
    ks = [1, 2, 4, 8]
    by_seed = {1: k[1], 2: k[2], 4: base, 8: k[8]}
    slopes = [scipy_stats.linregress(np.log2(ks), [by_seed[kk][s] * 100 for kk in ks]).slope for s in range(3)]
    s = row(t, "C5", "slope over log2 K")
    ref = scipy_stats.ttest_1samp(slopes, 0.0)
    assert s["diff"] == pytest.approx(np.mean(slopes)) and s["p"] == pytest.approx(ref.pvalue)
    assert s["n"] == "3 seeds"


def test_thought_quality_rows_over_chunks():
    estep = pd.DataFrame({"iteration": [1, 2, 3], "k": [8, 4, 4], "selected_correct": [0.378, 0.161, 0.005]})
    kq = pd.DataFrame({"k": [1, 2, 4, 8], "thought_quality": [0.214, 0.285, 0.338, 0.378]})
    n = 2000
    t = claims.claims_table(study([0.4] * 3, [0.1] * 3), estep, kq, chunks={1: n, 2: n, 3: n})
    it = row(t, "C6", "selected, E-step 3")
    # iteration 1 drew K = 8 for the ablation: it is compared at the loop's K = 4
    assert it["comparison"].endswith("E-step 1 (K=4)") and it["values_b"] == "33.8"
    assert it["diff"] == pytest.approx((0.005 - 0.338) * 100) and it["verdict"] == "reversed"
    # the pooled z-test is the 2x2 chi-square test without continuity correction
    table = [[round(0.005 * n), n - round(0.005 * n)], [round(0.338 * n), n - round(0.338 * n)]]
    assert it["p"] == pytest.approx(scipy_stats.chi2_contingency(table, correction=False)[1])
    # Newcombe's interval, from scipy's Wilson intervals of each side
    wa = scipy_stats.binomtest(table[0][0], n).proportion_ci(0.95, method="wilson")
    wb = scipy_stats.binomtest(table[1][0], n).proportion_ci(0.95, method="wilson")
    pa, pb = table[0][0] / n, table[1][0] / n
    low = pa - pb - math.sqrt((pa - wa.low) ** 2 + (wb.high - pb) ** 2)
    assert it["ci95_low"] == pytest.approx(low * 100)
    assert row(t, "C6", "selected at iteration 1, K=8")["verdict"] == "supported"
    no_counts = claims.claims_table(study([0.4] * 3, [0.1] * 3), estep, kq)
    r = row(no_counts, "C6", "selected, E-step 3")
    assert r["verdict"] == "not measurable" and r["diff"] == pytest.approx(-33.3) and "not seeds" in r["note"]


def test_write_claims(tmp_path):
    t = claims.claims_table(study([0.40, 0.45, 0.43], [0.10, 0.12, 0.11]))
    paths = claims.write_claims(t, tmp_path / "a", tmp_path / "b")
    assert sorted(p.name for p in paths) == ["claims.csv", "claims.csv", "claims.md", "claims.md"]
    back = pd.read_csv(tmp_path / "a" / "claims.csv")
    assert back["diff"].iloc[0] == pytest.approx(t["diff"].iloc[0])
    md = (tmp_path / "b" / "claims.md").read_text()
    assert md.startswith("| claim |") and "| C1 |" in md and "supported" in md
