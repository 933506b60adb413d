"""Definition 1 on small hand-made traces whose answer is known by hand."""

import numpy as np
import pytest

from gamma_theory import Trace, definition_1, violations_at


def tr(num, gap, lr=0.0, dist0_sq=1.0):
    # with update_sq = 0 the numerator is exactly `inner`
    n = len(num)
    return Trace(loss=np.asarray(gap, float) + 1.0, loss_star=np.ones(n), inner=num,
                 update_sq=np.zeros(n), dist_sq=np.ones(n), lr=lr or 0.1, dist0_sq=dist0_sq)


def test_upper_and_lower_bounds():
    r = definition_1(tr(num=[2.0, 1.0, -1.0], gap=[1.0, 2.0, -1.0]))
    # upper bounds 2 and 0.5, lower bound 1 -> empty
    assert not r.holds
    assert r.gamma_high == 0.5 and r.gamma_low == 1.0
    assert r.own_infeasible_steps.size == 0
    assert r.violating_steps.tolist() == [1, 2]
    r = definition_1(tr(num=[2.0, 1.0, -0.2], gap=[1.0, 2.0, -1.0]))
    assert r.holds and r.gamma_low == pytest.approx(0.2) and r.gamma_max == 0.5


def test_zero_gap_steps():
    assert definition_1(tr(num=[1.0, 0.0], gap=[1.0, 0.0])).holds
    r = definition_1(tr(num=[1.0, -1e-9], gap=[1.0, 0.0]))
    assert not r.holds and r.violating_steps.tolist() == [1]
    assert r.n_zero == 1


def test_unbounded_gamma_and_share_positive():
    r = definition_1(tr(num=[1.0, 1.0], gap=[0.0, -1.0]))
    assert r.holds and r.gamma_max == np.inf
    assert r.to_dict()["gamma_max"] == "inf"
    r = definition_1(tr(num=[1.0, -1.0, 1.0, 1.0], gap=[1.0, 1.0, 1.0, 1.0]))
    assert r.share_positive == 0.75 and r.violating_steps.tolist() == [1]


def test_violations_at_a_given_gamma():
    t = tr(num=[2.0, 1.0], gap=[1.0, 2.0])
    assert violations_at(t, 0.4).size == 0
    assert violations_at(t, 0.6).tolist() == [1]
    assert violations_at(t, 2.5).tolist() == [0, 1]


def test_median_positive_gamma_is_a_median_of_upper_bounds_only():
    # upper bounds 1 and 3; a negative-gap step with num < 0 gives a positive *lower* bound 100
    r = definition_1(tr(num=[1.0, 3.0, -100.0], gap=[1.0, 1.0, -1.0]))
    assert r.to_dict()["median_positive_gamma"] == 2.0  # was 3.0 with the lower bound mixed in
