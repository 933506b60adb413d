"""Claims beside the paper's headline ones: what holds by algebra, readings of gamma that can
fail, and the paper's sentences that no order row tests.

* **The gamma-speed identity** (a *consequence*): with theta* = the path's last iterate, the
  gap-weighted mean of the per-step gammas is exactly ``1 / (2 eta sum_k gap_k)``
  (gamma_theory/identity.py has the derivation). "Larger gamma, faster" then holds by algebra for
  that average, and Theorem 1 item 3 at the whole run cannot fail once Definition 1 holds. The
  row checks the identity on every trace and says so; it is never evidence for the paper.
* **Gamma tracks speed against a theta* that does not end the path** (theta* trained longer):
  there the identity has a factor ``1 - ||theta_K - theta*||^2 / ||theta_0 - theta*||^2`` that
  is not 1, so the agreement can fail.
* **Matched-loss gamma order**: each variant's gamma over the steps until it first reaches one
  training loss that every variant of the network reaches: decidable when the slow variants
  never converge. Raw and dimensionless, theory and paper readings: every reversal is shown.
* **Equivalences** the paper states ("first BN per block converges as fast as all BN", "one skip
  per block is comparable to all skips"): speed (mean training loss) within a factor
  ``EQUIVALENCE_FACTOR``.
* **Skip connections are more effective in deeper ResNets**: the no-skip/all-skip slowdown is
  larger in the deeper network.
* **Vanishing gradient without BN**: the epoch-mean ``||U_k||^2`` (the stochastic gradient's,
  for plain SGD) falls to ``VANISH_FRACTION`` of its first epoch's while the loss is still above
  the convergence level.
* **Very different directions** (Fig. 12): per step, the angle between the update and the SGD
  direction is bounded from below and above by the columns (identity.directions); decided only
  where the bounds decide it.
* **theta* fits the training set in the measurement's mode**: the mean of ``loss_star`` over the
  last epoch (theta* on the steps' own batches, batch statistics), beside the eval-mode check.
* **Per-step violation rate** of converged runs, with a 95% interval, and what it predicts at
  the paper's path length.
"""

from __future__ import annotations

import math

from scipy import stats

from .claims import (CONVERGED_FRACTION, FAIL, NA, PASS, RunNumbers, broken_order, claim_row, fmt, groups_text,
                     order_margin)

IDENTITY_RTOL = 1e-9  #: the recording identity's own tolerance (gamma_theory.theorem1)
EQUIVALENCE_FACTOR = 1.25  #: "as fast as": the slower's mean training loss at most this x the faster's
VANISH_FRACTION = 1e-4  #: "vanished": epoch-mean ||U||^2 at most this x the first epoch's (norm / 100)
DIRECTION_DEG = 45.0  #: "very different": the angle between update and SGD direction above this
PAPER_STEPS = 58_650  #: 150 epochs x 391 steps of batch 128 on CIFAR's 50,000 images
FORMS = ("x dist0^2", "raw")


def identity_claim(runs: list[RunNumbers]) -> dict:
    """The gamma-speed identity on every trace whose theta* ends the path, and item 3 at K."""
    name = "gamma-speed identity (theta* = last iterate)"
    statement = ("with theta* = theta_K, sum_k num_k = ||theta_0 - theta*||^2 / (2 eta) exactly (the recording identity "
                 "telescoped), so the gap-weighted mean of the per-step gammas is 1 / (2 eta sum_k gap_k): an average "
                 "gamma IS the reciprocal of the accumulated loss gap, and Theorem 1 item 3 at the whole run "
                 "(gamma_max <= that mean) cannot fail once Definition 1 holds. A consequence of choosing "
                 "theta* = theta_K, checked here on every trace; not evidence for the paper")
    rows = [r for r in runs if r.judged and r.identity_residual is not None and r.ends_at_star]
    if not rows:
        return claim_row(name, "consequence", statement, NA, {}, "no trace whose theta* ends its path")
    worst = max(rows, key=lambda r: r.identity_residual)
    bad = [r.label for r in rows if not r.identity_residual <= IDENTITY_RTOL]
    ratios = [r.gamma_max_over_bar for r in rows if r.gamma_max_over_bar is not None and r.d1_holds
              and (r.min_gap or 0) >= 0]
    numbers = {"runs": len(rows), "largest relative residual": fmt(worst.identity_residual),
               "gamma_max / gamma_bar (Definition 1 holds, no negative gap)":
                   f"{fmt(max(ratios))} at most, over {len(ratios)} runs" if ratios else "n/a"}
    if bad:
        return claim_row(name, "consequence", statement, FAIL, numbers,
                        f"the identity fails beyond round-off in {len(bad)} of {len(rows)} traces ({', '.join(bad)}): "
                        "their columns are not one consistent recording")
    return claim_row(name, "consequence", statement, PASS, numbers,
                    f"holds in all {len(rows)} traces to {worst.identity_residual:.1e} (largest in {worst.label})")


# -- matched loss --------------------------------------------------------------------------------
def _matched_point(r: RunNumbers, level: float) -> int | None:
    """The first whole epoch E (index into the prefix arrays) whose mean loss is <= level."""
    for i, x in enumerate(r.prefix["epoch_loss"]):
        if x <= level:
            return i
    return None


def matched_gamma_order_claim(network: str, groups: list[list[str]], runs: dict[str, RunNumbers], reading: str,
                              form: str) -> dict:
    """The paper's gamma order, each variant's gamma taken over its steps until the network's
    variants all first reach one training loss."""
    what = "Definition 1's largest gamma" if reading == "theory" else "the median per-step gamma"
    name = f"{network} gamma order at matched loss ({reading}, {form})"
    statement = (f"{network}: {what}{'' if form == 'raw' else ' x ||theta_0 - theta*||^2'} increases "
                 f"{groups_text(groups)}, each variant's taken over its steps until it first reaches the lowest "
                 "epoch-mean training loss that every variant reaches (against its own theta*)")
    variants = [v for g in groups for v in g]
    missing = [v for v in variants if v not in runs or not runs[v].judged or runs[v].prefix is None]
    if missing:
        return claim_row(name, "order", statement, NA, {}, f"no measured trace for {', '.join(missing)}")
    level = max(min(runs[v].prefix["epoch_loss"]) for v in variants)
    first = max(runs[v].prefix["epoch_loss"][0] for v in variants)
    key = "gamma_max_x_d0" if reading == "theory" else "median_x_d0"
    values, numbers, why = {}, {"matched loss": fmt(level)}, []
    for v in variants:
        r = runs[v]
        i = _matched_point(r, level)
        g = r.prefix[key][i]
        if g is not None and form == "raw":
            g = g / r.dist0**2
        numbers[v] = f"{fmt(g)} (epoch {i + 1})"
        if g is None:
            why.append(f"{v}: no gamma fits its first {i + 1} epochs" if reading == "theory"
                       else f"{v}: no positive-gap step")
        else:
            values[v] = g
    if why:
        return claim_row(name, "order", statement, NA, numbers, "; ".join(why))
    if not level < 0.5 * first:
        return claim_row(name, "order", statement, NA, numbers,
                        f"the loss every variant reaches ({fmt(level)}) is not below half the first epoch's "
                        f"({fmt(first)}): the variants share no stretch of progress to compare")
    margin = order_margin(groups, values, larger_is_better=True)
    broken = broken_order(groups, values, larger_is_better=True)
    if broken:
        return {**claim_row(name, "order", statement, FAIL, numbers, "REVERSED: " + "; ".join(broken)), "margin": margin}
    return {**claim_row(name, "order", statement, PASS, numbers, "the order holds"), "margin": margin}


# -- equivalences, depth, vanishing gradient, directions -----------------------------------------
def equivalence_claim(network: str, a: str, b: str, runs: dict[str, RunNumbers]) -> dict:
    """``a`` converges about as fast as ``b`` (the paper's "as fast as" / "comparable")."""
    name = f"{network} {a} as fast as {b}"
    statement = (f"{network}: the {a} variant converges about as fast as {b} (the paper's words): mean training loss "
                 f"within a factor {EQUIVALENCE_FACTOR:g} of each other")
    ra, rb = runs.get(a), runs.get(b)
    if ra is None or rb is None or ra.speed_key() is None or rb.speed_key() is None:
        return claim_row(name, "equivalence", statement, NA, {}, f"no measured run for {a if ra is None else b}")
    sa, sb = ra.speed_key(), rb.speed_key()
    numbers = {a: ra.speed_text(), b: rb.speed_text()}
    if not (math.isfinite(sa) and math.isfinite(sb)) or min(sa, sb) <= 0:
        return claim_row(name, "equivalence", statement, FAIL if math.isinf(sa) != math.isinf(sb) else NA, numbers,
                        "one of them diverged" if math.isinf(sa) != math.isinf(sb) else "no finite positive speeds")
    ratio = max(sa, sb) / min(sa, sb)
    numbers["ratio"] = fmt(ratio)
    margin = EQUIVALENCE_FACTOR - ratio
    if ratio <= EQUIVALENCE_FACTOR:
        return {**claim_row(name, "equivalence", statement, PASS, numbers, f"ratio {ratio:.3g}"), "margin": margin}
    slower = a if sa > sb else b
    return {**claim_row(name, "equivalence", statement, FAIL, numbers,
                       f"ratio {ratio:.3g} > {EQUIVALENCE_FACTOR:g}: {slower} is slower"), "margin": margin}


def deeper_claim(shallow: str, deep: str, weak: str, strong: str, by_net: dict[str, dict[str, RunNumbers]]) -> dict:
    """The slowdown from ``strong`` to ``weak`` is larger in the deeper network."""
    name = f"skip connections more effective in {deep} than {shallow}"
    statement = (f"the slowdown without most skip connections, mean loss({weak}) / mean loss({strong}), is larger in "
                 f"{deep} than in {shallow} (Sec. 3.3: 'skip connections are more effective in deeper resnets')")
    ratios = {}
    for net in (shallow, deep):
        rs = by_net.get(net, {})
        w, s = rs.get(weak), rs.get(strong)
        if w is None or s is None or w.speed_key() is None or s.speed_key() is None or not s.speed_key() > 0:
            return claim_row(name, "order", statement, NA, {}, f"no measured {weak}/{strong} pair for {net}")
        ratios[net] = w.speed_key() / s.speed_key()
    numbers = {net: fmt(x) for net, x in ratios.items()}
    margin = ratios[deep] - ratios[shallow]
    if not all(math.isfinite(x) for x in ratios.values()):
        return claim_row(name, "order", statement, NA, numbers, "a run diverged")
    ok = ratios[deep] > ratios[shallow]
    return {**claim_row(name, "order", statement, PASS if ok else FAIL, numbers,
                       f"{deep} {ratios[deep]:.3g} {'>' if ok else '<='} {shallow} {ratios[shallow]:.3g}"),
            "margin": margin}


def vanishing_claim(network: str, variant: str, runs: dict[str, RunNumbers]) -> dict:
    """The gradient (for plain SGD, the update) vanishes before the loss converges."""
    name = f"{network} {variant}: gradient vanishes"
    statement = (f"{network} without BN ({variant}): the gradient vanishes (Sec. 3.2, 'after around 25 epochs'): the "
                 f"epoch-mean ||U_k||^2 (the stochastic gradient's, for plain SGD) falls to {VANISH_FRACTION:g} x its "
                 f"first epoch's while the epoch's loss is above {CONVERGED_FRACTION:g} x the first epoch's")
    r = runs.get(variant)
    if r is None or not r.judged or r.update_sq_by_epoch is None:
        return claim_row(name, "observation", statement, NA, {}, "no measured trace")
    u, loss = r.update_sq_by_epoch, r.prefix["epoch_loss"]
    ratio = [x / u[0] for x in u]
    at = next((e for e, (q, lo) in enumerate(zip(ratio, loss)) if q <= VANISH_FRACTION
               and lo > CONVERGED_FRACTION * loss[0]), None)
    numbers = {"smallest ||U||^2 / first epoch's": fmt(min(ratio)), "at epoch": ratio.index(min(ratio)) + 1,
               "epochs": len(u)}
    if at is None:
        return claim_row(name, "observation", statement, FAIL, numbers,
                        f"it does not: the epoch-mean ||U||^2 stays above {VANISH_FRACTION:g} x the first epoch's "
                        "while the loss is unconverged")
    return claim_row(name, "observation", statement, PASS, {**numbers, "vanished at epoch": at + 1},
                    f"vanished at epoch {at + 1} of {len(u)}")


def directions_claim(network: str, variant: str, runs: dict[str, RunNumbers]) -> dict:
    """Fig. 12: the updates of momentum / Adam point very differently from the SGD direction."""
    name = f"{network} {variant} updates differ from the SGD direction"
    statement = (f"{network}: the updates of {variant} point very differently from the SGD direction -g_k (Fig. 12, "
                 f"App. D.2): the per-step angle between U_k and g_k is above {DIRECTION_DEG:g} degrees on most steps. "
                 "The columns bound that angle by |a(U) - a(g)| <= angle <= a(U) + a(g), a(.) the angle to "
                 "theta_k - theta*: PASS when the median lower bound is above it, FAIL when the median upper bound "
                 "is below it, else undecided")
    r = runs.get(variant)
    d = r.directions if r is not None and r.judged else None
    if d is None or d.get("angle_lower_bound_median") is None:
        return claim_row(name, "observation", statement, NA, {}, "no gradient columns recorded")
    lo = d["angle_lower_bound_median"]
    hi = d["update_angle_median"] + d["grad_angle_median"]
    numbers = {"angle(U, theta_k - theta*)": f"{d['update_angle_median']:.0f} deg",
               "angle(g, theta_k - theta*)": f"{d['grad_angle_median']:.0f} deg",
               "lower bound, median": f"{lo:.0f} deg", f"steps with lower bound > {DIRECTION_DEG:g} deg":
                   f"{100 * d['share_lower_bound_over_45']:.0f}%"}
    if lo > DIRECTION_DEG:
        return {**claim_row(name, "observation", statement, PASS, numbers, f"median lower bound {lo:.0f} deg"),
                "margin": lo - DIRECTION_DEG}
    if hi < DIRECTION_DEG:
        return {**claim_row(name, "observation", statement, FAIL, numbers, f"median upper bound {hi:.0f} deg"),
                "margin": hi - DIRECTION_DEG}
    return claim_row(name, "observation", statement, NA, numbers,
                    f"undecided: the median bounds {lo:.0f}-{hi:.0f} deg straddle {DIRECTION_DEG:g}")


# -- premise in the measurement's mode, violation rate ---------------------------------------------
def premise_batch_claim(runs: list[RunNumbers]) -> dict:
    name = "theta* fits the training set (measurement's mode)"
    statement = ("theta*'s mean loss on the steps' own batches in batch-statistics mode, the mode loss_star is taken "
                 f"in (the mean of loss_star over the last epoch: f(theta*) as the measurement sees it), is at most "
                 f"{CONVERGED_FRACTION:g} x the first epoch's mean training loss")
    rows = [r for r in runs if r.judged and r.star_batch_loss is not None and r.first_loss]
    if not rows:
        return claim_row(name, "premise", statement, NA, {}, "no run could be judged")
    failing = [r.label for r in rows if not r.star_batch_loss <= CONVERGED_FRACTION * r.first_loss]
    numbers = {r.label: fmt(r.star_batch_loss) for r in rows}
    if failing:
        return claim_row(name, "premise", statement, FAIL, numbers,
                        f"{len(failing)} of {len(rows)} runs break it: {', '.join(failing)}")
    return claim_row(name, "premise", statement, PASS, numbers, f"all {len(rows)} runs")


def violation_rate(runs: list[RunNumbers]) -> dict | None:
    """Pooled per-step rate of Definition 1 violations over converged runs, its 95% Clopper-Pearson
    interval, and the chance of at least one violation on a path of the paper's length."""
    rows = [r for r in runs if r.judged and r.converged and r.n_steps]
    if not rows:
        return None
    return rate_numbers(sum(r.n_violating for r in rows), sum(r.n_steps for r in rows), len(rows))


def rate_numbers(k: int, n: int, runs: int) -> dict:
    """``k`` violating steps in ``n`` steps of ``runs`` paths: the rate, its 95% Clopper-Pearson
    interval, and the chance of at least one violation on a path of the paper's length."""
    ci = stats.binomtest(k, n).proportion_ci(0.95)

    def at_paper(p):
        return 1.0 - (1.0 - p) ** PAPER_STEPS

    return {"violating_steps": k, "steps": n, "runs": runs, "rate": k / n, "ci95": [ci.low, ci.high],
            "paper_steps": PAPER_STEPS, "p_violation_at_paper_length": at_paper(k / n),
            "p_violation_at_paper_length_ci95": [at_paper(ci.low), at_paper(ci.high)]}


def reading_reversals(expected_order: dict[str, list[list[str]]], runs: list[RunNumbers]) -> list[dict]:
    """Every reading of every gamma order the paper states, over all runs (converged or not), per
    adjacent pair of groups: in how many seeds the paper's order holds, and where it is reversed.
    Descriptive: a non-converged run's gamma measures how its steps point at a point that is no
    minimizer, so these rows decide nothing; they show what the raw numbers say."""
    readings = [("theory", "raw"), ("theory", "x dist0^2"), ("paper", "raw"), ("paper", "x dist0^2")]
    out = []
    by_seed: dict[int, dict[str, dict[str, RunNumbers]]] = {}
    for r in runs:
        if r.judged:
            by_seed.setdefault(r.seed, {}).setdefault(r.network, {})[r.variant] = r
    for net, groups in expected_order.items():
        for lo, hi in zip(groups, groups[1:]):
            for reading, form in readings:
                held, reversed_, undecided, values = [], [], [], {}
                for seed, nets in sorted(by_seed.items()):
                    rs = nets.get(net, {})

                    def val(v):
                        r = rs.get(v)
                        if r is None:
                            return None
                        return r.gamma(reading) if form == "raw" else r.dimensionless(reading)

                    a = [val(v) for v in lo]
                    b = [val(v) for v in hi]
                    if any(x is None for x in a + b):
                        undecided.append(seed)
                        continue
                    values[f"s{seed}"] = f"{', '.join(fmt(x) for x in a)} vs {', '.join(fmt(x) for x in b)}"
                    (held if max(a) < min(b) else reversed_).append(seed)
                converged = all(r.converged for nets in by_seed.values() for v in lo + hi
                                for r in [nets.get(net, {}).get(v)] if r is not None)
                out.append({"network": net, "pair": f"{'/'.join(lo)} < {'/'.join(hi)}", "reading": reading,
                            "form": form, "holds_in": len(held), "reversed_in": len(reversed_),
                            "undecided_in": len(undecided), "values": values, "all_converged": converged})
    return out
