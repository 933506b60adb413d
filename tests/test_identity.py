"""The gamma-speed identity and the readings of gamma that can fail, against independent
references: a float64 path built iterate by iterate, Definition 1 on truncated traces, and
angles of explicit vectors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gamma_theory import Trace, definition_1, trace_from_iterates
from gamma_theory.identity import bound_quantiles, directions, end_dist_sq, prefix_gammas, speed_identity


def _path(seed, n_steps=40, dim=6, lr=0.1, end_star=True, per_epoch=4, batch=2):
    """A least-squares SGD path in float64 with theta* = its last iterate (or a point past it)."""
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(8, dim)), rng.normal(size=8)
    thetas, losses, batches = [rng.normal(size=dim)], [], []
    for k in range(n_steps):
        i = rng.integers(0, 8, size=2) if batch < 8 else np.arange(8)
        r = X[i] @ thetas[-1] - y[i]
        losses.append(0.5 * float(np.mean(r**2)))
        batches.append(i)
        thetas.append(thetas[-1] - lr * X[i].T @ r / len(i))
    star = thetas[-1] if end_star else thetas[-1] + 0.3 * rng.normal(size=dim)
    loss_star = [0.5 * float(np.mean((X[i] @ star - y[i]) ** 2)) for i in batches]
    t = trace_from_iterates(np.array(thetas), losses, loss_star, lr, epoch=np.arange(n_steps) // per_epoch,
                            theta_star=star)
    return t, thetas, star


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_gamma_bar_is_the_reciprocal_of_the_accumulated_gap_when_theta_star_ends_the_path(seed, end_star):
    t, thetas, star = _path(seed, end_star=end_star)
    s = speed_identity(t)
    # independent reference: from the iterates themselves, not from the columns' algebra
    d0, dK = np.sum((thetas[0] - star) ** 2), np.sum((thetas[-1] - star) ** 2)
    sum_gap = float(np.sum(t.gap))
    num = t.inner - 0.5 * t.lr * t.update_sq
    brute_bar = float(np.sum(t.gap * (num / (d0 * t.gap))) / sum_gap)  # the gap-weighted mean of gamma_k
    assert s.gamma_bar == pytest.approx(brute_bar, rel=1e-10)
    assert s.predicted == pytest.approx((1 - dK / d0) / (2 * t.lr * sum_gap), rel=1e-10)
    assert s.rel_residual < 1e-9
    assert s.ends_at_star == end_star
    assert end_dist_sq(t) == pytest.approx(dK, rel=1e-9, abs=1e-12)
    if end_star:
        assert s.gamma_bar == pytest.approx(1 / (2 * t.lr * sum_gap), rel=1e-9)


def test_item_3_at_the_whole_run_is_implied_once_definition_1_holds_without_negative_gaps():
    for seed in range(200):
        t, _, _ = _path(seed, dim=12, lr=0.02, batch=8)  # full-batch gradient descent, over-parameterized
        d1 = definition_1(t)
        if d1.holds and (t.gap > 0).all():
            s = speed_identity(t, d1.gamma_max)
            assert s.gamma_max_over_bar <= 1 + 1e-12
            # and so Theorem 1 item 3 at K: mean gap <= 1 / (2 eta gamma_max K)
            assert np.mean(t.gap) <= 1 / (2 * t.lr * d1.gamma_max * len(t)) * (1 + 1e-12)
            return
    pytest.fail("no path obeyed Definition 1 with positive gaps")


def test_a_broken_recording_breaks_the_identity():
    t, _, _ = _path(3)
    t.inner = t.inner.copy()
    t.inner[5] *= 1.01  # one altered column entry
    assert speed_identity(t).rel_residual > 1e-6


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_prefix_gammas_equal_definition_1_on_each_truncated_path(seed):
    t, _, _ = _path(seed, n_steps=24, per_epoch=3)
    p = prefix_gammas(t)
    for e, k in zip(p.epochs, p.steps):
        cut = Trace(loss=t.loss[:k], loss_star=t.loss_star[:k], inner=t.inner[:k], update_sq=t.update_sq[:k],
                    dist_sq=t.dist_sq[:k], lr=t.lr, dist0_sq=t.dist0_sq, step=t.step[:k], epoch=t.epoch[:k])
        d1 = definition_1(cut)
        want = None if not d1.holds or not math.isfinite(d1.gamma_max) else d1.gamma_max * t.dist0_sq
        got = p.gamma_max_x_d0[e - 1]
        assert (got is None) == (want is None) and (got is None or got == pytest.approx(want, rel=1e-12))
        up = d1.per_step_gamma[cut.gap > 0]
        if up.size:
            assert p.median_x_d0[e - 1] == pytest.approx(np.median(up) * t.dist0_sq, rel=1e-12)
        else:  # no step with a positive gap yet: the paper's reading has nothing to take a median of
            assert p.median_x_d0[e - 1] is None
        assert p.epoch_loss[e - 1] == pytest.approx(np.mean(t.loss[k - 3:k]))


def test_bound_quantiles_leave_out_lower_bounds():
    t = Trace(loss=[2.0, 2.0, 0.5], loss_star=[1.0, 1.0, 1.0], inner=[1.0, 3.0, -5.0], update_sq=[0.0, 0.0, 0.0],
              dist_sq=[1.0, 1.0, 1.0], lr=0.1, dist0_sq=2.0)
    q = bound_quantiles(t, qs=(0.5,))
    assert q["min"] == 1.0 and q["q50"] == 2.0  # bounds 0.5 and 1.5 times dist0_sq 2; the lower bound 5 left out


def test_direction_angles_bound_the_angle_between_update_and_gradient():
    rng = np.random.default_rng(0)
    n, dim = 50, 5
    d = rng.normal(size=(n, dim))  # theta_k - theta*
    u, g = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    t = Trace(loss=np.ones(n), loss_star=np.zeros(n), inner=np.sum(d * u, 1), update_sq=np.sum(u * u, 1),
              dist_sq=np.sum(d * d, 1), lr=0.1, dist0_sq=1.0, grad_inner=np.sum(d * g, 1), grad_sq=np.sum(g * g, 1))
    out = directions(t)

    def ang(a, b):
        return np.degrees(np.arccos(np.clip(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1),
                                            -1, 1)))

    a_u, a_g, a_ug = ang(u, d), ang(g, d), ang(u, g)
    assert out.update_angle_median == pytest.approx(np.median(a_u))
    assert out.grad_angle_median == pytest.approx(np.median(a_g))
    lb = np.abs(a_u - a_g)
    assert (lb <= a_ug + 1e-9).all() and (a_ug <= a_u + a_g + 1e-9).all()  # the bounds the claim relies on
    assert out.gap_lower_bound_median == pytest.approx(np.median(lb))
    no_grad = directions(Trace(loss=np.ones(n), loss_star=np.zeros(n), inner=t.inner, update_sq=t.update_sq,
                               dist_sq=t.dist_sq, lr=0.1, dist0_sq=1.0))
    assert no_grad.grad_angle_median is None
