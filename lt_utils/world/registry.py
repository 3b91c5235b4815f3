"""The registry of families: :data:`FAMILIES`, their default difficulties, and
lookup by name.

It is the one module that imports every family, so the splits and the
verifier can reach all of them without depending on each family module.
"""

from __future__ import annotations

from lt_utils.world.algebra import _Linear, _Remainder
from lt_utils.world.arithmetic import _Addition, _Multiplication, _Subtraction
from lt_utils.world.conversion import _Conversion
from lt_utils.world.family import Family
from lt_utils.world.word import _Word


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
