"""The unit-conversion family and its table of background facts.

A conversion thought must state the fact it relies on (``a day has 24
hours``); :data:`_FACTS` is also what the verifier checks stated facts
against.

Derivation:

* **conversion** states the fact, then multiplies digit-wise (the longer
  number's digits times the single-digit one; two multi-digit numbers use
  the two-digit multiplication form).
"""

from __future__ import annotations

import re

from lt_utils.world.arithmetic import _mul
from lt_utils.world.units import _Derivation
from lt_utils.world.family import Family, _canon_int, _pick, _ri

# (unit, plural, smaller units, factor)
_CONVERSIONS = (
    ("week", "weeks", "days", 7),
    ("day", "days", "hours", 24),
    ("hour", "hours", "minutes", 60),
    ("minute", "minutes", "seconds", 60),
    ("fortnight", "fortnights", "days", 14),
    ("year", "years", "months", 12),
    ("decade", "decades", "years", 10),
    ("century", "centuries", "years", 100),
    ("dozen", "dozen", "eggs", 12),
    ("foot", "feet", "inches", 12),
    ("yard", "yards", "feet", 3),
    ("meter", "meters", "centimeters", 100),
    ("kilometer", "kilometers", "meters", 1000),
    ("kilogram", "kilograms", "grams", 1000),
    ("liter", "liters", "milliliters", 1000),
    ("gallon", "gallons", "quarts", 4),
    ("quart", "quarts", "pints", 2),
    ("pound", "pounds", "ounces", 16),
    ("dollar", "dollars", "cents", 100),
    ("ton", "tons", "pounds", 2000),
)
_CONV_BY_UNIT = {c[0]: c for c in _CONVERSIONS}
_CONV_BY_TEXT = {(c[1], c[2]): c for c in _CONVERSIONS}
_FACTS = {(c[0], c[2]): c[3] for c in _CONVERSIONS}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" or word.startswith("hour") else "a"


class _Conversion(Family):
    """Instance = (unit, n): how many smaller units are in n units."""

    name = "conversion"
    default_difficulty = 1
    difficulties = tuple(range(1, 5))
    knob = "multiplier n in 2..10**d-1"
    _re = re.compile(r"How many ([a-z]+) are in (\d+) ([a-z]+)\?")

    def sample(self, rng, difficulty):
        return (_pick(rng, _CONVERSIONS)[0], _ri(rng, 2, 10**difficulty - 1))

    def render(self, inst):
        unit, plural, small, _ = _CONV_BY_UNIT[inst[0]]
        return f"How many {small} are in {inst[1]} {plural}?"

    def parse(self, question):
        m = self._re.fullmatch(question)
        if not m:
            return None
        conv = _CONV_BY_TEXT.get((m.group(3), m.group(1)))
        n = _canon_int(m.group(2))
        if conv is None or n is None or n < 2:
            return None
        if len(str(n)) not in self.difficulties:
            return None
        return (conv[0], n)

    def difficulty_of(self, inst):
        return len(str(inst[1]))

    def derive(self, inst, style="compact"):
        unit, _, small, factor = _CONV_BY_UNIT[inst[0]]
        n = inst[1]
        d = _Derivation()
        d.fact(f"{_article(unit)} {unit} has {factor} {small}", (unit, small, factor))
        if len(str(n)) >= len(str(factor)):
            answer = _mul(d, n, factor)
        else:
            answer = _mul(d, factor, n)
        return d.solution(answer)

    def space_size(self, difficulty):
        return len(_CONVERSIONS) * (10**difficulty - 2)

    def enumerate(self, difficulty):
        for conv in _CONVERSIONS:
            for n in range(2, 10**difficulty):
                yield (conv[0], n)
