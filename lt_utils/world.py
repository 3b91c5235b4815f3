"""A seeded synthetic "compressed math" world.

Web text is the compressed outcome of a verbose thought process: a document
states results and leaves out the steps.  This module writes such a world.
Each *unit* is a problem with its answer; a *document* is a few units.  For
every unit the world also knows the ground-truth latent derivation (the
*thought*) behind the stated answer, and :func:`verify` can check any
derivation text (for example one sampled from a model) against the problem.

Text conventions
----------------
* A unit renders as ``f"Problem: {q} Answer: {a}.\\n"``; a document is the
  concatenation of its units.  ``a`` is an integer in plain digits (an optional
  leading ``-``, no commas, no spaces).  Questions never contain
  ``"Problem:"``, ``"Answer:"`` or a newline and never end with whitespace.
* :meth:`Document.segments` cuts the text at the answers: segment 0 is
  ``"Problem: {q1} Answer:"``; segment ``k`` (1..n) is ``f" {a_k}.\\n"``
  followed by ``f"Problem: {q_(k+1)} Answer:"`` when ``k < n``.
* The evaluation prompt is ``f"Problem: {q} Answer:"`` (:func:`eval_prompt`)
  and the expected continuation ``f" {a}."`` (:func:`eval_target`).

Thought grammar
---------------
A thought is one line of ASCII made of *clauses* joined by ``". "``; the last
clause is always ``so {answer}`` and the thought ends with ``"."``.  A clause is
either

* an arithmetic step ``expr=result`` written without spaces (``7+6=13``,
  ``4*6+4=28``, ``13-1-8=4``, ``15/3=5``), optionally followed by a marker:
  `` c{k}`` (carry ``k`` into the next column) or `` b1`` (this column
  borrowed ten), and optionally preceded by a label ``"{n}: "`` naming the
  running number of a long division;
* a background fact ``a {unit} has {k} {units}`` (conversion only).

Digit-wise arithmetic works from the rightmost column; the leftmost column
writes its full value, so the answer is read off as that value followed by the
lower columns' digits.

Families, their difficulty knob, and instance-space sizes
---------------------------------------------------------
Sizes are exact (:func:`instance_space_size`); "eval" is about 5% of them.

* ``addition`` -- d-digit + d-digit (d in 1..9; default 3: 810,000).
  ``7+6=13 c1. 4+8+1=13 c1. 3+5+1=9. so 933.``
* ``subtraction`` -- d-digit - d-digit, result >= 0 (d in 1..9; default 3:
  405,450).  ``12-7=5 b1. 13-1-8=4 b1. 5-1-1=3. so 345.``
* ``multiplication`` -- d-digit x 1-digit multiplier 2..9 (d in 1..6;
  default 2: 720); ``10+d`` (11..16) means d-digit x 2-digit (partial
  products, then one addition of the shifted partials).
  ``7*6=42 c4. 4*6+4=28. so 282.``
* ``word`` -- number of arithmetic operations (1..6; default 2: 92,778,498).
  ``3*5=15. 12+15=27. so 27.``
* ``linear`` -- coefficient ranges ``a`` in 2..10d-1, ``x`` in 0..12d, ``b`` in
  0..20d (d in 1..5; default 1: 5,895).  ``19-4=15. 15/3=5. so 5.``
* ``remainder`` -- digits of the dividend, divisor 2..9 (d in 1..9; default 3:
  7,200).  ``34: 6*5=30. 34-30=4. 47: 6*7=42. 47-42=5. so 5.``
* ``conversion`` -- multiplier range 2..10**d-1 over 20 unit pairs (d in
  1..4; default 1: 160).  ``a day has 24 hours. 4*3=12 c1. 2*3+1=7. so 72.``

At default difficulty three families have fewer than 300 evaluation
problems (exact pool sizes from :func:`split_pool_size`): ``multiplication``
(720 instances, 39 in eval), ``conversion`` (160 instances, 9 in eval) and
``linear`` (5,895 instances, 280 in eval).  Larger difficulties give more:
``multiplication`` 3 (7,200), ``conversion`` 2 (1,960) or 3 (19,960),
``linear`` 2 (52,037).  Every other family has thousands of evaluation
problems at its default.  :func:`generate_problems` raises ``ValueError``
naming the family when a split runs out of distinct instances.

Details of each family's derivation:

* **addition** columns ``x+y(+1)=s`` with `` c1`` when a non-final column
  carries.
* **subtraction** columns ``t(-1)-y=r`` where ``t`` is the top digit plus ten
  when the column borrows (marked `` b1``); ``-1`` pays the borrow of the column
  to the right.
* **multiplication** columns ``x*m(+c)=p`` with `` c{k}`` carries; with a
  two-digit multiplier each partial product is derived that way and then
  stated (``47*6=282``), and the shifted partials are added in one step.
* **word** one step per operation, in story order: buying ``k`` bags of ``m``
  is ``k*m=p`` then ``t+p=t'``; selling/giving is ``t-n=t'``; sharing equally
  is ``t/k=q``.  Five story templates (two people, bakery, farm, library),
  operands <= 20, results < 1000.
* **linear** ``a*x+b=c`` (also written ``b+ax=c``, ``ax-b=c``, ``ax=c``):
  ``c-b=ax`` (``c+b`` for ``ax-b``) then ``ax/a=x``.
* **remainder** long division: for each running number ``n`` (the shortest
  prefix of the dividend that is at least the divisor, then the previous
  remainder with the next digit brought down) the clauses
  ``n: k*q=p. n-p=r``.
* **conversion** states the fact, then multiplies digit-wise (the longer
  number's digits times the single-digit one; two multi-digit numbers use
  the two-digit multiplication form).

Splits
------
Every instance has a stable ``uid`` (sha1 of family + operands).  A second
sha1 of the uid places it in one of :data:`SPLITS`: eval 5%, valid 5%,
comparison/fresh/warmstart/bootstrap 22.5% each.  Generation draws random
instances and keeps those of the requested split, so splits are disjoint by
instance.  Families whose instance space at the requested difficulty is small
(<= 60,000) are enumerated once and sampled exactly from their split's pool.

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
when needed, and the final ``so N`` equals the answer.  Required steps are those of the derivation
above, so a thought that skips the digit-wise work (``347+586=933``) does not
pass.  :func:`parse_question` recognises exactly the questions the families
can generate (at any supported difficulty) and reports the smallest
difficulty that generates the instance.

Thought length: at default difficulty a thought has 0.2-1.1 times the
characters of its unit's raw text (word problems are the shortest relative to
their text, conversions the longest).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_DIFFICULTY",
    "Document",
    "FAMILIES",
    "Family",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "Unit",
    "Verdict",
    "eval_prompt",
    "eval_target",
    "generate_documents",
    "generate_problems",
    "instance_space_size",
    "parse_question",
    "render_unit",
    "split_of",
    "split_pool_size",
    "verify",
]

SPLITS = ("comparison", "fresh", "warmstart", "bootstrap", "valid", "eval")

# Buckets of the split hash, in basis points (cumulative upper bounds).
_SPLIT_BOUNDS = (
    ("eval", 500),
    ("valid", 1000),
    ("comparison", 3250),
    ("fresh", 5500),
    ("warmstart", 7750),
    ("bootstrap", 10000),
)
SPLIT_FRACTIONS = {
    name: (hi - lo) / 10000
    for (name, hi), lo in zip(_SPLIT_BOUNDS, [0] + [b for _, b in _SPLIT_BOUNDS[:-1]])
}

_ENUMERATE_MAX = 60_000  # instance spaces up to this size are sampled from exact pools
_MAX_MISSES = 5_000  # consecutive useless draws before rejection sampling gives up


# --------------------------------------------------------------------------- #
# Data model
# --------------------------------------------------------------------------- #
def render_unit(question: str, answer: str) -> str:
    """The raw text of one unit."""
    return f"Problem: {question} Answer: {answer}.\n"


def eval_prompt(question: str) -> str:
    """The evaluation prompt of a problem."""
    return f"Problem: {question} Answer:"


def eval_target(answer: str) -> str:
    """The expected continuation of :func:`eval_prompt`."""
    return f" {answer}."


@dataclass(frozen=True)
class Unit:
    """One problem with its answer and the ground-truth thought behind it."""

    family: str
    difficulty: int
    question: str
    answer: str
    thought: str
    uid: str

    @property
    def text(self) -> str:
        return render_unit(self.question, self.answer)

    @property
    def prompt(self) -> str:
        return eval_prompt(self.question)

    @property
    def target(self) -> str:
        return eval_target(self.answer)

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "difficulty": self.difficulty,
            "question": self.question,
            "answer": self.answer,
            "thought": self.thought,
            "uid": self.uid,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Unit":
        return cls(
            family=str(d["family"]),
            difficulty=int(d["difficulty"]),
            question=str(d["question"]),
            answer=str(d["answer"]),
            thought=str(d["thought"]),
            uid=str(d["uid"]),
        )


@dataclass(frozen=True)
class Document:
    """A document of units: results stated, derivations left out."""

    doc_id: str
    split: str
    units: tuple[Unit, ...]

    @property
    def text(self) -> str:
        return "".join(u.text for u in self.units)

    def segments(self) -> list[str]:
        """The text cut right after each ``" Answer:"``; segment k holds answer k."""
        if not self.units:
            return []
        segs = [eval_prompt(self.units[0].question)]
        for k, unit in enumerate(self.units):
            seg = f" {unit.answer}.\n"
            if k + 1 < len(self.units):
                seg += eval_prompt(self.units[k + 1].question)
            segs.append(seg)
        return segs

    def to_dict(self) -> dict:
        return {
            "doc_id": self.doc_id,
            "split": self.split,
            "units": [u.to_dict() for u in self.units],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Document":
        return cls(
            doc_id=str(d["doc_id"]),
            split=str(d["split"]),
            units=tuple(Unit.from_dict(u) for u in d["units"]),
        )


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` concludes about a thought."""

    correct: bool
    n_steps: int
    n_wrong_steps: int
    final_answer: str | None
    reason: str


# --------------------------------------------------------------------------- #
# Derivations
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Solution:
    answer: int
    thought: str
    steps: tuple[tuple[int | None, str, int], ...]  # (label, expression, result) it needs
    facts: tuple[tuple[str, str, int], ...]  # (unit, units, factor) it must state


class _Derivation:
    """Collects clauses and the steps/facts they assert."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.steps: list[tuple[int | None, str, int]] = []
        self.facts: list[tuple[str, str, int]] = []

    def step(self, expr: str, result: int, marker: str = "", label: int | None = None) -> int:
        head = "" if label is None else f"{label}: "
        self.clauses.append(f"{head}{expr}={result}{marker}")
        self.steps.append((label, expr, result))
        return result

    def fact(self, text: str, key: tuple[str, str, int]) -> None:
        self.clauses.append(text)
        self.facts.append(key)

    def solution(self, answer: int) -> _Solution:
        thought = ". ".join([*self.clauses, f"so {answer}"]) + "."
        return _Solution(answer, thought, tuple(self.steps), tuple(self.facts))


def _digits(n: int) -> list[int]:
    """Decimal digits of a non-negative integer, least significant first."""
    return [int(c) for c in reversed(str(n))]


def _add_columns(d: _Derivation, a: int, b: int) -> int:
    da, db = _digits(a), _digits(b)
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
    da, db = _digits(a), _digits(b)
    borrow = 0
    for x, y in zip(da, db):
        out = 1 if x - borrow - y < 0 else 0
        top = x + 10 * out
        expr = f"{top}" + (f"-{borrow}" if borrow else "") + f"-{y}"
        d.step(expr, top - borrow - y, " b1" if out else "")
        borrow = out
    return a - b


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


# --------------------------------------------------------------------------- #
# Families
# --------------------------------------------------------------------------- #
def _canon_int(s: str) -> int | None:
    """An integer written canonically (no sign, no leading zeros), else None."""
    if not s.isdigit() or len(s) > 30 or (len(s) > 1 and s[0] == "0"):
        return None
    return int(s)


def _ri(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A uniform integer in [lo, hi] as a plain Python int."""
    return int(rng.integers(lo, hi + 1))


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _n_digit_range(d: int, lo_min: int = 1) -> tuple[int, int]:
    return max(lo_min, 10 ** (d - 1) if d > 1 else lo_min), 10**d - 1


class Family:
    """A problem family: sample, render, parse and derive instances.

    An instance is a tuple of plain ints and strs (its canonical key).
    """

    name: str = ""
    default_difficulty: int = 1
    difficulties: tuple[int, ...] = ()
    knob: str = ""

    # -- to implement ----------------------------------------------------- #
    def sample(self, rng: np.random.Generator, difficulty: int) -> tuple:
        raise NotImplementedError

    def render(self, inst: tuple) -> str:
        raise NotImplementedError

    def parse(self, question: str) -> tuple | None:
        raise NotImplementedError

    def difficulty_of(self, inst: tuple) -> int:
        raise NotImplementedError

    def derive(self, inst: tuple) -> _Solution:
        raise NotImplementedError

    def space_size(self, difficulty: int) -> int:
        raise NotImplementedError

    def enumerate(self, difficulty: int) -> Iterator[tuple]:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------- #
    def check_difficulty(self, difficulty: int) -> int:
        try:
            ok = not isinstance(difficulty, bool) and int(difficulty) == difficulty
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{self.name}: difficulty must be an integer, got {difficulty!r}")
        difficulty = int(difficulty)
        if difficulty not in self.difficulties:
            raise ValueError(
                f"{self.name}: difficulty {difficulty} not supported "
                f"(valid: {_ranges(self.difficulties)}; {self.knob})"
            )
        return difficulty

    def uid(self, inst: tuple) -> str:
        return hashlib.sha1(f"{self.name}|{inst!r}".encode()).hexdigest()[:16]

    def unit(self, inst: tuple, difficulty: int) -> Unit:
        sol = self.derive(inst)
        return Unit(
            family=self.name,
            difficulty=int(difficulty),
            question=self.render(inst),
            answer=str(sol.answer),
            thought=sol.thought,
            uid=self.uid(inst),
        )

    def __repr__(self) -> str:
        return f"<Family {self.name} (default difficulty {self.default_difficulty})>"


def _ranges(values: Sequence[int]) -> str:
    out, start, prev = [], None, None
    for v in sorted(values):
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}..{prev}" if prev != start else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}..{prev}" if prev != start else f"{start}")
    return ", ".join(out)


class _Addition(Family):
    name = "addition"
    default_difficulty = 3
    difficulties = tuple(range(1, 10))
    knob = "d-digit + d-digit"
    _re = re.compile(r"What is (\d+)\+(\d+)\?")

    def sample(self, rng, difficulty):
        lo, hi = _n_digit_range(difficulty)
        return (_ri(rng, lo, hi), _ri(rng, lo, hi))

    def render(self, inst):
        return f"What is {inst[0]}+{inst[1]}?"

    def parse(self, question):
        m = self._re.fullmatch(question)
        if not m:
            return None
        a, b = _canon_int(m.group(1)), _canon_int(m.group(2))
        if a is None or b is None or a == 0 or b == 0 or len(str(a)) != len(str(b)):
            return None
        if len(str(a)) not in self.difficulties:
            return None
        return (a, b)

    def difficulty_of(self, inst):
        return len(str(inst[0]))

    def derive(self, inst):
        d = _Derivation()
        return d.solution(_add_columns(d, *inst))

    def space_size(self, difficulty):
        lo, hi = _n_digit_range(difficulty)
        return (hi - lo + 1) ** 2

    def enumerate(self, difficulty):
        lo, hi = _n_digit_range(difficulty)
        for a in range(lo, hi + 1):
            for b in range(lo, hi + 1):
                yield (a, b)


class _Subtraction(Family):
    name = "subtraction"
    default_difficulty = 3
    difficulties = tuple(range(1, 10))
    knob = "d-digit - d-digit, result >= 0"
    _re = re.compile(r"What is (\d+)-(\d+)\?")

    def sample(self, rng, difficulty):
        lo, hi = _n_digit_range(difficulty)
        a, b = _ri(rng, lo, hi), _ri(rng, lo, hi)
        return (max(a, b), min(a, b))

    def render(self, inst):
        return f"What is {inst[0]}-{inst[1]}?"

    def parse(self, question):
        m = self._re.fullmatch(question)
        if not m:
            return None
        a, b = _canon_int(m.group(1)), _canon_int(m.group(2))
        if a is None or b is None or b == 0 or a < b or len(str(a)) != len(str(b)):
            return None
        if len(str(a)) not in self.difficulties:
            return None
        return (a, b)

    def difficulty_of(self, inst):
        return len(str(inst[0]))

    def derive(self, inst):
        d = _Derivation()
        return d.solution(_sub_columns(d, *inst))

    def space_size(self, difficulty):
        lo, hi = _n_digit_range(difficulty)
        n = hi - lo + 1
        return n * (n + 1) // 2

    def enumerate(self, difficulty):
        lo, hi = _n_digit_range(difficulty)
        for a in range(lo, hi + 1):
            for b in range(lo, a + 1):
                yield (a, b)


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

    def derive(self, inst):
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

    def derive(self, inst):
        form, a, b, c = inst
        d = _Derivation()
        if form == "none":
            num = c
        elif form == "minus":
            num = d.step(f"{c}+{b}", c + b)
        else:
            num = d.step(f"{c}-{b}", c - b)
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

    def derive(self, inst):
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

    def derive(self, inst):
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


# ----------------------------- word problems ------------------------------- #
_NAMES = (
    ("Ann", "she"), ("Ben", "he"), ("Carla", "she"), ("Dan", "he"), ("Emma", "she"),
    ("Finn", "he"), ("Gwen", "she"), ("Hugo", "he"), ("Iris", "she"), ("Jack", "he"),
    ("Kate", "she"), ("Leo", "he"), ("Mia", "she"), ("Omar", "he"), ("Nora", "she"),
    ("Pete", "he"), ("Rosa", "she"), ("Sam", "he"), ("Tara", "she"), ("Vic", "he"),
)
_PRONOUN = dict(_NAMES)
_NAME_LIST = tuple(n for n, _ in _NAMES)


@dataclass(frozen=True)
class _Frame:
    name: str
    subjects: tuple[str, ...]  # people (with their pronoun) or places ("it")
    objs: tuple[str, ...]
    extras: tuple[str, ...]  # values of {X} in the "sub" sentence; () when unused
    start: str
    add: str
    sub: str
    group: str
    share: str
    ask: str
    ask_share: str


_FRAMES = (
    _Frame(
        "shop", _NAME_LIST,
        ("apples", "oranges", "pencils", "stickers", "marbles", "cards"),
        ("other-name",),
        start="{S} has {n} {o}.",
        add="{P} buys {n} more {o}.",
        sub="{P} gives {n} {o} to {X}.",
        group="{P} buys {k} bags of {m} {o} each.",
        share="{P} packs them equally into {k} boxes.",
        ask="How many {o} does {p} have now?",
        ask_share="How many {o} are in each box?",
    ),
    _Frame(
        "money", _NAME_LIST,
        ("dollars", "coins", "tokens", "stamps"),
        ("book", "toy", "lunch", "ticket", "kite"),
        start="{S} saves {n} {o}.",
        add="{P} earns {n} more {o}.",
        sub="{P} spends {n} {o} on a {X}.",
        group="{P} works {k} days and earns {m} {o} each day.",
        share="{P} splits them equally among {k} friends.",
        ask="How many {o} does {p} have now?",
        ask_share="How many {o} does each friend get?",
    ),
    _Frame(
        "bakery", ("bakery", "cafe"),
        ("muffins", "cookies", "rolls", "buns", "bagels", "tarts"),
        (),
        start="A {S} makes {n} {o} in the morning.",
        add="It makes {n} more {o} at noon.",
        sub="It sells {n} {o}.",
        group="It bakes {k} trays of {m} {o} each.",
        share="It packs them equally into {k} bags.",
        ask="How many {o} does the {S} have now?",
        ask_share="How many {o} are in each bag?",
    ),
    _Frame(
        "farm", ("farm", "ranch"),
        ("sheep", "goats", "hens", "ducks", "cows", "pigs"),
        (),
        start="A {S} has {n} {o}.",
        add="The farmer buys {n} more {o}.",
        sub="The farmer sells {n} {o} at the market.",
        group="The farmer buys {k} pens of {m} {o} each.",
        share="The farmer splits them equally into {k} fields.",
        ask="How many {o} are on the {S} now?",
        ask_share="How many {o} are in each field?",
    ),
    _Frame(
        "library", ("library", "school"),
        ("books", "magazines", "comics", "maps", "atlases"),
        (),
        start="The {S} owns {n} {o}.",
        add="It receives {n} new {o}.",
        sub="Readers borrow {n} {o}.",
        group="It receives {k} boxes of {m} {o} each.",
        share="It places them equally on {k} shelves.",
        ask="How many {o} does the {S} have now?",
        ask_share="How many {o} are on each shelf?",
    ),
)
_FRAME_BY_NAME = {f.name: f for f in _FRAMES}

# operand ranges of the word family
_W_START = (2, 20)
_W_ADD = (1, 20)
_W_SUB_MAX = 20
_W_GROUP_K = (2, 9)
_W_GROUP_M = (2, 12)
_W_SHARE_K = (2, 9)


def _share_divisors(total: int) -> list[int]:
    return [k for k in range(_W_SHARE_K[0], _W_SHARE_K[1] + 1) if total >= k and total % k == 0]


@lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    out = []
    for part in re.split(r"(\{[A-Za-z]\})", template):
        if part in ("{n}", "{k}", "{m}"):
            out.append(r"(\d+)")
        elif len(part) == 3 and part.startswith("{"):
            out.append(r"([A-Za-z]+)")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def _template_slots(template: str) -> list[str]:
    return re.findall(r"\{([A-Za-z])\}", template)


def _match_template(template: str, sentence: str) -> dict[str, str] | None:
    m = _template_regex(template).fullmatch(sentence)
    if not m:
        return None
    return dict(zip(_template_slots(template), m.groups()))


class _Word(Family):
    """Instance = (frame, subject, obj, start, events).

    events is a tuple of ("add", n) | ("sub", n, extra) | ("group", k, m) |
    ("share", k); "group" costs two operations, "share" may only come last.
    """

    name = "word"
    default_difficulty = 2
    difficulties = tuple(range(1, 7))
    knob = "number of arithmetic operations"

    # -- sampling ----------------------------------------------------------- #
    def sample(self, rng, difficulty):
        frame = _pick(rng, _FRAMES)
        subject = _pick(rng, frame.subjects)
        obj = _pick(rng, frame.objs)
        start = _ri(rng, *_W_START)
        total, left, events = start, difficulty, []
        while left > 0:
            kinds = ["add"]
            if total >= 1:
                kinds.append("sub")
            if left >= 2:
                kinds.append("group")
            if left == 1 and _share_divisors(total):
                kinds.append("share")
            kind = _pick(rng, kinds)
            if kind == "add":
                n = _ri(rng, *_W_ADD)
                events.append(("add", n))
                total, left = total + n, left - 1
            elif kind == "sub":
                n = _ri(rng, 1, min(_W_SUB_MAX, total))
                events.append(("sub", n, self._extra(rng, frame, subject)))
                total, left = total - n, left - 1
            elif kind == "group":
                k, m = _ri(rng, *_W_GROUP_K), _ri(rng, *_W_GROUP_M)
                events.append(("group", k, m))
                total, left = total + k * m, left - 2
            else:
                k = _pick(rng, _share_divisors(total))
                events.append(("share", k))
                total, left = total // k, left - 1
        return (frame.name, subject, obj, start, tuple(events))

    @staticmethod
    def _extra_choices(frame: _Frame, subject: str) -> tuple[str, ...]:
        if frame.extras == ("other-name",):
            return tuple(n for n in _NAME_LIST if n != subject)
        return frame.extras or ("",)

    def _extra(self, rng, frame, subject):
        return _pick(rng, self._extra_choices(frame, subject))

    # -- text --------------------------------------------------------------- #
    def render(self, inst):
        fname, subject, obj, start, events = inst
        fr = _FRAME_BY_NAME[fname]
        pron = _PRONOUN.get(subject, "it")
        base = {"S": subject, "P": pron.capitalize(), "p": pron, "o": obj}
        sents = [fr.start.format(n=start, **base)]
        for ev in events:
            if ev[0] == "add":
                sents.append(fr.add.format(n=ev[1], **base))
            elif ev[0] == "sub":
                sents.append(fr.sub.format(n=ev[1], X=ev[2], **base))
            elif ev[0] == "group":
                sents.append(fr.group.format(k=ev[1], m=ev[2], **base))
            else:
                sents.append(fr.share.format(k=ev[1], **base))
        final_share = bool(events) and events[-1][0] == "share"
        sents.append((fr.ask_share if final_share else fr.ask).format(**base))
        return " ".join(sents)

    def parse(self, question):
        sents = re.split(r"(?<=[.?]) ", question)
        if len(sents) < 3 or len(sents) > 12:
            return None
        for fr in _FRAMES:
            head = _match_template(fr.start, sents[0])
            if head is None:
                continue
            start = _canon_int(head["n"])
            if start is None:
                continue
            events = []
            for sent in sents[1:-1]:
                ev = self._parse_event(fr, sent)
                if ev is None:
                    break
                events.append(ev)
            else:
                inst = (fr.name, head["S"], head["o"], start, tuple(events))
                if self._valid(inst) and self.render(inst) == question:
                    return inst
        return None

    @staticmethod
    def _parse_event(fr: _Frame, sent: str) -> tuple | None:
        for kind in ("add", "sub", "group", "share"):
            slots = _match_template(getattr(fr, kind), sent)
            if slots is None:
                continue
            nums = {s: _canon_int(slots[s]) for s in ("n", "k", "m") if s in slots}
            if any(v is None for v in nums.values()):
                return None
            if kind == "add":
                return ("add", nums["n"])
            if kind == "sub":
                return ("sub", nums["n"], slots.get("X", ""))
            if kind == "group":
                return ("group", nums["k"], nums["m"])
            return ("share", nums["k"])
        return None

    def _valid(self, inst) -> bool:
        fname, subject, obj, start, events = inst
        fr = _FRAME_BY_NAME.get(fname)
        if fr is None or subject not in fr.subjects or obj not in fr.objs:
            return False
        if not _W_START[0] <= start <= _W_START[1]:
            return False
        total = start
        for i, ev in enumerate(events):
            if ev[0] == "add":
                if not _W_ADD[0] <= ev[1] <= _W_ADD[1]:
                    return False
                total += ev[1]
            elif ev[0] == "sub":
                if not 1 <= ev[1] <= min(_W_SUB_MAX, total):
                    return False
                if ev[2] not in self._extra_choices(fr, subject):
                    return False
                total -= ev[1]
            elif ev[0] == "group":
                if not (_W_GROUP_K[0] <= ev[1] <= _W_GROUP_K[1] and _W_GROUP_M[0] <= ev[2] <= _W_GROUP_M[1]):
                    return False
                total += ev[1] * ev[2]
            else:
                if i != len(events) - 1 or ev[1] not in _share_divisors(total):
                    return False
                total //= ev[1]
        return self.difficulty_of(inst) in self.difficulties

    def difficulty_of(self, inst):
        return sum(2 if ev[0] == "group" else 1 for ev in inst[4])

    def derive(self, inst):
        total = inst[3]
        d = _Derivation()
        for ev in inst[4]:
            if ev[0] == "add":
                total = d.step(f"{total}+{ev[1]}", total + ev[1])
            elif ev[0] == "sub":
                total = d.step(f"{total}-{ev[1]}", total - ev[1])
            elif ev[0] == "group":
                p = d.step(f"{ev[1]}*{ev[2]}", ev[1] * ev[2])
                total = d.step(f"{total}+{p}", total + p)
            else:
                total = d.step(f"{total}/{ev[1]}", total // ev[1])
        return d.solution(total)

    def space_size(self, difficulty):
        return sum(_word_frame_count(fr.name, difficulty) for fr in _FRAMES)

    def enumerate(self, difficulty):  # pragma: no cover - far too many
        raise NotImplementedError("the word family is never enumerated")


@lru_cache(maxsize=None)
def _word_frame_count(frame_name: str, difficulty: int) -> int:
    fr = _FRAME_BY_NAME[frame_name]

    @lru_cache(maxsize=None)
    def with_extras(left: int, total: int, n_extra: int) -> int:
        # event sequences with `left` operations to go from running total `total`;
        # each "sub" event counts once per extra-slot choice
        if left == 0:
            return 1
        n = sum(with_extras(left - 1, total + a, n_extra) for a in range(_W_ADD[0], _W_ADD[1] + 1))
        n += n_extra * sum(with_extras(left - 1, total - s, n_extra) for s in range(1, min(_W_SUB_MAX, total) + 1))
        if left >= 2:
            n += sum(
                with_extras(left - 2, total + k * m, n_extra)
                for k in range(_W_GROUP_K[0], _W_GROUP_K[1] + 1)
                for m in range(_W_GROUP_M[0], _W_GROUP_M[1] + 1)
            )
        if left == 1:
            n += len(_share_divisors(total))
        return n

    total = 0
    for subject in fr.subjects:
        n_extra = len(_Word._extra_choices(fr, subject))
        per_obj = sum(with_extras(difficulty, s, n_extra) for s in range(_W_START[0], _W_START[1] + 1))
        total += per_obj * len(fr.objs)
    return total


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (_Addition(), _Subtraction(), _Multiplication(), _Word(), _Linear(), _Remainder(), _Conversion())
}
DEFAULT_DIFFICULTY: dict[str, int] = {name: f.default_difficulty for name, f in FAMILIES.items()}


def _family(name: str) -> Family:
    fam = FAMILIES.get(name) if isinstance(name, str) else None
    if fam is None:
        raise ValueError(f"unknown family {name!r}; valid families: {', '.join(FAMILIES)}")
    return fam


def instance_space_size(family: str, difficulty: int | None = None) -> int:
    """Number of distinct instances ``family`` can generate at ``difficulty``."""
    fam = _family(family)
    d = fam.check_difficulty(fam.default_difficulty if difficulty is None else difficulty)
    return fam.space_size(d)


# --------------------------------------------------------------------------- #
# Splits and generation
# --------------------------------------------------------------------------- #
def split_of(uid: str) -> str:
    """The split an instance belongs to (a pure function of its uid)."""
    v = int(hashlib.sha1(f"split|{uid}".encode()).hexdigest()[:15], 16) % 10000
    for name, bound in _SPLIT_BOUNDS:
        if v < bound:
            return name
    return _SPLIT_BOUNDS[-1][0]  # pragma: no cover


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def _rng(seed: int, split: str, purpose: str) -> np.random.Generator:
    h = hashlib.sha256(f"lt-world|{purpose}|{split}|{int(seed)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:16], "little"))


@lru_cache(maxsize=64)
def _pools(family: str, difficulty: int) -> dict[str, tuple[tuple, ...]]:
    fam = FAMILIES[family]
    out: dict[str, list[tuple]] = {s: [] for s in SPLITS}
    for inst in fam.enumerate(difficulty):
        out[split_of(fam.uid(inst))].append(inst)
    return {s: tuple(v) for s, v in out.items()}


def split_pool_size(family: str, split: str, difficulty: int | None = None) -> int | None:
    """Exact number of ``family`` instances in ``split``; None when not enumerated (huge)."""
    fam = _family(family)
    d = fam.check_difficulty(fam.default_difficulty if difficulty is None else difficulty)
    _check_split(split)
    if fam.space_size(d) > _ENUMERATE_MAX:
        return None
    return len(_pools(fam.name, d)[split])


def _resolve(families: Sequence[str], difficulty: Mapping[str, int] | None) -> list[tuple[Family, int]]:
    if isinstance(families, str):
        families = (families,)
    families = list(families)
    if not families:
        raise ValueError("families must name at least one family")
    difficulty = dict(difficulty or {})
    for name in difficulty:
        _family(name)
    out = []
    for name in families:
        fam = _family(name)
        out.append((fam, fam.check_difficulty(difficulty.get(name, fam.default_difficulty))))
    return out


class _Sampler:
    """Draws instances of one family/difficulty that fall in one split."""

    def __init__(self, fam: Family, difficulty: int, split: str, distinct: bool) -> None:
        self.fam, self.difficulty, self.split, self.distinct = fam, difficulty, split, distinct
        self.pool = _pools(fam.name, difficulty)[split] if fam.space_size(difficulty) <= _ENUMERATE_MAX else None
        self.order: list[int] | None = None
        self.seen: set[str] = set()

    def _exhausted(self, detail: str) -> ValueError:
        return ValueError(
            f"family {self.fam.name!r} at difficulty {self.difficulty} has {detail} in split "
            f"{self.split!r}; lower the request or raise the difficulty"
        )

    def draw(self, rng: np.random.Generator) -> Unit:
        if self.pool is not None:
            if not self.pool:
                raise self._exhausted("no instances")
            if not self.distinct:
                return self.fam.unit(self.pool[int(rng.integers(len(self.pool)))], self.difficulty)
            if self.order is None:
                self.order = [int(i) for i in rng.permutation(len(self.pool))][::-1]
            if not self.order:
                raise self._exhausted(f"only {len(self.pool)} distinct instances")
            return self.fam.unit(self.pool[self.order.pop()], self.difficulty)
        for _ in range(_MAX_MISSES):
            inst = self.fam.sample(rng, self.difficulty)
            uid = self.fam.uid(inst)
            if split_of(uid) != self.split or (self.distinct and uid in self.seen):
                continue
            if self.distinct:
                self.seen.add(uid)
            return self.fam.unit(inst, self.difficulty)
        raise self._exhausted(f"no new instance in {_MAX_MISSES} draws")


def generate_documents(
    split: str,
    n_docs: int,
    *,
    families: Sequence[str],
    difficulty: Mapping[str, int] | None = None,
    units_per_doc: tuple[int, int] = (3, 6),
    seed: int,
) -> list[Document]:
    """``n_docs`` documents of the ``split``; every unit's family drawn uniformly."""
    _check_split(split)
    resolved = _resolve(families, difficulty)
    lo, hi = (int(x) for x in units_per_doc)
    if lo < 1 or hi < lo:
        raise ValueError(f"units_per_doc must be (lo, hi) with 1 <= lo <= hi, got {units_per_doc!r}")
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    rng = _rng(seed, split, "documents")
    samplers = [_Sampler(fam, d, split, distinct=False) for fam, d in resolved]
    docs = []
    for i in range(int(n_docs)):
        n_units = _ri(rng, lo, hi)
        units = tuple(samplers[int(rng.integers(len(samplers)))].draw(rng) for _ in range(n_units))
        docs.append(Document(doc_id=f"{split}-{int(seed)}-{i:06d}", split=split, units=units))
    return docs


def generate_problems(
    split: str,
    n: int,
    *,
    families: Sequence[str],
    difficulty: Mapping[str, int] | None = None,
    seed: int,
) -> list[Unit]:
    """``n`` distinct problems of the ``split``, families taken round-robin."""
    _check_split(split)
    resolved = _resolve(families, difficulty)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = _rng(seed, split, "problems")
    samplers = [_Sampler(fam, d, split, distinct=True) for fam, d in resolved]
    return [samplers[i % len(samplers)].draw(rng) for i in range(int(n))]


# --------------------------------------------------------------------------- #
# Parsing and verification
# --------------------------------------------------------------------------- #
def _parse_any(question: str) -> tuple[Family, tuple] | None:
    if not isinstance(question, str) or not question or len(question) > 2000:
        return None
    for fam in FAMILIES.values():
        inst = fam.parse(question)
        if inst is not None:
            return fam, inst
    return None


def parse_question(question: str) -> Unit | None:
    """Recognise a question of any family; the Unit carries the recomputed answer and thought.

    Its difficulty is the smallest level that can generate the instance.
    """
    try:
        found = _parse_any(question)
    except Exception:  # pragma: no cover - defensive: junk must never raise
        return None
    if found is None:
        return None
    fam, inst = found
    return fam.unit(inst, fam.difficulty_of(inst))


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
