"""Worked solutions in prose: how some web text shows its working.

Web text mostly states results, but a small part of it spells the steps out,
in its own words rather than in any fixed notation.  This module writes such
text for a unit from its ground-truth derivation: every step of the thought
appears, as an English sentence (``In the ones column, 8 plus 9 makes 17: we
write 7 and carry 1.``), never in the thought grammar (``8+9=17 c1.``).  A
model pretrained on it has seen working, but not in the form a teacher's
latent thoughts take.

A worked unit renders as ``f"Problem: {q} Solution: {prose} Answer: {a}.\\n"``.
"""

from __future__ import annotations

import re

from lt_utils.world.units import Unit

_COLUMNS = ("ones", "tens", "hundreds", "thousands", "ten thousands", "hundred thousands", "millions",
            "ten millions", "hundred millions", "billions")
_OPENERS = {
    "addition": "We add column by column, starting from the right.",
    "subtraction": "We subtract column by column, starting from the right.",
    "multiplication": "We multiply digit by digit, starting from the right.",
    "word": "We follow the story one event at a time.",
    "linear": "We undo what was done to x, one operation at a time.",
    "remainder": "We divide digit by digit and keep what is left over.",
    "conversion": "",
}
# families whose every step (before the answer) is one digit column, rightmost first
_COLUMN_FAMILIES = ("addition", "subtraction")

_STEP = re.compile(r"^(?:(\d+): )?([0-9+\-*/]+)=(-?\d+)(?: (c\d+|b1))?$")
_FACT = re.compile(r"^(an?) (.+) has (\d+) (.+)$")
_SO = re.compile(r"^so (-?\d+)$")
_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
_VERBS = {"+": "makes", "-": "leaves", "*": "is", "/": "is"}


def _clauses(thought: str) -> list[str]:
    return [c for c in thought.strip().rstrip(".").split(". ") if c]


def _expression(expr: str, carried: int | None, borrowed: bool) -> tuple[str, str]:
    """An expression in words, and the verb its result takes (from its last operator)."""
    terms = re.split(r"([+\-*/])", expr)
    words = [terms[0]]
    ops = terms[1::2]
    for i, (op, value) in enumerate(zip(ops, terms[2::2])):
        last = i == len(ops) - 1
        if op == "+" and last and carried is not None and value == str(carried):
            words.append(f"plus the {value} carried")
        elif op == "-" and i == 0 and borrowed and value == "1" and len(ops) > 1:
            words.append("minus the 1 lent to the column before")
        else:
            words.append(f"{_WORDS[op]} {value}")
    if len(ops) > 1 and ops[0] == "*" and ops[-1] == "+":   # a*b+c: name the product first
        a, b = terms[0], terms[2]
        return f"{a} times {b} is {int(a) * int(b)}, {' '.join(words[2:])}", "makes"
    return " ".join(words), _VERBS[ops[-1]] if ops else "is"


def working_prose(unit: Unit) -> str:
    """The unit's derivation as English sentences (every step, none in the thought grammar)."""
    sentences = [_OPENERS.get(unit.family, "")]
    carried: int | None = None
    borrowed = False
    column = 0
    for clause in _clauses(unit.thought):
        fact, step, so = _FACT.match(clause), _STEP.match(clause), _SO.match(clause)
        if fact:
            article, unit_one, k, units = fact.groups()
            sentences.append(f"There are {k} {units} in {article} {unit_one}.")
        elif step:
            label, expr, result, marker = step.groups()
            said, verb = _expression(expr, carried, borrowed)
            where = ""
            if unit.family in _COLUMN_FAMILIES and column < len(_COLUMNS):
                where = f"In the {_COLUMNS[column]} column, "
                column += 1
            if label:
                where = f"Taking {label}: "
            text = f"{where}{said} {verb} {result}"
            if marker and marker.startswith("c"):
                text += f": we write {int(result) % 10} and carry {marker[1:]}"
            elif marker == "b1":
                text = f"{where}we borrow ten, and {said} {verb} {result}"
            sentences.append(text[0].upper() + text[1:] + ".")
            carried = int(marker[1:]) if marker and marker.startswith("c") else None
            borrowed = marker == "b1"
        elif so:
            sentences.append(f"That gives {so.group(1)}.")
        else:   # pragma: no cover - every family writes only the clauses above
            raise ValueError(f"{unit.family}: cannot put the clause '{clause}' into words")
    return " ".join(s for s in sentences if s)


def render_worked_unit(unit: Unit) -> str:
    """The raw text of a unit that shows its working (compare `core.render_unit`)."""
    return f"Problem: {unit.question} Solution: {working_prose(unit)} Answer: {unit.answer}.\n"
