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
when the composite's slope there is below 1).

Each map is known only at the points measured, and one M-step is one noisy
draw (an M-step can miss a family's learning threshold), so the maps are
*fitted*, each with the fewest parameters its shape needs:

* E(s) = 1 − (1 − s)^γ: through (0, 0) and (1, 1), γ = 1 is no lift, and
  γ = K is the best of K independent samples (selection can do no better);
* M(c) = a + b·c, clipped to [0, 1]: retention b and repair a.

`Curve` (linear between measured points) stays for exact checks.  Fixed
points are read only inside the range both maps were measured on
(`domain`); a loop's own trajectory is predicted from maps fitted without
its points (`lt_utils.sweeps.cobweb_map`), so the comparison is out of
sample.
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
class SelectionMap:
    """The E-step map fitted as E(s) = 1 − (1 − s)^γ (least squares over γ), with the span of s measured."""

    gamma: float
    span: tuple[float, float]

    @classmethod
    def fit(cls, xs: Sequence[float], ys: Sequence[float]) -> "SelectionMap":
        x, y = _finite(xs, ys)
        grid = np.exp(np.linspace(np.log(0.25), np.log(64.0), 4001))
        err = [float(np.sum((1 - (1 - x) ** g - y) ** 2)) for g in grid]
        return cls(float(grid[int(np.argmin(err))]), (float(x.min()), float(x.max())))

    def __call__(self, s):
        return 1.0 - (1.0 - np.clip(s, 0.0, 1.0)) ** self.gamma


@dataclass(frozen=True)
class TrainingMap:
    """The M-step map fitted as M(c) = a + b·c (least squares), clipped to [0, 1], with the span of c measured."""

    a: float
    b: float
    span: tuple[float, float]

    @classmethod
    def fit(cls, xs: Sequence[float], ys: Sequence[float]) -> "TrainingMap":
        x, y = _finite(xs, ys)
        if len(np.unique(x)) < 2:   # one setting measured: no slope to fit, retention = the measured ratio
            c, v = float(np.mean(x)), float(np.mean(y))
            return cls(0.0, v / c if c > 0 else 0.0, (c, c))
        b, a = np.polyfit(x, y, 1)
        return cls(float(a), float(b), (float(x.min()), float(x.max())))

    def __call__(self, c):
        return np.clip(self.a + self.b * np.asarray(c, dtype=float), 0.0, 1.0)


def _finite(xs, ys) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(list(xs), dtype=float), np.asarray(list(ys), dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        raise ValueError("a map needs at least one finite point")
    return x[keep], y[keep]


@dataclass(frozen=True)
class FixedPoint:
    c: float
    slope: float          # d/dc of E(M(c)) at the crossing

    @property
    def stable(self) -> bool:
        return abs(self.slope) < 1.0


def composite(e_map, m_map, c):
    """c_{t+1} = E(M(c_t))."""
    return e_map(m_map(c))


def domain(e_map, m_map) -> tuple[float, float]:
    """The c where the composite rests on measurements: c within M's span and M(c) within E's span."""
    lo, hi = m_map.span
    grid = np.linspace(lo, hi, 2001)
    s = m_map(grid)
    ok = grid[(s >= e_map.span[0] - 1e-12) & (s <= e_map.span[1] + 1e-12)]
    return (float(ok.min()), float(ok.max())) if len(ok) else (lo, lo)


def fixed_points(e_map, m_map, lo: float = 0.0, hi: float = 1.0, n: int = 20001) -> list[FixedPoint]:
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


def trajectory(e_map, m_map, c0: float, steps: int) -> list[float]:
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


def fit_maps(kind: Sequence[str], x: Sequence[float], y: Sequence[float], keep=None):
    """(E, M) fitted to the points of kind 'E' and 'M' (those with `keep` True, if given); None where a map has none."""
    kind, x, y = np.asarray(kind), np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.ones(len(kind), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    e, m = keep & (kind == "E"), keep & (kind == "M")
    return (SelectionMap.fit(x[e], y[e]) if e.any() else None, TrainingMap.fit(x[m], y[m]) if m.any() else None)


def loop_predictions(kind, source, x, y) -> dict[str, dict]:
    """Each loop (rows of kind 'loop': x = iteration, y = c_t) beside the trajectory predicted from its c_1
    by maps fitted *without* that loop's own points: {source: {"measured": [...], "predicted": [...]}}."""
    kind, source = np.asarray(kind), np.asarray(source)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out = {}
    for src in dict.fromkeys(source[kind == "loop"]):
        rows = (kind == "loop") & (source == src)
        cs = [float(v) for _, v in sorted(zip(x[rows], y[rows]))]
        e, m = fit_maps(kind, x, y, keep=source != src)
        pred = trajectory(e, m, cs[0], len(cs) - 1) if e is not None and m is not None else None
        out[str(src)] = {"measured": cs, "predicted": pred}
    return out
