"""The base corpus: what the shared base model reads before any stage trains it further.

Like the web text a pretrained model has read, it covers every family over a
range of difficulties, mostly as raw worksheets (answers without steps).  A
share of its documents (`worked_share`, 0 allowed) are single problems whose
working is written out in prose (:mod:`.worked`), never in the latent-thought
format.  It is drawn from its own hash split (``base``), so no instance of any
study split, and no evaluation problem, appears in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from lt_utils.world.units import Document
from lt_utils.world.family import _ri
from lt_utils.world.registry import FAMILIES, _family
from lt_utils.world.splits import _rng, _Sampler, split_pool_size
from lt_utils.world.worked import render_worked_unit

SPLIT = "base"


@dataclass(frozen=True)
class BaseDocument:
    """A base-corpus document: a raw worksheet, or (``worked``) one problem with its working in prose."""

    doc: Document
    worked: bool

    @property
    def text(self) -> str:
        return "".join(render_worked_unit(u) for u in self.doc.units) if self.worked else self.doc.text

    def to_dict(self) -> dict:
        return {**self.doc.to_dict(), "worked": self.worked, "text": self.text}


def difficulty_mix(families: Sequence[str], difficulty: Mapping[str, int] | None = None,
                   overrides: Mapping[str, Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """The difficulties the base corpus draws each family at, uniformly.

    `overrides` gives a family's list outright.  Otherwise a family is drawn at
    every difficulty it supports from 1 up to one above its study difficulty
    (`difficulty`, else its default): easier and slightly harder problems than
    the study's, as a broad corpus would hold.  Difficulties with no instance
    in the base split are left out.
    """
    difficulty, overrides = dict(difficulty or {}), dict(overrides or {})
    out = {}
    for name in families:
        fam = _family(name)
        if name in overrides:
            levels = tuple(fam.check_difficulty(d) for d in overrides[name])
            if not levels:
                raise ValueError(f"base difficulty of {name!r}: the list is empty")
        else:
            top = fam.check_difficulty(difficulty.get(name, fam.default_difficulty)) + 1
            levels = tuple(d for d in fam.difficulties if d <= top and split_pool_size(name, SPLIT, d) != 0)
        out[name] = levels
    return out


def generate_base_documents(n_docs: int, *, mix: Mapping[str, Sequence[int]], worked_share: float,
                            units_per_doc: tuple[int, int] = (3, 6), seed: int) -> list[BaseDocument]:
    """`n_docs` base documents; exactly round(worked_share · n_docs) of them worked, at seeded positions.

    Each unit's family is drawn uniformly, then its difficulty uniformly from
    the family's list in `mix`.  A worked document holds one problem (its
    prose is several times longer than the raw text), a raw one
    `units_per_doc` problems.
    """
    if not mix:
        raise ValueError("mix must name at least one family")
    if not 0 <= worked_share <= 1:
        raise ValueError(f"worked_share must be in [0, 1], got {worked_share}")
    lo, hi = (int(x) for x in units_per_doc)
    if lo < 1 or hi < lo:
        raise ValueError(f"units_per_doc must be (lo, hi) with 1 <= lo <= hi, got {units_per_doc!r}")
    samplers = [[_Sampler(FAMILIES[name], d, SPLIT, distinct=False) for d in levels]
                for name, levels in mix.items()]
    n_worked = round(worked_share * n_docs)
    worked = {int(i) for i in _rng(seed, SPLIT, "worked").permutation(n_docs)[:n_worked]}
    rng = _rng(seed, SPLIT, "documents")
    docs = []
    for i in range(int(n_docs)):
        n_units = 1 if i in worked else _ri(rng, lo, hi)
        units = []
        for _ in range(n_units):
            family = samplers[int(rng.integers(len(samplers)))]
            units.append(family[int(rng.integers(len(family)))].draw(rng))
        docs.append(BaseDocument(Document(f"{SPLIT}-{int(seed)}-{i:06d}", SPLIT, tuple(units)), i in worked))
    return docs
