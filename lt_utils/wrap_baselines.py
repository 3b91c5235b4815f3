"""WRAP baselines for the synthetic world: whole documents rewritten in other surface forms.

The paper compares latent thoughts with two rephrasing baselines in the style
of WRAP (Maini et al. 2024), both trained on the rewrite alone, never on the
raw document (Ruan et al. 2025; our method notes §2.2-2.4):

* **WRAP-Orig** rewrites a whole document in one of four styles, drawn
  uniformly per document and per repeat: ``simple`` (tiny vocabulary, very
  short sentences), ``terse`` (terse, erudite wording with rare words),
  ``wiki`` (encyclopedic prose) and ``qa`` (``Question:`` / ``Answer:``
  turns).  The facts stay the same and no derivation is added.
* **WRAP-CoT** rewrites a document keeping all its information and inserts
  the step-by-step reasoning behind every stated result.

At paper scale an LLM writes these rewrites.  In the embedded world there is
no LLM, so this module is the world's own rephraser: it reads each unit's
*structured* data (family, question, answer, and for WRAP-CoT the unit's
ground-truth thought) rather than the raw text, and writes it anew from
several templates per style and family, picked by a seeded RNG so that the
surface forms vary.  Guarantees the tests check:

* every number of a unit's question and its correct answer appear in each
  WRAP-Orig rewrite, and no other number does (the background factor of a
  unit conversion is not stated either: it is not in the raw text);
* WRAP-Orig texts contain no arithmetic claim ``x op y = z`` at all, so
  :func:`lt_utils.world.verify` finds no steps in them;
* the ``qa`` style never uses the evaluation format ``Problem: … Answer:``;
* each WRAP-CoT unit passage states every ground-truth step verbatim (for
  example ``4+8+1=13``), with the long-division labels and the background
  fact where the family has them, and ends in ``so {answer}``; on its own it
  passes :func:`lt_utils.world.verify` for the unit's question.

The randomness of a rewrite comes from a stable hash of (kind, seed, doc_id,
repeat), so a corpus is reproducible and independent of the order in which
documents are processed.  :func:`rephrase_corpus` packs each rewrite as a
:class:`~lt_utils.data.ThoughtDoc` with an empty head, no suffixes and the
rewrite as its single thought, so the trainer's ``thought_only`` layout
(``BOS text EOS``) trains on the rewrite alone, as in the paper.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from lt_utils import world
from lt_utils.data import ThoughtDoc
from lt_utils.world import Document, Unit

__all__ = [
    "KINDS",
    "STYLES",
    "cot_unit",
    "rephrase_corpus",
    "rephrase_document",
    "rephrase_unit",
    "rewrite_rng",
    "wrap_cot",
    "wrap_orig",
]

STYLES = ("simple", "terse", "wiki", "qa")
KINDS = ("wrap_orig", "wrap_cot")


# --------------------------------------------------------------------------- randomness
def rewrite_rng(kind: str, seed: int, doc_id: str, repeat: int) -> np.random.Generator:
    """The RNG of one rewrite: a stable hash of (kind, seed, doc_id, repeat)."""
    h = hashlib.sha256(f"lt-rephrase|{kind}|{int(seed)}|{doc_id}|{int(repeat)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:16], "little"))


def _pick(rng: Any, seq: Sequence[Any]) -> Any:
    """A uniform element of `seq`; `rng` is a numpy Generator or a `random.Random`."""
    if hasattr(rng, "integers"):
        return seq[int(rng.integers(len(seq)))]
    return seq[rng.randrange(len(seq))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _series(items: Sequence[str], last_joiner: str = "and") -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {last_joiner} " + items[-1]


# --------------------------------------------------------------------------- units read as structured data
_CONVERSION_Q = re.compile(r"How many ([a-z]+) are in (\d+) ([a-z]+)\?")


def _instance(unit: Unit) -> tuple:
    fam = world.FAMILIES.get(unit.family)
    inst = fam.parse(unit.question) if fam is not None else None
    if inst is None:
        raise ValueError(f"not a question of family {unit.family!r}: {unit.question!r}")
    return inst


def _equation(form: str, a: int, b: int, c: int) -> tuple[str, str]:
    """The equation of a linear unit in symbols (spaced) and in words."""
    if form == "plus":
        return f"{a}x + {b} = {c}", f"{a} times x plus {b} is {c}"
    if form == "minus":
        return f"{a}x - {b} = {c}", f"{a} times x minus {b} is {c}"
    if form == "lead":
        return f"{b} + {a}x = {c}", f"{b} plus {a} times x is {c}"
    return f"{a}x = {c}", f"{a} times x is {c}"


def _fields(unit: Unit) -> dict[str, Any]:
    """Format fields of a non-word unit (its operands and answer)."""
    inst = _instance(unit)
    ans = unit.answer
    if unit.family in ("addition", "subtraction", "multiplication"):
        return {"a": inst[0], "b": inst[1], "r": ans}
    if unit.family == "linear":
        form, a, b, c = inst
        eq, eqw = _equation(form, a, b, c)
        return {"a": a, "b": b, "c": c, "eq": eq, "eqw": eqw, "Eqw": _cap(eqw), "r": ans}
    if unit.family == "remainder":
        return {"n": inst[0], "k": inst[1], "r": ans}
    if unit.family == "conversion":
        m = _CONVERSION_Q.fullmatch(unit.question)
        return {"small": m.group(1), "n": int(m.group(2)), "plural": m.group(3), "r": ans}
    raise ValueError(f"no templates for family {unit.family!r}")


# --------------------------------------------------------------------------- WRAP-Orig templates
# Per family and style, several surface forms.  None states a derivation step.
_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "addition": {
        "simple": (
            "We add {a} and {b}. We get {r}.",
            "Take {a}. Put {b} more with it. Now we have {r}.",
            "Add {a} to {b}. The total is {r}.",
            "Here are two numbers, {a} and {b}. Put them together. That makes {r}.",
        ),
        "terse": (
            "The sum of {a} and {b} obtains as {r}.",
            "Conjoining {a} with {b} yields an aggregate of {r}.",
            "{a}, augmented by {b}, amounts to {r}.",
            "The aggregate of {a} and {b} is {r}.",
        ),
        "wiki": (
            "In arithmetic, adding {a} to {b} yields {r}.",
            "The sum of the integers {a} and {b} is {r}.",
            "When the numbers {a} and {b} are added, the result, called their sum, is {r}.",
        ),
        "qa": (
            "Question: What do {a} and {b} add up to? Answer: {r}.",
            "Question: What is the sum of {a} and {b}? Answer: The sum is {r}.",
            "Question: If you add {b} to {a}, what do you get? Answer: You get {r}.",
        ),
    },
    "subtraction": {
        "simple": (
            "We take {b} away from {a}. We get {r}.",
            "Start with {a}. Take away {b}. Then {r} is left.",
        ),
        "terse": (
            "The difference of {a} and {b} is {r}.",
            "Diminishing {a} by {b} leaves a residue of {r}.",
        ),
        "wiki": (
            "In arithmetic, subtracting {b} from {a} gives {r}.",
            "The difference between the integers {a} and {b} equals {r}.",
        ),
        "qa": (
            "Question: What is left when {b} is taken from {a}? Answer: {r}.",
            "Question: How much greater is {a} than {b}? Answer: It is greater by {r}.",
        ),
    },
    "multiplication": {
        "simple": (
            "We have {b} groups of {a}. That is {r} in all.",
            "Take {a}, {b} times over. We get {r}.",
        ),
        "terse": (
            "The product of {a} and {b} is {r}.",
            "{a}, taken {b}-fold, amounts to {r}.",
        ),
        "wiki": (
            "In arithmetic, multiplying {a} by {b} gives the product {r}.",
            "The product of the factors {a} and {b} is {r}.",
        ),
        "qa": (
            "Question: What is {a} multiplied by {b}? Answer: {r}.",
            "Question: How much are {b} lots of {a}? Answer: They make {r}.",
        ),
    },
    "linear": {
        "simple": (
            "We look for a number x. {Eqw}. The number x is {r}.",
            "Find x when {eqw}. Then x must be {r}.",
            "Here {eqw}. That means x is {r}.",
        ),
        "terse": (
            "The equation {eq} admits the sole solution x = {r}.",
            "Whence {eq}, the unknown resolves to {r}.",
            "The root of {eq} is {r}.",
        ),
        "wiki": (
            "In algebra, the linear equation {eq} has the solution x = {r}.",
            "The equation {eq} is linear in one unknown; its solution is x = {r}.",
            "Solving the linear equation {eq} for the unknown x gives x = {r}.",
        ),
        "qa": (
            "Question: Which value of x satisfies {eq}? Answer: x = {r}.",
            "Question: In the equation {eq}, what is x? Answer: {r}.",
            "Question: What number x makes {eq} true? Answer: The number is {r}.",
        ),
    },
    "remainder": {
        "simple": (
            "We put {n} things into groups of {k}. Then {r} are left over.",
            "Split {n} into groups of {k}. The leftover is {r}.",
        ),
        "terse": (
            "{n} modulo {k} is {r}.",
            "The residue of {n} upon division by {k} is {r}.",
        ),
        "wiki": (
            "In number theory, dividing {n} by {k} leaves a remainder of {r}.",
            "The remainder of the Euclidean division of {n} by {k} is {r}.",
        ),
        "qa": (
            "Question: What is left over when {n} is divided by {k}? Answer: {r}.",
            "Question: What is {n} mod {k}? Answer: The remainder is {r}.",
        ),
    },
    "conversion": {
        "simple": (
            "There are {r} {small} in {n} {plural}.",
            "Think of {n} {plural}. That is the same as {r} {small}.",
        ),
        "terse": (
            "{n} {plural} comprise {r} {small}.",
            "{n} {plural} equate to {r} {small}.",
        ),
        "wiki": (
            "In units of measurement, {n} {plural} correspond to {r} {small}.",
            "A quantity of {n} {plural} is equal to {r} {small}.",
        ),
        "qa": (
            "Question: How many {small} make up {n} {plural}? Answer: {r} {small}.",
            "Question: Expressed in {small}, how much is {n} {plural}? Answer: It is {r} {small}.",
        ),
    },
}

# --------------------------------------------------------------------------- word problems
# Register of a style's wording: 0 plain (simple), 1 neutral (wiki, qa), 2 formal (terse).
_REGISTER = {"simple": 0, "wiki": 1, "qa": 1, "terse": 2}

# Per story frame of the world: who holds the objects, one clause per event kind in the
# three registers, and the container a final equal share goes into.
_STORY: dict[str, dict[str, Any]] = {
    "shop": {
        "holder": "{S}",
        "start": ("{S} has {n} {o}", "{S} owns {n} {o}", "{S} possesses {n} {o}"),
        "add": ("{S} buys {n} more {o}", "{S} purchases {n} additional {o}", "{S} procures a further {n} {o}"),
        "sub": ("{S} gives {n} {o} to {X}", "{S} hands {n} {o} to {X}", "{S} bestows {n} {o} upon {X}"),
        "group": ("{S} buys {k} bags with {m} {o} in each bag", "{S} purchases {k} bags containing {m} {o} each",
                  "{S} procures {k} sacks, each enclosing {m} {o}"),
        "share": ("{S} puts the {o} into {k} boxes with the same number in each box",
                  "{S} divides the {o} equally among {k} boxes",
                  "{S} apportions the {o} in equal measure among {k} boxes"),
        "per": "box",
    },
    "money": {
        "holder": "{S}",
        "start": ("{S} has saved {n} {o}", "{S} has put aside {n} {o}", "{S} has accumulated {n} {o}"),
        "add": ("{S} earns {n} more {o}", "{S} earns an additional {n} {o}", "{S} garners a further {n} {o}"),
        "sub": ("{S} spends {n} {o} on a {X}", "{S} pays {n} {o} for a {X}", "{S} disburses {n} {o} upon a {X}"),
        "group": ("{S} works for {k} days and gets {m} {o} each day", "{S} works {k} days, earning {m} {o} per day",
                  "{S} labours {k} days at a wage of {m} {o} per diem"),
        "share": ("{S} gives the {o} to {k} friends so that each friend gets the same",
                  "{S} divides the {o} equally among {k} friends",
                  "{S} apportions the {o} equitably among {k} friends"),
        "per": "friend",
    },
    "bakery": {
        "holder": "the {S}",
        "start": ("the {S} makes {n} {o} in the morning", "the {S} bakes {n} {o} in the morning",
                  "the {S} produces {n} {o} at daybreak"),
        "add": ("the {S} makes {n} more {o} at noon", "the {S} bakes another {n} {o} at midday",
                "the {S} produces a further {n} {o} at noon"),
        "sub": ("the {S} sells {n} {o}", "the {S} sells {n} of its {o}", "the {S} vends {n} {o}"),
        "group": ("the {S} bakes {k} trays with {m} {o} on each tray", "the {S} bakes {k} trays holding {m} {o} each",
                  "the {S} produces {k} trays, each bearing {m} {o}"),
        "share": ("the {S} puts the {o} into {k} bags with the same number in each bag",
                  "the {S} divides the {o} equally into {k} bags",
                  "the {S} apportions the {o} evenly among {k} bags"),
        "per": "bag",
    },
    "farm": {
        "holder": "the {S}",
        "start": ("the {S} has {n} {o}", "the {S} keeps {n} {o}", "the {S} maintains a stock of {n} {o}"),
        "add": ("the farmer buys {n} more {o}", "the farmer purchases {n} additional {o}",
                "the farmer acquires a further {n} {o}"),
        "sub": ("the farmer sells {n} {o} at the market", "the farmer sells {n} {o} at market",
                "the farmer vends {n} {o} at the market"),
        "group": ("the farmer buys {k} pens with {m} {o} in each pen", "the farmer purchases {k} pens of {m} {o} each",
                  "the farmer acquires {k} pens, each housing {m} {o}"),
        "share": ("the farmer puts the {o} into {k} fields with the same number in each field",
                  "the farmer divides the {o} equally among {k} fields",
                  "the farmer apportions the {o} evenly across {k} fields"),
        "per": "field",
    },
    "library": {
        "holder": "the {S}",
        "start": ("the {S} has {n} {o}", "the {S} owns {n} {o}", "the {S} holds a collection of {n} {o}"),
        "add": ("the {S} gets {n} new {o}", "the {S} receives {n} new {o}", "the {S} accessions {n} new {o}"),
        "sub": ("readers take out {n} {o}", "readers borrow {n} {o}", "patrons borrow {n} {o}"),
        "group": ("the {S} gets {k} boxes with {m} {o} in each box", "the {S} receives {k} boxes of {m} {o} each",
                  "the {S} receives {k} crates, each containing {m} {o}"),
        "share": ("the {S} puts the {o} on {k} shelves with the same number on each shelf",
                  "the {S} places the {o} equally on {k} shelves",
                  "the {S} distributes the {o} evenly over {k} shelves"),
        "per": "shelf",
    },
}


class _Story:
    """A word problem read as its story: clauses per register, and how it ends."""

    def __init__(self, unit: Unit):
        frame, subject, obj, start, events = _instance(unit)
        self.lex = _STORY[frame]
        self.S, self.o, self.start, self.events = subject, obj, start, events
        self.answer = unit.answer
        self.holder = self.lex["holder"].format(S=subject)
        self.shared = bool(events) and events[-1][0] == "share"
        self.per = self.lex["per"]

    def _fmt(self, template: str, **kw) -> str:
        return template.format(S=self.S, o=self.o, **kw)

    def clauses(self, register: int) -> list[str]:
        """The start and one clause per event, lower-case first letter, no final period."""
        out = [self._fmt(self.lex["start"][register], n=self.start)]
        for ev in self.events:
            t = self.lex[ev[0]][register]
            if ev[0] in ("add",):
                out.append(self._fmt(t, n=ev[1]))
            elif ev[0] == "sub":
                out.append(self._fmt(t, n=ev[1], X=ev[2]))
            elif ev[0] == "group":
                out.append(self._fmt(t, k=ev[1], m=ev[2]))
            else:
                out.append(self._fmt(t, k=ev[1]))
        return out

    def final(self, register: int) -> str:
        """The stated result, lower-case first letter, no final period."""
        if self.shared:
            verb = ("gets", "receives", "thereby receives")[register]
            return f"each {self.per} {verb} {self.answer} {self.o}"
        verb = ("has", "has", "retains")[register]
        return f"{self.holder} {verb} {self.answer} {self.o}"

    def ask(self) -> str:
        """The question, lower-case first letter."""
        if self.shared:
            return f"how many {self.o} does each {self.per} get?"
        return f"how many {self.o} does {self.holder} end up with?"

    def ask_indirect(self) -> str:
        """The question as a clause ("how many apples Ann ends up with")."""
        if self.shared:
            return f"how many {self.o} each {self.per} gets"
        return f"how many {self.o} {self.holder} ends up with"


def _word_simple(st: _Story, rng) -> str:
    cl, fin = st.clauses(0), st.final(0)
    v = _pick(rng, (0, 1, 2))
    if v == 0:
        return " ".join(_cap(c) + "." for c in cl) + f" Now {fin}."
    if v == 1:
        body = [f"First, {cl[0]}."] + [f"Then {c}." for c in cl[1:]]
        return " ".join(body) + f" At the end, {fin}."
    return "Here is a story. " + " ".join(_cap(c) + "." for c in cl) + f" In the end, {fin}."


def _word_terse(st: _Story, rng) -> str:
    cl, fin = st.clauses(2), st.final(2)
    v = _pick(rng, (0, 1, 2))
    if v == 0:
        return _cap("; thereafter ".join(cl)) + f". Consequently, {fin}."
    if v == 1:
        text = f"Initially, {cl[0]}."
        if len(cl) > 1:
            text += f" Subsequently, {cl[1]}" + "".join(f", whereupon {c}" for c in cl[2:]) + "."
        return text + f" Ergo, {fin}."
    return "Posit that " + _series([cl[0]] + [f"that {c}" for c in cl[1:]]) + f"; it follows that {fin}."


def _word_wiki(st: _Story, rng) -> str:
    cl, fin = st.clauses(1), st.final(1)
    v = _pick(rng, (0, 1, 2))
    if v == 0:
        text = f"In this example, {cl[0]}."
        text += "".join(f" After that, {c}." for c in cl[1:])
        return text + f" As a result, {fin}."
    if v == 1:
        text = f"The account begins as follows: {cl[0]}."
        text += "".join(f" Later, {c}." for c in cl[1:])
        return text + f" In total, {fin}."
    text = f"Consider a situation in which {cl[0]}."
    text += "".join(f" {_cap(c)}." for c in cl[1:])
    return text + f" The final count is that {fin}."


def _word_qa(st: _Story, rng) -> str:
    cl, fin = st.clauses(1), st.final(1)
    v = _pick(rng, (0, 1, 2))
    if v == 0:
        story = " ".join(_cap(c) + "." for c in cl)
        return f"Question: {story} {_cap(st.ask())} Answer: {st.answer} {st.o}."
    if v == 1:
        turns = [f"Question: How does the story start? Answer: {_cap(cl[0])}."]
        turns += [f"Question: What happens next? Answer: {_cap(c)}." for c in cl[1:]]
        turns.append(f"Question: {_cap(st.ask())} Answer: {_cap(fin)}.")
        return "\n".join(turns)
    cond = cl[0] + "".join(f", and then {c}" for c in cl[1:])
    return f"Question: If {cond}, {st.ask()} Answer: {_cap(fin)}."


_WORD_STYLES: dict[str, Callable[[_Story, Any], str]] = {
    "simple": _word_simple, "terse": _word_terse, "wiki": _word_wiki, "qa": _word_qa,
}

# Optional openings of a whole rewritten document (no numbers in them).
_INTROS = {
    "simple": ("", "", "Here are some math facts.", "Let us do some math."),
    "terse": ("", "", "Herewith, sundry computations.", "What follows are brief arithmetical propositions."),
    "wiki": ("", "", "The following are worked examples from elementary mathematics.",
             "This article collects several results of elementary arithmetic."),
    "qa": ("", "", "Question: What does this page cover? Answer: A few short math problems."),
}


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r} (known: {', '.join(STYLES)})")
    return style


def rephrase_unit(unit: Unit, style: str, rng) -> str:
    """One unit restated in `style`: same numbers and answer, no derivation."""
    _check_style(style)
    if unit.family == "word":
        return _WORD_STYLES[style](_Story(unit), rng)
    return _pick(rng, _TEMPLATES[unit.family][style]).format(**_fields(unit))


def rephrase_document(doc: Document, style: str, rng) -> str:
    """The whole document rewritten in `style` (WRAP-Orig), one passage per unit.

    `rng` is a numpy Generator or a `random.Random`; it picks the opening and
    every unit's template.  Passages are joined by spaces (by newlines in the
    ``qa`` style, one turn group per line).
    """
    _check_style(style)
    parts = [_pick(rng, _INTROS[style])]
    parts += [rephrase_unit(u, style, rng) for u in doc.units]
    return ("\n" if style == "qa" else " ").join(p for p in parts if p)


def wrap_orig(doc: Document, repeat: int, seed: int) -> tuple[str, str]:
    """WRAP-Orig rewrite number `repeat` of `doc`: (style drawn uniformly, text)."""
    rng = rewrite_rng("wrap_orig", seed, doc.doc_id, repeat)
    style = STYLES[int(rng.integers(len(STYLES)))]
    return style, rephrase_document(doc, style, rng)


# --------------------------------------------------------------------------- WRAP-CoT
_STEP = re.compile(r"(?:(?P<label>\d+): )?(?P<expr>\d+(?:[-+*/]\d+)+)=(?P<res>-?\d+)(?: (?P<mark>[cb])(?P<k>\d+))?")
_COLUMNS = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions",
            "ten-millions", "hundred-millions")


class _Clause:
    def __init__(self, text: str):
        self.text = text
        m = _STEP.fullmatch(text)
        self.is_step = m is not None
        if m:
            self.label, self.expr, self.res = m.group("label"), m.group("expr"), int(m.group("res"))
            self.mark, self.k = m.group("mark"), m.group("k")

    @property
    def claim(self) -> str:
        """The step as stated in the thought, without its carry/borrow marker."""
        head = f"{self.label}: " if self.label else ""
        return f"{head}{self.expr}={self.res}"


def _thought_clauses(thought: str) -> list[_Clause]:
    """A thought's clauses without the final ``so N``."""
    body = thought.strip()
    body = body[:-1] if body.endswith(".") else body
    parts = body.split(". ")
    if parts and parts[-1].startswith("so "):
        parts = parts[:-1]
    return [_Clause(p) for p in parts]


def _column(i: int) -> str:
    return _COLUMNS[i] if i < len(_COLUMNS) else f"column {i + 1}"


def _cot_columns(clauses: list[_Clause], subtract: bool) -> list[str]:
    """Digit-by-digit addition or subtraction, one sentence per column."""
    out = []
    for i, c in enumerate(clauses):
        last = i == len(clauses) - 1
        if subtract:
            paid = c.expr.count("-") == 2
            s = f"In the {_column(i)} column, "
            if paid:
                s += "after paying back the one we borrowed, "
            s += "we borrow ten and get " if c.mark == "b" else "we get "
            out.append(s + f"{c.claim}.")
        elif c.mark == "c":
            out.append(f"In the {_column(i)} column, {c.claim}, so we write {c.res % 10} and carry {c.k}.")
        elif last:
            out.append(f"In the {_column(i)} column, {c.claim}, which we write in full.")
        else:
            out.append(f"In the {_column(i)} column, {c.claim}, with nothing to carry.")
    return out


def _cot_multiply(clauses: list[_Clause], multiplicand: int) -> list[str]:
    """Digit-wise multiplication; with a multi-digit multiplier, partial products and their sum."""
    out = []
    for c in clauses:
        if not c.is_step:
            continue
        if "*" not in c.expr:
            out.append(f"Adding the partial products, each shifted by its place, gives {c.claim}.")
        elif c.mark == "c":
            out.append(f"Next, {c.claim}, so we write {c.res % 10} and carry {c.k}.")
        elif c.expr.split("*")[0] == str(multiplicand) and multiplicand >= 10:
            out.append(f"That makes the partial product {c.claim}.")
        else:
            out.append(f"Next, {c.claim}.")
    if out and out[0].startswith("Next, "):
        out[0] = "First, " + out[0][len("Next, "):]
    return out


def _mul_operands(a: int, b: int) -> tuple[int, int]:
    """(multiplicand, multiplier) of a unit conversion, in the order the world's derivation multiplies."""
    return (a, b) if len(str(a)) >= len(str(b)) else (b, a)


def _cot_word(unit: Unit, clauses: list[_Clause]) -> str:
    st = _Story(unit)
    cl = st.clauses(1)
    story = f"In this problem, {cl[0]}." + "".join(f" Then {c}." for c in cl[1:])
    lines = [story, f"We want to know {st.ask_indirect()}.", f"At the start there are {st.start} {st.o}."]
    steps = iter(c for c in clauses if c.is_step)
    for ev in st.events:
        if ev[0] == "add":
            lines.append(f"Adding the {ev[1]} new {st.o} gives {next(steps).claim}.")
        elif ev[0] == "sub":
            lines.append(f"Taking away {ev[1]} {st.o} leaves {next(steps).claim}.")
        elif ev[0] == "group":
            made, total = next(steps), next(steps)
            lines.append(f"The {ev[1]} groups of {ev[2]} hold {made.claim} {st.o}, "
                         f"and adding them to the total gives {total.claim}.")
        else:
            lines.append(f"Sharing them equally {ev[1]} ways gives {next(steps).claim} each.")
    lines.append(f"The result is {st.answer}, so {st.answer} is the answer.")
    return " ".join(lines)


def cot_unit(unit: Unit, rng=None) -> str:
    """One unit restated with its full step-by-step reasoning in prose (WRAP-CoT).

    Every ground-truth step of the unit's thought appears verbatim (with its
    long-division label), the background fact is stated where the family needs
    one, and the passage ends in ``so {answer}``.  `rng` only varies the
    opening words.
    """
    clauses = _thought_clauses(unit.thought)
    steps = [c for c in clauses if c.is_step]
    ans = unit.answer
    lead = _pick(rng, ("", "Let us work it out. ", "Step by step: ")) if rng is not None else ""
    fam = unit.family
    if fam == "word":
        return lead + _cot_word(unit, clauses)
    f = _fields(unit)
    if fam == "addition":
        body = [f"We add {f['a']} and {f['b']} one column at a time, starting from the right."]
        body += _cot_columns(steps, subtract=False)
        body.append(f"Reading the digits from left to right gives {ans}, so {ans} is the sum of {f['a']} and {f['b']}.")
    elif fam == "subtraction":
        body = [f"We subtract {f['b']} from {f['a']} one column at a time, starting from the right, "
                "borrowing ten when the top digit is too small."]
        body += _cot_columns(steps, subtract=True)
        body.append(f"The columns give the difference {ans}, so {ans} is {f['a']} minus {f['b']}.")
    elif fam == "multiplication":
        body = [f"We multiply {f['a']} by {f['b']} digit by digit, starting from the right."]
        body += _cot_multiply(steps, f["a"])  # the world multiplies a by b in that order
        body.append(f"The product is {ans}, so {ans} is {f['a']} times {f['b']}.")
    elif fam == "linear":
        inst = _instance(unit)
        form, a, b = inst[0], inst[1], inst[2]
        body = [f"We solve the equation {f['eq']} for x."]
        if form == "none":
            body.append(f"Dividing both sides by {a} gives {steps[0].claim}.")
        else:
            move = f"add {b} to both sides" if form == "minus" else f"take {b} away from both sides"
            body.append(f"First we {move}, which gives {steps[0].claim}, so that {a} times x is {steps[0].res}.")
            body.append(f"Then dividing both sides by {a} gives {steps[1].claim}.")
        body.append(f"The solution is x = {ans}, so {ans} is the value of x.")
    elif fam == "remainder":
        body = [f"We find the remainder of {f['n']} divided by {f['k']} by long division."]
        for i in range(0, len(steps) - 1, 2):
            mult, sub = steps[i], steps[i + 1]
            if i:
                body.append(f"Bringing down the next digit gives {mult.label}.")
            body.append(f"Take the running number {mult.claim}, the largest multiple of {f['k']} that fits, "
                        f"and {sub.claim} is left.")
        body.append(f"The last remainder is {ans}, so {ans} is the remainder of {f['n']} divided by {f['k']}.")
    elif fam == "conversion":
        facts = [c.text for c in clauses if not c.is_step]
        factor = int(re.search(r"\d+", facts[0]).group()) if facts else None
        body = [f"We convert {f['n']} {f['plural']} into {f['small']}."]
        body += [f"Recall that {t}." for t in facts]
        if factor is not None:
            body.append(f"So we multiply {f['n']} by {factor}.")
            body += _cot_multiply(steps, _mul_operands(f["n"], factor)[0])
        body.append(f"That makes {ans}, so {ans} {f['small']} are in {f['n']} {f['plural']}.")
    else:  # pragma: no cover - every family is handled above
        raise ValueError(f"no reasoning template for family {fam!r}")
    return lead + " ".join(body)


_COT_INTROS = ("", "", "Below, each result is worked out step by step.",
               "The following problems are solved with every step shown.")


def wrap_cot(doc: Document, repeat: int, seed: int) -> str:
    """WRAP-CoT rewrite number `repeat` of `doc`: all facts kept, reasoning inserted; one line per unit."""
    rng = rewrite_rng("wrap_cot", seed, doc.doc_id, repeat)
    parts = [_pick(rng, _COT_INTROS)] + [cot_unit(u, rng) for u in doc.units]
    return "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------- corpora
def rephrase_corpus(docs: Iterable[Document], kind: str, repeats: int, seed: int) -> list[ThoughtDoc]:
    """Rewrites of every document, `repeats` per document, as thought-only training documents.

    Each becomes ``ThoughtDoc(f"{doc_id}#r{repeat}", head="", suffixes=[], thoughts=[text])``;
    laid out with ``"thought_only"`` it is ``BOS text EOS``, so training never
    sees the raw document.  Order: document by document, repeats in order.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown rephrase kind {kind!r} (known: {', '.join(KINDS)})")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out = []
    for doc in docs:
        for r in range(int(repeats)):
            text = wrap_orig(doc, r, seed)[1] if kind == "wrap_orig" else wrap_cot(doc, r, seed)
            out.append(ThoughtDoc(f"{doc.doc_id}#r{r}", "", [], [text]))
    return out
