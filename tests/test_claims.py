"""Claims: each verdict follows from its numbers."""

import math

from validation.claims import FAIL, NA, PASS, RunNumbers, correlation_claim, order_claim, principle_claims


def rn(variant, gamma, speed, status="ok", network="net", d1=True, share=1.0, dist=True, strict=None):
    return RunNumbers(network, variant, status, gamma, speed, d1, share, dist, strict)


def test_order_claim_pass_fail_na():
    groups = [["none"], ["first", "all"]]
    runs = {"none": rn("none", 1.0, 0.1), "first": rn("first", 2.0, 0.5), "all": rn("all", 3.0, 0.6)}
    assert order_claim("c", "net", "gamma", groups, runs)["verdict"] == PASS
    assert order_claim("c", "net", "speed", groups, runs)["verdict"] == PASS
    runs["first"] = rn("first", 0.5, 0.5)
    c = order_claim("c", "net", "gamma", groups, runs)
    assert c["verdict"] == FAIL and "none (1) is not below first (0.5)" in c["why"]
    runs["all"] = rn("all", None, 0.6)
    assert order_claim("c", "net", "gamma", groups, runs)["verdict"] == NA
    del runs["all"]
    assert order_claim("c", "net", "gamma", groups, runs)["verdict"] == NA


def test_diverged_run_is_slowest():
    groups = [["none"], ["all"]]
    runs = {"none": rn("none", 1.0, 5.0, status="diverged"), "all": rn("all", 2.0, 0.1)}
    c = order_claim("c", "net", "speed", groups, runs)
    assert c["verdict"] == PASS and c["numbers"]["none"] == "diverged"


def test_correlation_claim():
    up = [rn(str(i), float(i), float(i)) for i in range(6)]
    c = correlation_claim(up)
    assert c["verdict"] == PASS and math.isclose(c["numbers"]["spearman_rho"], 1.0)
    down = [rn(str(i), float(i), -float(i)) for i in range(6)]
    assert correlation_claim(down)["verdict"] == FAIL
    weak = [rn(str(i), float(i), s) for i, s in enumerate([0, 2, 1, 3])]  # rho 0.8, p 0.2
    c = correlation_claim(weak)
    assert c["verdict"] == FAIL and "not significant" in c["why"]
    assert correlation_claim(up[:2])["verdict"] == NA


def test_principle_claims():
    runs = [rn("a", 1, 1), rn("b", 1, 1, d1=False, share=0.9, dist=False)]
    verdicts = {c["claim"]: c for c in principle_claims(runs)}
    assert all(c["verdict"] == FAIL for c in verdicts.values())
    assert "net/b" in verdicts["principle holds"]["why"]
    assert all(c["verdict"] == PASS for c in principle_claims(runs[:1]))


def test_strict_correlation_uses_the_largest_feasible_gamma():
    # the summary ranks against speed, the strict gamma (0 where infeasible) with it
    runs = [rn(str(i), float(10 - i), float(i), strict=float(i)) for i in range(6)]
    assert correlation_claim(runs)["verdict"] == FAIL
    c = correlation_claim(runs, strict=True)
    assert c["verdict"] == PASS and c["claim"] == "gamma-speed correlation (strict gamma)"
