"""Parsing questions back to instances and verifying derivations.

Verifier
--------
:func:`verify` re-derives the problem from its question, then reads every
arithmetic claim ``x op y (op z)* = r`` in the thought and checks it exactly
(integers, ``/`` exact division, usual precedence; carry/borrow markers must
agree with their step, and a long-division label ``n:`` must agree with the
quotient digit of the step it heads).  The derivation is correct when no
claim is false, the problem's required steps all appear (as a multiset,
with their long-division labels; ``+``-only and ``*``-only expressions may
list their operands in any order), the background fact is stated correctly
when needed, and the final ``so N`` equals the answer.  Required steps are
those of the family's derivation (described in the family's module), so a
thought that skips the digit-wise work (``347+586=933``) does not pass.
:func:`parse_question` recognises exactly the questions the families can
generate (at any supported difficulty) and reports the smallest difficulty
that generates the instance.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction
from typing import Sequence

from lt_utils.world.conversion import _FACTS
from lt_utils.world.units import Unit, Verdict, check_style
from lt_utils.world.family import Family
from lt_utils.world.registry import FAMILIES


def _parse_any(question: str) -> tuple[Family, tuple] | None:
    if not isinstance(question, str) or not question or len(question) > 2000:
        return None
    for fam in FAMILIES.values():
        inst = fam.parse(question)
        if inst is not None:
            return fam, inst
    return None


def parse_question(question: str, style: str = "compact") -> Unit | None:
    """Recognise a question of any family; the Unit carries the recomputed answer and thought (in `style`).

    Its difficulty is the smallest level that can generate the instance.
    """
    check_style(style)
    try:
        found = _parse_any(question)
    except Exception:  # pragma: no cover - defensive: junk must never raise
        return None
    if found is None:
        return None
    fam, inst = found
    return fam.unit(inst, fam.difficulty_of(inst), style)


_CLAIM_RE = re.compile(
    r"(?<![\w])(?:(\d+):\s*)?(-?\d+(?:\s*[-+*/]\s*\d+)+)\s*=\s*(-?\d+)(?:\s+([cb])(\d+)(?!\w))?"
)
_FINAL_RE = re.compile(r"\bso\s+(-?\d+)(?!\s*[-+*/=\d])")
_FACT_RE = re.compile(r"\b(an?)\s+([A-Za-z]+)\s+has\s+(-?\d+)\s+([A-Za-z]+)", re.IGNORECASE)
_MAX_EXPR = 300


def _split_expr(expr: str) -> tuple[list[int], list[str]] | None:
    s = re.sub(r"\s+", "", expr)
    if len(s) > _MAX_EXPR:
        return None
    neg = s.startswith("-")
    parts = re.split(r"([-+*/])", s[1:] if neg else s)
    nums = [int(p) for p in parts[0::2]]
    if neg:
        nums[0] = -nums[0]
    return nums, parts[1::2]


def _evaluate(nums: list[int], ops: list[str]) -> Fraction | None:
    terms, signs = [Fraction(nums[0])], []
    for op, x in zip(ops, nums[1:]):
        if op == "*":
            terms[-1] *= x
        elif op == "/":
            if x == 0:
                return None
            terms[-1] /= x
        else:
            signs.append(op)
            terms.append(Fraction(x))
    value = terms[0]
    for op, t in zip(signs, terms[1:]):
        value = value + t if op == "+" else value - t
    return value


def _canon(nums: Sequence[int], ops: Sequence[str]) -> tuple:
    if ops and all(o == "+" for o in ops):
        return ("+", tuple(sorted(nums)))
    if ops and all(o == "*" for o in ops):
        return ("*", tuple(sorted(nums)))
    return ("=", tuple(nums), tuple(ops))


def _scan_claims(thought: str) -> list[tuple[tuple | None, bool]]:
    """Every arithmetic claim: ((label, canonical expression, claimed result), is it true)."""
    out = []
    for m in _CLAIM_RE.finditer(thought):
        label, expr, result, marker, k = m.groups()
        parsed = _split_expr(expr)
        if parsed is None or len(result) > _MAX_EXPR or (label and len(label) > _MAX_EXPR):
            out.append((None, False))
            continue
        nums, ops = parsed
        claimed = int(result)
        value = _evaluate(nums, ops)
        ok = value is not None and value == claimed
        if ok and marker is not None:
            if len(k) > 3:
                ok = False
            elif marker == "c":  # carry: the tens of this column
                ok = claimed >= 0 and int(k) == claimed // 10
            else:  # borrow: the column took ten
                ok = int(k) == 1 and nums[0] >= 10 and ops[0] == "-"
        if ok and label is not None and ops == ["*"] and nums[0] > 0:
            # long division "n: k*q=p": q must be the quotient digit of n by k
            ok = 0 <= int(label) - claimed < nums[0]
        out.append(((None if label is None else int(label), _canon(nums, ops), claimed), ok))
    return out


def _scan_facts(thought: str) -> tuple[set[tuple[str, str, int]], bool]:
    """Correctly stated known facts, and whether any known fact is stated wrongly."""
    present, wrong = set(), False
    for m in _FACT_RE.finditer(thought):
        unit, num, small = m.group(2).lower(), m.group(3), m.group(4).lower()
        factor = _FACTS.get((unit, small))
        if factor is None:
            continue
        if len(num) <= 12 and int(num) == factor:
            present.add((unit, small, factor))
        else:
            wrong = True
    return present, wrong


def verify(question: str, thought: str) -> Verdict:
    """Check a thought's derivation for a question (never raises)."""
    try:
        return _verify(question, thought)
    except Exception:  # pragma: no cover - defensive: junk must never raise
        return Verdict(False, 0, 0, None, "unreadable thought")


def _verify(question: str, thought: str) -> Verdict:
    found = _parse_any(question)
    if not isinstance(thought, str) or not thought.strip():
        reason = "unrecognised question" if found is None else "empty thought"
        return Verdict(False, 0, 0, None, reason)
    claims = _scan_claims(thought)
    n_steps = len(claims)
    n_wrong = sum(not ok for _, ok in claims)
    finals = _FINAL_RE.findall(thought)
    final = finals[-1] if finals else None
    if found is None:
        return Verdict(False, n_steps, n_wrong, final, "unrecognised question")
    fam, inst = found
    sol = fam.derive(inst)
    facts, wrong_fact = _scan_facts(thought)
    have = Counter(key for key, ok in claims if ok)
    need = Counter()
    for label, expr, result in sol.steps:
        nums, ops = _split_expr(expr)
        need[(label, _canon(nums, ops), result)] += 1
    if n_wrong:
        reason = "wrong step"
    elif wrong_fact:
        reason = "wrong background fact"
    elif any(f not in facts for f in sol.facts):
        reason = "missing background fact"
    elif any(have[k] < v for k, v in need.items()):
        reason = "missing step"
    elif final is None:
        reason = "no final answer"
    elif final != str(sol.answer):
        reason = "wrong final answer"
    else:
        reason = ""
    return Verdict(reason == "", n_steps, n_wrong, final, reason)
