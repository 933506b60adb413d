"""The claims beside the paper's headline ones: each verdict follows from its numbers, each can
fail, and what cannot be decided says why."""

from dataclasses import replace

from validation.claims import FAIL, NA, PASS, RunNumbers, suite_claims
from validation.more_claims import (deeper_claim, directions_claim, equivalence_claim, identity_claim,
                                    matched_gamma_order_claim, premise_batch_claim, reading_reversals,
                                    vanishing_claim, violation_rate)


def run(variant, network="net", speed=1.0, losses=(2.0, 1.0, 0.5), gmax=(1.0, 1.0, 1.0), med=(2.0, 2.0, 2.0),
        dist0=2.0, converged=True, **kw):
    prefix = {"epochs": list(range(1, len(losses) + 1)), "steps": [], "epoch_loss": list(losses),
              "gamma_max_x_d0": list(gmax), "median_x_d0": list(med)}
    base = dict(converged=converged, d1_holds=True, gamma_theory=1.0, gamma_paper=1.0, dist0=dist0, speed=speed,
                share_positive=1.0, distance_holds=True, min_gap=0.0, star_accuracy=1.0, prefix=prefix,
                identity_residual=1e-13, ends_at_star=True, n_steps=100)
    return RunNumbers(network, variant, "ok", **{**base, **kw})


def test_identity_row_passes_on_consistent_traces_and_fails_on_a_broken_one():
    runs = [run("a"), run("b", identity_residual=3e-12, gamma_max_over_bar=0.4)]
    c = identity_claim(runs)
    assert c["verdict"] == PASS and c["kind"] == "consequence" and "3.0e-12" in c["why"]
    assert identity_claim(runs + [run("c", identity_residual=1e-6)])["verdict"] == FAIL
    # a theta* that does not end its path is not what the identity is about
    assert identity_claim([run("a", ends_at_star=False)])["verdict"] == NA


def test_matched_loss_order_takes_each_variant_at_the_common_level():
    groups = [["slow"], ["fast"]]
    # slow reaches 0.9 only in epoch 3, fast in epoch 1; the common level is slow's best, 0.9
    runs = {"slow": run("slow", losses=(2.0, 1.5, 0.9), gmax=(5.0, 4.0, 0.5)),
            "fast": run("fast", losses=(0.9, 0.4, 0.1), gmax=(3.0, 2.0, 1.0))}
    c = matched_gamma_order_claim("net", groups, runs, "theory", "x dist0^2")
    assert c["verdict"] == PASS and c["numbers"]["slow"] == "0.5 (epoch 3)" and c["numbers"]["fast"] == "3 (epoch 1)"
    runs["fast"] = replace(runs["fast"], prefix={**runs["fast"].prefix, "gamma_max_x_d0": [0.1, 2.0, 1.0]})
    c = matched_gamma_order_claim("net", groups, runs, "theory", "x dist0^2")
    assert c["verdict"] == FAIL and c["why"].startswith("REVERSED")
    raw = matched_gamma_order_claim("net", groups, runs, "theory", "raw")
    assert raw["numbers"]["slow"] == "0.125 (epoch 3)"  # 0.5 / dist0^2


def test_matched_loss_is_not_decidable_without_shared_progress():
    groups = [["slow"], ["fast"]]
    runs = {"slow": run("slow", losses=(2.0, 1.95, 1.9)), "fast": run("fast", losses=(2.0, 0.4, 0.1))}
    c = matched_gamma_order_claim("net", groups, runs, "paper", "raw")
    assert c["verdict"] == NA and "share no stretch of progress" in c["why"]
    runs["slow"] = run("slow", losses=(2.0, 1.0, 0.5), gmax=(None, None, None))
    assert "no gamma fits" in matched_gamma_order_claim("net", groups, runs, "theory", "raw")["why"]


def test_equivalence_within_the_stated_factor():
    runs = {"first": run("first", speed=0.6), "all": run("all", speed=0.55)}
    assert equivalence_claim("net", "first", "all", runs)["verdict"] == PASS
    runs["first"] = run("first", speed=1.1)
    c = equivalence_claim("net", "first", "all", runs)
    assert c["verdict"] == FAIL and "first is slower" in c["why"]


def test_skip_connections_matter_more_in_the_deeper_network():
    by_net = {"r18": {"first": run("first", speed=1.0), "all": run("all", speed=0.6)},
              "r34": {"first": run("first", speed=1.5), "all": run("all", speed=0.5)}}
    assert deeper_claim("r18", "r34", "first", "all", by_net)["verdict"] == PASS
    by_net["r34"]["first"] = run("first", speed=0.6)
    assert deeper_claim("r18", "r34", "first", "all", by_net)["verdict"] == FAIL


def test_vanishing_gradient_needs_a_small_update_before_convergence():
    stuck = run("none", losses=(2.3, 2.3, 2.3), update_sq_by_epoch=[1.0, 1e-3, 1e-5])
    c = vanishing_claim("net", "none", {"none": stuck})
    assert c["verdict"] == PASS and "epoch 3" in c["why"]
    converging = run("none", losses=(2.3, 0.5, 0.01), update_sq_by_epoch=[1.0, 1e-3, 1e-5])  # small because done
    assert vanishing_claim("net", "none", {"none": converging})["verdict"] == FAIL
    alive = run("none", losses=(2.3, 2.3, 2.3), update_sq_by_epoch=[1.0, 1.2, 0.9])
    assert vanishing_claim("net", "none", {"none": alive})["verdict"] == FAIL


def test_directions_decided_only_where_the_bounds_decide():
    def d(u, g, lb):
        return {"update_angle_median": u, "grad_angle_median": g, "angle_lower_bound_median": lb,
                "share_lower_bound_over_45": 0.5}

    assert directions_claim("net", "adam", {"adam": run("adam", directions=d(20, 80, 60))})["verdict"] == PASS
    assert directions_claim("net", "adam", {"adam": run("adam", directions=d(10, 20, 10))})["verdict"] == FAIL
    assert directions_claim("net", "adam", {"adam": run("adam", directions=d(30, 50, 20))})["verdict"] == NA
    no_grad = {"update_angle_median": 20, "grad_angle_median": None, "angle_lower_bound_median": None}
    assert directions_claim("net", "adam", {"adam": run("adam", directions=no_grad)})["verdict"] == NA


def test_premise_in_the_measurement_mode():
    ok = run("a", star_batch_loss=0.02, first_loss=2.3)
    assert premise_batch_claim([ok])["verdict"] == PASS
    c = premise_batch_claim([ok, run("b", star_batch_loss=0.9, first_loss=2.3)])
    assert c["verdict"] == FAIL and "net/b" in c["why"]


def test_violation_rate_over_converged_runs():
    v = violation_rate([run("a", n_violating=1, n_steps=1000), run("b", n_steps=1000),
                        run("c", converged=False, n_violating=50, n_steps=1000)])
    assert v["violating_steps"] == 1 and v["steps"] == 2000 and v["rate"] == 5e-4
    assert v["ci95"][0] < 5e-4 < v["ci95"][1]
    assert v["p_violation_at_paper_length"] == 1 - (1 - 5e-4) ** 58_650


def test_every_reading_shows_reversals():
    runs = [run("none", gamma_theory=5.0, gamma_paper=5.0, dist0=0.1, converged=False),
            run("all", gamma_theory=1.0, gamma_paper=1.0, dist0=2.0)]
    rows = {(r["reading"], r["form"]): r for r in reading_reversals({"net": [["none"], ["all"]]}, runs)}
    assert rows[("theory", "raw")]["reversed_in"] == 1  # raw: none (5) above all (1): the paper reversed
    assert rows[("theory", "x dist0^2")]["holds_in"] == 1  # 0.05 < 4
    assert rows[("theory", "raw")]["all_converged"] is False


def test_suite_claims_carry_the_further_checks():
    runs = [run("first", network="r18", speed=1.0), run("all", network="r18", speed=0.6),
            run("first", network="r34", speed=1.5), run("all", network="r34", speed=0.5)]
    checks = {"equivalences": [("r18", "first", "all")], "deeper": ("r18", "r34", "first", "all")}
    names = {c["claim"]: c["verdict"] for c in suite_claims({}, runs, checks)}
    assert names["r18 first as fast as all"] == FAIL
    assert names["skip connections more effective in r34 than r18"] == PASS
    assert names["gamma-speed identity (theta* = last iterate)"] == PASS


def test_the_link_against_a_theta_star_near_the_path_end_is_not_evidence():
    from validation.companion_claims import link_claims

    fast = dict(gamma_theory=2.0, gamma_paper=2.0, speed=0.2)
    slow = dict(gamma_theory=1.0, gamma_paper=1.0, speed=0.4)
    far = [run("a", ends_at_star=False, end_ratio=0.3, **slow), run("b", ends_at_star=False, end_ratio=0.2, **fast)]
    assert {c["verdict"] for c in link_claims(far, "trained longer")} == {PASS}
    near = [replace(r, end_ratio=8e-4) for r in far]
    cs = link_claims(near, "trained longer")
    assert {c["verdict"] for c in cs} == {NA} and all("too near the path's end" in c["why"] for c in cs)
    # and one that can fail does
    wrong = [replace(far[0], gamma_theory=3.0, gamma_paper=3.0), far[1]]
    assert {c["verdict"] for c in link_claims(wrong, "trained longer")} == {FAIL}


# -- gamma tracks speed vs another seed's end point -------------------------------------------------
def _against(seed, variant, gamma_bar, speed, end_ratio=0.8, **kw):
    """A path of seed ``seed`` judged against another seed's end point (a star_seed<N> companion)."""
    return run(variant, seed=seed, gamma_bar=gamma_bar, speed=speed, ends_at_star=False, end_ratio=end_ratio,
               name=f"net-{variant}" + (f"-s{seed}" if seed else ""), **kw)


def test_gamma_tracks_speed_vs_another_seeds_end_point():
    from validation.companion_claims import star_seed_claims

    # seed 0's paths against seed 1's end points, and seed 1's against seed 0's
    by_other = {1: [_against(0, "slow", 1.0, 0.4), _against(0, "fast", 2.0, 0.2),
                    RunNumbers("net", "slow", "missing", seed=1), RunNumbers("net", "fast", "missing", seed=1)],
                0: [RunNumbers("net", "slow", "missing", seed=0), RunNumbers("net", "fast", "missing", seed=0),
                    _against(1, "slow", 1.5, 0.5), _against(1, "fast", 3.0, 0.25)]}
    (c,) = star_seed_claims(by_other)
    assert c["claim"] == "net gamma tracks speed vs another seed's end point" and c["kind"] == "agreement"
    assert c["verdict"] == PASS and c["numbers"]["holds in"] == "2 of 2 seeds"
    assert set(c["per_seed"]) == {"s0 vs the end of s1", "s1 vs the end of s0"}
    assert "end_ratio 0.8" in c["per_seed"]["s0 vs the end of s1"]["numbers"]["fast"]  # reported for each
    # one pair with the order reversed fails the row
    by_other[0][3] = _against(1, "fast", 0.5, 0.25)
    (c,) = star_seed_claims(by_other)
    assert c["verdict"] == FAIL and c["per_seed"]["s1 vs the end of s0"]["verdict"] == FAIL
    # a single pair is the row itself
    (c,) = star_seed_claims({1: by_other[1]})
    assert c["verdict"] == PASS and "same order, tau = 1 against seed 1's end point" in c["why"]


def test_another_seeds_end_point_cannot_decide_when_absent_or_too_near_the_end():
    from validation.companion_claims import NEAR_END, star_seed_claims

    (c,) = star_seed_claims({})
    assert c["verdict"] == NA and "star_seed" in c["why"]
    near = {1: [_against(0, "slow", 1.0, 0.4, end_ratio=NEAR_END / 10), _against(0, "fast", 2.0, 0.2,
                                                                                 end_ratio=NEAR_END / 20)]}
    (c,) = star_seed_claims(near)
    assert c["verdict"] == NA and "too near the path's end" in c["why"]
    # a path that did not converge is left out, as in every gamma-speed row
    lone = {1: [_against(0, "slow", 1.0, 0.4, converged=False), _against(0, "fast", 2.0, 0.2)]}
    (c,) = star_seed_claims(lone)
    assert c["verdict"] == NA and "slow did not converge" in c["why"]


def test_the_report_reads_star_seed_companions_from_the_summaries():
    from validation.run_summary import star_seed_runs

    def summary(name, seed, companions):
        path = {"dist0": 1.0, "steps": 4, "theory": {"holds": True, "gamma_max": 1.0, "n_violating": 0},
                "paper": {"gamma_median": 1.0, "share_positive": 1.0}, "min_gap": 0.0, "distance_holds": True,
                "identity": {"gamma_bar": 0.7, "end_ratio": 0.9, "ends_at_star": False},
                "convergence": {"converged": True, "mean_loss": 0.3}}
        return {"name": name, "status": "ok", "check": {}, "run": {"network": "net", "variant": "a", "seed": seed},
                **path, "companions": {c: path for c in companions}}

    got = star_seed_runs([summary("net-a", 0, ["random", "star_seed1"]), summary("net-a-s1", 1, ["star_seed0"])])
    assert sorted(got) == [0, 1]
    assert [r.status for r in got[1]] == ["ok", "missing"] and got[1][0].gamma_bar == 0.7
    assert got[1][0].end_ratio == 0.9 and got[0][1].seed == 1
