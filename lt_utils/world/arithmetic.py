"""The digit-wise arithmetic families: addition, subtraction, multiplication.

Their thoughts work column by column from the rightmost digit.  The column
helpers (:func:`_add_columns`, :func:`_sub_columns`, :func:`_mul_by_digit`,
:func:`_mul`) live here; the conversion family reuses :func:`_mul`.

Derivations:

* **addition** columns ``x+y(+1)=s`` with `` c1`` when a non-final column
  carries.
* **subtraction** columns ``t(-1)-y=r`` where ``t`` is the top digit plus ten
  when the column borrows (marked `` b1``); ``-1`` pays the borrow of the column
  to the right.
* **multiplication** columns ``x*m(+c)=p`` with `` c{k}`` carries; with a
  two-digit multiplier each partial product is derived that way and then
  stated (``47*6=282``), and the shifted partials are added in one step.

The other families write a sum or a difference as one step (``64-19=45``).
In a *spelled* thought style (:func:`add_step`, :func:`sub_step`) a sum or
difference with a multi-digit operand is worked in these columns first, the
shorter operand padded with zeros, and then stated, as multiplication states
its partial products: ``14-9=5 b1. 6-1-1=4. 64-19=45.``
"""

from __future__ import annotations

import re

from lt_utils.world.units import _Derivation
from lt_utils.world.family import Family, _canon_int, _n_digit_range, _ri


def _digits(n: int) -> list[int]:
    """Decimal digits of a non-negative integer, least significant first."""
    return [int(c) for c in reversed(str(n))]


def _padded_digits(a: int, b: int) -> tuple[list[int], list[int]]:
    """Digits of a and b, least significant first, the shorter padded with zeros to the longer's length."""
    da, db = _digits(a), _digits(b)
    n = max(len(da), len(db))
    return da + [0] * (n - len(da)), db + [0] * (n - len(db))


def _add_columns(d: _Derivation, a: int, b: int) -> int:
    da, db = _padded_digits(a, b)
    carry = 0
    for i, (x, y) in enumerate(zip(da, db)):
        expr = f"{x}+{y}" + (f"+{carry}" if carry else "")
        s = x + y + carry
        if i == len(da) - 1:
            d.step(expr, s)
        else:
            carry = s // 10
            d.step(expr, s, f" c{carry}" if carry else "")
    return a + b


def _sub_columns(d: _Derivation, a: int, b: int) -> int:
    """a-b column by column, for a >= b."""
    da, db = _padded_digits(a, b)
    borrow = 0
    for x, y in zip(da, db):
        out = 1 if x - borrow - y < 0 else 0
        top = x + 10 * out
        expr = f"{top}" + (f"-{borrow}" if borrow else "") + f"-{y}"
        d.step(expr, top - borrow - y, " b1" if out else "")
        borrow = out
    return a - b


def add_step(d: _Derivation, a: int, b: int, spelled: bool = False) -> int:
    """The step a+b of another family's derivation: one clause, or (`spelled`) columns and then the sum."""
    if spelled and max(a, b) >= 10:
        _add_columns(d, a, b)
    return d.step(f"{a}+{b}", a + b)


def sub_step(d: _Derivation, a: int, b: int, spelled: bool = False) -> int:
    """The step a-b (a >= b) of another family's derivation: one clause, or spelled out as columns, then stated."""
    if spelled and a >= 10:
        _sub_columns(d, a, b)
    return d.step(f"{a}-{b}", a - b)


def _mul_by_digit(d: _Derivation, a: int, m: int) -> int:
    da = _digits(a)
    carry = 0
    for i, x in enumerate(da):
        expr = f"{x}*{m}" + (f"+{carry}" if carry else "")
        p = x * m + carry
        if i == len(da) - 1:
            d.step(expr, p)
        else:
            carry = p // 10
            d.step(expr, p, f" c{carry}" if carry else "")
    return a * m


def _mul(d: _Derivation, a: int, b: int) -> int:
    """a*b: digit-wise when b has one digit, else partial products then a sum."""
    if b < 10:
        return _mul_by_digit(d, a, b)
    partials = []
    for j, m in enumerate(_digits(b)):
        _mul_by_digit(d, a, m)
        d.step(f"{a}*{m}", a * m)
        partials.append(a * m * 10**j)
    return d.step("+".join(str(p) for p in partials), a * b)



class _ColumnFamily(Family):
    """d-digit ∘ d-digit worked column by column; subclasses set the operator and which pairs are valid."""

    default_difficulty = 3
    difficulties = tuple(range(1, 10))
    op = "+"

    def __init__(self):
        self._re = re.compile(rf"What is (\d+){re.escape(self.op)}(\d+)\?")

    def valid(self, a: int, b: int) -> bool:
        raise NotImplementedError

    def columns(self, d: _Derivation, a: int, b: int) -> int:
        raise NotImplementedError

    def render(self, inst):
        return f"What is {inst[0]}{self.op}{inst[1]}?"

    def parse(self, question):
        m = self._re.fullmatch(question)
        if not m:
            return None
        a, b = _canon_int(m.group(1)), _canon_int(m.group(2))
        if a is None or b is None or not self.valid(a, b) or len(str(a)) != len(str(b)):
            return None
        if len(str(a)) not in self.difficulties:
            return None
        return (a, b)

    def difficulty_of(self, inst):
        return len(str(inst[0]))

    def derive(self, inst, style="compact"):
        d = _Derivation()
        return d.solution(self.columns(d, *inst))

    def enumerate(self, difficulty):
        lo, hi = _n_digit_range(difficulty)
        for a in range(lo, hi + 1):
            for b in range(lo, hi + 1):
                if self.valid(a, b):
                    yield (a, b)


class _Addition(_ColumnFamily):
    name = "addition"
    knob = "d-digit + d-digit"
    op = "+"

    def valid(self, a, b):
        return a != 0 and b != 0

    def columns(self, d, a, b):
        return _add_columns(d, a, b)

    def sample(self, rng, difficulty):
        lo, hi = _n_digit_range(difficulty)
        return (_ri(rng, lo, hi), _ri(rng, lo, hi))

    def space_size(self, difficulty):
        lo, hi = _n_digit_range(difficulty)
        return (hi - lo + 1) ** 2


class _Subtraction(_ColumnFamily):
    name = "subtraction"
    knob = "d-digit - d-digit, result >= 0"
    op = "-"

    def valid(self, a, b):
        return b != 0 and a >= b

    def columns(self, d, a, b):
        return _sub_columns(d, a, b)

    def sample(self, rng, difficulty):
        lo, hi = _n_digit_range(difficulty)
        a, b = _ri(rng, lo, hi), _ri(rng, lo, hi)
        return (max(a, b), min(a, b))

    def space_size(self, difficulty):
        lo, hi = _n_digit_range(difficulty)
        n = hi - lo + 1
        return n * (n + 1) // 2


class _Multiplication(Family):
    name = "multiplication"
    default_difficulty = 2
    difficulties = tuple(range(1, 7)) + tuple(range(11, 17))
    knob = "d: d-digit x 1-digit; 10+d: d-digit x 2-digit"
    _re = re.compile(r"What is (\d+)\*(\d+)\?")

    @staticmethod
    def _ranges_for(difficulty):
        d = difficulty % 10
        a_lo, a_hi = _n_digit_range(d, lo_min=2)
        b_lo, b_hi = (2, 9) if difficulty < 10 else (10, 99)
        return a_lo, a_hi, b_lo, b_hi

    def sample(self, rng, difficulty):
        a_lo, a_hi, b_lo, b_hi = self._ranges_for(difficulty)
        return (_ri(rng, a_lo, a_hi), _ri(rng, b_lo, b_hi))

    def render(self, inst):
        return f"What is {inst[0]}*{inst[1]}?"

    def parse(self, question):
        m = self._re.fullmatch(question)
        if not m:
            return None
        a, b = _canon_int(m.group(1)), _canon_int(m.group(2))
        if a is None or b is None:
            return None
        inst = (a, b)
        diff = self.difficulty_of(inst)
        if diff not in self.difficulties:
            return None
        a_lo, a_hi, b_lo, b_hi = self._ranges_for(diff)
        if not (a_lo <= a <= a_hi and b_lo <= b <= b_hi):
            return None
        return inst

    def difficulty_of(self, inst):
        return len(str(inst[0])) + (10 if inst[1] >= 10 else 0)

    def derive(self, inst, style="compact"):
        d = _Derivation()
        return d.solution(_mul(d, *inst))

    def space_size(self, difficulty):
        a_lo, a_hi, b_lo, b_hi = self._ranges_for(difficulty)
        return (a_hi - a_lo + 1) * (b_hi - b_lo + 1)

    def enumerate(self, difficulty):
        a_lo, a_hi, b_lo, b_hi = self._ranges_for(difficulty)
        for a in range(a_lo, a_hi + 1):
            for b in range(b_lo, b_hi + 1):
                yield (a, b)
