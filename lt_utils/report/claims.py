"""The paper's claims, each stated as a measured result: one row per claim of the study.

| claim | what it compares | test |
|---|---|---|
| C1 | stage 02 `latent_thoughts` − `raw_repeat` (equal raw data) | Welch |
| C2 | stage 02 `latent_thoughts` − `wrap_orig`, − `wrap_cot` | Welch |
| C3 | stage 03 `bolt_iter<last>` − `bolt_iter1` | paired by seed |
| C4 | stage 03 `bolt_iter<last>` − `raw_token_match`, − `raw_flop_match` | Welch |
| C5 | iteration-1 accuracy, largest K − smallest K; slope over log2 K per seed | paired by seed; one-sample t |
| C6 | E-step selected-thought correctness, last − first iteration; largest − smallest K | two proportions over chunks |

Accuracies are final held-out *test* accuracies (`results.final_points(evals, "test")`) in percentage points;
the dev split is for calibration and never enters a claim.  Every claim is stated so that a positive difference
(first side minus second) supports it.  C6 has one E-step per side (the seed-0 generator), not one value per seed:
its interval is over the chunks the verifier scored, so it measures sampling noise within one run of the loop,
not variation between seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from lt_utils.stats import Comparison, paired_compare, welch_compare

SYNTHETIC_STAGE, EM_STAGE = "02_synthetic_thoughts", "03_bootstrap_em"
CLAIM_COLUMNS = ["claim", "comparison", "test", "n", "diff", "ci95_low", "ci95_high", "p", "verdict", "bimodal",
                 "values_a", "values_b", "note"]
VERDICTS = ("supported", "not supported", "reversed", "not measurable")


def verdict(ci_low: float, ci_high: float) -> str:
    """The verdict on a claim stated as "difference > 0", from its 95% interval alone.

    * ``supported``: the whole interval lies above 0;
    * ``reversed``: the whole interval lies below 0 (the opposite is shown);
    * ``not supported``: the interval contains 0 (no difference shown either way);
    * ``not measurable``: no interval (an arm is missing, fewer than two seeds or pairs, no verifier).

    The p-value is reported beside it but not used: at 95% the two agree for the t-tests here, and the
    interval also says how large the effect could be.  An interval of zero width (no noise at all) is
    judged like any other.
    """
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "not measurable"
    if ci_low > 0:
        return "supported"
    if ci_high < 0:
        return "reversed"
    return "not supported"


def bimodal(values, min_gap: float = 10.0, share: float = 0.75) -> bool:
    """Whether per-seed values split into two separated groups (e.g. some seeds past a learning threshold).

    Rule: at least 3 values, and the largest gap between neighbouring sorted values is at least `min_gap`
    (points) and more than `share` of the range, i.e. more than three times the spread left on both sides of
    it together.  A gap above half the range is not enough: three seeds of plain normal noise pass that
    always (the middle value is never exactly central), and the gap above three quarters of the range still
    holds for about a third of them, which the absolute `min_gap` removes at this study's noise (a few points).
    """
    x = np.sort(np.asarray([v for v in values if v == v], dtype=float))
    if x.size < 3:
        return False
    gap, spread = float(np.diff(x).max()), float(x[-1] - x[0])
    return gap >= min_gap and gap > share * spread


def _values(by_seed: dict) -> str:
    """Per-seed values as `seed:value`, in seed order."""
    return " ".join(f"{s}:{v:.1f}" for s, v in sorted(by_seed.items()))


def _by_seed(finals: pd.DataFrame, stage: str, arm: str) -> dict:
    """Final accuracy (percent) of one arm, seed → value."""
    if finals.empty:
        return {}
    f = finals[(finals["stage"] == stage) & (finals["arm"] == arm)].dropna(subset=["accuracy"])
    return {int(s): float(a) * 100 for s, a in zip(f["seed"], f["accuracy"])}


def _row(claim: str, c: Comparison, test: str, a: dict, b: dict, min_gap: float, note: str = "") -> dict:
    """One claims-table row from a comparison and the per-seed values of both sides."""
    split = [lbl for lbl, vals in ((c.label_a, a), (c.label_b, b)) if bimodal(vals.values(), min_gap)]
    if split:
        note = "; ".join(filter(None, [note, f"seeds split in two groups ({', '.join(split)}): the mean "
                                             "hides which side of a threshold each seed is on"]))
    if math.isnan(c.ci_low) and not note:
        note = c.method   # why there is no interval, e.g. "undefined: n<2 for ..."
    return {"claim": claim, "comparison": f"{c.label_a} − {c.label_b}", "test": test,
            "n": f"{c.n_a} vs {c.n_b}", "diff": c.diff, "ci95_low": c.ci_low, "ci95_high": c.ci_high,
            "p": c.p_value, "verdict": verdict(c.ci_low, c.ci_high), "bimodal": ", ".join(split),
            "values_a": _values(a), "values_b": _values(b), "note": note}


def _welch(claim, finals, stage, arm, base, min_gap, note=""):
    a, b = _by_seed(finals, stage, arm), _by_seed(finals, stage, base)
    c = welch_compare(list(a.values()), list(b.values()), arm, base)
    return _row(claim, c, "Welch t", a, b, min_gap, note or ("" if a and b else "arm absent"))


def _paired(claim, a, b, name_a, name_b, min_gap, note=""):
    c = paired_compare(a, b, name_a, name_b)
    return _row(claim, c, "paired t (by seed)", a, b, min_gap, note or ("" if a and b else "arm absent"))


def last_iteration(finals: pd.DataFrame, stage: str = EM_STAGE) -> int:
    """The highest EM iteration with a finished M-step (`bolt_iter<i>`), or 0 without one."""
    arms = finals.loc[finals["stage"] == stage, "arm"] if len(finals) else []
    its = [int(a.removeprefix("bolt_iter")) for a in arms if a.startswith("bolt_iter") and "_k" not in a]
    return max(its, default=0)


def k_by_seed(finals: pd.DataFrame, stage: str = EM_STAGE) -> dict[int, dict]:
    """Iteration-1 accuracy (percent) for each K of the ablation: K → {seed → value}."""
    from lt_utils.report.results import k_ablation

    kab = k_ablation(None, finals, stage, quality=pd.DataFrame(columns=["k", "thought_quality"]))
    out: dict[int, dict] = {}
    for k, s, acc in zip(kab["k"], kab["seed"], kab["accuracy"]):
        if k is not None and k == k and acc == acc:
            out.setdefault(int(k), {})[int(s)] = float(acc) * 100
    return out


def k_slopes(by_k: dict[int, dict]) -> dict:
    """Least-squares slope of accuracy over log2 K, per seed that has every K (points per doubling of K).

    log2 because the K grid doubles (1, 2, 4, 8): a straight line over log K weights every step of the grid
    alike instead of letting the K = 8 point set the slope.
    """
    ks = sorted(by_k)
    if len(ks) < 2:
        return {}
    seeds = set.intersection(*(set(by_k[k]) for k in ks))
    x = np.log2(ks)
    return {s: float(np.polyfit(x, [by_k[k][s] for k in ks], 1)[0]) for s in sorted(seeds)}


def two_proportions(p_a: float, n_a: int, p_b: float, n_b: int, confidence: float = 0.95
                    ) -> tuple[float, float, float]:
    """(low, high, p) for the difference of two verified fractions over `n_a` and `n_b` chunks.

    Newcombe's hybrid score interval (built from the two Wilson intervals, which stay inside [0, 1] and stay
    sensible at 0% or 100%) and the pooled two-proportion z-test.  The chunks of two E-steps are the same
    bootstrap chunks; treating them as independent widens the interval when chunks that are hard stay hard.
    """
    if not (n_a and n_b) or p_a != p_a or p_b != p_b:
        return math.nan, math.nan, math.nan
    k_a, k_b = round(p_a * n_a), round(p_b * n_b)
    wa = scipy_stats.binomtest(k_a, n_a).proportion_ci(confidence, method="wilson")
    wb = scipy_stats.binomtest(k_b, n_b).proportion_ci(confidence, method="wilson")
    pa, pb = k_a / n_a, k_b / n_b
    d = pa - pb
    low = d - math.sqrt((pa - wa.low) ** 2 + (wb.high - pb) ** 2)
    high = d + math.sqrt((wa.high - pa) ** 2 + (pb - wb.low) ** 2)
    pooled = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p = float(2 * scipy_stats.norm.sf(abs(d) / se)) if se > 0 else (1.0 if d == 0 else 0.0)
    return low, high, p


def _quality_row(claim: str, name_a: str, q_a: float, n_a: int | None, name_b: str, q_b: float,
                 n_b: int | None) -> dict:
    """A C6 row: one verified fraction per side (percent), with a chunk-level interval when chunk counts are known."""
    low, high, p = two_proportions(q_a, n_a or 0, q_b, n_b or 0)
    diff = (q_a - q_b) * 100 if q_a == q_a and q_b == q_b else math.nan
    note = ("one E-step per side (seed-0 generator), not seeds: the interval is over chunks "
            "(Newcombe, unpaired), within one run of the loop")
    if low != low:
        note = "one E-step per side (seed-0 generator), not seeds: difference only (no verifier or chunk count)"
    return {"claim": claim, "comparison": f"{name_a} − {name_b}", "test": "two proportions (chunks)",
            "n": f"{n_a or '?'} vs {n_b or '?'} chunks", "diff": diff, "ci95_low": low * 100, "ci95_high": high * 100,
            "p": p, "verdict": verdict(low, high), "bimodal": "",
            "values_a": "" if q_a != q_a else f"{q_a * 100:.1f}", "values_b": "" if q_b != q_b else f"{q_b * 100:.1f}",
            "note": note}


def claims_table(finals: pd.DataFrame, estep: pd.DataFrame | None = None, k_quality: pd.DataFrame | None = None,
                 *, chunks: dict[int, int] | None = None, min_gap: float = 10.0) -> pd.DataFrame:
    """One row per claim of the paper (C1–C6), each with its difference, 95% interval, p and verdict.

    `finals`: final test points (`results.final_points(evals, "test")`); `estep`: `results.estep_summaries`;
    `k_quality`: `results.k_quality`; `chunks`: iteration → chunks its E-step verified (`estep_chunks`).  A
    claim whose arms are absent still gets its row, as "not measurable", so the table always has every claim.
    `diff`, `ci95_*` are in percentage points (first side minus second); `bimodal` names the sides whose
    per-seed values split into two groups (`bimodal`).
    """
    rows = [_welch("C1", finals, SYNTHETIC_STAGE, "latent_thoughts", "raw_repeat", min_gap)]
    rows += [_welch("C2", finals, SYNTHETIC_STAGE, "latent_thoughts", b, min_gap) for b in ("wrap_orig", "wrap_cot")]

    last = last_iteration(finals)
    first = _by_seed(finals, EM_STAGE, "bolt_iter1")
    last_vals = _by_seed(finals, EM_STAGE, f"bolt_iter{last}") if last > 1 else {}
    rows.append(_paired("C3", last_vals, first, f"bolt_iter{max(last, 2)}", "bolt_iter1", min_gap,
                        "" if last > 1 else "fewer than two EM iterations"))
    rows += [_welch("C4", finals, EM_STAGE, f"bolt_iter{max(last, 1)}", b, min_gap)
             for b in ("raw_token_match", "raw_flop_match")]

    by_k = k_by_seed(finals)
    ks = sorted(by_k)
    k_hi, k_lo = (ks[-1], ks[0]) if len(ks) >= 2 else (None, None)
    rows.append(_paired("C5", by_k.get(k_hi, {}), by_k.get(k_lo, {}), f"K={k_hi or 'max'}", f"K={k_lo or 'min'}",
                        min_gap, "" if k_hi else "fewer than two K values"))
    slopes = k_slopes(by_k)
    c = paired_compare(slopes, {s: 0.0 for s in slopes}, "slope over log2 K", "0")
    row = _row("C5", c, "one-sample t of per-seed slopes", slopes, {}, min_gap,
               f"points per doubling of K over K = {', '.join(map(str, ks))}" if ks else "no K ablation")
    row["n"] = f"{c.n_a} seed{'s' * (c.n_a != 1)}"
    rows.append(row)

    chunks = chunks or {}
    kq = k_quality if k_quality is not None and len(k_quality) else pd.DataFrame(columns=["k", "thought_quality"])
    qk = {int(k): float(v) for k, v in zip(kq["k"], kq["thought_quality"])}
    est = estep if estep is not None and len(estep) else pd.DataFrame(columns=["iteration", "k", "selected_correct"])
    q = {int(i): _float(v) for i, v in zip(est["iteration"], est["selected_correct"])}
    its = sorted(q)
    i_hi, i_lo = (its[-1], its[0]) if len(its) >= 2 else (None, None)
    name_hi, name_lo = (f"selected, E-step {i_hi}", f"E-step {i_lo}") if i_hi else ("selected, last E-step",
                                                                                   "E-step 1")
    q_lo = q.get(i_lo, math.nan)
    loop_k = dict(zip(est["iteration"], est["k"])).get(i_hi)
    if i_lo == 1 and loop_k == loop_k and loop_k is not None and int(loop_k) in qk:
        # iteration 1 draws the ablation's largest K; compare at the K the loop selects with in every E-step
        q_lo, name_lo = qk[int(loop_k)], f"E-step 1 (K={int(loop_k)})"
    rows.append(_quality_row("C6", name_hi, q.get(i_hi, math.nan), chunks.get(i_hi), name_lo, q_lo, chunks.get(i_lo)))
    kks = sorted(qk)
    kq_hi, kq_lo = (kks[-1], kks[0]) if len(kks) >= 2 else (None, None)
    rows.append(_quality_row("C6", f"selected at iteration 1, K={kq_hi or 'max'}", qk.get(kq_hi, math.nan),
                             chunks.get(1), f"K={kq_lo or 'min'}", qk.get(kq_lo, math.nan), chunks.get(1)))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _float(v) -> float:
    """A stored value as a float, NaN for a missing one (None)."""
    return math.nan if v is None else float(v)


def estep_chunks(study_dir, stage: str = EM_STAGE) -> dict[int, int]:
    """Iteration → number of chunks its E-step verified (`n_chunks` of each stored E-step summary)."""
    from pathlib import Path

    from lt_utils.runtime.runs import read_json

    out = {}
    for path in sorted((Path(study_dir) / stage).glob("iter*/estep_summary.json")):
        n = read_json(path).get("n_chunks")
        if n:
            out[int(path.parent.name.removeprefix("iter"))] = int(n)
    return out


def study_claims(study_dir, evals: pd.DataFrame) -> pd.DataFrame:
    """`claims_table` of a study: its final test points, E-step summaries, K quality and chunk counts."""
    from lt_utils.report.results import estep_summaries, final_points, k_quality

    return claims_table(final_points(evals, "test"), estep_summaries(study_dir, EM_STAGE),
                        k_quality(study_dir, EM_STAGE), chunks=estep_chunks(study_dir))


def formatted(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims table for reading: points to one decimal, p to two significant digits, n/a for undefined."""
    out = claims.copy()
    for col in ("diff", "ci95_low", "ci95_high"):
        out[col] = [f"{v:+.1f}" if v == v else "n/a" for v in out[col]]
    out["p"] = [f"{v:.2g}" if v == v else "n/a" for v in out["p"]]
    return out


def write_claims(claims: pd.DataFrame, *dirs) -> list:
    """Write `claims.csv` (full precision) and `claims.md` (formatted) into each directory; the paths written."""
    from pathlib import Path

    from lt_utils.runtime.runs import write_text
    from lt_utils.report.results import markdown_table

    paths = []
    for d in dirs:
        paths.append(write_text(Path(d) / "claims.csv", claims.to_csv(index=False, lineterminator="\n")))
        paths.append(write_text(Path(d) / "claims.md", markdown_table(formatted(claims)) + "\n"))
    return paths


def terminal_text(claims: pd.DataFrame) -> str:
    """The claims table as aligned plain text for the terminal (the end of `make study`): no notes, CI in one column."""
    f = formatted(claims)
    f["95% CI"] = [f"{lo} to {hi}" for lo, hi in zip(f["ci95_low"], f["ci95_high"])]
    f["per seed (first side | second)"] = [f"{a} | {b}" if isinstance(b, str) and b else str(a)
                                           for a, b in zip(f["values_a"], f["values_b"].fillna(""))]
    cols = ["claim", "comparison", "n", "diff", "95% CI", "p", "verdict", "bimodal", "per seed (first side | second)"]
    rows = [cols] + [["" if v != v else str(v) for v in r] for r in f[cols].itertuples(index=False)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)
