"""Claims: each verdict follows from its numbers, and what may not be compared is not."""

import pytest
from dataclasses import replace

from validation.claims import (FAIL, NA, PASS, RunNumbers, agreement_claim, gamma_order_claim, principle_claims,
                               speed_order_claim, suite_claims)


def rn(variant, gamma=1.0, speed=1.0, status="ok", network="net", converged=True, d1=True, paper=None, dist0=2.0,
       share=1.0, dist=True, min_gap=0.0, acc=1.0):
    return RunNumbers(network, variant, status, converged=converged, d1_holds=d1, gamma_theory=gamma if d1 else None,
                      gamma_paper=gamma if paper is None else paper, dist0=dist0, speed=speed, share_positive=share,
                      distance_holds=dist, min_gap=min_gap, star_accuracy=acc)


GROUPS = [["none"], ["first", "all"]]


def test_gamma_order_pass_fail():
    runs = {"none": rn("none", 1.0), "first": rn("first", 2.0), "all": rn("all", 3.0)}
    c = gamma_order_claim("net", GROUPS, runs, "theory")
    assert c["verdict"] == PASS and c["kind"] == "order"
    assert c["numbers"]["all"] == "3 (x dist0^2 = 12)"  # the dimensionless gamma beside the raw one
    runs["first"] = rn("first", 0.5)
    c = gamma_order_claim("net", GROUPS, runs, "theory")
    assert c["verdict"] == FAIL and "none (1) is not below first (0.5)" in c["why"]


def test_gammas_of_runs_that_did_not_converge_are_not_compared():
    runs = {"none": rn("none", 1.0, converged=False), "first": rn("first", 2.0), "all": rn("all", 3.0)}
    c = gamma_order_claim("net", GROUPS, runs, "paper")
    assert c["verdict"] == NA and "not comparable: none did not converge" in c["why"]
    assert c["numbers"]["none"] == "1 (x dist0^2 = 4); not comparable: did not converge"  # shown, not compared


def test_theory_reading_needs_definition_1():
    runs = {"none": rn("none", 1.0, d1=False, paper=0.5), "first": rn("first", 2.0), "all": rn("all", 3.0)}
    assert gamma_order_claim("net", GROUPS, runs, "theory")["verdict"] == NA
    assert "Definition 1 fails" in gamma_order_claim("net", GROUPS, runs, "theory")["why"]
    assert gamma_order_claim("net", GROUPS, runs, "paper")["verdict"] == PASS  # the paper's curves exist


def test_speed_order_uses_mean_loss_and_diverged_is_slowest():
    runs = {"none": rn("none", speed=0.9, status="diverged"), "first": rn("first", speed=0.3),
            "all": rn("all", speed=0.2)}
    c = speed_order_claim("net", GROUPS, runs)
    assert c["verdict"] == PASS and c["numbers"]["none"] == "diverged"
    runs["none"] = rn("none", speed=0.25)  # lower mean loss than 'first': faster
    c = speed_order_claim("net", GROUPS, runs)
    assert c["verdict"] == FAIL and "is not slower than first" in c["why"]
    del runs["all"]
    assert speed_order_claim("net", GROUPS, runs)["verdict"] == NA


def test_agreement_is_kendall_tau_within_a_network():
    runs = {"a": rn("a", 1.0, speed=0.5), "b": rn("b", 2.0, speed=0.3), "c": rn("c", 3.0, speed=0.1)}
    c = agreement_claim("net", runs, "theory")
    assert c["verdict"] == PASS and c["numbers"]["kendall_tau"] == 1.0
    runs["c"] = rn("c", 3.0, speed=0.4)
    c = agreement_claim("net", runs, "theory")
    assert c["verdict"] == FAIL and c["numbers"]["kendall_tau"] == 0.333
    runs = {"a": rn("a", 1.0, converged=False), "b": rn("b", 2.0)}
    c = agreement_claim("net", runs, "theory")
    assert c["verdict"] == NA and "a did not converge" in c["why"]


def test_principle_claims_and_their_kinds():
    runs = [rn("a"), rn("b", d1=False, share=0.9, dist=False, min_gap=-0.1, acc=0.8)]
    verdicts = {c["claim"]: c for c in principle_claims(runs)}
    assert {c["kind"] for c in verdicts.values()} == {"primary", "pooled", "consequence", "premise"}
    assert verdicts["principle holds on converged paths (Definition 1)"]["kind"] == "primary"
    assert verdicts["distance never grows (Theorem 1 item 1)"]["kind"] == "consequence"
    assert all(c["verdict"] == FAIL for c in verdicts.values())
    assert "net/b" in verdicts["principle holds on converged paths (Definition 1)"]["why"]
    assert all(c["verdict"] == PASS for c in principle_claims(runs[:1]))


def test_the_primary_claim_is_decided_on_converged_runs_and_the_pooled_one_on_all():
    runs = [rn("a"), rn("b", d1=False, converged=False)]
    v = {c["claim"]: c for c in principle_claims(runs)}
    assert v["principle holds on converged paths (Definition 1)"]["verdict"] == PASS
    assert v["principle holds on converged paths (Definition 1)"]["why"] == "all 1 runs"
    assert v["principle holds on every path (pooled)"]["verdict"] == FAIL


def test_suite_claims_never_pool_networks():
    runs = [rn("a", 1.0, speed=0.5, network="n1"), rn("b", 2.0, speed=0.3, network="n1"),
            rn("a", 5.0, speed=0.9, network="n2"), rn("b", 0.1, speed=0.1, network="n2")]
    claims = suite_claims({"n1": [["a"], ["b"]]}, runs)
    names = [c["claim"] for c in claims]
    assert "n1 gamma order (theory)" in names and "n2 gamma order (theory)" not in names  # no order for n2
    verdicts = {c["claim"]: c for c in claims}
    assert verdicts["n2 gamma tracks speed (theory)"]["verdict"] == FAIL
    # each network's agreement is decided on its own runs: pooled, the four runs would rank otherwise
    assert verdicts["n1 gamma tracks speed (theory)"]["verdict"] == PASS
    assert verdicts["n1 gamma tracks speed (theory)"]["numbers"]["kendall_tau"] == 1.0
    assert verdicts["n2 gamma tracks speed (theory)"]["numbers"]["kendall_tau"] == -1.0
    for c in claims:  # a per-network row shows only that network's variants
        if c["claim"].startswith("n1 "):
            assert set(c["numbers"]) <= {"a", "b", "kendall_tau"}, c


def test_fmt_says_what_a_number_is():
    from validation.claims import fmt

    assert fmt(float("inf")) == "inf" and fmt(float("-inf")) == "-inf"  # never "diverged"
    assert fmt(float("nan")) == "nan" and fmt(None) == "n/a"
    assert fmt(0.5) == "0.5" and fmt(1e-5) == "1.00e-05" and fmt(True) == "yes"


def test_an_unbounded_gamma_is_not_a_diverged_run():
    runs = {"none": rn("none", float("inf")), "first": rn("first", 2.0), "all": rn("all", 3.0)}
    c = gamma_order_claim("net", GROUPS, runs, "theory")
    assert c["numbers"]["none"].startswith("inf") and "diverged" not in c["why"]
    runs = {"none": rn("none", speed=9.0, status="diverged"), "first": rn("first", speed=0.5),
            "all": rn("all", speed=0.4)}
    c = speed_order_claim("net", GROUPS, runs)
    assert c["numbers"]["none"] == "diverged" and c["verdict"] == PASS


# -- seeds -----------------------------------------------------------------------------------------
def _seeded(seed, speeds, **kw):
    return [RunNumbers("net", v, "ok", converged=True, d1_holds=True, gamma_theory=1.0, gamma_paper=1.0, dist0=1.0,
                       speed=s, share_positive=1.0, distance_holds=True, min_gap=0.0, star_accuracy=1.0, seed=seed, **kw)
            for v, s in zip(("none", "first", "all"), speeds)]


def _clopper_pearson(k, n):  # the textbook beta-quantile form, independent of scipy's binomtest
    from scipy.stats import beta
    low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    return low, high


def test_order_over_seeds_is_a_share_with_an_interval():
    runs = _seeded(0, (0.9, 0.5, 0.4)) + _seeded(1, (0.8, 0.6, 0.3)) + _seeded(2, (0.5, 0.6, 0.7))
    c = {c["claim"]: c for c in suite_claims({"net": GROUPS}, runs)}["net speed order"]
    assert c["verdict"] == FAIL and c["numbers"]["holds in"] == "2 of 3 seeds"
    low, high = _clopper_pearson(2, 3)
    assert c["numbers"]["95% CI"] == f"{low:.2f}-{high:.2f}"
    assert set(c["per_seed"]) == {"s0", "s1", "s2"} and c["per_seed"]["s2"]["verdict"] == FAIL
    assert c["per_seed"]["s0"]["verdict"] == PASS


def test_wilcoxon_over_seeds_is_exact_for_all_positive_margins():
    # five seeds, the order holds with a positive margin in each: the exact one-sided signed-rank
    # p-value is 1/2^5 (only the all-positive sign pattern is as extreme)
    runs = [r for s in range(5) for r in _seeded(s, (0.9 + 0.01 * s, 0.5, 0.4))]
    c = {c["claim"]: c for c in suite_claims({"net": GROUPS}, runs)}["net speed order"]
    assert c["verdict"] == PASS and c["numbers"]["holds in"] == "5 of 5 seeds"
    assert float(c["numbers"]["paired Wilcoxon p"]) == pytest.approx(1 / 32, rel=3e-3)  # shown to 3 digits
    assert "p cannot go below" not in c["why"]
    three = [r for s in range(3) for r in _seeded(s, (0.9, 0.5, 0.4))]
    c3 = {c["claim"]: c for c in suite_claims({"net": GROUPS}, three)}["net speed order"]
    assert "with 3 seeds p cannot go below 0.125" in c3["why"]  # said, so nobody reads 0.125 as a failure


def test_a_seed_where_the_claim_is_not_decidable_is_left_out_and_said():
    runs = _seeded(0, (0.9, 0.5, 0.4)) + [replace(r, converged=r.variant != "none") for r in _seeded(1, (0.9, 0.5, 0.4))]
    c = {c["claim"]: c for c in suite_claims({"net": GROUPS}, runs)}["net gamma order (theory)"]
    assert c["per_seed"]["s1"]["verdict"] == NA and c["numbers"]["holds in"] == "0 of 1 seeds"
    assert "not decidable in 1" in c["why"]
    # the principle claims pool every run of every seed
    p = {c["claim"]: c for c in suite_claims({"net": GROUPS}, runs)}["principle holds on every path (pooled)"]
    assert "per_seed" not in p and p["verdict"] == PASS


def test_seed_labels_keep_runs_apart():
    assert _seeded(2, (1, 1, 1))[0].label == "net/none/s2" and _seeded(0, (1, 1, 1))[0].label == "net/none"


def test_a_fail_resting_on_undecidable_steps_says_so():
    shaky = replace(rn("b", d1=False), d1_undecidable=1, d1_rests_on_undecidable=True)
    c = principle_claims([rn("a"), shaky])[0]
    assert c["verdict"] == FAIL and "this FAIL rests on them alone" in c["why"]
    c = principle_claims([rn("a"), shaky, rn("c", d1=False)])[0]
    assert c["verdict"] == FAIL and "net/b" in c["why"] and "rests on them alone" not in c["why"]
    assert "undecidable" not in principle_claims([rn("a")])[0]["why"]


def test_a_claim_failing_in_most_seeds_gets_the_sign_test_of_its_failure():
    from validation.claims import FAIL, PASS
    from validation.seeds import over_seeds

    def c(verdict, margin):
        return {"claim": "x", "kind": "equivalence", "statement": "s", "verdict": verdict, "numbers": {}, "why": "",
                "margin": margin}

    out = over_seeds({s: c(FAIL, -0.5 - s) for s in range(7)})
    assert out["verdict"] == FAIL and out["numbers"]["fails in"] == "7 of 7 seeds"
    assert out["numbers"]["sign test p (it fails)"] == "7.81e-03" and "p = 0.00781" in out["why"]
    mixed = over_seeds({0: c(PASS, 0.2), 1: c(FAIL, -0.1), 2: c(PASS, 0.3)})  # fails in a minority: no such test
    assert mixed["verdict"] == FAIL and "fails in" not in mixed["numbers"]
