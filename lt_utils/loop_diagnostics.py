"""Does the EM loop improve itself?  Per-E-step diagnostics from verified candidates.

With a verifier, an E-step's thought quality factors into two numbers:

* ρ (retention) = correctness of one posterior sample of the new generator ÷
  correctness of the thoughts that generator was trained on (the teacher's
  thoughts for iteration 1, the thoughts selected by E-step i−1 after that);
* λ (lift) = correctness of the selected thoughts ÷ correctness of one
  posterior sample (mean over all K·n samples): what importance resampling
  adds.  The best-of-K correctness is its ceiling (an oracle picking among the
  same K).

Their product G = ρ·λ is the loop gain: selected correctness of iteration i ÷
that of iteration i−1, so iterations improve only while G ≥ 1 (computed as
that quotient, so it exists even when no single sample verifies).  Beside them:
how often a selected thought states the right final answer with a wrong step,
how many of the K samples are distinct, and how well log w ranks verified
above unverified candidates (AUC, pooled and within a chunk).

Pure functions only: the stage maps its records to :class:`Check` verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class Check:
    """A thought's verdict: fully correct, final answer(s) right, and whether some stated step is false."""

    correct: bool
    right_answer: bool
    wrong_step: bool


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None when either is missing or den is 0."""
    if num is None or den is None or den == 0:
        return None
    return float(num) / float(den)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties counting ½ (Mann–Whitney rank formula).

    None when either class is empty.
    """
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(labels), dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_within_groups(scores: Sequence[float], labels: Sequence[bool], groups: Sequence) -> float | None:
    """AUC over (positive, negative) pairs of the same group only, pooled over groups.

    Selection compares log w within a chunk, so this is the ranking that
    resampling can use; the pooled :func:`auc` also compares across chunks.
    """
    by: dict = {}
    for s, y, g in zip(scores, labels, groups):
        by.setdefault(g, ([], []))[0 if y else 1].append(float(s))
    wins, pairs = 0.0, 0
    for pos, neg in by.values():
        if pos and neg:
            a = auc([*pos, *neg], [True] * len(pos) + [False] * len(neg))
            wins += a * len(pos) * len(neg)
            pairs += len(pos) * len(neg)
    return wins / pairs if pairs else None


def distinct_per_chunk(records: Sequence[Mapping]) -> list[int]:
    """Number of distinct thoughts (by token ids) among each record's candidates."""
    return [len({tuple(c["tokens"]) for c in r["candidates"]}) for r in records]


def _mean(xs) -> float | None:
    xs = list(xs)
    return float(np.mean(xs)) if xs else None


def estep_diagnostics(records: Sequence[Mapping], checks: Sequence[Sequence[Check]], *,
                      trained_on_correct: float | None, prior_checks: Mapping[int, Check] | None = None) -> dict:
    """The loop diagnostics of one E-step.

    `checks[i][j]` is the verdict on candidate j of `records[i]`;
    `trained_on_correct` the correctness of the thoughts the generator was
    trained on; `prior_checks` maps a record's index in `records` to the
    verdict on one thought sampled from the prior for that chunk.  AUCs use
    terminated candidates only (the others are never selected).
    """
    if len(records) != len(checks):
        raise ValueError(f"checks: {len(checks)} lists for {len(records)} records")
    single = _mean(v.correct for cs in checks for v in cs)
    selected = [cs[r["selected"]] for r, cs in zip(records, checks)]
    sel_correct = _mean(v.correct for v in selected)
    best = _mean(any(v.correct for v in cs) for cs in checks)
    rho, lift = ratio(single, trained_on_correct), ratio(sel_correct, single)
    lw, ok, grp = [], [], []
    for i, (r, cs) in enumerate(zip(records, checks)):
        for c, v in zip(r["candidates"], cs):
            if c["terminated"]:
                lw.append(c["log_w"]), ok.append(v.correct), grp.append(i)
    out = {
        "trained_on_correct": trained_on_correct,
        "posterior_sample_correct": single,
        "selected_correct": sel_correct,
        "best_of_k_correct": best,
        "rho": rho,
        "lift": lift,
        "lift_best_of_k": ratio(best, single),
        "gain": ratio(sel_correct, trained_on_correct),   # = ρλ, and defined when one sample never verifies
        "selected_right_answer_wrong_step": _mean(v.right_answer and v.wrong_step for v in selected),
        "selected_right_answer_unverified": _mean(v.right_answer and not v.correct for v in selected),
        "distinct_per_chunk": _mean(distinct_per_chunk(records)),
        "auc_log_w": auc(lw, ok),
        "auc_log_w_within_chunk": auc_within_groups(lw, ok, grp),
    }
    if prior_checks:
        idx = sorted(prior_checks)
        out.update({
            "prior_chunks": len(idx),
            "prior_sample_correct": _mean(prior_checks[i].correct for i in idx),
            "posterior_sample_correct_same_chunks": _mean(v.correct for i in idx for v in checks[i]),
        })
    return out


def retention_repair(trained_right: Sequence[bool], sample_right: Sequence[Sequence[bool]]) -> dict:
    """ρ split by what each chunk was trained on: ρ = s / c = r₁ + r₀ (1 − c) / c.

    `trained_right[i]`: chunk i's trained thought verified; `sample_right[i]`: the verdicts of the new
    generator's samples for chunk i.  r₁ (retention) is the share of samples right on chunks trained right,
    r₀ (repair) on chunks trained wrong; a loop that only retains settles, growth needs repair.
    """
    if len(trained_right) != len(sample_right):
        raise ValueError("one trained verdict per chunk's samples")
    right = [float(np.mean(s)) for t, s in zip(trained_right, sample_right) if t and len(s)]
    wrong = [float(np.mean(s)) for t, s in zip(trained_right, sample_right) if not t and len(s)]
    return {"retention": _mean(right), "repair": _mean(wrong), "n_trained_right": len(right),
            "n_trained_wrong": len(wrong)}
