"""The principle's neighbours in the literature, judged on the same recorded path.

Each checker is a pure function of a :class:`~gamma_theory.trace.Trace`, like Definition 1. With
``num_k = inner_k - eta/2 update_sq_k``, ``gap_k = loss_k - loss_star_k``, ``a_k = theta_k -
theta*`` and ``g_k`` the stochastic gradient of step k (after backward, before the optimizer
step; the trace's ``grad_inner = <g_k, a_k>`` and ``grad_sq = ||g_k||^2``):

* **regularity** (the paper's Sec. 2 "Discussion"): inequality (2) with its last term replaced by
  ``gamma ||theta_k - theta*||^2``, i.e. ``num_k >= gamma dist_sq_k`` with one ``gamma > 0``.
  Largest feasible gamma: ``min_k num_k / dist_sq_k``. Needs only the update's columns.
* **star-convex path** (Zhou et al., ICLR 2019, the iterationwise form): ``l(theta*; z_k) >=
  l(theta_k; z_k) + <g_k, theta* - theta_k>``, i.e. ``grad_inner_k >= gap_k`` at every step. It
  is the paper's eq. (2) with ``gamma = ||theta_0 - theta*||^-2``, ``U = g`` and no ``eta/2``
  term.
* **restricted secant inequality** (RSI): ``grad_inner_k >= mu dist_sq_k`` with one ``mu > 0``.
  Largest feasible mu: ``min_k grad_inner_k / dist_sq_k``.
* **alpha-beta condition** (Islamov et al., NeurIPS 2024): ``<g_k, theta_k - theta_p> >=
  alpha (f_k(theta_k) - f_k(theta_p)) - beta (f_k(theta_k) - f_k^*)`` with ``alpha > beta > 0``,
  taken on the path with ``theta_p = theta*`` and ``f_k^* = 0`` (the infimum of a batch's
  cross-entropy or squared loss; an assumption, stated). Per step: ``grad_inner_k >= alpha gap_k
  - beta loss_k``. Reported: whether it holds and the smallest ``beta / (alpha - beta)`` it
  holds with (see :func:`alpha_beta`: with ``loss_star > 0`` it always holds for large enough
  ``beta``, so the ratio is the informative number).
* **Definition 1 with the gradient** in place of the update: inequality (2) for ``U_k = g_k``;
  for plain SGD it is Definition 1 itself.

"share" is the share of steps that satisfy the condition on their own (with some constant > 0),
or, for star-convexity, that satisfy it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .definition1 import definition_1
from .trace import Trace

@dataclass(frozen=True)
class ConditionResult:
    name: str
    holds: bool | None  #: None: not measurable on this trace (no gradient columns)
    constants: dict = field(default_factory=dict)  #: the largest feasible constant(s), None if none
    share: float | None = None  #: share of steps that satisfy it on their own
    n_steps: int = 0
    violating_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    why: str = ""  #: when holds is None: what is missing

    def to_dict(self, max_steps: int = 50) -> dict:
        return {"condition": self.name, "holds": self.holds, "constants": dict(self.constants), "share": self.share,
                "n_steps": self.n_steps, "n_violating": int(self.violating_steps.size),
                "violating_steps": [int(s) for s in self.violating_steps[:max_steps]], "why": self.why}


def _steps(trace: Trace) -> np.ndarray:
    return trace.step if trace.step is not None else np.arange(len(trace))


def _ratio_condition(name: str, trace: Trace, lhs: np.ndarray, key: str) -> ConditionResult:
    """``lhs_k >= c dist_sq_k`` with one c > 0: the largest c is min lhs/dist_sq (a step with
    dist_sq = 0 needs lhs >= 0)."""
    d = trace.dist_sq
    pos = d > 0
    own_ok = np.where(pos, lhs > 0, lhs >= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(pos, lhs / np.where(pos, d, 1.0), np.inf)
    c = float(ratio.min()) if len(trace) else np.inf
    holds = bool(own_ok.all()) and c > 0
    return ConditionResult(name, holds, {key: c if holds else None}, float(own_ok.mean()) if len(trace) else 1.0,
                           len(trace), _steps(trace)[~own_ok])


def regularity(trace: Trace) -> ConditionResult:
    num = trace.inner - 0.5 * trace.step_lr * trace.update_sq
    return _ratio_condition("regularity", trace, num, "gamma_max")


def _no_grad(name: str, trace: Trace) -> ConditionResult | None:
    if trace.has_grad:
        return None
    return ConditionResult(name, None, {}, None, len(trace), why="the trace has no gradient columns "
                           "(grad_inner, grad_sq); gpcheck deep and gpcheck ladder record them: measure the "
                           "path with either to judge this condition")


def star_convex_path(trace: Trace) -> ConditionResult:
    missing = _no_grad("star-convex path", trace)
    if missing:
        return missing
    ok = trace.grad_inner >= trace.gap
    margin = trace.grad_inner - trace.gap
    return ConditionResult("star-convex path", bool(ok.all()),
                           {"min_margin": float(margin.min()) if len(trace) else None},
                           float(ok.mean()) if len(trace) else 1.0, len(trace), _steps(trace)[~ok])


def rsi(trace: Trace) -> ConditionResult:
    missing = _no_grad("RSI", trace)
    return missing or _ratio_condition("RSI", trace, trace.grad_inner, "mu_max")


def _delta_range(gap, ls, c, rho: float):
    """For ``beta = rho (alpha - beta)``, the steps' constraints on ``delta = alpha - beta > 0``:
    ``delta (gap_k - rho ls_k) <= c_k``. Returns ``(feasible, low, high, alone_bad)``."""
    with np.errstate(over="ignore", invalid="ignore"):
        coef = gap - rho * ls
    up, lo, zero = coef > 0, (coef < 0) & (c < 0), coef == 0
    alone_bad = (up & (c <= 0)) | (zero & (c < 0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        high = float((c[up] / coef[up]).min()) if up.any() else np.inf
        low = float((c[lo] / coef[lo]).max()) if lo.any() else 0.0
    feasible = not alone_bad.any() and high > 0 and high >= low
    return feasible, low, high, alone_bad


def alpha_beta(trace: Trace) -> ConditionResult:
    """The alpha-beta condition on the path. With ``delta = alpha - beta > 0`` and ``rho = beta /
    (alpha - beta)``, a step reads ``delta (gap_k - rho loss_star_k) <= grad_inner_k``. A larger
    ``rho`` only loosens the steps (``loss_star >= 0``), so the condition holds iff some finite
    ``rho`` admits a ``delta > 0``; when ``loss_star > 0`` on every batch (cross-entropy) it always
    does, with ``alpha`` and ``beta`` large. What carries information is the smallest ``rho``: in
    Islamov et al.'s SGD bound the neighbourhood SGD reaches grows with ``beta / (alpha - beta)``.
    Reported: ``rho_min`` (found by bisection to relative 1e-12; 0 when ``grad_inner_k >= delta
    gap_k`` with one ``delta > 0``, a scaled star-convexity) and the feasible ``delta`` range there,
    with one feasible ``(alpha, beta)``."""
    missing = _no_grad("alpha-beta", trace)
    if missing:
        return missing
    gap, ls, c = trace.gap, trace.loss_star, trace.grad_inner
    if (ls < 0).any():
        return ConditionResult("alpha-beta", None, {}, None, len(trace),
                               why="a negative loss at theta*: f_k^* = 0 does not bound it")
    ok0, *_ = _delta_range(gap, ls, c, 0.0)
    if ok0:
        rho = 0.0
    else:
        hi = 1.0
        while not _delta_range(gap, ls, c, hi)[0] and hi < 1e300:
            hi *= 16.0
        feasible, _, _, alone_bad = _delta_range(gap, ls, c, hi)
        if not feasible:
            return ConditionResult("alpha-beta", False, {"rho_min": None, "alpha": None, "beta": None},
                                   float(1 - alone_bad.mean()) if len(trace) else 1.0, len(trace),
                                   _steps(trace)[alone_bad])
        lo = 0.0
        for _ in range(400):  # bisection (geometric while the bracket spans decades)
            if lo == 0.0:
                mid = hi / 16
            else:
                mid = float(np.sqrt(lo * hi)) if hi / lo > 4 else 0.5 * (lo + hi)
            if _delta_range(gap, ls, c, mid)[0]:
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-12 * hi:
                break
        rho = hi
    _, low, high, _ = _delta_range(gap, ls, c, rho)
    delta = high if np.isfinite(high) else max(low, 1.0)
    beta = rho * delta
    if not np.isfinite(beta + delta) or not beta + delta > beta:  # no float64 point to show: the ratio is said
        beta = delta = None
    const = {"rho_min": rho, "delta_low": low, "delta_high": high,
             "alpha": None if beta is None else beta + delta, "beta": beta}
    return ConditionResult("alpha-beta", True, const, 1.0, len(trace))


def definition_1_gradient(trace: Trace) -> ConditionResult:
    missing = _no_grad("Definition 1 (gradient)", trace)
    if missing:
        return missing
    t = replace(trace, inner=trace.grad_inner, update_sq=trace.grad_sq, meta={})
    r = definition_1(t)
    return ConditionResult("Definition 1 (gradient)", r.holds, {"gamma_max": r.gamma_max}, r.share_positive,
                           len(trace), r.violating_steps)


@dataclass(frozen=True)
class Condition:
    """One related condition: everything gpcheck knows of it, in one place. The reports build their
    column, their cell and their note from these fields, so a new condition is one new entry of
    :data:`CONDITIONS` (its checker returns a :class:`ConditionResult` whose ``constants`` hold
    ``key``)."""

    name: str  #: the column's title and the result's ``condition``
    statement: str  #: the condition exactly, in plain text
    note: str  #: how the report's note reads it, after its name: ": <formula> (source)"
    constant: str  #: what the reported constant is
    key: str  #: the constant's key in ``ConditionResult.constants``
    label: str  #: the constant's symbol in a report cell ("γ 0.12")
    check: Callable[[Trace], ConditionResult]


CONDITIONS: tuple[Condition, ...] = (
    Condition("regularity", "num_k >= gamma ||theta_k - theta*||^2, one gamma > 0 (the paper's Sec. 2 Discussion)",
              ": num_k >= γ ||θ_k − θ*||² (the paper's Sec. 2 Discussion)",
              "the largest feasible gamma, min_k num_k / dist_sq_k", "gamma_max", "γ", regularity),
    Condition("star-convex path", "<g_k, theta_k - theta*> >= l(theta_k; z_k) - l(theta*; z_k) at every step "
              "(Zhou et al. 2019, iterationwise)",
              ": <g_k, θ_k − θ*> >= l(θ_k; z_k) − l(θ*; z_k) at every step (Zhou et al. 2019; min margin = the "
              "smallest left minus right side)",
              "the smallest margin, min_k (grad_inner_k - gap_k)", "min_margin", "min margin", star_convex_path),
    Condition("RSI", "<g_k, theta_k - theta*> >= mu ||theta_k - theta*||^2, one mu > 0 (restricted secant inequality)",
              ": <g_k, θ_k − θ*> >= μ ||θ_k − θ*||²",
              "the largest feasible mu, min_k grad_inner_k / dist_sq_k", "mu_max", "μ", rsi),
    Condition("alpha-beta", "<g_k, theta_k - theta*> >= alpha gap_k - beta l(theta_k; z_k), one alpha > beta > 0 "
              "(Islamov et al. 2024, with theta_p = theta* and f_k^* = 0)",
              " (Islamov et al. 2024, with θ_p = θ* and f_k* = 0): <g_k, θ_k − θ*> >= α gap_k − β l(θ_k; z_k), "
              "α > β > 0: it always holds when l(θ*; z_k) > 0 for large enough β, so the smallest β/(α−β) is given "
              "(lower is stronger)",
              "the smallest beta / (alpha - beta) it holds with", "rho_min", "min β/(α−β)", alpha_beta),
    Condition("Definition 1 (gradient)", "inequality (2) with the stochastic gradient g_k in place of the update U_k",
              ": inequality (2) with the stochastic gradient g_k in place of the update (equal to Definition 1 for "
              "plain SGD)",
              "the largest feasible gamma", "gamma_max", "γ", definition_1_gradient),
)


def related_conditions(trace: Trace) -> list[ConditionResult]:
    """Every condition of :data:`CONDITIONS` on one path, in its order (each result named as its
    entry)."""
    out = []
    for c in CONDITIONS:
        r = c.check(trace)
        out.append(r if r.name == c.name else replace(r, name=c.name))
    return out
