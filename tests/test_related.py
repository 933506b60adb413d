"""The related path conditions: closed forms on least squares, and feasibility by brute force."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gamma_theory import Trace, definition_1
from gamma_theory import problems as P
from gamma_theory.related import alpha_beta, definition_1_gradient, regularity, related_conditions, rsi, \
    star_convex_path


@pytest.fixture(scope="module")
def ls_sgd():
    prob = P.least_squares(n=12, d=40, batch_size=3, epochs=20, seed=3)
    return prob, P.run_path(prob, "sgd", seed=3)


@pytest.fixture(scope="module")
def ls_gd():
    """Full-batch gradient descent: every step sees the whole data set."""
    prob = P.least_squares(n=12, d=40, batch_size=12, epochs=40, seed=4)
    return prob, P.run_path(prob, "sgd", seed=4)


def test_least_squares_gradient_inner_product_is_twice_the_loss(ls_sgd):
    """l_i = r_i^2 / 2 and theta* interpolates: <g_k, theta_k - theta*> = (1/b) sum r_i^2 = 2 l_k,
    so the path is star-convex with margin l_k, and alpha - beta is at most 2, exactly."""
    _, res = ls_sgd
    t = res.trace
    assert np.abs(t.loss_star).max() < 1e-20
    np.testing.assert_allclose(t.grad_inner, 2 * t.loss, rtol=1e-9)
    s = star_convex_path(t)
    assert s.holds and s.share == 1.0 and s.constants["min_margin"] == pytest.approx(t.gap.min(), rel=1e-6)
    ab = alpha_beta(t)  # loss_star = 0: beta buys nothing, and alpha - beta is at most 2
    assert ab.holds and ab.constants["rho_min"] == 0.0
    assert ab.constants["alpha"] - ab.constants["beta"] == pytest.approx(2.0, rel=1e-8)


def test_full_batch_rsi_and_regularity_lie_in_their_spectral_brackets(ls_gd):
    """theta_k - theta* stays in the row space of X, where H = X^T X / n has eigenvalues
    lambda_i(X X^T) / n: mu_k = a'Ha / a'a and (for SGD, U = g = Ha) num_k / dist_sq_k =
    a'(H - eta/2 H^2)a / a'a lie between the smallest and largest values on that spectrum."""
    prob, res = ls_gd
    X, t, n = prob.data["X"], res.trace, prob.n
    lam = np.linalg.eigvalsh(X @ X.T) / n
    eta = t.lr
    h = lam - eta / 2 * lam**2
    mu = rsi(t)
    assert mu.holds and lam.min() * (1 - 1e-9) <= mu.constants["mu_max"] <= lam.max() * (1 + 1e-9)
    reg = regularity(t)
    assert reg.holds and h.min() * (1 - 1e-9) <= reg.constants["gamma_max"] <= h.max() * (1 + 1e-9)
    # and exactly, step by step, from the iterates
    a = res.thetas[:-1] - res.theta_star
    exact_mu = np.einsum("kd,kd->k", a @ X.T, a @ X.T) / n / np.einsum("kd,kd->k", a, a)
    assert mu.constants["mu_max"] == pytest.approx(exact_mu.min(), rel=1e-9)


def test_definition_1_with_the_gradient_is_definition_1_for_plain_sgd(ls_sgd):
    _, res = ls_sgd
    t = res.trace
    np.testing.assert_allclose(t.grad_sq, t.update_sq, rtol=1e-9)
    g, d = definition_1_gradient(t), definition_1(t)
    assert g.holds == d.holds and g.constants["gamma_max"] == pytest.approx(d.gamma_max, rel=1e-8)


def test_momentum_gradient_is_not_its_update():
    prob = P.least_squares(n=12, d=40, batch_size=3, epochs=10, seed=3)
    t = P.run_path(prob, "momentum", seed=3).trace
    assert not np.allclose(t.grad_sq, t.update_sq, rtol=1e-3)
    assert [c.name for c in related_conditions(t)] == ["regularity", "star-convex path", "RSI", "alpha-beta",
                                                       "Definition 1 (gradient)"]


def test_without_gradient_columns_only_regularity_is_measured():
    t = Trace(loss=[1.0, 0.5], loss_star=[0.0, 0.0], inner=[1.0, 1.0], update_sq=[1.0, 1.0], dist_sq=[2.0, 1.0],
              lr=0.1, dist0_sq=2.0)
    out = {c.name: c for c in related_conditions(t)}
    assert out["regularity"].holds is True and out["regularity"].constants["gamma_max"] == pytest.approx(0.475)
    for name in ("star-convex path", "RSI", "alpha-beta", "Definition 1 (gradient)"):
        assert out[name].holds is None and "no gradient columns" in out[name].why


@st.composite
def grad_traces(draw):
    n = draw(st.integers(1, 12))
    f = st.floats(-3, 3, allow_nan=False, allow_infinity=False, allow_subnormal=False).map(lambda x: 0.0 if abs(x) < 1e-6 else x)
    pos = st.floats(1e-3, 5, allow_nan=False, allow_infinity=False)
    loss = np.array(draw(st.lists(pos, min_size=n, max_size=n)))
    ls = np.array(draw(st.lists(st.floats(0, 2).map(lambda x: 0.0 if x < 1e-6 else x), min_size=n, max_size=n)))
    return Trace(loss=loss, loss_star=ls, inner=draw(st.lists(f, min_size=n, max_size=n)),
                 update_sq=draw(st.lists(pos, min_size=n, max_size=n)), dist_sq=draw(st.lists(pos, min_size=n, max_size=n)),
                 lr=0.1, dist0_sq=1.0, grad_inner=draw(st.lists(f, min_size=n, max_size=n)),
                 grad_sq=draw(st.lists(pos, min_size=n, max_size=n)))


@settings(max_examples=300, deadline=None)
@given(grad_traces())
def test_largest_constants_are_feasible_and_largest(t):
    """Ratio conditions: the reported constant satisfies every step and 1% more breaks one."""
    for res, lhs in ((rsi(t), t.grad_inner), (regularity(t), t.inner - 0.5 * t.lr * t.update_sq)):
        c = next(iter(res.constants.values()))
        assert res.holds == (c is not None)
        if c is not None:
            assert (lhs >= c * t.dist_sq * (1 - 1e-12)).all() and not (lhs >= 1.01 * c * t.dist_sq).all()
        else:
            assert (lhs <= 0).any() and res.violating_steps.size == int((lhs <= 0).sum())


@settings(max_examples=200, deadline=None)
@given(grad_traces(), st.lists(st.tuples(st.floats(1e-3, 50), st.floats(0, 1)), min_size=40, max_size=40))
def test_alpha_beta_against_brute_force(t, points):
    """Points drawn in alpha > beta >= 0: every feasible one has beta / (alpha - beta) >= the
    reported rho_min, the reported (alpha, beta) is feasible, and when the checker says the
    condition fails no drawn point is feasible."""
    res = alpha_beta(t)

    def feasible(a, b, tol=1e-9):
        return a > b and (a * t.gap - b * t.loss <= t.grad_inner + tol * (1 + a * np.abs(t.gap) + b * t.loss)).all()

    found = [b / (a - b) for a, frac in points for b in [a * frac] if feasible(a, b, tol=-1e-9)]
    if found:
        assert res.holds and min(found) >= res.constants["rho_min"] * (1 - 1e-9) - 1e-12
    if res.holds and res.constants["alpha"] is not None:
        assert feasible(res.constants["alpha"], res.constants["beta"], tol=1e-9)
    else:
        assert not found


# -- the registry: one entry per condition -----------------------------------------------------------
def test_every_condition_is_one_complete_entry():
    from gamma_theory.related import CONDITIONS

    names = [c.name for c in CONDITIONS]
    assert len(set(names)) == len(names)
    for c in CONDITIONS:
        assert c.statement and c.note and c.constant and c.key and c.label and callable(c.check)


@pytest.fixture
def one_more_condition(monkeypatch):
    """A new related condition, added the way the registry says: one entry."""
    from gamma_theory import related

    def descent(trace):  # every step lowers the batch loss below the first one's (a toy condition)
        ok = trace.loss <= trace.loss[0]
        return related.ConditionResult("descent", bool(ok.all()), {"worst": float(trace.loss.max())},
                                       float(ok.mean()), len(trace))

    entry = related.Condition("descent", "l(theta_k; z_k) <= l(theta_0; z_0) at every step",
                              ": l(θ_k; z_k) <= l(θ_0; z_0) at every step (a test's condition)",
                              "the largest batch loss", "worst", "max loss", descent)
    monkeypatch.setattr(related, "CONDITIONS", related.CONDITIONS + (entry,))
    return entry


def test_a_new_condition_entry_reaches_the_report_table_and_note(one_more_condition, tmp_path):
    from test_deep_report import _suite_folder
    from validation.deep_report import build_report

    d = _suite_folder(tmp_path)
    rep = build_report(d)
    assert all(r["related"][-1]["condition"] == "descent" for r in rep["runs"] if "check" in r)
    md = (d / "report.md").read_text()
    section = md.split("## Related path conditions")[1]
    assert "*descent*: l(θ_k; z_k) <= l(θ_0; z_0) at every step (a test's condition)" in section
    header = next(line for line in section.splitlines() if line.startswith("| run |"))
    assert header.endswith("| Definition 1 (gradient) | descent |")
    row = next(line for line in section.splitlines() if line.startswith("| resnet18-all |"))
    assert row.split("|")[-2].strip().startswith("yes, max loss ")


def test_a_condition_the_registry_lacks_is_shown_not_dropped():
    from validation.util import conditions_table

    rows = conditions_table([("p", [{"condition": "from another version", "holds": False, "share": 0.5}])])
    assert rows[0].endswith("| from another version |") and rows[2].endswith("| no (50% of steps) |")
