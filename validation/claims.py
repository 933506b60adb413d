"""The paper's claims as named, checkable statements, each decided by numbers from the traces.

Stated measures (written into every report):

* **gamma summary**: the median over all steps with a positive loss gap of the per-step upper
  bound ``num_k / (dist0_sq * gap_k)``, which is the quantity the paper plots as gamma. (The
  strict largest feasible gamma of Definition 1 exists only where the whole path obeys the
  principle, so it cannot rank runs that break it.)
* **strict gamma**: Definition 1's largest feasible gamma, 0 where no single gamma > 0 fits
  every step; a second, stricter reading of "larger gamma", used in a second correlation.
* **speed**: ``log(first-epoch mean loss / last-epoch mean loss)``, the orders of magnitude of
  training loss a run sheds; larger is faster. A diverged run is slower than any run that did not
  diverge.
* **epochs to threshold**: the first epoch whose mean training loss is at most
  ``THRESHOLD_FRACTION`` of the first epoch's.

Verdicts are PASS, FAIL or NOT APPLICABLE, always with the numbers that decided them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

PASS, FAIL, NA = "PASS", "FAIL", "NOT APPLICABLE"
THRESHOLD_FRACTION = 0.1
ALPHA = 0.05  #: significance level of the rank correlation


@dataclass
class RunNumbers:
    """What the claims need from one run."""

    network: str
    variant: str
    status: str  #: ok | diverged | error | missing
    gamma: float | None  #: the gamma summary (median per-step upper bound)
    speed: float | None
    d1_holds: bool | None
    share_positive: float | None
    distance_holds: bool | None
    gamma_strict: float | None = None  #: largest feasible gamma; 0 when the feasible set is empty

    @property
    def label(self) -> str:
        return f"{self.network}/{self.variant}"

    def speed_key(self) -> float:
        """Diverged runs rank below every run that finished."""
        if self.status == "diverged":
            return -math.inf
        return self.speed if self.speed is not None else math.nan


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "diverged" if x < 0 else "inf"
    return f"{x:.3g}"


def _verdict(name: str, statement: str, verdict: str, numbers: dict, why: str) -> dict:
    return {"claim": name, "statement": statement, "verdict": verdict, "numbers": numbers, "why": why}


def order_claim(name: str, network: str, quantity: str, groups: list[list[str]], runs: dict[str, RunNumbers]) -> dict:
    """``quantity`` ('gamma' or 'speed') increases from each group of variants to the next."""
    statement = f"{network}: {quantity} " + " < ".join(
        "(" + ", ".join(g) + ")" if len(g) > 1 else g[0] for g in groups) + " (every member of a group below every member of the next)"
    values = {}
    for g in groups:
        for v in g:
            r = runs.get(v)
            if r is None or r.status in ("error", "missing"):
                values[v] = None
            else:
                values[v] = r.gamma if quantity == "gamma" else r.speed_key()
    numbers = {v: _fmt(x) for v, x in values.items()}
    missing = [v for v, x in values.items() if x is None or (isinstance(x, float) and math.isnan(x))]
    if missing:
        return _verdict(name, statement, NA, numbers, f"no {quantity} for {', '.join(missing)}")
    broken = []
    for lo, hi in zip(groups, groups[1:]):
        top, bottom = max(values[v] for v in lo), min(values[v] for v in hi)
        if not top < bottom:
            a = max(lo, key=lambda v: values[v])
            b = min(hi, key=lambda v: values[v])
            broken.append(f"{a} ({_fmt(values[a])}) is not below {b} ({_fmt(values[b])})")
    if broken:
        return _verdict(name, statement, FAIL, numbers, "; ".join(broken))
    return _verdict(name, statement, PASS, numbers, "the order holds")


def correlation_claim(runs: list[RunNumbers], strict: bool = False) -> dict:
    """The general claim: across the suite's runs, larger gamma goes with faster convergence.

    ``strict``: rank by Definition 1's largest feasible gamma (0 when none) instead of the
    gamma summary."""
    which = "strict gamma (largest feasible, 0 if none)" if strict else "gamma summary"
    name = f"gamma-speed correlation ({'strict gamma' if strict else 'gamma summary'})"
    statement = (f"across the suite's runs, a larger {which} goes with faster convergence "
                 f"(Spearman rank correlation > 0 at significance {ALPHA})")
    pts = [(r.gamma_strict if strict else r.gamma, r.speed_key()) for r in runs
           if r.status in ("ok", "diverged")]
    pts = [(g, s) for g, s in pts if g is not None]
    pts = [(g, s) for g, s in pts if not (isinstance(s, float) and math.isnan(s))]
    if len(pts) < 3:
        return _verdict(name, statement, NA, {"n": len(pts)}, "fewer than 3 runs with both numbers")
    g, s = np.array(pts, dtype=float).T
    s = np.where(np.isneginf(s), np.nanmin(s[np.isfinite(s)]) - 1 if np.isfinite(s).any() else -1.0, s)
    if np.ptp(g) == 0 or np.ptp(s) == 0:
        return _verdict(name, statement, NA, {"n": len(pts)}, "no variation to rank")
    res = stats.spearmanr(g, s)
    rho, p = float(res.statistic), float(res.pvalue)
    numbers = {"n": len(pts), "spearman_rho": round(rho, 4), "p_value": float(f"{p:.3g}")}
    if rho > 0 and p < ALPHA:
        return _verdict(name, statement, PASS, numbers, f"rho = {rho:.3f}, p = {p:.3g}")
    why = f"rho = {rho:.3f}, p = {p:.3g}" + (" (positive but not significant)" if rho > 0 else "")
    return _verdict(name, statement, FAIL, numbers, why)


def principle_claims(runs: list[RunNumbers]) -> list[dict]:
    """The paper's claims that every training obeys the principle and Theorem 1 item 1."""
    out = []
    judged = [r for r in runs if r.status in ("ok", "diverged") and r.d1_holds is not None]
    for name, statement, get, ok in [
        ("principle holds", "every run's path satisfies Definition 1 (one gamma > 0 for all steps)",
         lambda r: r.d1_holds, lambda x: x),
        ("gamma positive throughout", "every per-step gamma bound the paper plots is positive (share positive = 1)",
         lambda r: r.share_positive, lambda x: x == 1.0),
        ("distance diminishes", "||theta_k - theta*|| never increases (Theorem 1 item 1)",
         lambda r: r.distance_holds, lambda x: x),
    ]:
        if not judged:
            out.append(_verdict(name, statement, NA, {}, "no run could be judged"))
            continue
        failing = [r.label for r in judged if not ok(get(r))]
        numbers = {r.label: (_fmt(get(r)) if isinstance(get(r), float) else bool(get(r))) for r in judged}
        if failing:
            out.append(_verdict(name, statement, FAIL, numbers, f"{len(failing)} of {len(judged)} runs break it: {', '.join(failing)}"))
        else:
            out.append(_verdict(name, statement, PASS, numbers, f"all {len(judged)} runs"))
    return out


def suite_claims(expected_order: dict[str, list[list[str]]], runs: list[RunNumbers]) -> list[dict]:
    """Every claim of a suite: the principle, the per-network orders, the correlation."""
    by_net: dict[str, dict[str, RunNumbers]] = {}
    for r in runs:
        by_net.setdefault(r.network, {})[r.variant] = r
    claims = principle_claims(runs)
    for net, groups in expected_order.items():
        if net not in by_net:
            continue
        claims.append(order_claim(f"{net} gamma order", net, "gamma", groups, by_net[net]))
        claims.append(order_claim(f"{net} speed order", net, "speed", groups, by_net[net]))
    claims.append(correlation_claim(runs))
    claims.append(correlation_claim(runs, strict=True))
    return claims
