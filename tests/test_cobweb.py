"""The cobweb's fixed points, stability and trajectories on constructed pairs of curves with known answers."""

import numpy as np
import pytest

from lt_utils.cobweb import Curve, composite, domain, fixed_points, staircase, trajectory


def _grid(fn, n=101):
    xs = np.linspace(0, 1, n)
    return Curve.of(xs, fn(xs))


def test_a_lifting_e_step_and_a_leaky_m_step_settle_where_the_composite_meets_the_identity():
    # M(c) = 0.8c + 0.1, E(s) = s: c* = 0.5, slope 0.8 (stable)
    fps = fixed_points(_grid(lambda s: s), _grid(lambda c: 0.8 * c + 0.1))
    assert len(fps) == 1
    assert fps[0].c == pytest.approx(0.5, abs=1e-4) and fps[0].slope == pytest.approx(0.8, abs=1e-3)
    assert fps[0].stable


def test_two_crossings_one_unstable_below_one_stable_above():
    # composite c -> c^2 + 0.21: fixed points 0.3 (slope 0.6, stable) and 0.7 (slope 1.4, unstable)
    e, m = _grid(lambda s: s, n=2001), _grid(lambda c: c ** 2 + 0.21, n=2001)
    fps = fixed_points(e, m)
    # M's measured 1.21 at c = 1 meets E held flat at its last point (1.0): the ceiling is a third, stable one
    assert [round(f.c, 3) for f in fps] == [0.3, 0.7, 1.0]
    assert fps[0].stable and not fps[1].stable and fps[2].stable
    assert fps[0].slope == pytest.approx(0.6, abs=1e-2) and fps[1].slope == pytest.approx(1.4, abs=1e-2)
    # started between them the loop falls to the stable one; above the unstable one it climbs
    assert trajectory(e, m, 0.69, 60)[-1] == pytest.approx(0.3, abs=1e-3)
    assert trajectory(e, m, 0.71, 5)[-1] > 0.71


def test_a_gain_above_one_everywhere_climbs_to_the_ceiling():
    e, m = _grid(lambda s: np.minimum(1.0, 1.25 * s)), _grid(lambda c: c)
    cs = trajectory(e, m, 0.2, 10)
    assert all(b >= a for a, b in zip(cs, cs[1:])) and cs[-1] == pytest.approx(1.0)
    fps = fixed_points(e, m, 0.05, 1.0)
    assert [round(f.c, 3) for f in fps] == [1.0] and fps[0].stable


def test_measured_points_interpolate_linearly_hold_flat_outside_and_average_repeats():
    c = Curve.of([0.2, 0.6, 0.6, float("nan")], [0.1, 0.4, 0.6, 0.9])
    assert c.x == (0.2, 0.6) and c.y == (0.1, 0.5)
    assert c(0.4) == pytest.approx(0.3) and c(0.0) == 0.1 and c(1.0) == 0.5
    with pytest.raises(ValueError):
        Curve.of([float("nan")], [0.1])


def test_the_domain_is_where_both_maps_rest_on_measurements():
    m = Curve.of([0.2, 0.9], [0.1, 0.8])     # M spans c in [0.2, 0.9], s = c - 0.1
    e = Curve.of([0.3, 0.8], [0.4, 0.9])     # E spans s in [0.3, 0.8]
    lo, hi = domain(e, m)
    assert lo == pytest.approx(0.4, abs=1e-3) and hi == pytest.approx(0.9, abs=1e-3)
    assert composite(e, m, 0.5) == pytest.approx(0.5)


def test_the_staircase_alternates_vertical_and_horizontal_moves():
    xs, ys = staircase([0.2, 0.5, 0.6])
    assert list(zip(xs, ys)) == [(0.2, 0.2), (0.2, 0.5), (0.5, 0.5), (0.5, 0.6), (0.6, 0.6)]


def test_the_selection_map_recovers_best_of_k_and_passes_through_its_ends():
    from lt_utils.cobweb import SelectionMap

    s = np.linspace(0.05, 0.95, 10)
    e = SelectionMap.fit(s, 1 - (1 - s) ** 4)        # best of 4 independent samples
    assert e.gamma == pytest.approx(4.0, rel=1e-3) and e.span == pytest.approx((0.05, 0.95))
    assert e(0.0) == 0.0 and e(1.0) == 1.0
    assert SelectionMap.fit(s, s).gamma == pytest.approx(1.0, rel=1e-3)   # no lift


def test_the_training_map_fits_retention_and_repair_and_the_cobweb_solves_it():
    from lt_utils.cobweb import SelectionMap, TrainingMap

    c = np.array([0.1, 0.4, 0.9])
    m = TrainingMap.fit(c, 0.8 * c + 0.1)
    assert (m.a, m.b) == (pytest.approx(0.1), pytest.approx(0.8)) and m(2.0) == 1.0
    e = SelectionMap(1.0, (0.0, 1.0))
    (fp,) = fixed_points(e, m)
    assert fp.c == pytest.approx(0.5, abs=1e-4) and fp.slope == pytest.approx(0.8, abs=1e-3)
    one = TrainingMap.fit([0.5, 0.5], [0.4, 0.3])   # a single setting: retention only
    assert (one.a, one.b) == (0.0, pytest.approx(0.7))
