"""The world's data model and text format: units, documents, verdicts, and the
builder every family writes its derivations (thoughts) with.

A *unit* is a problem with its answer and its ground-truth thought; a
*document* is a few units.  Rendering, evaluation prompts and the thought
grammar live together here so that every family, the generator and the
verifier agree on one text format.

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

Thought styles
--------------
``compact`` (the default, every study's) writes a sum or difference inside a
linear equation or a word problem as one step (``64-19=45``); ``spelled``
works it column by column first, as the addition family does, and then states
it (``14-9=5 b1. 6-1-1=4. 64-19=45.``); ``spelled_linear`` does so in linear
equations only.  The raw text is the same in all, and a spelled thought holds
every step of the compact one, so :func:`verify` accepts any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


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
# style -> the families whose sums and differences it spells out column by column
SPELLED_FAMILIES = {"compact": (), "spelled": ("linear", "word"), "spelled_linear": ("linear",)}
THOUGHT_STYLES = tuple(SPELLED_FAMILIES)


def check_style(style: str) -> str:
    """`style` if it is a known thought style, else a one-line ValueError naming the valid ones."""
    if style not in THOUGHT_STYLES:
        raise ValueError(f"thought_style must be one of {', '.join(THOUGHT_STYLES)}, got {style!r}")
    return style


def spells(style: str, family: str) -> bool:
    """Whether thoughts of `style` spell out the sums and differences of `family`'s derivations."""
    return family in SPELLED_FAMILIES[check_style(style)]


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
