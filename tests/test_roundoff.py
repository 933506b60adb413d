"""Verdicts at round-off: Definition 1 against an exact rational reference.

The columns are float64 numbers; taken as exact rationals, they decide inequality (2) exactly.
The float64 checker may decide a step differently only where ``num`` sits within round-off of zero,
or where two binding bounds tie within their round-off: such steps must be listed as undecidable,
and the verdict on the other steps must be exactly the rational one."""

from fractions import Fraction as Fr

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gamma_theory import Trace, definition_1


def exact_holds(t: Trace, keep=None) -> bool:
    """Definition 1 in rational arithmetic on the float64 values of the columns."""
    h, d0 = Fr(t.lr) / 2, Fr(t.dist0_sq)
    high = low = None
    for k in range(len(t)) if keep is None else np.flatnonzero(keep):
        num = Fr(t.inner[k]) - h * Fr(t.update_sq[k])
        gap = Fr(t.loss[k]) - Fr(t.loss_star[k])
        if gap == 0:
            if num < 0:
                return False
            continue
        bound = num / (d0 * gap)
        if gap > 0:
            if num <= 0:
                return False
            high = bound if high is None else min(high, bound)
        else:
            low = bound if low is None else max(low, bound)
    return (high is None or high > 0) and (high is None or low is None or high >= low)


@st.composite
def edge_traces(draw):
    """Traces whose steps sit on the edge: ``inner`` within a few ulps of ``eta/2 * update_sq``,
    lower and upper bounds that nearly tie, gaps of both signs and zero."""
    n = draw(st.integers(1, 8))
    lr = draw(st.sampled_from([0.1, 0.05, 0.3, 1e-3]))
    us = np.array(draw(st.lists(st.floats(1e-3, 1e3), min_size=n, max_size=n)))
    ulps = np.array(draw(st.lists(st.integers(-6, 6), min_size=n, max_size=n)))
    edge = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    base = 0.5 * lr * us
    inner = np.where(edge, base + ulps * np.spacing(base),
                     np.array(draw(st.lists(st.floats(-10, 10), min_size=n, max_size=n))))
    loss = np.array(draw(st.lists(st.floats(0.5, 2.0), min_size=n, max_size=n)))
    kind = draw(st.lists(st.sampled_from(["pos", "neg", "zero", "tiny"]), min_size=n, max_size=n))
    d = np.array([{"pos": 0.3, "neg": -0.3, "zero": 0.0, "tiny": 2.3e-16}[x] for x in kind])
    loss_star = loss - d * loss
    return Trace(loss=loss, loss_star=loss_star, inner=inner, update_sq=us, dist_sq=np.ones(n), lr=lr,
                 dist0_sq=draw(st.sampled_from([1.0, 3.7, 0.01])))


@settings(max_examples=int(__import__("os").environ.get("GPCHECK_FUZZ_EXAMPLES", "300")), deadline=None)
@given(t=edge_traces())
def test_float_verdict_differs_from_exact_only_through_listed_undecidable_steps(t):
    r = definition_1(t)
    exact = exact_holds(t)
    if r.holds != exact:
        assert r.undecidable_steps.size > 0
    keep = ~np.isin(t.step, r.undecidable_steps)
    assert r.holds_without_undecidable == exact_holds(t, keep)


def test_a_fail_that_rests_on_a_rounding_says_so(tmp_path):
    """num exactly 2e-18 > 0 in rationals, but 0 in float64: the float verdict is FAIL (a step with
    num <= 0 and a positive gap), and it rests on one undecidable step."""
    lr, us = 0.1, 1.0
    inner = 0.5 * lr * us  # the float value 0.05; exact h * us equals it, so num = 0 exactly here
    t = Trace(loss=[1.0, 1.0], loss_star=[0.5, 0.5], inner=[inner, 1.0], update_sq=[us, 1.0], dist_sq=[1, 1],
              lr=lr, dist0_sq=1.0)
    r = definition_1(t)
    assert not r.holds and r.undecidable_steps.tolist() == [0]
    assert r.holds_without_undecidable and r.rests_on_undecidable
    d = r.to_dict()
    assert d["n_undecidable"] == 1 and d["rests_on_undecidable"] is True
    # `gpcheck check` says it too
    from click.testing import CliRunner

    from validation.cli import main

    path = t.save(tmp_path / "edge")
    res = CliRunner().invoke(main, ["check", str(path)])
    assert res.exit_code == 0, res.output
    assert "1 step(s) undecidable at float64" in res.output and "rests on them alone" in res.output


def test_clearly_decided_paths_have_no_undecidable_steps():
    t = Trace(loss=[2.0, 1.0], loss_star=[0.0, 0.0], inner=[2.0, 1.0], update_sq=[1.0, 1.0], dist_sq=[4.0, 2.2],
              lr=0.1, dist0_sq=4.0)
    r = definition_1(t)
    assert r.holds and r.undecidable_steps.size == 0 and not r.rests_on_undecidable
