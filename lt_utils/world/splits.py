"""Hash-based splits and the generation of documents and problems.

Splits
------
Every instance has a stable ``uid`` (sha1 of family + operands).  A second
sha1 of the uid places it in one of :data:`SPLITS`: eval 5%, valid 5%,
comparison/fresh/bootstrap 22.5% each, warmstart and base 11.25% each (the
base split, the corpus of the shared base model, is the upper half of what was
once a 22.5% warmstart bucket, so every other split kept its instances).
Generation draws random instances and keeps those of the requested split, so
splits are disjoint by instance.  Families whose instance space at the
requested difficulty is small (<= 60,000) are enumerated once and sampled
exactly from their split's pool.

At default difficulty three families have fewer than 300 evaluation
problems (exact pool sizes from :func:`split_pool_size`): ``multiplication``
(720 instances, 39 in eval), ``conversion`` (160 instances, 9 in eval) and
``linear`` (5,895 instances, 280 in eval).  Larger difficulties give more:
``multiplication`` 3 (7,200), ``conversion`` 2 (1,960) or 3 (19,960),
``linear`` 2 (52,037).  Every other family has thousands of evaluation
problems at its default.  :func:`generate_problems` raises ``ValueError``
naming the family when a split runs out of distinct instances.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from lt_utils.world.units import Document, Unit
from lt_utils.world.family import Family, _ri
from lt_utils.world.registry import FAMILIES, _family

SPLITS = ("comparison", "fresh", "warmstart", "bootstrap", "valid", "eval", "base")

# Buckets of the split hash, in basis points (cumulative upper bounds).
_SPLIT_BOUNDS = (
    ("eval", 500),
    ("valid", 1000),
    ("comparison", 3250),
    ("fresh", 5500),
    ("warmstart", 6625),
    ("base", 7750),
    ("bootstrap", 10000),
)
SPLIT_FRACTIONS = {
    name: (hi - lo) / 10000
    for (name, hi), lo in zip(_SPLIT_BOUNDS, [0] + [b for _, b in _SPLIT_BOUNDS[:-1]])
}

_ENUMERATE_MAX = 60_000  # instance spaces up to this size are sampled from exact pools
_MAX_MISSES = 5_000  # consecutive useless draws before rejection sampling gives up


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
