"""The :class:`Family` protocol: what every problem family implements.

A family samples, renders, parses, derives and enumerates instances (tuples of
plain ints and strs); the base class adds the shared difficulty check, uid and
unit construction.  The small sampling/parsing helpers every family uses
(:func:`_canon_int`, :func:`_ri`, :func:`_pick`, :func:`_n_digit_range`) live
here too.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Sequence

import numpy as np

from lt_utils.world.units import Unit, _Solution


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

    def derive(self, inst: tuple, style: str = "compact") -> _Solution:
        """The ground-truth derivation; `style` (`units.THOUGHT_STYLES`) says how sums and differences are written."""
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

    def unit(self, inst: tuple, difficulty: int, style: str = "compact") -> Unit:
        sol = self.derive(inst, style)
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
