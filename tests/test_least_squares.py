"""Least squares: the checkers against the closed form (gamma_theory/problems.py, ls_closed_form_gamma), in float64."""

import numpy as np
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from gamma_theory import check_trace, definition_1
from gamma_theory import problems as P

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def numpy_sgd(X, y, theta0, batches, lr):
    """An independent SGD on least squares: every iterate, no torch."""
    thetas = [theta0]
    for _, idx in batches:
        r = X[idx] @ thetas[-1] - y[idx]
        thetas.append(thetas[-1] - lr * X[idx].T @ r / len(idx))
    return np.array(thetas)


def ls_path(n, extra, b, frac, seed, epochs):
    prob = P.least_squares(n=n, d=n + extra, batch_size=b, epochs=epochs, seed=seed)
    X, y = prob.data["X"], prob.data["y"]
    batches = P.cyclic_batches(n, b, epochs, seed)
    L = P.ls_batch_smoothness(X, batches)
    lr = frac * 2.0 / L
    res = P.run_path(prob, "sgd", seed=seed, lr=lr)
    return prob, X, y, batches, L, lr, res


@SETTINGS
@given(
    n=st.integers(4, 24),
    extra=st.integers(1, 40),
    b=st.integers(1, 8),
    frac=st.floats(0.05, 0.99),
    seed=st.integers(0, 10_000),
)
def test_per_step_gamma_equals_closed_form(n, extra, b, frac, seed):
    b = min(b, n)
    # With b = 1 and eta |x_max|^2 = 1 (frac = 1/2) one step zeroes that sample's residual
    # exactly; its later losses sit at round-off (1e-32), where the bound is 0/0 noise.
    assume(not (b == 1 and abs(frac - 0.5) < 1e-3))
    prob, X, y, batches, L, lr, res = ls_path(n, extra, b, frac, seed, epochs=4)
    # the path is SGD: an independent numpy SGD gives the same iterates (to round-off)
    np.testing.assert_allclose(numpy_sgd(X, y, prob.theta0, batches, lr), res.thetas, rtol=1e-10, atol=1e-12)
    # The closed form is computed from the path's iterates and X, y alone, not from the trace.
    expected = P.ls_closed_form_gamma(X, y, res.thetas, batches, lr, res.trace.dist0_sq)
    d1 = definition_1(res.trace)
    # Tolerance: 1e-9 relative, plus the float64 forward error of the measurement itself.
    # U_k comes from the difference of two stored iterates, off by about eps*(|theta_k|+|theta_k+1|),
    # so inner_k is off by up to |theta_k - theta*| times that, over eta. Late in a run,
    # theta_k - theta* is nearly orthogonal to U_k, and that bound can exceed 1e-9 of inner_k.
    th, eps = res.thetas, np.finfo(float).eps
    norms = np.linalg.norm(th, axis=1)
    num_err = 16 * eps * np.sqrt(res.trace.dist_sq) * (norms[:-1] + norms[1:]) / lr
    tol = 1e-9 * np.abs(expected) + num_err / (res.trace.dist0_sq * res.trace.gap)
    assert np.all(np.abs(d1.per_step_gamma - expected) <= tol)
    assert np.median(num_err / (res.trace.dist0_sq * res.trace.gap) / np.abs(expected)) < 1e-9  # rarely needed
    # the whole path obeys the principle with gamma >= (2 - eta L) / dist0_sq; b = 1 makes the
    # bound tight (the max-norm row gives equality), so allow each step its measurement tolerance
    assert d1.holds
    floor = (2.0 - lr * L) / res.trace.dist0_sq
    assert np.all(d1.per_step_gamma + tol >= floor * (1 - 1e-9))
    result = check_trace(res.trace)
    assert result.distance.holds and result.rate.holds and result.identity.holds


@SETTINGS
@given(
    n=st.integers(4, 16),
    extra=st.integers(1, 30),
    b=st.integers(1, 4),
    frac=st.floats(1.05, 1.6),
    seed=st.integers(0, 10_000),
)
def test_planted_violations_reported_exactly(n, extra, b, frac, seed):
    """With eta > 2/L the steps whose closed-form gamma is <= 0 are exactly the violating ones."""
    b = min(b, n)
    prob, X, y, batches, L, lr, res = ls_path(n, extra, b, frac, seed, epochs=3)
    expected_gamma = P.ls_closed_form_gamma(X, y, res.thetas, batches, lr, res.trace.dist0_sq)
    planted = np.flatnonzero(expected_gamma <= 0)
    d1 = definition_1(res.trace)
    np.testing.assert_array_equal(d1.violating_steps, planted)
    assert d1.holds == (planted.size == 0)
    if b == 1:
        # batch size 1: gamma_k = (2 - eta |x_i|^2) / dist0_sq, so the sample with the largest
        # row norm (eta |x|^2 = 2 frac > 2) violates at every visit, once per epoch
        assert planted.size >= 3
        worst = np.argmax(np.einsum("ij,ij->i", X, X))
        visits = [k for k, (_, idx) in enumerate(batches) if idx[0] == worst]
        assert set(visits) <= set(planted.tolist())


def test_ladder_rung_obeys_lower_bound():
    prob = P.least_squares()
    res = P.run_path(prob, "sgd")
    L = P.ls_batch_smoothness(prob.data["X"], res.batches)
    lr = prob.lr["sgd"]
    assert lr < 2 / L
    d1 = definition_1(res.trace)
    assert d1.holds and d1.gamma_max >= (2 - lr * L) / res.trace.dist0_sq
