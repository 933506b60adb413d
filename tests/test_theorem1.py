"""Theorem 1 tested numerically: paths built to satisfy Definition 1, and paths built to break it."""

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from gamma_theory import check_trace, definition_1, trace_from_iterates

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def principled_path(seed, d, steps, lr, gamma, allow_negative_gap=False, flip_step=None):
    """A path with theta* = 0 that satisfies inequality (2) for ``gamma`` by construction.

    U_k = s_k (theta_k - theta*) / lr + small noise gives num_k > 0; the gap is then chosen as
    u_k * num_k / (gamma * dist0_sq) with u_k in [0, 1] (or negative, when allowed). At
    ``flip_step`` the update points away from theta* (s < 0), which breaks the principle there.
    """
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(d)
    dist0_sq = float(theta @ theta)
    thetas, loss, loss_star = [theta], [], []
    for k in range(steps):
        a = thetas[-1]
        s = -0.3 if k == flip_step else rng.uniform(0.05, 0.9)
        w = rng.standard_normal(d) * 1e-3 * np.linalg.norm(a) / lr
        U = s * a / lr + w
        num = a @ U - 0.5 * lr * U @ U
        if k == flip_step:
            u = rng.uniform(0.1, 1.0)
            gap = u * abs(num) / (gamma * dist0_sq)  # positive gap, negative num: broken
        else:
            assert num > 0
            lo = -1.0 if allow_negative_gap else 0.0
            gap = rng.uniform(lo, 1.0) * num / (gamma * dist0_sq)
        star = rng.uniform(0, 1) * abs(gap)  # same scale as the gap, so no digits are lost
        loss.append(star + gap)
        loss_star.append(star)
        thetas.append(a - lr * U)
    epoch = np.arange(steps) // 5
    return trace_from_iterates(np.array(thetas), np.array(loss), np.array(loss_star), lr,
                               epoch=epoch, theta_star=np.zeros(d))


@SETTINGS
@given(seed=st.integers(0, 10**6), d=st.integers(2, 30), steps=st.integers(5, 60),
       lr=st.floats(1e-3, 1.0), gamma=st.floats(1e-3, 10.0))
def test_definition_1_implies_items_1_and_3(seed, d, steps, lr, gamma):
    tr = principled_path(seed, d, steps, lr, gamma)
    res = check_trace(tr)
    assert res.definition_1.holds
    assert res.definition_1.gamma_max >= gamma * (1 - 1e-9)
    assert res.distance.holds, res.distance
    assert res.rate.holds, res.rate
    # the theorem at the gamma the path was built for, too
    assert check_trace(tr, gamma=gamma).rate.holds
    assert res.identity.holds


@SETTINGS
@given(seed=st.integers(0, 10**6), d=st.integers(2, 30), steps=st.integers(5, 60),
       lr=st.floats(1e-3, 1.0), gamma=st.floats(1e-3, 10.0))
def test_item_3_needs_only_definition_1(seed, d, steps, lr, gamma):
    """Negative gaps (theta* not a minimizer of every batch) leave item 3 intact (eq. 5)."""
    tr = principled_path(seed, d, steps, lr, gamma, allow_negative_gap=True)
    res = check_trace(tr, gamma=gamma)
    assert definition_1(tr).holds
    assert res.rate.holds


@SETTINGS
@given(seed=st.integers(0, 10**6), d=st.integers(2, 30), steps=st.integers(5, 60),
       lr=st.floats(1e-3, 1.0), gamma=st.floats(1e-3, 10.0), where=st.floats(0, 1))
def test_broken_path_reported_where_it_breaks(seed, d, steps, lr, gamma, where):
    j = min(int(where * steps), steps - 1)
    tr = principled_path(seed, d, steps, lr, gamma, flip_step=j)
    res = check_trace(tr)
    assert not res.definition_1.holds
    assert res.definition_1.violating_steps.tolist() == [j]
    assert not res.distance.holds
    assert res.distance.first_steps == [j]
    assert res.rate.holds is None  # no gamma > 0 to state the bound with


def test_rate_bound_detects_a_too_large_gamma():
    tr = principled_path(1, 5, 40, 0.1, 1.0)
    res = check_trace(tr)
    # at 1000x the largest feasible gamma the bound is far too tight for the path
    assert not check_trace(tr, gamma=1000 * res.definition_1.gamma_max).rate.holds


def test_identity_catches_a_corrupted_recording():
    tr = principled_path(2, 5, 20, 0.1, 1.0)
    assert check_trace(tr).identity.holds
    tr.inner[7] *= 1.001
    ident = check_trace(tr).identity
    assert not ident.holds and ident.worst_step == 7
