"""Tests for lt_utils.stats against hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from lt_utils.stats import (
    Comparison,
    bootstrap_ci,
    comparison_table,
    mean_se,
    welch_compare,
)

# --------------------------------------------------------------------- mean_se


def test_mean_se_of_one_two_three():
    mean, se, n = mean_se([1, 2, 3])
    # sample sd of 1,2,3 is exactly 1, so se = 1/sqrt(3)
    assert (mean, n) == (2.0, 3)
    assert se == pytest.approx(1 / math.sqrt(3))


def test_mean_se_ignores_nan():
    mean, se, n = mean_se([1.0, float("nan"), 3.0])
    # values 1 and 3: sd = sqrt(2), se = sqrt(2)/sqrt(2) = 1
    assert (mean, n) == (2.0, 2)
    assert se == pytest.approx(1.0)


def test_mean_se_undefined_below_two_values():
    mean, se, n = mean_se([0.7])
    assert (mean, n) == (0.7, 1) and math.isnan(se)
    mean, se, n = mean_se([])
    assert n == 0 and math.isnan(mean) and math.isnan(se)


def test_mean_se_identical_values_is_exactly_zero():
    assert mean_se([0.1, 0.1, 0.1])[1] == 0.0


# --------------------------------------------------------------- welch_compare

A = [0.61, 0.65, 0.70]
B = [0.30, 0.33, 0.41, 0.35]


def _welch_by_hand(a, b):
    """Welch t, Welch–Satterthwaite df, two-sided p and 95% CI, written out."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    sa, sb = va / na, vb / nb
    se = math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
    t = (ma - mb) / se
    p = 2 * scipy_stats.t.sf(abs(t), df)
    half = scipy_stats.t.ppf(0.975, df) * se
    return ma - mb, df, p, (ma - mb - half, ma - mb + half)


def test_welch_matches_hand_computation():
    diff, df, p, (low, high) = _welch_by_hand(A, B)
    c = welch_compare(A, B, "lt", "raw")
    assert (c.label_a, c.label_b, c.n_a, c.n_b) == ("lt", "raw", 3, 4)
    assert c.mean_a == pytest.approx(np.mean(A))
    assert c.mean_b == pytest.approx(np.mean(B))
    assert c.diff == pytest.approx(diff)
    assert c.df == pytest.approx(df)
    assert c.p_value == pytest.approx(p, rel=1e-9)
    assert (c.ci_low, c.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert c.method.startswith("Welch")
    assert c.ci_low < c.diff < c.ci_high and c.p_value < 0.01


def test_welch_p_agrees_with_scipy_ttest_ind():
    expected = scipy_stats.ttest_ind(A, B, equal_var=False).pvalue
    assert welch_compare(A, B).p_value == pytest.approx(expected, rel=1e-9)


def test_welch_swap_flips_sign_keeps_p():
    ab, ba = welch_compare(A, B), welch_compare(B, A)
    assert ba.diff == pytest.approx(-ab.diff)
    assert ba.p_value == pytest.approx(ab.p_value)
    assert ba.ci_low == pytest.approx(-ab.ci_high)
    assert ba.ci_high == pytest.approx(-ab.ci_low)


def test_welch_identical_samples_give_p_one():
    c = welch_compare([0.2, 0.4, 0.6], [0.6, 0.2, 0.4])
    assert c.diff == pytest.approx(0.0, abs=1e-12)
    assert c.p_value == pytest.approx(1.0)


def test_welch_single_seed_is_undefined():
    c = welch_compare([0.5], [0.1, 0.2, 0.3], "one_seed", "base")
    assert c.diff == pytest.approx(0.3)
    assert math.isnan(c.p_value) and math.isnan(c.ci_low) and math.isnan(c.ci_high)
    assert "n<2" in c.method and "one_seed" in c.method
    assert "p=n/a" in c.summary()


def test_welch_zero_variance_equal_means():
    c = welch_compare([0.5, 0.5], [0.5, 0.5, 0.5])
    assert c.p_value == 1.0 and (c.ci_low, c.ci_high) == (0.0, 0.0)
    assert "zero variance" in c.method


def test_welch_zero_variance_different_means():
    c = welch_compare([0.9, 0.9, 0.9], [0.4, 0.4, 0.4])
    assert c.p_value == 0.0
    assert c.ci_low == c.ci_high == pytest.approx(0.5)
    assert "zero variance" in c.method
    assert c.summary().endswith("p=0 (zero variance in both groups)")


def test_welch_zero_variance_on_one_side_still_tests():
    # with va = 0 the Welch–Satterthwaite df collapses to nb - 1
    c = welch_compare([0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4])
    assert c.df == pytest.approx(3.0)
    assert 0 < c.p_value < 1 and c.ci_low < c.diff < c.ci_high


def test_welch_ignores_nan():
    with_nan = welch_compare(A + [float("nan")], B)
    assert with_nan.n_a == 3
    assert with_nan.p_value == pytest.approx(welch_compare(A, B).p_value)


def test_summary_format_in_percentage_points():
    c = Comparison("latent_thoughts", "raw_repeat", 3, 3, 0.713, 0.300, 0.413,
                   0.350, 0.476, 0.0004, "Welch t-test (df=3.90)")
    assert c.summary(scale=100, unit="pts") == (
        "latent_thoughts vs raw_repeat: +41.3 pts (95% CI +35.0 to +47.6), "
        "n=3 vs 3, Welch p=0.0004"
    )
    assert c.summary().startswith("latent_thoughts vs raw_repeat: +0.4 (95% CI +0.3 to +0.5)")


def test_summary_negative_diff_and_tiny_p():
    c = welch_compare([0.1, 0.11, 0.12], [0.9, 0.91, 0.92], "x", "y")
    line = c.summary(scale=100, unit="pts")
    assert "x vs y: -80.0 pts" in line and "Welch p<0.0001" in line


# ---------------------------------------------------------------- bootstrap_ci

SPREAD = np.linspace(-1, 1, 11)


def test_bootstrap_contains_true_diff_for_separated_samples():
    low, high = bootstrap_ci(10 + SPREAD, SPREAD, n_boot=4000, seed=3)
    assert low < 10 < high
    assert low > 5  # nowhere near zero for clearly separated arms


def test_bootstrap_reproducible_for_same_seed():
    a, b = [0.6, 0.7, 0.65], [0.3, 0.35, 0.5]
    assert bootstrap_ci(a, b, n_boot=2000, seed=7) == bootstrap_ci(a, b, n_boot=2000, seed=7)
    assert bootstrap_ci(a, b, n_boot=2000, seed=7) != bootstrap_ci(a, b, n_boot=2000, seed=8)


def test_bootstrap_bounded_by_extreme_resamples():
    a, b = [0.6, 0.7, 0.65], [0.3, 0.35, 0.5]
    low, high = bootstrap_ci(a, b, n_boot=2000)
    assert min(a) - max(b) <= low <= high <= max(a) - min(b)


def test_bootstrap_empty_side_is_nan():
    assert all(math.isnan(x) for x in bootstrap_ci([], [1.0, 2.0]))


# ------------------------------------------------------------ comparison_table


def _seed_frame():
    rows = []
    for arm, values in {"raw_repeat": B[:3], "latent_thoughts": A, "bolt": [0.72, 0.75, 0.80]}.items():
        for seed, v in enumerate(values):
            rows.append({"arm": arm, "seed": seed, "accuracy": v, "tokens": 1_000_000})
    return pd.DataFrame(rows)


def test_comparison_table_rows_and_values():
    table = comparison_table(_seed_frame(), "accuracy", "arm", "raw_repeat")
    assert list(table.columns) == [
        "group", "baseline", "n", "n_baseline", "mean", "mean_baseline",
        "diff", "ci_low", "ci_high", "p_value",
    ]
    assert list(table["group"]) == ["latent_thoughts", "bolt"]
    assert set(table["baseline"]) == {"raw_repeat"}
    row = table.set_index("group").loc["latent_thoughts"]
    expected = welch_compare(A, B[:3])
    assert (row["n"], row["n_baseline"]) == (3, 3)
    assert row["mean"] == pytest.approx(np.mean(A))
    assert row["mean_baseline"] == pytest.approx(np.mean(B[:3]))
    assert row["diff"] == pytest.approx(expected.diff)
    assert row["ci_low"] == pytest.approx(expected.ci_low)
    assert row["ci_high"] == pytest.approx(expected.ci_high)
    assert row["p_value"] == pytest.approx(expected.p_value)


def test_comparison_table_bootstrap_columns():
    table = comparison_table(_seed_frame(), "accuracy", "arm", "raw_repeat",
                             bootstrap=True, n_boot=500)
    assert {"boot_low", "boot_high"} <= set(table.columns)
    assert (table["boot_low"] <= table["diff"]).all()
    assert (table["diff"] <= table["boot_high"]).all()


def test_comparison_table_rejects_missing_baseline():
    with pytest.raises(ValueError, match="baseline"):
        comparison_table(_seed_frame(), "accuracy", "arm", "raw_fresh")


def test_comparison_table_rejects_pseudo_replication():
    df = _seed_frame()
    doubled = pd.concat([df, df.assign(tokens=2_000_000)])
    with pytest.raises(ValueError, match="one value per seed"):
        comparison_table(doubled, "accuracy", "arm", "raw_repeat")
