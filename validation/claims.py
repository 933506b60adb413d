"""The paper's claims as named, checkable statements, each decided by numbers from the traces.

What is compared, and why (written into every report):

* **gamma, the theory's reading**: Definition 1's largest feasible gamma, ``gamma_max``. It
  exists only where one gamma > 0 fits every step. Theorem 1 item 3 bounds the mean accumulated
  loss gap by ``1/(2 eta gamma K)``: with eta fixed (the variants of one network share their
  learning rate), a larger ``gamma_max`` is a tighter bound, so this is the gamma the paper's
  "larger gamma, faster convergence" is about.
* **gamma, the paper's reading**: the median over the steps with a positive loss gap of the
  per-step bound ``num_k / (dist0_sq * gap_k)``: the curves the paper plots.
* Both scale as ``1/||theta_0 - theta*||^2``: a run that barely moves (small distance, tiny gaps)
  gets a huge gamma. So every gamma is shown with its dimensionless form
  ``gamma * ||theta_0 - theta*||^2`` (1 for a star-convex path, the paper's Discussion) and with
  ``||theta_0 - theta*||``, and gammas are compared only between runs that **converged** (last
  epoch's mean training loss at most 5% of the first epoch's): where theta* is not a minimizer,
  gamma measures how well the steps point at an arbitrary end point. A comparison with a run that
  did not converge is NOT APPLICABLE ("not comparable"), with the reason.
* **speed**: the mean training loss over the whole run, ``(1/K) sum_k l(theta_k; z_k)``: the
  accumulated loss Theorem 1 item 3 bounds, on one absolute scale for every run (its ``f(theta*)``
  is not subtracted, so a run that stops early at a high loss is not rewarded). Lower is faster. A
  diverged run is slower than any run that did not diverge.
* Comparisons stay **within one network**, as the paper's panels do: networks differ in learning
  rate and scale, so pooling them into one correlation would mean nothing.
* Theorem 1 item 1 and "every per-step gamma is positive" follow from Definition 1 (with Fact 1's
  non-negative gaps), since ``dist_sq[k+1] - dist_sq[k] = -2 eta num_k`` exactly. They are shown
  as consequences, not as further confirmations.
* **Seeds**: with several initializations per configuration, every order and agreement claim is
  decided per seed and reported as the share of seeds in which it holds, with a 95% Clopper-Pearson
  interval and a one-sided paired Wilcoxon signed-rank test of its margin over seeds. The verdict is
  PASS when it holds in every seed where it can be decided, FAIL when it fails in one. The
  claims about every run (the principle, its consequences, its premises) pool all runs.

Verdicts are PASS, FAIL or NOT APPLICABLE, always with the numbers that decided them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

PASS, FAIL, NA = "PASS", "FAIL", "NOT APPLICABLE"
CONVERGED_FRACTION = 0.05  #: converged: last epoch's mean training loss <= this x the first epoch's
READINGS = ("theory", "paper")


@dataclass(frozen=True)
class RunNumbers:
    """What the claims need from one path against one theta*: a frozen view, built from a run's
    summary by :func:`validation.run_summary.run_numbers` (the one reader of that layout)."""

    network: str
    variant: str
    status: str  #: ok | diverged | error | missing
    converged: bool | None = None
    d1_holds: bool | None = None
    gamma_theory: float | None = None  #: Definition 1's largest feasible gamma (None: no gamma fits)
    gamma_paper: float | None = None  #: median per-step upper bound
    dist0: float | None = None  #: ||theta_0 - theta*||
    speed: float | None = None  #: mean training loss over the run (lower is faster)
    share_positive: float | None = None
    distance_holds: bool | None = None
    min_gap: float | None = None  #: smallest loss gap l(theta_k) - l(theta*) on a step's batch
    star_accuracy: float | None = None  #: training-set accuracy at theta* (eval mode)
    seed: int = 0
    d1_undecidable: int = 0  #: steps whose sign float64 cannot decide (Definition 1's round-off bound)
    d1_rests_on_undecidable: bool = False  #: the Definition 1 verdict flips without those steps
    n_steps: int = 0
    n_violating: int = 0  #: steps that break Definition 1
    identity_residual: float | None = None  #: the gamma-speed identity's relative residual (identity.py)
    ends_at_star: bool = False  #: theta* is the path's last iterate
    end_ratio: float | None = None  #: ||theta_K - theta*||^2 / ||theta_0 - theta*||^2
    gamma_max_over_bar: float | None = None  #: gamma_max / the gap-weighted mean gamma
    prefix: dict | None = None  #: both gammas over the first E epochs, for every E (identity.prefix_gammas)
    update_sq_by_epoch: list | None = None  #: epoch means of ||U_k||^2
    directions: dict | None = None  #: per-step angles to theta_k - theta* (identity.directions)
    star_batch_loss: float | None = None  #: mean loss_star over the last epoch (batch statistics)
    first_loss: float | None = None  #: the first epoch's mean training loss
    name: str = ""  #: the run's folder name (network-variant[-sN])
    n_negative_gap: int = 0  #: steps whose loss is below theta*'s on their batch
    gamma_bar: float | None = None  #: the gap-weighted mean of the per-step gammas (identity.py)

    @property
    def label(self) -> str:
        return f"{self.network}/{self.variant}" + (f"/s{self.seed}" if self.seed else "")

    @property
    def judged(self) -> bool:
        return self.status in ("ok", "diverged") and self.d1_holds is not None

    def gamma(self, reading: str) -> float | None:
        return self.gamma_theory if reading == "theory" else self.gamma_paper

    def dimensionless(self, reading: str) -> float | None:
        g = self.gamma(reading)
        return None if g is None or self.dist0 is None else g * self.dist0**2

    def speed_key(self) -> float | None:
        """Lower is faster; diverged runs rank after every run that did not diverge (+inf)."""
        if self.status == "diverged":
            return math.inf
        return self.speed

    def speed_text(self) -> str:
        """The speed as a report shows it: "diverged" for a diverged run (whose key is +inf)."""
        return "diverged" if self.status == "diverged" else fmt(self.speed)


def fmt(x) -> str:
    """A number in a claim's numbers and reasons: 3 significant digits, ``n/a`` for a missing one
    (None), and a non-finite float as what it is (``inf``, ``-inf``, ``nan``): an unbounded gamma
    reads "inf", never "diverged" (a diverged run's speed is shown by :meth:`RunNumbers.speed_text`)."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, float) and x != 0 and not 0.01 <= abs(x) < 1000:
        return f"{x:.2e}"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def claim_row(name: str, kind: str, statement: str, verdict: str, numbers: dict, why: str) -> dict:
    """One claim as a report holds it."""
    return {"claim": name, "kind": kind, "statement": statement, "verdict": verdict, "numbers": numbers, "why": why}


def groups_text(groups: list[list[str]]) -> str:
    return " < ".join("(" + ", ".join(g) + ")" if len(g) > 1 else g[0] for g in groups)


def broken_order(groups, values, larger_is_better: bool, show=None) -> list[str]:
    """The adjacent groups whose order fails: each member of a group strictly below (worse than)
    each member of the next. ``show(v)``: how a variant's value reads (default ``fmt``)."""
    show = show or (lambda v: fmt(values[v]))
    out = []
    for lo, hi in zip(groups, groups[1:]):
        lo, hi = [v for v in lo if v in values], [v for v in hi if v in values]
        if not lo or not hi:
            continue
        key = (lambda v: values[v]) if larger_is_better else (lambda v: -values[v])
        a, b = max(lo, key=key), min(hi, key=key)
        if not key(a) < key(b):
            out.append(f"{a} ({show(a)}) is not {'below' if larger_is_better else 'slower than'} {b} ({show(b)})")
    return out


def order_margin(groups, values, larger_is_better: bool) -> float | None:
    """How far the order holds: the smallest gap between adjacent groups (positive: it holds)."""
    gaps = []
    for lo, hi in zip(groups, groups[1:]):
        lo, hi = [values[v] for v in lo if v in values], [values[v] for v in hi if v in values]
        if not lo or not hi:
            return None
        gaps.append(min(hi) - max(lo) if larger_is_better else min(lo) - max(hi))
    return min(gaps) if gaps else None


def speed_order_claim(network: str, groups: list[list[str]], runs: dict[str, RunNumbers]) -> dict:
    """The variants get faster from each group to the next (speed = mean training loss)."""
    name = f"{network} speed order"
    statement = (f"{network}: convergence gets faster {groups_text(groups)} (mean training loss over the run: "
                 "every member of a group above every member of the next)")
    variants = [v for g in groups for v in g]
    values = {v: runs[v].speed_key() for v in variants if v in runs and runs[v].speed_key() is not None}
    numbers = {v: runs[v].speed_text() if v in values else "n/a" for v in variants}
    missing = [v for v in variants if v not in values]
    if missing:
        return claim_row(name, "order", statement, NA, numbers, f"no measured run for {', '.join(missing)}")
    finite = {v: x for v, x in values.items() if math.isfinite(x)}
    margin = order_margin(groups, finite, larger_is_better=False) if len(finite) == len(values) else None
    broken = broken_order(groups, values, larger_is_better=False, show=lambda v: numbers[v])
    if broken:
        return {**claim_row(name, "order", statement, FAIL, numbers, "; ".join(broken)), "margin": margin}
    return {**claim_row(name, "order", statement, PASS, numbers, "the order holds"), "margin": margin}


def _comparable(variants: list[str], runs: dict[str, RunNumbers], reading: str) -> tuple[dict, dict]:
    """The gammas of the variants that may be compared, and for the others why not."""
    values, why = {}, {}
    for v in variants:
        r = runs.get(v)
        if r is None or not r.judged:
            why[v] = f"no measured trace ({r.status if r else 'missing'})"
        elif r.status == "diverged":
            why[v] = "diverged"
        elif not r.converged:
            why[v] = "did not converge"
        elif r.gamma(reading) is None:
            why[v] = ("no gamma > 0 fits every step (Definition 1 fails)" if reading == "theory"
                      else "no step with a positive gap")
        else:
            values[v] = r.gamma(reading)
    return values, why


def _gamma_cell(r: RunNumbers | None, reading: str, why: str | None) -> str:
    """A run's gamma and its dimensionless form; for a run left out, the number anyway, and why."""
    g = r.gamma(reading) if r is not None else None
    shown = "n/a" if g is None else f"{fmt(g)} (x dist0^2 = {fmt(r.dimensionless(reading))})"
    return shown if why is None else f"{shown}; not comparable: {why}"


def gamma_order_claim(network: str, groups: list[list[str]], runs: dict[str, RunNumbers], reading: str) -> dict:
    """gamma (``reading``) increases from each group to the next, among converged runs."""
    what = "Definition 1's largest feasible gamma" if reading == "theory" else "the median per-step gamma bound"
    name = f"{network} gamma order ({reading})"
    statement = f"{network}: {what} increases {groups_text(groups)}, compared between converged runs"
    variants = [v for g in groups for v in g]
    values, why = _comparable(variants, runs, reading)
    numbers = {v: _gamma_cell(runs.get(v), reading, why.get(v)) for v in variants}
    if why:
        return claim_row(name, "order", statement, NA, numbers,
                        "not comparable: " + "; ".join(f"{v} {w}" for v, w in why.items()))
    margin = order_margin(groups, values, larger_is_better=True)
    broken = broken_order(groups, values, larger_is_better=True)
    if broken:
        return {**claim_row(name, "order", statement, FAIL, numbers, "; ".join(broken)), "margin": margin}
    return {**claim_row(name, "order", statement, PASS, numbers, "the order holds"), "margin": margin}


def agreement_claim(network: str, runs: dict[str, RunNumbers], reading: str) -> dict:
    """Among a network's converged variants, a larger gamma goes with faster convergence: the
    ranking by gamma is the ranking by speed (Kendall's tau = 1). Descriptive: with 2-4 variants no
    p-value would mean anything, so none is given."""
    name = f"{network} gamma tracks speed ({reading})"
    statement = (f"{network}: among its converged variants, ranking by gamma ({reading}'s reading) gives the same "
                 "order as ranking by speed (Theorem 1 item 3: larger gamma, faster)")
    values, why = _comparable(list(runs), runs, reading)
    numbers = {v: f"gamma {fmt(g)}, mean loss {fmt(runs[v].speed)}" for v, g in values.items()}
    why = [f"{v} {w}" for v, w in why.items()]
    if len(values) < 2:
        return claim_row(name, "agreement", statement, NA, numbers,
                        "fewer than 2 comparable variants" + (f" ({'; '.join(why)})" if why else ""))
    v = list(values)
    g = [values[x] for x in v]
    s = [-runs[x].speed for x in v]  # larger = faster
    if len(set(g)) == 1 or len(set(s)) == 1:
        return claim_row(name, "agreement", statement, NA, numbers, "ties: nothing to rank")
    tau = float(stats.kendalltau(g, s).statistic)
    numbers["kendall_tau"] = round(tau, 3)
    left_out = f" ({'; '.join(why)}: left out)" if why else ""
    if tau == 1.0:
        return {**claim_row(name, "agreement", statement, PASS, numbers, f"same order, tau = 1{left_out}"),
                "margin": tau}
    return {**claim_row(name, "agreement", statement, FAIL, numbers, f"tau = {tau:.2f}{left_out}"), "margin": tau}


def principle_claims(runs: list[RunNumbers]) -> list[dict]:
    """Definition 1 on the converged runs (the primary claim: theta* must be a minimizer) and on
    every run (pooled), its consequences, and Fact 1's premise at theta*."""
    judged = [r for r in runs if r.judged]
    specs = [
        ("principle holds on converged paths (Definition 1)", "primary",
         "every converged run's path satisfies inequality (2) with one gamma > 0 for all its steps (the principle "
         "is stated for theta* a global minimizer: a run that did not converge has no minimizer to point at)",
         lambda r: r.d1_holds if r.converged else None, lambda x: bool(x)),
        ("principle holds on every path (pooled)", "pooled",
         "every run's path, converged or not, satisfies inequality (2) with one gamma > 0 for all its steps",
         lambda r: r.d1_holds, lambda x: bool(x)),
        ("distance never grows (Theorem 1 item 1)", "consequence",
         "||theta_k - theta*|| never increases. A consequence of Definition 1 when every loss gap is >= 0 "
         "(Fact 1), since dist_sq[k+1] - dist_sq[k] = -2 eta num_k exactly: not a further confirmation",
         lambda r: r.distance_holds, lambda x: bool(x)),
        ("per-step gamma positive (the paper's curves)", "consequence",
         "every per-step upper bound the paper plots is positive (num_k > 0 wherever gap_k > 0). Implied by "
         "Definition 1: not a further confirmation",
         lambda r: r.share_positive, lambda x: x == 1.0),
        ("theta* fits the training set (Fact 1)", "premise",
         "theta* (the last iterate) classifies every training image correctly (evaluation mode): the paper's "
         "principle is stated for theta* a global minimizer",
         lambda r: r.star_accuracy, lambda x: x == 1.0),
        ("no loss gap is negative (Fact 1 along the path)", "premise",
         "l(theta_k; z_k) >= l(theta*; z_k) on every step's batch, as a common minimizer theta* guarantees; a "
         "negative gap makes that step bound gamma from below",
         lambda r: r.min_gap, lambda x: x >= 0),
    ]
    out = []
    for name, kind, statement, get, ok in specs:
        rows = [r for r in judged if get(r) is not None]
        if not rows:
            out.append(claim_row(name, kind, statement, NA, {}, "no run could be judged"))
            continue
        failing = [r.label for r in rows if not ok(get(r))]
        numbers = {r.label: fmt(get(r)) for r in rows}
        edge = ""
        if kind in ("primary", "pooled"):  # Definition 1: say where float64 round-off decided a verdict
            shaky = [r.label for r in rows if r.d1_rests_on_undecidable]
            if shaky:
                edge = (f"; the verdict of {', '.join(shaky)} rests only on steps undecidable at float64 "
                        "(|num| within round-off of 0)")
                if failing and set(failing) <= set(shaky):
                    edge += ": this FAIL rests on them alone"
        if failing:
            out.append(claim_row(name, kind, statement, FAIL, numbers,
                                f"{len(failing)} of {len(rows)} runs break it: {', '.join(failing)}{edge}"))
        else:
            out.append(claim_row(name, kind, statement, PASS, numbers, f"all {len(rows)} runs{edge}"))
    return out


def by_network(runs: list[RunNumbers]) -> dict[str, dict[str, RunNumbers]]:
    by_net: dict[str, dict[str, RunNumbers]] = {}
    for r in runs:
        by_net.setdefault(r.network, {})[r.variant] = r
    return by_net


def _network_claims(expected_order: dict[str, list[list[str]]], runs: list[RunNumbers],
                    checks: dict | None = None) -> list[dict]:
    """Per network: its speed and gamma orders (where the paper states one; gamma both among
    converged runs and at matched loss), the gamma-speed agreement in both readings, and the
    suite's further sentences (``checks``: equivalences, depth, vanishing gradient, directions),
    from the runs of one seed."""
    from .more_claims import (FORMS, deeper_claim, directions_claim, equivalence_claim, matched_gamma_order_claim,
                              vanishing_claim)

    checks = checks or {}
    by_net = by_network(runs)
    claims = []
    for net, variants in by_net.items():
        groups = expected_order.get(net)
        if groups:
            claims.append(speed_order_claim(net, groups, variants))
            claims += [gamma_order_claim(net, groups, variants, reading) for reading in READINGS]
            claims += [matched_gamma_order_claim(net, groups, variants, reading, form)
                       for reading in READINGS for form in FORMS]
        claims += [agreement_claim(net, variants, reading) for reading in READINGS]
    for net, a, b in checks.get("equivalences", []):
        if net in by_net:
            claims.append(equivalence_claim(net, a, b, by_net[net]))
    if checks.get("deeper") and all(n in by_net for n in checks["deeper"][:2]):
        claims.append(deeper_claim(*checks["deeper"], by_net))
    for net, variant in checks.get("vanishing", []):
        if net in by_net:
            claims.append(vanishing_claim(net, variant, by_net[net]))
    for net, variants in checks.get("directions", {}).items():
        if net in by_net:
            claims += [directions_claim(net, v, by_net[net]) for v in variants]
    return claims


def suite_claims(expected_order: dict[str, list[list[str]]], runs: list[RunNumbers],
                 checks: dict | None = None) -> list[dict]:
    """Every claim of a suite: the principle over the converged runs and over every run, its
    consequences (the gamma-speed identity among them) and premises, then per network its orders,
    gamma-speed agreement and the suite's further sentences, decided per seed and, with several
    seeds, summarized over them."""
    from .more_claims import identity_claim, premise_batch_claim

    claims = principle_claims(runs)
    claims.insert(2, identity_claim(runs))
    claims.insert(next(i for i, c in enumerate(claims) if c["kind"] == "premise") + 1, premise_batch_claim(runs))
    from .seeds import over_all_seeds

    seeds = sorted({r.seed for r in runs})
    per_seed = {s: _network_claims(expected_order, [r for r in runs if r.seed == s], checks) for s in seeds}
    return claims + over_all_seeds(per_seed)
