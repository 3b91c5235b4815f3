"""The algebra families: linear equations and remainders (long division).

Derivations:

* **linear** ``a*x+b=c`` (also written ``b+ax=c``, ``ax-b=c``, ``ax=c``):
  ``c-b=ax`` (``c+b`` for ``ax-b``) then ``ax/a=x``; in a spelled style
  the first step is worked column by column before it is stated
  (:func:`lt_utils.world.arithmetic.sub_step`).
* **remainder** long division: for each running number ``n`` (the shortest
  prefix of the dividend that is at least the divisor, then the previous
  remainder with the next digit brought down) the clauses
  ``n: k*q=p. n-p=r``.
"""

from __future__ import annotations

import re

from lt_utils.world.arithmetic import add_step, sub_step
from lt_utils.world.units import _Derivation, spells
from lt_utils.world.family import Family, _canon_int, _n_digit_range, _pick, _ri


class _Linear(Family):
    """``a*x+b=c`` in four written forms; instance = (form, a, b, c)."""

    name = "linear"
    default_difficulty = 1
    difficulties = tuple(range(1, 6))
    knob = "a in 2..10d-1, x in 0..12d, b in 0..20d"
    _forms = {
        "plus": re.compile(r"Solve (\d+)x\+(\d+)=(\d+) for x\."),
        "minus": re.compile(r"Solve (\d+)x-(\d+)=(\d+) for x\."),
        "lead": re.compile(r"Solve (\d+)\+(\d+)x=(\d+) for x\."),
        "none": re.compile(r"Solve (\d+)x=(\d+) for x\."),
    }

    @staticmethod
    def _bounds(difficulty):
        return 10 * difficulty - 1, 12 * difficulty, 20 * difficulty

    @staticmethod
    def _c(form, a, b, x):
        return a * x - b if form == "minus" else a * x + b

    def sample(self, rng, difficulty):
        a_hi, x_hi, b_hi = self._bounds(difficulty)
        while True:
            a, x, b = _ri(rng, 2, a_hi), _ri(rng, 0, x_hi), _ri(rng, 0, b_hi)
            form = "none" if b == 0 else _pick(rng, ("plus", "minus", "lead"))
            c = self._c(form, a, b, x)
            if c >= 0:
                return (form, a, b, c)

    def render(self, inst):
        form, a, b, c = inst
        if form == "plus":
            return f"Solve {a}x+{b}={c} for x."
        if form == "minus":
            return f"Solve {a}x-{b}={c} for x."
        if form == "lead":
            return f"Solve {b}+{a}x={c} for x."
        return f"Solve {a}x={c} for x."

    def parse(self, question):
        for form, rx in self._forms.items():
            m = rx.fullmatch(question)
            if not m:
                continue
            vals = [_canon_int(g) for g in m.groups()]
            if any(v is None for v in vals):
                return None
            if form == "none":
                (a, c), b = vals, 0
            elif form == "lead":
                b, a, c = vals
            else:
                a, b, c = vals
            if a < 2 or (form != "none" and b < 1):
                return None
            num = c + b if form == "minus" else c - b
            if num < 0 or num % a:
                return None
            inst = (form, a, b, c)
            if self.difficulty_of(inst) not in self.difficulties:
                return None
            return inst
        return None

    def difficulty_of(self, inst):
        form, a, b, c = inst
        x = (c + b if form == "minus" else c - b) // a
        d = 1
        while True:
            a_hi, x_hi, b_hi = self._bounds(d)
            if a <= a_hi and x <= x_hi and b <= b_hi:
                return d
            d += 1
            if d > max(self.difficulties):
                return d

    def derive(self, inst, style="compact"):
        form, a, b, c = inst
        d, spelled = _Derivation(), spells(style, self.name)
        if form == "none":
            num = c
        elif form == "minus":
            num = add_step(d, c, b, spelled)
        else:
            num = sub_step(d, c, b, spelled)
        return d.solution(d.step(f"{num}/{a}", num // a))

    def enumerate(self, difficulty):
        a_hi, x_hi, b_hi = self._bounds(difficulty)
        for a in range(2, a_hi + 1):
            for x in range(0, x_hi + 1):
                for b in range(0, b_hi + 1):
                    for form in ("none",) if b == 0 else ("plus", "minus", "lead"):
                        c = self._c(form, a, b, x)
                        if c >= 0:
                            yield (form, a, b, c)

    def space_size(self, difficulty):
        a_hi, x_hi, b_hi = self._bounds(difficulty)
        total = 0
        for a in range(2, a_hi + 1):
            for x in range(0, x_hi + 1):
                # none (b=0), plus and lead for every b>0, minus while a*x >= b
                total += 1 + 2 * b_hi + min(b_hi, a * x)
        return total


class _Remainder(Family):
    name = "remainder"
    default_difficulty = 3
    difficulties = tuple(range(1, 10))
    knob = "number of digits of the dividend; divisor 2..9"
    _re = re.compile(r"What is the remainder of (\d+) divided by (\d+)\?")

    def sample(self, rng, difficulty):
        lo, hi = _n_digit_range(difficulty)
        return (_ri(rng, lo, hi), _ri(rng, 2, 9))

    def render(self, inst):
        return f"What is the remainder of {inst[0]} divided by {inst[1]}?"

    def parse(self, question):
        m = self._re.fullmatch(question)
        if not m:
            return None
        n, k = _canon_int(m.group(1)), _canon_int(m.group(2))
        if n is None or k is None or n < 1 or not 2 <= k <= 9:
            return None
        if len(str(n)) not in self.difficulties:
            return None
        return (n, k)

    def difficulty_of(self, inst):
        return len(str(inst[0]))

    def derive(self, inst, style="compact"):
        n, k = inst
        s = str(n)
        take = next((i for i in range(1, len(s) + 1) if int(s[:i]) >= k), len(s))
        d = _Derivation()
        cur, pos = int(s[:take]), take
        while True:
            q = cur // k
            d.step(f"{k}*{q}", k * q, label=cur)
            r = d.step(f"{cur}-{k * q}", cur - k * q)
            if pos >= len(s):
                break
            cur, pos = r * 10 + int(s[pos]), pos + 1
        return d.solution(r)

    def space_size(self, difficulty):
        lo, hi = _n_digit_range(difficulty)
        return (hi - lo + 1) * 8

    def enumerate(self, difficulty):
        lo, hi = _n_digit_range(difficulty)
        for n in range(lo, hi + 1):
            for k in range(2, 10):
                yield (n, k)
