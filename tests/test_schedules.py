"""Learning-rate schedules: Definition 1 and Theorem 1 read with eta_k (docs/schedules.md).

References independent of gamma_theory: a numpy SGD with the schedule, the closed-form per-step
gamma of least squares, and Theorem 1's quantities computed by brute force in float64 from the
iterates alone. A constant schedule reduces bitwise to the constant-lr checkers, and reading a
scheduled path with the constant lr gives a wrong verdict (the tests that fail if eta_k is ignored).
"""

import dataclasses
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from gamma_theory import check_trace, definition_1, load_trace, rate_bound, recording_identity, trace_from_iterates
from gamma_theory import identity as I
from gamma_theory import problems as P
from gamma_theory import schedules as S
from gamma_theory.trace import Trace, TraceError

#: GPCHECK_SCHEDULE_EXAMPLES=N multiplies every property test's examples by N (default 1)
SCALE = int(os.environ.get("GPCHECK_SCHEDULE_EXAMPLES", "1"))
SETTINGS = settings(max_examples=20 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- independent references --------------------------------------------------------------------
def numpy_sgd(X, y, theta0, batches, eta):
    """SGD on least squares with eta_k per step: every iterate, no torch, no gamma_theory."""
    thetas = [theta0]
    for k, (_, idx) in enumerate(batches):
        r = X[idx] @ thetas[-1] - y[idx]
        thetas.append(thetas[-1] - eta[k] * X[idx].T @ r / len(idx))
    return np.array(thetas)


def brute_force(X, y, thetas, batches, eta, star):
    """Every quantity of Definition 1 and Theorem 1 under a schedule, from the iterates alone."""
    K = len(batches)
    loss = np.array([0.5 * np.mean((X[idx] @ thetas[k] - y[idx]) ** 2) for k, (_, idx) in enumerate(batches)])
    loss_star = np.array([0.5 * np.mean((X[idx] @ star - y[idx]) ** 2) for _, idx in batches])
    U = (thetas[:-1] - thetas[1:]) / eta[:, None]
    a = thetas[:-1] - star
    inner = np.einsum("kd,kd->k", a, U)
    usq = np.einsum("kd,kd->k", U, U)
    dist = np.einsum("kd,kd->k", thetas - star, thetas - star)  # K+1 distances
    d0 = dist[0]
    gap = loss - loss_star
    num = inner - 0.5 * eta * usq
    gamma_k = num / (d0 * gap)
    epoch = np.array([e for e, _ in batches])
    ends = np.flatnonzero(np.append(np.diff(epoch) != 0, True)) + 1
    w_gap = np.array([np.sum(eta[:k] * gap[:k]) / np.sum(eta[:k]) for k in ends])
    sum_eta = np.array([np.sum(eta[:k]) for k in ends])
    return dict(loss=loss, gap=gap, num=num, gamma_k=gamma_k, dist=dist, d0=d0, ends=ends, w_gap=w_gap,
                sum_eta=sum_eta, K=K)


def make_schedule(kind, peak, steps, per_epoch):
    if kind == "step":
        return S.step_decay(peak, steps, every=2 * per_epoch, factor=0.3)
    if kind == "cosine":
        return S.cosine(peak, steps, floor=0.05 * peak)
    if kind == "warmup-cosine":
        return S.cosine(peak, steps, floor=0.0, warmup=per_epoch)
    raise AssertionError(kind)


def ls_scheduled(n, extra, b, frac, seed, epochs, kind):
    prob = P.least_squares(n=n, d=n + extra, batch_size=b, epochs=epochs, seed=seed)
    X, y = prob.data["X"], prob.data["y"]
    batches = P.cyclic_batches(n, b, epochs, seed)
    L_k = np.array([np.linalg.eigvalsh(X[idx] @ X[idx].T)[-1] / len(idx) for _, idx in batches])
    per_epoch = -(-n // b)
    eta = make_schedule(kind, frac * 2.0 / L_k.max(), len(batches), per_epoch)
    res = S.run_scheduled_path(prob, "sgd", eta, seed=seed)
    return prob, X, y, batches, L_k, eta, res


# -- (a) least squares with a schedule: closed form and float64 brute force --------------------
@SETTINGS
@given(n=st.integers(4, 20), extra=st.integers(1, 30), b=st.integers(1, 6), frac=st.floats(0.1, 0.95),
       seed=st.integers(0, 10_000), kind=st.sampled_from(["step", "cosine", "warmup-cosine"]))
def test_scheduled_least_squares_against_closed_form_and_brute_force(n, extra, b, frac, seed, kind):
    b = min(b, n)
    prob, X, y, batches, L_k, eta, res = ls_scheduled(n, extra, b, frac, seed, epochs=4, kind=kind)
    tr = res.trace
    assert not tr.constant_lr and np.array_equal(tr.eta, eta)
    # the path is SGD with eta_k: an independent numpy SGD gives the same iterates
    np.testing.assert_allclose(numpy_sgd(X, y, prob.theta0, batches, eta), res.thetas, rtol=1e-10, atol=1e-12)
    bf = brute_force(X, y, res.thetas, batches, eta, res.theta_star)
    assume(np.all(bf["gap"] > 1e-20))  # b = 1 can zero a residual exactly; its bound is then 0/0 noise
    # the closed form gamma_k = (2 - eta_k ||g_k||^2 / (2 loss_k)) / dist0_sq, from X, y and the iterates
    closed = np.empty(len(batches))
    for k, (_, idx) in enumerate(batches):
        r = X[idx] @ res.thetas[k] - y[idx]
        g = X[idx].T @ r / len(idx)
        closed[k] = (2.0 - eta[k] * g @ g / (r @ r / len(idx))) / bf["d0"]
    d1 = definition_1(tr)
    # as in test_least_squares: 1e-9 relative plus the float64 forward error of U_k from two iterates
    eps = np.finfo(float).eps
    norms = np.linalg.norm(res.thetas, axis=1)
    num_err = 16 * eps * np.sqrt(tr.dist_sq) * (norms[:-1] + norms[1:]) / eta
    tol = 1e-9 * np.abs(closed) + num_err / (tr.dist0_sq * tr.gap)
    assert np.all(np.abs(d1.per_step_gamma - closed) <= tol)
    np.testing.assert_allclose(S.ls_closed_form_gamma_scheduled(X, y, res.thetas, batches, eta, tr.dist0_sq),
                               closed, rtol=1e-12)
    np.testing.assert_allclose(d1.per_step_gamma, bf["gamma_k"], rtol=1e-9, atol=0)
    # the floor: gamma_k >= (2 - eta_k L_{B_k}) / dist0_sq with every eta_k < 2 / L_{B_k}
    floor = (2.0 - eta * L_k) / bf["d0"]
    assert np.all(closed >= floor * (1 - 1e-9))
    assert d1.holds and d1.gamma_max >= floor.min() * (1 - 1e-9)
    # Theorem 1 under the schedule
    rep = check_trace(tr)
    assert rep.distance.holds and np.all(np.diff(bf["dist"]) <= 1e-12 * bf["dist"][:-1])  # item 1
    rb = rep.rate
    assert rb.eta_weighted and rb.holds  # item 3, eta-weighted
    np.testing.assert_array_equal(rb.K, bf["ends"])
    np.testing.assert_allclose(rb.lhs, bf["w_gap"], rtol=1e-12)
    np.testing.assert_allclose(rb.rhs, 1.0 / (2.0 * d1.gamma_max * bf["sum_eta"]), rtol=1e-12)
    assert np.all(bf["w_gap"] <= 1.0 / (2.0 * d1.gamma_max * bf["sum_eta"]) * (1 + 1e-12))  # brute force too
    assert rep.identity.max_rel_residual <= 1e-12


# -- (c) the telescoped identity on a scheduled path -------------------------------------------
@pytest.mark.parametrize("kind", ["step", "cosine", "warmup-cosine"])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_telescoped_identity_on_a_scheduled_path(kind, opt):
    prob = P.least_squares(n=16, d=40, batch_size=4, epochs=6, seed=3)
    per_epoch, steps = 4, 24
    peak = prob.lr[opt]
    eta = make_schedule(kind, peak, steps, per_epoch)
    res = S.run_scheduled_path(prob, opt, eta, seed=3)
    tr = res.trace
    star, th = res.theta_star, res.thetas
    d0 = float((th[0] - star) @ (th[0] - star))
    dK = float((th[-1] - star) @ (th[-1] - star))
    # sum_k eta_k num_k = (||theta_0 - theta*||^2 - ||theta_K - theta*||^2) / 2, to float64 round-off
    lhs = float(np.sum(eta * (tr.inner - 0.5 * eta * tr.update_sq)))
    assert abs(lhs - (d0 - dK) / 2) <= 1e-12 * (d0 + float(np.sum(eta * np.abs(tr.inner))))
    assert recording_identity(tr).max_rel_residual <= 1e-12
    assert abs(I.end_dist_sq(tr) - dK) <= 1e-12 * d0
    si = I.speed_identity(tr)
    # the eta-weighted gamma_bar is what the end point alone predicts
    assert si.sum_eta_gap == pytest.approx(float(np.sum(eta * tr.gap)), rel=1e-12)
    assert si.rel_residual <= 1e-12
    assert si.predicted == pytest.approx((1 - dK / d0) / (2 * np.sum(eta * tr.gap)), rel=1e-12)
    assert si.to_dict()["eta_weighted"] is True


def test_least_squares_sgd_schedule_gamma_max_is_the_closed_form_minimum():
    """Step decay on least squares: gamma_max is min_k of the closed form, to 1e-9."""
    prob = P.least_squares(n=20, d=60, batch_size=4, epochs=5, seed=1)
    X, y = prob.data["X"], prob.data["y"]
    eta = S.step_decay(prob.lr["sgd"], 25, every=10, factor=0.5)
    res = S.run_scheduled_path(prob, "sgd", eta, seed=1)
    closed = S.ls_closed_form_gamma_scheduled(X, y, res.thetas, res.batches, eta, res.trace.dist0_sq)
    d1 = definition_1(res.trace)
    assert d1.holds and d1.gamma_max == pytest.approx(closed.min(), rel=1e-9)


# -- (d) ignoring eta_k gives the wrong numbers and the wrong verdict ----------------------------
def warmup_path():
    """Two steps in 2-D with theta* = 0: a warm-up step at eta_0 = 0.1 (a positive gap, an upper
    bound on gamma), then a step at the base eta_1 = 1 that moves a little away from theta* with a
    negative gap (a lower bound)."""
    eta = np.array([0.1, 1.0])
    th0 = np.array([1.0, 0.0])
    th1 = th0 - eta[0] * np.array([0.9, np.sqrt(0.19)])
    n1 = th1 / np.linalg.norm(th1)
    th2 = th1 - eta[1] * (-0.1 * n1 + 0.5 * np.array([-n1[1], n1[0]]))
    return np.array([th0, th1, th2]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), eta


def test_reading_a_warm_up_with_the_constant_lr_gives_the_wrong_verdict():
    thetas, loss, loss_star, eta = warmup_path()
    right = trace_from_iterates(thetas, loss, loss_star, 1.0, theta_star=np.zeros(2), eta=eta)
    r = definition_1(right)
    # by hand: upper bound num_0 / (d0 gap_0) = 0.9 - 0.1/2 * 1 = 0.85; lower bound 0.2211...
    assert r.holds and r.gamma_high == pytest.approx(0.85, rel=1e-14) and 0.2 < r.gamma_low < 0.25
    # recorded with the constant lr, U_k = (theta_k - theta_{k+1}) / lr is (eta_k / lr) times the
    # true U_k, and every per-step bound is scaled by eta_k / lr (docs/schedules.md): 0.085 < 0.221
    wrong = trace_from_iterates(thetas, loss, loss_star, 1.0, theta_star=np.zeros(2))
    w = definition_1(wrong)
    assert not w.holds
    np.testing.assert_allclose(w.per_step_gamma, eta / 1.0 * r.per_step_gamma, rtol=1e-14)
    # that reading is the exact path of another update, so the recording identity cannot see it
    assert recording_identity(wrong).holds
    # dropping the eta column of a scheduled trace breaks the recording identity instead
    dropped = dataclasses.replace(right, eta=None)
    assert not recording_identity(dropped).holds
    assert not check_trace(dropped).to_dict()["recording_identity"]["holds"]


def test_ignoring_the_schedule_misses_the_closed_form():
    """Cosine decay on least squares: read with the constant lr, the per-step gamma is
    (eta_k / lr) x the closed form, and gamma_max shrinks by the last steps' eta_k / lr."""
    prob = P.least_squares(n=20, d=60, batch_size=4, epochs=5, seed=2)
    X, y = prob.data["X"], prob.data["y"]
    lr = prob.lr["sgd"]
    eta = S.cosine(lr, 25, floor=0.01 * lr)
    res = S.run_scheduled_path(prob, "sgd", eta, seed=2)
    closed = S.ls_closed_form_gamma_scheduled(X, y, res.thetas, res.batches, eta, res.trace.dist0_sq)
    misread = trace_from_iterates(res.thetas, res.trace.loss, res.trace.loss_star, lr, epoch=res.trace.epoch,
                                  theta_star=res.theta_star)
    g_wrong = definition_1(misread).per_step_gamma
    g_right = definition_1(res.trace).per_step_gamma
    np.testing.assert_allclose(g_right, closed, rtol=1e-9)
    assert not np.allclose(g_wrong, closed, rtol=1e-3)
    np.testing.assert_allclose(g_wrong, eta / lr * closed, rtol=1e-9)
    assert definition_1(misread).gamma_max < 0.1 * definition_1(res.trace).gamma_max


# -- (b) a constant schedule reduces bitwise to the constant-lr checkers ------------------------
@st.composite
def traces(draw):
    n = draw(st.integers(1, 30))
    fl = lambda lo, hi: st.lists(st.floats(lo, hi, allow_nan=False), min_size=n, max_size=n)  # noqa: E731
    loss_star = np.array(draw(fl(0, 1)))
    gap = np.array(draw(fl(-0.5, 2)))
    epochs = np.sort(np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))))
    return Trace(loss=loss_star + gap, loss_star=loss_star, inner=np.array(draw(fl(-2, 5))),
                 update_sq=np.array(draw(fl(0, 10))), dist_sq=np.array(draw(fl(1e-3, 10))),
                 lr=draw(st.floats(1e-4, 2.0)), dist0_sq=draw(st.floats(1e-3, 10.0)), epoch=epochs,
                 sample_gap_max=None)


def _everything(t: Trace):
    with np.errstate(all="ignore"):
        rep = check_trace(t)
        d1 = rep.definition_1
        return (json.dumps(rep.to_dict(), sort_keys=True), d1.per_step_gamma.tobytes(),
                json.dumps(I.speed_identity(t, d1.gamma_max).to_dict(), sort_keys=True),
                json.dumps(I.bound_quantiles(t), sort_keys=True), json.dumps(I.prefix_gammas(t).to_dict()),
                repr(I.end_dist_sq(t)), repr(rate_bound(t, 0.37)))


@settings(max_examples=150 * SCALE, deadline=None)
@given(t=traces())
def test_a_constant_eta_column_reduces_bitwise_to_the_constant_lr_checkers(t):
    same = dataclasses.replace(t, eta=np.full(len(t), t.lr))
    assert same.constant_lr and same.step_lr == t.lr
    assert _everything(same) == _everything(t)


@settings(max_examples=60 * SCALE, deadline=None)
@given(t=traces(), data=st.data())
def test_scheduled_checkers_agree_with_their_definitions(t, data):
    """On any trace with eta_k: num_k and the rate bound are the formulas of docs/schedules.md."""
    eta = np.array(data.draw(st.lists(st.floats(1e-3, 2.0), min_size=len(t), max_size=len(t))))
    assume(not (eta == t.lr).all())
    s = dataclasses.replace(t, eta=eta)
    with np.errstate(all="ignore"):
        d1 = definition_1(s)
        num = s.inner - 0.5 * eta * s.update_sq
        gap = s.loss - s.loss_star
        exp = np.where(gap != 0, num / (s.dist0_sq * gap), np.nan)
        np.testing.assert_array_equal(d1.per_step_gamma, exp)
        # the verdict from the bounds by brute force: every upper bound positive, above every lower bound
        up, lo, zero = gap > 0, gap < 0, gap == 0
        feasible = (not (up & (num <= 0)).any() and not (zero & (num < 0)).any()
                    and (exp[up].min() if up.any() else np.inf) >= (exp[lo].max() if lo.any() else -np.inf))
        assert d1.holds == feasible
        rb = rate_bound(s, 0.5)
    ends = np.array(rb.K)
    np.testing.assert_allclose(rb.lhs, [np.sum(eta[:k] * gap[:k]) / np.sum(eta[:k]) for k in ends], rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(rb.rhs, [1.0 / (2 * 0.5 * np.sum(eta[:k])) for k in ends], rtol=1e-14)


@settings(max_examples=30 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=traces())
def test_a_constant_schedule_writes_the_constant_lr_file_byte_for_byte(tmp_path, t):
    a = t.save(tmp_path / "plain")
    b = dataclasses.replace(t, eta=np.full(len(t), t.lr)).save(tmp_path / "eta")
    assert a.read_bytes() == b.read_bytes()
    assert load_trace(b).eta is None


# -- the trace file ------------------------------------------------------------------------------
def test_scheduled_trace_round_trip_and_schema(tmp_path):
    thetas, loss, loss_star, eta = warmup_path()
    t = trace_from_iterates(thetas, loss, loss_star, 1.0, theta_star=np.zeros(2), eta=eta)
    back = load_trace(t.save(tmp_path / "s"))
    np.testing.assert_array_equal(back.eta, eta)
    assert _everything(back) == _everything(t)
    for bad, msg in [(np.array([0.1]), "rows"), (np.array([0.1, 0.0]), "positive"),
                     (np.array([0.1, -1.0]), "positive"), (np.array([np.nan, 1.0]), "positive")]:
        with pytest.raises(TraceError, match=msg):
            dataclasses.replace(t, eta=bad).validate()
    # a file with a malformed eta column is refused with one line naming it
    arrays = dict(np.load(tmp_path / "s.npz"))
    for bad, msg in [(np.array([0.1, 1.0, 1.0]), "unequal lengths"), (np.array([[0.1, 1.0]]), "1-D"),
                     (np.array([0.1, -1.0]), "positive")]:
        np.savez(tmp_path / "bad.npz", **{**arrays, "eta": bad})
        with pytest.raises(TraceError, match=msg):
            load_trace(tmp_path / "bad.npz")


def test_schedules_are_positive_and_shaped():
    assert np.array_equal(S.constant(0.1, 3), [0.1, 0.1, 0.1])
    np.testing.assert_allclose(S.step_decay(1.0, 6, every=2, factor=0.5), [1, 1, 0.5, 0.5, 0.25, 0.25])
    c = S.cosine(1.0, 10, floor=0.0)
    assert c[0] == 1.0 and np.all(np.diff(c) < 0) and c[-1] > 0
    w = S.cosine(1.0, 10, warmup=3)
    np.testing.assert_allclose(w[:3], [0.25, 0.5, 0.75])
    assert w[3] == 1.0
    assert np.all(w > 0)
    prob = P.least_squares(n=8, d=20, batch_size=4, epochs=2, seed=0)
    with pytest.raises(ValueError, match="rates for"):
        S.run_scheduled_path(prob, "sgd", S.constant(0.1, 3))
    with pytest.raises(ValueError, match="positive"):
        S.run_scheduled_path(prob, "sgd", np.array([0.1, 0.0, 0.1, 0.1]))


def test_a_constant_schedule_is_the_constant_lr_run():
    """run_scheduled_path with eta_k = lr is run_path: the same trace, bit for bit."""
    prob = P.least_squares(n=12, d=30, batch_size=4, epochs=3, seed=5)
    lr = prob.lr["momentum"]
    a = P.run_path(prob, "momentum", seed=5).trace
    b = S.run_scheduled_path(prob, "momentum", S.constant(lr, 9), seed=5).trace
    assert b.eta is None
    for name in ("loss", "loss_star", "inner", "update_sq", "dist_sq", "grad_inner", "grad_sq", "sample_gap_max"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert _everything(a) == _everything(b)


def test_rate_bound_by_hand():
    """Item 3 with eta_k on numbers exact in binary: sum eta_k gap_k / H_K <= 1 / (2 gamma H_K)."""
    t = Trace(loss=[1.0, 2.0, 0.5, 0.25], loss_star=[0.0, 0.0, 0.0, 0.0], inner=[4.0, 4.0, 4.0, 4.0],
              update_sq=[1.0, 1.0, 1.0, 1.0], dist_sq=[8.0, 6.0, 5.0, 4.5], lr=0.5, dist0_sq=8.0,
              epoch=[0, 0, 1, 1], eta=[0.5, 0.25, 0.125, 0.125])
    rb = rate_bound(t, 0.25)
    # epoch 0: sum eta gap = 0.5 + 0.5 = 1, H = 0.75; epoch 1: + 0.0625 + 0.03125, H = 1
    assert rb.K == [2, 4] and rb.eta_weighted
    assert rb.lhs == [1.0 / 0.75, 1.09375]
    assert rb.rhs == [1.0 / (2 * 0.25 * 0.75), 2.0]
    assert rb.holds and rb.to_dict()["eta_weighted"] is True
    # the constant-lr reading of the same columns: mean gap <= 1 / (2 lr gamma K)
    c = rate_bound(dataclasses.replace(t, eta=None), 0.25)
    assert c.lhs == [1.5, 0.9375] and c.rhs == [2.0, 1.0] and "eta_weighted" not in c.to_dict()


@SETTINGS
@given(eta_s=st.lists(st.floats(0.01, 1.9), min_size=1, max_size=40), seed=st.integers(0, 1000),
       d=st.integers(1, 6))
def test_one_sample_least_squares_in_closed_form(eta_s, seed, d):
    """One sample x, l(theta) = (x^T theta - y)^2 / 2, any schedule with eta_k ||x||^2 < 2: the whole
    path is a closed form. With s = ||x||^2 and r_k the residual, r_{k+1} = (1 - eta_k s) r_k,
    theta_k - theta* = (r_k / s) x, and so gamma_k = (2 - eta_k s) / D0, d_k = D0 prod_{j<k} (1 - eta_j s)^2,
    and sum_{k<K} eta_k gap_k = (s D0 / 2) sum_{k<K} eta_k prod_{j<k} (1 - eta_j s)^2."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d) + 0.1
    s = float(x @ x)
    eta = np.array(eta_s) / s  # eta_k s in [0.01, 1.9]
    K = len(eta)
    r0 = 1.5
    shrink = np.concatenate([[1.0], np.cumprod(1 - eta * s)])  # r_k / r_0, k = 0..K
    star = np.zeros(d)  # theta* = 0 keeps theta_k - theta* exact even when r_k is tiny (eta_k s near 1)
    thetas = star + np.outer(r0 * shrink / s, x)
    loss = 0.5 * (r0 * shrink[:-1]) ** 2
    t = trace_from_iterates(thetas, loss, np.zeros(K), float(eta[0]), epoch=np.arange(K), theta_star=star, eta=eta)
    D0 = r0**2 / s
    assert t.dist0_sq == pytest.approx(D0, rel=1e-13)
    assume(loss.min() > 1e-200)
    d1 = definition_1(t)
    np.testing.assert_allclose(d1.per_step_gamma, (2 - eta * s) / D0, rtol=1e-9)
    assert d1.holds and d1.gamma_max == pytest.approx((2 - eta.max() * s) / D0, rel=1e-9)
    rep = check_trace(t)
    assert rep.distance.holds and rep.identity.max_rel_residual < 1e-12
    np.testing.assert_allclose(t.dist_sq, D0 * shrink[:-1] ** 2, rtol=1e-9, atol=1e-300)
    ws = np.cumsum(eta * shrink[:-1] ** 2) * s * D0 / 2  # sum_{k<K} eta_k gap_k, closed form
    H = np.cumsum(eta)
    np.testing.assert_allclose(rep.rate.lhs, ws / H, rtol=1e-9)
    np.testing.assert_allclose(rep.rate.rhs, 1 / (2 * d1.gamma_max * H), rtol=1e-12)
    assert rep.rate.holds and rep.rate.eta_weighted == (not t.constant_lr)
    si = I.speed_identity(t, d1.gamma_max)
    assert si.gamma_bar == pytest.approx((1 - shrink[-1] ** 2) / (2 * ws[-1]), rel=1e-9)
    assert si.rel_residual < 1e-9


def test_reports_say_when_eta_k_was_read_per_step():
    thetas, loss, loss_star, eta = warmup_path()
    t = trace_from_iterates(thetas, loss, loss_star, 1.0, theta_star=np.zeros(2), eta=eta)
    d = check_trace(t).to_dict()
    assert d["definition_1"]["eta_per_step"] is True and d["theorem_1"]["rate_bound"]["eta_weighted"] is True
    c = check_trace(dataclasses.replace(t, eta=None)).to_dict()
    assert "eta_per_step" not in c["definition_1"] and "eta_weighted" not in c["theorem_1"]["rate_bound"]


def test_issue_22_symptom_a_cosine_read_with_the_constant_lr():
    """Issue 22's symptom on least squares: with a cosine to 1e-4 of the base rate, the constant-lr
    reading puts gamma_max near 1e-4 of the one read with eta_k, which sits on the closed-form
    floor side of 2 / dist0_sq like the constant-lr run."""
    prob = P.least_squares(n=40, d=120, batch_size=4, epochs=30, seed=0)
    lr = prob.lr["sgd"]
    eta = S.cosine(lr, 300, floor=1e-4 * lr)
    res = S.run_scheduled_path(prob, "sgd", eta, seed=0)
    t = res.trace
    right = definition_1(t).gamma_max * t.dist0_sq
    misread = trace_from_iterates(res.thetas, t.loss, t.loss_star, lr, epoch=t.epoch, theta_star=res.theta_star)
    wrong = definition_1(misread).gamma_max * t.dist0_sq
    const = P.run_path(prob, "sgd", seed=0).trace
    assert 1.0 < right < 2.0 and 1.0 < definition_1(const).gamma_max * const.dist0_sq < 2.0
    assert wrong < 3e-4 * right
