"""The loop as an iterated map: where do thought-quality iterations climb, and where do they settle?

One BoLT iteration is two measured maps (see `lt_utils.loop_diagnostics` for
the quantities):

* the **M-step map** s' = M(c): the share of a new generator's T = 1
  posterior samples that verify, after an M-step trained on thoughts of
  correctness c;
* the **E-step map** c' = E(s): the share of selected thoughts that verify,
  when single samples verify with probability s (importance resampling
  among K lifts it: λ = c'/s).

Their composition c_{t+1} = E(M(c_t)) is the loop.  Drawn against the
identity line it is a cobweb: where the composite lies above the line,
iterations climb; where it crosses, the loop settles (a crossing is stable
when the composite's slope there is below 1).  Each map is known only at
the points measured, so here it is the piecewise-linear interpolation of
those points, held flat beyond the outermost ones; fixed points are read
only inside the range both maps were measured on (`domain`), and everything
outside it is a guess the figure marks as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Curve:
    """A measured map: x → y at the points (x_i, y_i), linear between them, flat beyond them."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    @classmethod
    def of(cls, xs: Sequence[float], ys: Sequence[float]) -> "Curve":
        pts = sorted((float(a), float(b)) for a, b in zip(xs, ys) if np.isfinite(a) and np.isfinite(b))
        if not pts:
            raise ValueError("a curve needs at least one finite point")
        # points at the same x are averaged: repeated measurements of one setting
        merged: dict[float, list[float]] = {}
        for a, b in pts:
            merged.setdefault(a, []).append(b)
        return cls(tuple(merged), tuple(float(np.mean(v)) for v in merged.values()))

    def __call__(self, x):
        return np.interp(x, self.x, self.y)

    @property
    def span(self) -> tuple[float, float]:
        return self.x[0], self.x[-1]


@dataclass(frozen=True)
class FixedPoint:
    c: float
    slope: float          # d/dc of E(M(c)) at the crossing

    @property
    def stable(self) -> bool:
        return abs(self.slope) < 1.0


def composite(e_map: Curve, m_map: Curve, c):
    """c_{t+1} = E(M(c_t))."""
    return e_map(m_map(c))


def domain(e_map: Curve, m_map: Curve) -> tuple[float, float]:
    """The c where the composite rests on measurements: c within M's span and M(c) within E's span."""
    lo, hi = m_map.span
    grid = np.linspace(lo, hi, 2001)
    s = m_map(grid)
    ok = grid[(s >= e_map.span[0] - 1e-12) & (s <= e_map.span[1] + 1e-12)]
    return (float(ok.min()), float(ok.max())) if len(ok) else (lo, lo)


def fixed_points(e_map: Curve, m_map: Curve, lo: float = 0.0, hi: float = 1.0, n: int = 20001) -> list[FixedPoint]:
    """Crossings of E(M(c)) with c on [lo, hi], found on a fine grid and refined linearly, with their slopes."""
    grid = np.linspace(lo, hi, n)
    g = composite(e_map, m_map, grid) - grid
    out: list[FixedPoint] = []
    h = (hi - lo) / (n - 1)
    for i in range(n - 1):
        a, b = g[i], g[i + 1]
        if a == 0.0 or a * b < 0:
            c = grid[i] if a == 0.0 else grid[i] + h * a / (a - b)
            eps = max(h, 1e-6)
            slope = float((composite(e_map, m_map, min(hi, c + eps)) - composite(e_map, m_map, max(lo, c - eps)))
                          / (min(hi, c + eps) - max(lo, c - eps)))
            if not out or abs(out[-1].c - c) > 2 * h:
                out.append(FixedPoint(float(c), slope))
    if g[-1] == 0.0 and (not out or abs(out[-1].c - hi) > 2 * h):   # the grid's last point is not a left end
        out.append(FixedPoint(float(hi), float((g[-1] - g[-2]) / h + 1.0)))
    return out


def trajectory(e_map: Curve, m_map: Curve, c0: float, steps: int) -> list[float]:
    """The predicted c_0, c_1, …, c_steps of the loop started from thoughts of correctness c0."""
    cs = [float(c0)]
    for _ in range(steps):
        cs.append(float(composite(e_map, m_map, cs[-1])))
    return cs


def staircase(cs: Sequence[float]) -> tuple[list[float], list[float]]:
    """The cobweb's path for a trajectory: (c_t, c_t) → (c_t, c_{t+1}) → (c_{t+1}, c_{t+1}) → …"""
    xs, ys = [cs[0]], [cs[0]]
    for a, b in zip(cs, cs[1:]):
        xs += [a, b]
        ys += [b, b]
    return xs, ys
