r"""Definition 1 of the paper, the gamma-optimization principle, as a pure function of a trace.

For every step ``k`` the principle asks, for one ``gamma > 0`` shared by all steps,

.. math::
    \langle \theta_k - \theta^*, U_k \rangle - \tfrac{\eta}{2}\|U_k\|^2
    \;\ge\; \gamma\,\|\theta_0 - \theta^*\|^2\,\bigl(\ell(\theta_k; z_k) - \ell(\theta^*; z_k)\bigr).

With ``num_k = inner_k - eta_k/2 * update_sq_k`` and ``gap_k = loss_k - loss_star_k`` each step
gives one constraint on gamma. ``eta_k`` is the step's own learning rate: the trace's ``eta``
column under a schedule (``U_k = (theta_k - theta_{k+1}) / eta_k``), the constant ``lr``
otherwise (computed then exactly as before schedules existed; ``docs/schedules.md``):

* ``gap_k > 0``: an upper bound ``gamma <= num_k / (dist0_sq * gap_k)`` (the per-step gamma the
  paper plots);
* ``gap_k < 0``: a lower bound ``gamma >= num_k / (dist0_sq * gap_k)`` (dividing flips the sign);
* ``gap_k == 0``: every gamma works iff ``num_k >= 0``, none otherwise.

The path obeys the principle iff ``{gamma > 0} ∩ [max lower, +inf) ∩ (-inf, min upper]`` is not
empty and no zero-gap step has ``num_k < 0``. Nothing is smoothed or dropped: every step counts.

Verdicts at round-off. The columns are float64 numbers; ``num_k`` is computed from them with two
roundings, so its computed sign can differ from the exact one when ``|num_k|`` is within
``ROUNDOFF * (|inner_k| + eta_k/2 * update_sq_k)`` of zero (the gap's sign is always exact: a
floating-point subtraction never rounds a nonzero difference to zero or across it). Such steps,
and conflicts between bounds that tie within their own round-off, are *undecidable at float64*:
they are listed apart, and the verdict computed without them says whether a FAIL (or a PASS)
rests on them alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .trace import Trace

EPS = float(np.finfo(np.float64).eps)
#: |computed num - exact num| <= ROUNDOFF * (|inner| + eta/2 * update_sq), with a factor 2 to spare
ROUNDOFF = 2 * EPS


@dataclass(frozen=True)
class StepBounds:
    """Per-step pieces of inequality (2); arrays have one entry per step."""

    num: np.ndarray  #: ``inner - eta_k/2 * update_sq``
    gap: np.ndarray  #: ``loss - loss_star``
    bound: np.ndarray  #: ``num / (dist0_sq * gap)``; NaN where ``gap == 0``
    is_upper: np.ndarray  #: ``gap > 0``
    is_lower: np.ndarray  #: ``gap < 0``
    is_zero: np.ndarray  #: ``gap == 0``


def step_bounds(trace: Trace) -> StepBounds:
    """The constraint each step puts on gamma (see the module docstring)."""
    num = trace.inner - 0.5 * trace.step_lr * trace.update_sq
    gap = trace.loss - trace.loss_star
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(gap != 0, num / (trace.dist0_sq * gap), np.nan)
    return StepBounds(num=num, gap=gap, bound=bound, is_upper=gap > 0, is_lower=gap < 0, is_zero=gap == 0)


@dataclass(frozen=True)
class Definition1Result:
    """The verdict of Definition 1 on one path.

    ``gamma_low``/``gamma_high`` bound the feasible set ``[max(lower bounds), min(upper bounds)]``
    intersected with ``gamma > 0``; ``gamma_max`` is its largest element (``inf`` when no step
    bounds gamma from above), ``None`` when the set is empty.
    """

    holds: bool
    gamma_low: float  #: max(0, largest lower bound); the set is open at 0
    gamma_high: float  #: smallest upper bound (inf if none)
    gamma_max: float | None
    n_steps: int
    n_upper: int
    n_lower: int
    n_zero: int
    share_positive: float  #: share of upper-bound steps (gap > 0) whose bound is > 0
    own_infeasible_steps: np.ndarray  #: steps no gamma > 0 can satisfy on their own
    conflicting_steps: np.ndarray  #: steps whose lower bound exceeds another step's upper bound
    per_step_gamma: np.ndarray  #: ``bound`` for every step (NaN where gap == 0)
    undecidable_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  #: (module doc)
    holds_without_undecidable: bool | None = None  #: the verdict on the decidable steps alone
    upper_mask: np.ndarray | None = None  #: the steps whose bound is an upper bound (gap > 0)
    eta_per_step: bool = False  #: read with a schedule's eta_k (the trace's eta column), not one constant lr

    @property
    def violating_steps(self) -> np.ndarray:
        """Steps that break the principle: infeasible on their own, or in conflict."""
        return np.union1d(self.own_infeasible_steps, self.conflicting_steps)

    def to_dict(self, max_steps: int = 50) -> dict:
        """A JSON-ready summary; step lists are cut to ``max_steps`` entries (counts are exact)."""
        viol = self.violating_steps
        # the median of the positive *upper* bounds (the paper's curves); a negative-gap step's bound
        # is a lower bound, and is left out even when it is positive
        g = self.per_step_gamma
        upper = self.upper_mask if self.upper_mask is not None else np.ones(g.shape, dtype=bool)
        pos = g[upper & np.isfinite(g) & (g > 0)]
        return {
            "holds": bool(self.holds),
            "feasible_set": None if not self.holds else [_num(self.gamma_low), _num(self.gamma_high)],
            "gamma_low": _num(self.gamma_low),
            "gamma_high": _num(self.gamma_high),
            "gamma_max": None if self.gamma_max is None else _num(self.gamma_max),
            "n_steps": self.n_steps,
            "n_upper": self.n_upper,
            "n_lower": self.n_lower,
            "n_zero": self.n_zero,
            "share_positive": float(self.share_positive),
            "median_positive_gamma": float(np.median(pos)) if pos.size else None,
            "n_violating": int(viol.size),
            "violating_steps": [int(s) for s in viol[:max_steps]],
            "n_own_infeasible": int(self.own_infeasible_steps.size),
            "n_conflicting": int(self.conflicting_steps.size),
            "n_undecidable": int(self.undecidable_steps.size),
            "undecidable_steps": [int(s) for s in self.undecidable_steps[:max_steps]],
            "holds_without_undecidable": self.holds_without_undecidable,
            "rests_on_undecidable": self.rests_on_undecidable,
            "roundoff_bound": "|num| <= 2 eps (|inner| + eta/2 update_sq); bounds tying within their own round-off",
            **({"eta_per_step": True} if self.eta_per_step else {}),  # a constant-lr report is unchanged
        }

    @property
    def rests_on_undecidable(self) -> bool:
        """The verdict would differ without the steps that float64 cannot decide."""
        return self.holds_without_undecidable is not None and self.holds_without_undecidable != self.holds


def _num(x: float) -> float | str:
    """JSON has no infinity: write it as the string 'inf'."""
    return "inf" if np.isposinf(x) else ("-inf" if np.isneginf(x) else float(x))


def definition_1(trace: Trace) -> Definition1Result:
    """Check inequality (2) of the paper on every step of ``trace``.

    >>> import numpy as np
    >>> t = Trace(loss=[1.0, 0.5], loss_star=[0.0, 0.0], inner=[2.0, 1.0], update_sq=[1.0, 1.0],
    ...           dist_sq=[4.0, 2.2], lr=0.1, dist0_sq=4.0)
    >>> r = definition_1(t)
    >>> r.holds, round(r.gamma_max, 4)
    (True, 0.475)
    """
    b = step_bounds(trace)
    steps = trace.step
    upper = b.bound[b.is_upper]
    lower = b.bound[b.is_lower]
    gamma_high = float(upper.min()) if upper.size else np.inf
    max_lower = float(lower.max()) if lower.size else -np.inf
    gamma_low = max(0.0, max_lower)

    own_bad = (b.is_upper & (b.num <= 0)) | (b.is_zero & (b.num < 0))
    holds = _feasible(b, np.ones(len(trace), dtype=bool))
    conflicting = np.zeros(len(trace), dtype=bool)
    positive_upper = b.is_upper & (b.bound > 0)
    min_upper = b.bound[positive_upper].min() if positive_upper.any() else np.inf
    if not own_bad.any() and not holds:
        # Every step is satisfiable alone, but some lower bound exceeds some upper bound.
        conflicting = (b.is_lower & (b.bound > min_upper)) | (positive_upper & (b.bound < max_lower))

    undecidable = _undecidable(trace, b)
    holds_decided = _feasible(b, ~undecidable) if undecidable.any() else bool(holds)
    share_positive = float(np.mean(upper > 0)) if upper.size else 1.0
    return Definition1Result(
        holds=bool(holds),
        gamma_low=gamma_low,
        gamma_high=gamma_high,
        gamma_max=gamma_high if holds else None,
        n_steps=len(trace),
        n_upper=int(b.is_upper.sum()),
        n_lower=int(b.is_lower.sum()),
        n_zero=int(b.is_zero.sum()),
        share_positive=share_positive,
        own_infeasible_steps=steps[own_bad],
        conflicting_steps=steps[conflicting],
        per_step_gamma=b.bound,
        undecidable_steps=steps[undecidable],
        holds_without_undecidable=bool(holds_decided),
        upper_mask=b.is_upper,
        eta_per_step=not trace.constant_lr,
    )


def _undecidable(trace: Trace, b: StepBounds) -> np.ndarray:
    """Steps whose sign of ``num`` float64 cannot decide, and the binding lower and upper bound
    when they tie within their own round-off (repeated on what is left, until no tie binds)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        num_tol = ROUNDOFF * (np.abs(trace.inner) + 0.5 * trace.step_lr * trace.update_sq)
        out = np.abs(b.num) <= num_tol
        slack = (np.where(b.num != 0, num_tol / np.abs(b.num), np.inf) + 4 * EPS) * np.abs(b.bound)
    while True:
        up = b.is_upper & (b.num > 0) & ~out
        lo = b.is_lower & ~out
        if not up.any() or not lo.any():
            return out
        i_up = np.flatnonzero(up)[np.argmin(b.bound[up])]
        i_lo = np.flatnonzero(lo)[np.argmax(b.bound[lo])]
        if not abs(b.bound[i_lo] - b.bound[i_up]) <= slack[i_lo] + slack[i_up]:
            return out
        out[[i_lo, i_up]] = True


def _feasible(b: StepBounds, keep: np.ndarray) -> bool:
    """Whether one gamma > 0 satisfies inequality (2) on the steps in ``keep``."""
    up, lo, zero = b.is_upper & keep, b.is_lower & keep, b.is_zero & keep
    if (up & (b.num <= 0)).any() or (zero & (b.num < 0)).any():
        return False
    high = b.bound[up].min() if up.any() else np.inf
    low = b.bound[lo].max() if lo.any() else -np.inf
    return bool(high > 0 and high >= low)


def violations_at(trace: Trace, gamma: float) -> np.ndarray:
    """Steps at which inequality (2) fails for this particular ``gamma``."""
    b = step_bounds(trace)
    return trace.step[b.num < gamma * trace.dist0_sq * b.gap]
