"""Claims that judge a path against a theta* other than its own last iterate (its companions).

A run records companion traces: the same path judged against another theta*.

* ``random``: a point at the real theta*'s distance from theta_0 in a random direction, the
  baseline: a check that passes it says nothing about minimizers (:func:`baseline_claim`).
* ``epochNNNN``: the iterate after NNNN epochs, judged on the steps before it, and ``extended``:
  theta* trained longer. The suite's claims are decided again with each
  (:func:`theta_star_sensitivity`); "gamma tracks speed" against the extended one can fail, where
  against the last iterate it holds by the gamma-speed identity (:func:`extended_link_claims`).
* ``star_seed<N>``: theta* = the final iterate of the run of the same network and variant with
  seed N, another near-minimizer (Definition 1 asks for "a certain global minimizer"). "Gamma
  tracks speed" judged with the gap-weighted mean gamma against it (:func:`star_seed_claims`).

Every function here takes :class:`~validation.claims.RunNumbers` built against the companion
(``validation.run_summary.run_numbers(summary, companion)``: a run without that companion is a
``missing`` one) and returns claim rows as ``validation.claims`` does.
"""

from __future__ import annotations

import re

from scipy import stats

from .claims import FAIL, NA, PASS, READINGS, RunNumbers, agreement_claim, by_network, claim_row, fmt, suite_claims
from .seeds import over_all_seeds, over_seeds

NEAR_END = 0.01  #: a theta* whose ||theta_K - theta*||^2 is below this x ||theta_0 - theta*||^2 still "ends" the path
STAR_SEED = re.compile(r"star_seed(\d+)$")  #: a companion whose theta* is another seed's final iterate


def candidate_label(epochs: int | None, name: str) -> str:
    """A companion theta* named for what it is: "50%" for the iterate half-way through a run of
    ``epochs`` epochs, "trained longer" for the extended one, "seed N's end point" for another
    seed's final iterate."""
    if name.startswith("epoch"):
        return f"{round(100 * int(name[5:]) / (epochs or 1))}%"
    if name == "extended":
        return "trained longer"
    m = STAR_SEED.match(name)
    return f"seed {m.group(1)}'s end point" if m else name


def along_the_path(name: str) -> bool:
    """A companion whose theta* lies on the run's own path (an earlier iterate, or the path trained
    on): those re-decide the suite's claims in the sensitivity table."""
    return name != "random" and not STAR_SEED.match(name)


# -- the baseline --------------------------------------------------------------------------------
def baseline_claim(random: list[RunNumbers]) -> dict:
    """The skeptic's first question: does a meaningless theta* pass too? ``random``: every run
    judged against its random theta* (runs that recorded none are left out)."""
    rows = {r.name: r for r in random if r.d1_holds is not None}
    statement = ("for every run, the same path judged against a random theta* (the distance of the real theta* "
                 "from theta_0, a random direction) breaks Definition 1: the check tells a real minimizer from a "
                 "meaningless point")
    name = "a random theta* is rejected (baseline)"
    if not rows:
        return claim_row(name, "baseline", statement, NA, {}, "no run recorded a random theta*")
    passing = [n for n, r in rows.items() if r.d1_holds]
    numbers = {n: ("passes" if r.d1_holds else "rejected") for n, r in rows.items()}
    if passing:
        vacuous = [n for n in passing if rows[n].gamma_paper is None]  # no step with a positive gap
        detail = "; ".join(f"{n} ({rows[n].n_negative_gap} steps with a loss below the random point's"
                           + (", none above: it passes only because the random point is no minimizer, which "
                              "Fact 1 rules out" if n in vacuous else "") + ")" for n in passing)
        premise = sum(rows[n].n_negative_gap > 0 for n in passing)
        return claim_row(name, "baseline", statement, FAIL, numbers,
                        f"the random theta* satisfies Definition 1 in {len(passing)} of {len(rows)} runs: {detail}. "
                        "Definition 1 alone cannot reject a point whose loss is above the path's on every step: such "
                        "steps only bound gamma from below. The premise 'no loss gap is negative' (Fact 1) rejects "
                        f"the random theta* in {premise} of these {len(passing)} runs")
    return claim_row(name, "baseline", statement, PASS, numbers, f"rejected in all {len(rows)} runs")


# -- gamma tracks speed against a theta* that does not end the path ------------------------------
def _end_ratio_text() -> str:
    return "||theta_K - theta*||^2 / ||theta_0 - theta*||^2"


def link_claims(runs: list[RunNumbers], label: str) -> list[dict]:
    """"Gamma tracks speed" per network and reading, judged against a theta* that does not end the
    path (``runs`` built against that theta*; ``label`` names it), decided per seed. The identity
    gives the average gamma as ``(1 - end_ratio) / (2 eta sum gap)``: a theta* so close to the path's
    end that ``end_ratio`` < NEAR_END still forces it to within that factor, and cannot test the link
    (NOT APPLICABLE, with the ratio)."""
    seeds = sorted({r.seed for r in runs})
    per_seed = {}
    for s in seeds:
        per_seed[s] = []
        for net, variants in by_network([r for r in runs if r.seed == s]).items():
            ratios = [r.end_ratio for r in variants.values() if r.judged and r.end_ratio is not None]
            for reading in READINGS:
                c = agreement_claim(net, variants, reading)
                c["claim"] = f"{c['claim']} vs theta* {label}"
                c["statement"] += (f"; judged against theta* {label}, which does not end the path, so that the "
                                   "gamma-speed identity does not force it (it leaves the average gamma free by the "
                                   f"factor 1 - {_end_ratio_text()})")
                if ratios:
                    c["numbers"][f"largest {_end_ratio_text()}"] = fmt(max(ratios))
                if c["verdict"] != NA and ratios and max(ratios) < NEAR_END:
                    c = {**c, "verdict": NA, "margin": None,
                         "why": f"theta* {label} lies too near the path's end to test the link: "
                                f"{_end_ratio_text()} is at most {max(ratios):.1e} "
                                f"(< {NEAR_END:g}), so the identity still fixes the average gamma to within that "
                                f"factor (as computed: {c['verdict']}, {c['why']})"}
                per_seed[s].append(c)
    return over_all_seeds(per_seed)


def extended_link_claims(runs: list[RunNumbers]) -> list[dict]:
    """"Gamma tracks speed" against the theta* trained longer (``runs`` against the ``extended``
    companion), where the runs recorded one; else one NOT APPLICABLE row that says how to get it."""
    if not any(r.d1_holds is not None for r in runs):
        return [claim_row("gamma tracks speed vs a theta* that does not end the path", "agreement",
                         "among a network's converged variants, ranking by gamma gives the order of speed when gamma "
                         "is judged against a theta* that does not end the path (there the gamma-speed identity does "
                         "not force it)", NA, {},
                         "no run recorded a theta* trained longer: measure with --star-extend F (the long preset's "
                         "report has it)")]
    return link_claims(runs, "trained longer")


STAR_SEED_CLAIM = "gamma tracks speed vs another seed's end point"


def _star_seed_claim(net: str, variants: dict[str, RunNumbers], other: int,
                     unusable: dict[tuple[str, str], str] | None = None) -> dict:
    """One network, one seed, theta* = seed ``other``'s final iterate of each variant: does the
    gap-weighted mean gamma rank the converged variants as their speed does? ``unusable``: why
    seed ``other``'s end point of a (network, variant) cannot serve (it diverged, ended in an
    error, or did not converge): that variant is left out, with the reason."""
    unusable = unusable or {}
    name = f"{net} {STAR_SEED_CLAIM}"
    statement = (f"{net}: among its converged variants, ranking by the gap-weighted mean gamma (1 / (2 eta sum gap) "
                 "times 1 - " + _end_ratio_text() + ", by the identity) gives the same order as ranking by speed, "
                 "when each path is judged against theta* = the final iterate of the same network and variant "
                 "trained from another seed: another near-minimizer, which does not end the path (Definition 1 "
                 "asks for 'a certain global minimizer'), so the gamma-speed identity does not force the order")
    values, why, numbers = {}, [], {}
    for v, r in variants.items():
        numbers[v] = (f"gamma_bar {fmt(r.gamma_bar)}, mean loss {fmt(r.speed)}, end_ratio {fmt(r.end_ratio)}"
                      if r.judged else f"no trace against seed {other}'s end point ({r.status})")
        star_why = unusable.get((net, v))
        if star_why is not None:  # the path's own state is said too, when it also rules the variant out
            why.append(f"{v}: {star_why}")
        if not r.judged:
            if star_why is None:
                why.append(f"{v} has no trace against seed {other}'s end point")
        elif r.status == "diverged":
            why.append(f"{v} diverged")
        elif not r.converged:
            why.append(f"{v} did not converge")
        elif r.gamma_bar is None:
            why.append(f"{v} has no gap-weighted mean gamma (its gaps sum to 0)")
        elif star_why is None:
            values[v] = r.gamma_bar
    left_out = f" ({'; '.join(why)}: left out)" if why else ""
    if len(values) < 2:
        return claim_row(name, "agreement", statement, NA, numbers,
                        f"fewer than 2 comparable variants against seed {other}'s end point{left_out}")
    ratios = [variants[v].end_ratio for v in values if variants[v].end_ratio is not None]
    if ratios and max(ratios) < NEAR_END:
        return claim_row(name, "agreement", statement, NA, numbers,
                        f"seed {other}'s end point lies too near the path's end to test the link: "
                        f"{_end_ratio_text()} is at most {max(ratios):.1e} (< {NEAR_END:g})")
    vs = list(values)
    g, s = [values[v] for v in vs], [-variants[v].speed for v in vs]  # larger = faster
    if len(set(g)) == 1 or len(set(s)) == 1:
        return claim_row(name, "agreement", statement, NA, numbers, "ties: nothing to rank")
    tau = float(stats.kendalltau(g, s).statistic)
    numbers["kendall_tau"] = round(tau, 3)
    verdict, text = (PASS, "same order, tau = 1") if tau == 1.0 else (FAIL, f"tau = {tau:.2f}")
    return {**claim_row(name, "agreement", statement, verdict, numbers,
                       f"{text} against seed {other}'s end point{left_out}"), "margin": tau}


def star_seed_claims(by_other: dict[int, list[RunNumbers]]) -> list[dict]:
    """"Gamma tracks speed vs another seed's end point", one row per network. ``by_other``: for each
    seed N some run recorded a ``star_seed<N>`` companion of, every run judged against it (a run
    without it is ``missing``). Decided for each (seed of the path, seed N of theta*) pair and, with
    several pairs, summarized over them as claims are over seeds; NOT APPLICABLE when no run
    recorded such a companion, or when that theta* lies within NEAR_END of the path's end."""
    unusable = getattr(by_other, "unusable", {})  # validation.run_summary.StarSeedRuns
    pairs: dict[str, list[dict]] = {}
    for other, runs in sorted(by_other.items()):
        for seed in sorted({r.seed for r in runs if r.judged and r.seed != other}):
            key = f"{seed} vs the end of s{other}"
            for net, variants in by_network([r for r in runs if r.seed == seed]).items():
                pairs.setdefault(key, []).append(_star_seed_claim(net, variants, other, unusable.get(other)))
    if not pairs:
        reasons = {f"seed {n}'s end point of {net}/{v}": w for n, bad in sorted(unusable.items())
                   for (net, v), w in bad.items()}
        why = "no run recorded another seed's end point as theta* (a companion star_seed<N>)"
        if reasons:
            why += ": " + "; ".join(reasons.values())
        return [claim_row(STAR_SEED_CLAIM, "agreement",
                         "among a network's converged variants, ranking by the gap-weighted mean gamma gives the "
                         "order of speed when each path is judged against theta* = another seed's final iterate of "
                         "the same network and variant", NA, reasons, why)]
    if len(pairs) == 1:
        return next(iter(pairs.values()))
    names = list(dict.fromkeys(c["claim"] for cs in pairs.values() for c in cs))
    return [over_seeds({k: c for k, cs in pairs.items() for c in cs if c["claim"] == n}) for n in names]


# -- sensitivity ---------------------------------------------------------------------------------
def theta_star_sensitivity(by_label: dict[str, list[RunNumbers]], orders: dict, claims: list[dict],
                           checks: dict | None = None) -> dict:
    """The suite's claims decided again with each earlier (or later) theta* on the path
    (``by_label``: its label -> every run judged against it, those without it ``missing``). A claim
    that PASSes with one theta* and FAILs with another is marked fragile in ``claims``."""
    verdicts: dict[str, dict[str, str]] = {c["claim"]: {"last iterate": c["verdict"]} for c in claims}
    for label, runs in sorted(by_label.items()):
        for c in suite_claims(orders, runs, checks):
            verdicts.setdefault(c["claim"], {})[label] = c["verdict"]
    for c in claims:
        v = verdicts.get(c["claim"], {})
        flips = {PASS, FAIL} <= set(v.values())
        c["fragile"] = flips
        if flips:
            c["why"] += " | FRAGILE: " + ", ".join(f"{k}: {x}" for k, x in v.items())
    return {"theta_stars": ["last iterate"] + sorted(by_label), "verdicts": verdicts}
