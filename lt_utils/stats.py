"""Statistics for comparing training arms across seeds.

The study runs each arm (raw text, latent thoughts, BoLT, ...) with only a
handful of seeds, so every headline number is reported as a difference of
means with a Welch confidence interval and p-value, never as a bare mean.
Small-n edge cases (one seed, identical scores) are reported as such instead
of producing misleading numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

__all__ = [
    "Comparison",
    "bootstrap_ci",
    "comparison_table",
    "mean_se",
    "paired_compare",
    "welch_compare",
]

WELCH = "Welch t-test"
PAIRED = "paired t-test"


def _clean(values: Iterable[float]) -> np.ndarray:
    """Flatten to a float array without NaNs (a missing eval is not a zero)."""
    arr = np.asarray(values, dtype=float).ravel()
    return arr[~np.isnan(arr)]


def _sample_var(arr: np.ndarray) -> float:
    """ddof=1 variance, exactly 0 for identical values.

    ``np.var`` can return ~1e-34 for identical floats, which would turn a
    genuinely zero-variance case into an absurd t statistic.
    """
    if arr.size < 2:
        return math.nan
    if np.all(arr == arr[0]):
        return 0.0
    return float(arr.var(ddof=1))


def mean_se(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean and n, ignoring NaNs.

    The SE is undefined for fewer than two values, so it is NaN there rather
    than a reassuring 0.
    """
    arr = _clean(values)
    n = int(arr.size)
    mean = float(arr.mean()) if n else math.nan
    se = math.sqrt(_sample_var(arr) / n) if n >= 2 else math.nan
    return mean, se, n


def _signed(value: float, scale: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value * scale:+.{digits}f}"


def _format_p(p: float) -> str:
    if math.isnan(p):
        return "=n/a"
    if p == 0.0:  # only from the exact zero-variance case
        return "=0"
    if p < 1e-4:
        return "<0.0001"
    if p < 0.01:
        return f"={p:.4f}"
    return f"={p:.3f}"


@dataclass(frozen=True)
class Comparison:
    """Difference of means between two arms, with its uncertainty.

    ``diff`` is always ``mean_a - mean_b``; ``method`` says how ``p_value``
    and the CI were obtained (or why they are undefined).
    """

    label_a: str
    label_b: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    df: float = math.nan
    confidence: float = 0.95

    def summary(self, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
        """One line for a report, e.g. ``scale=100, unit="pts"`` for accuracies.

        >>> c.summary(scale=100, unit="pts")  # doctest: +SKIP
        'latent_thoughts vs raw_repeat: +41.3 pts (95% CI +35.0 to +47.6), n=3 vs 3, Welch p=0.0004'
        """
        unit_part = f" {unit}" if unit else ""
        level = f"{self.confidence * 100:g}% CI"
        if math.isnan(self.ci_low) or math.isnan(self.ci_high):
            ci = f"{level} n/a"
        else:
            ci = (
                f"{level} {_signed(self.ci_low, scale, digits)}"
                f" to {_signed(self.ci_high, scale, digits)}"
            )
        if self.method.startswith(WELCH):
            test = f"Welch p{_format_p(self.p_value)}"
        else:
            test = f"p{_format_p(self.p_value)} ({self.method})"
        return (
            f"{self.label_a} vs {self.label_b}: "
            f"{_signed(self.diff, scale, digits)}{unit_part} ({ci}), "
            f"n={self.n_a} vs {self.n_b}, {test}"
        )


def welch_compare(
    a: Iterable[float],
    b: Iterable[float],
    label_a: str = "a",
    label_b: str = "b",
    confidence: float = 0.95,
) -> Comparison:
    """Compare two arms without assuming equal variances across them.

    Welch's test is used because arms differ in how noisy they are (e.g. a
    bootstrapped arm vs. a fixed-data baseline). The CI uses the
    Welch–Satterthwaite degrees of freedom, so it agrees with the p-value.
    """
    xa, xb = _clean(a), _clean(b)
    n_a, n_b = int(xa.size), int(xb.size)
    mean_a = float(xa.mean()) if n_a else math.nan
    mean_b = float(xb.mean()) if n_b else math.nan
    diff = mean_a - mean_b
    common = dict(
        label_a=label_a, label_b=label_b, n_a=n_a, n_b=n_b,
        mean_a=mean_a, mean_b=mean_b, diff=diff, confidence=confidence,
    )

    too_small = [lbl for lbl, n in ((label_a, n_a), (label_b, n_b)) if n < 2]
    if too_small:
        return Comparison(
            **common, ci_low=math.nan, ci_high=math.nan, p_value=math.nan,
            method=f"undefined: n<2 for {', '.join(too_small)}",
        )

    var_a_over_n = _sample_var(xa) / n_a
    var_b_over_n = _sample_var(xb) / n_b
    se_sq = var_a_over_n + var_b_over_n
    if se_sq == 0.0:
        # No noise at all: the difference is exact, so is the "test".
        return Comparison(
            **common, ci_low=diff, ci_high=diff,
            p_value=1.0 if diff == 0 else 0.0,
            method="zero variance in both groups",
        )

    df = se_sq**2 / (var_a_over_n**2 / (n_a - 1) + var_b_over_n**2 / (n_b - 1))
    se = math.sqrt(se_sq)
    # Same t and df as scipy's ttest_ind(equal_var=False), computed here so
    # p-value and CI share one df and a zero-variance arm needs no special path.
    p_value = float(2 * scipy_stats.t.sf(abs(diff) / se, df))
    half_width = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Comparison(
        **common, ci_low=diff - half_width, ci_high=diff + half_width,
        p_value=p_value, method=f"{WELCH} (df={df:.2f})", df=float(df),
    )


def paired_compare(
    a: dict,
    b: dict,
    label_a: str = "a",
    label_b: str = "b",
    confidence: float = 0.95,
) -> Comparison:
    """Compare two arms trained with the same seeds, seed by seed (``a``, ``b``: seed → value).

    Runs that share a seed share their initialisation and data order, so the
    per-seed differences remove that shared noise; the test is a one-sample
    t-test of those differences (scipy's ``ttest_rel``), the CI its t
    interval with n−1 df.  Only seeds present in both arms (values not NaN)
    count; ``n_a`` = ``n_b`` = the number of pairs, ``mean_a``/``mean_b``
    are the means over those pairs.
    """
    seeds = [s for s in a if s in b and not (math.isnan(float(a[s])) or math.isnan(float(b[s])))]
    xa = np.array([float(a[s]) for s in seeds])
    xb = np.array([float(b[s]) for s in seeds])
    n = len(seeds)
    mean_a = float(xa.mean()) if n else math.nan
    mean_b = float(xb.mean()) if n else math.nan
    d = xa - xb
    diff = float(d.mean()) if n else math.nan
    common = dict(label_a=label_a, label_b=label_b, n_a=n, n_b=n, mean_a=mean_a, mean_b=mean_b, diff=diff,
                  confidence=confidence)
    if n < 2:
        return Comparison(**common, ci_low=math.nan, ci_high=math.nan, p_value=math.nan,
                          method=f"undefined: {n} seed pair{'s' * (n != 1)}")
    var = _sample_var(d)
    if var == 0.0:   # every seed moved by exactly the same amount
        return Comparison(**common, ci_low=diff, ci_high=diff, p_value=1.0 if diff == 0 else 0.0,
                          method="zero variance of the paired differences")
    se = math.sqrt(var / n)
    p_value = float(2 * scipy_stats.t.sf(abs(diff) / se, n - 1))
    half_width = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return Comparison(**common, ci_low=diff - half_width, ci_high=diff + half_width, p_value=p_value,
                      method=f"{PAIRED} (df={n - 1})", df=float(n - 1))


def bootstrap_ci(
    a: Iterable[float],
    b: Iterable[float],
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(a) - mean(b)``.

    A distribution-free second opinion on the Welch CI. With 3 seeds per arm
    it is known to be too narrow, so it complements rather than replaces the
    t-based interval. Seeded so reports are reproducible.
    """
    xa, xb = _clean(a), _clean(b)
    if xa.size == 0 or xb.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    boot_a = xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(axis=1)
    boot_b = xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot_a - boot_b, [tail, 100 - tail])
    return float(low), float(high)


TABLE_COLUMNS = [
    "group", "baseline", "n", "n_baseline", "mean", "mean_baseline",
    "diff", "ci_low", "ci_high", "p_value",
]


def comparison_table(
    df: pd.DataFrame,
    metric: str,
    group_col: str,
    baseline: str,
    *,
    seed_col: str | None = "seed",
    confidence: float = 0.95,
    bootstrap: bool = False,
    n_boot: int = 10_000,
    boot_seed: int = 0,
) -> pd.DataFrame:
    """Every group against ``baseline``, one Welch comparison per row.

    Expects one row per (group, seed). If ``seed_col`` is present, repeated
    (group, seed) rows are rejected: counting e.g. several eval points of one
    run as independent seeds would shrink the CI dishonestly. With
    ``bootstrap=True`` the percentile bootstrap CI is added as
    ``boot_low``/``boot_high``.
    """
    missing = [c for c in (metric, group_col) if c not in df.columns]
    if missing:
        raise KeyError(f"comparison_table: missing columns {missing}")
    if seed_col is not None and seed_col in df.columns:
        dup = df.duplicated(subset=[group_col, seed_col], keep=False)
        if dup.any():
            raise ValueError(
                f"comparison_table: several rows per ({group_col}, {seed_col}); "
                "aggregate to one value per seed first"
            )
    values_by_group = {
        g: sub[metric].to_numpy(dtype=float)
        for g, sub in df.groupby(group_col, sort=False)
    }
    if baseline not in values_by_group:
        raise ValueError(
            f"comparison_table: baseline {baseline!r} not in {list(values_by_group)}"
        )

    base_values = values_by_group[baseline]
    rows = []
    for group, values in values_by_group.items():
        if group == baseline:
            continue
        c = welch_compare(values, base_values, str(group), str(baseline), confidence)
        row = {
            "group": group, "baseline": baseline, "n": c.n_a,
            "n_baseline": c.n_b, "mean": c.mean_a, "mean_baseline": c.mean_b,
            "diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high,
            "p_value": c.p_value,
        }
        if bootstrap:
            row["boot_low"], row["boot_high"] = bootstrap_ci(
                values, base_values, n_boot=n_boot, seed=boot_seed,
                confidence=confidence,
            )
        rows.append(row)
    columns = TABLE_COLUMNS + (["boot_low", "boot_high"] if bootstrap else [])
    return pd.DataFrame(rows, columns=columns)
