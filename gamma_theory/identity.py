r"""What a trace says by algebra alone, and the readings of gamma that can still fail.

**The gamma-speed identity.** The recording identity
``dist_sq[k+1] = dist_sq[k] - 2 eta num_k`` (with ``num_k = inner_k - eta/2 update_sq_k``)
telescopes over the K steps of a path:

.. math::
    \sum_{k<K} num_k = \frac{\|\theta_0-\theta^*\|^2 - \|\theta_K-\theta^*\|^2}{2\eta}.

Call ``gamma_bar`` the gap-weighted mean of the per-step bounds
``gamma_k = num_k / (dist0_sq gap_k)``, weights ``gap_k``:

.. math::
    \bar\gamma = \frac{\sum_k gap_k\,\gamma_k}{\sum_k gap_k}
               = \frac{\sum_k num_k}{dist0\_sq \sum_k gap_k}
               = \frac{1 - \|\theta_K-\theta^*\|^2/\|\theta_0-\theta^*\|^2}{2\eta \sum_k gap_k}.

With ``theta* = theta_K`` (the last iterate, or any theta* that ends the steps it judges) the
numerator is 1, so ``gamma_bar = 1 / (2 eta K mean_gap)``: an average gamma is *the reciprocal of
the accumulated loss gap*, whatever the network does. "Larger gamma, faster convergence" then
holds by algebra for this average, and nearly so for any reading that follows it (the paper's
median). Theorem 1 item 3 at the whole run, ``mean_gap <= 1/(2 eta gamma K)``, is
``gamma <= gamma_bar``; when every gap is positive the largest feasible gamma is the smallest
``gamma_k``, which is at most their weighted mean: item 3 at K cannot fail once Definition 1
holds. Both are consequences, never evidence.

**Under a schedule** (the trace's ``eta`` column) the recording identity is
``dist_sq[k+1] = dist_sq[k] - 2 eta_k num_k`` with ``num_k = inner_k - eta_k/2 update_sq_k``, so
``sum_k eta_k num_k = (||theta_0-theta*||^2 - ||theta_K-theta*||^2) / 2``, and the mean that
follows the algebra weighs each ``gamma_k`` by ``eta_k gap_k``:

.. math::
    \bar\gamma_\eta = \frac{\sum_k \eta_k gap_k\,\gamma_k}{\sum_k \eta_k gap_k}
                     = \frac{\sum_k \eta_k num_k}{dist0\_sq \sum_k \eta_k gap_k}
                     = \frac{1 - \|\theta_K-\theta^*\|^2/\|\theta_0-\theta^*\|^2}{2 \sum_k \eta_k gap_k},

which is ``gamma_bar`` when every ``eta_k = eta`` (computed then exactly as before). Theorem 1
item 3 at K under a schedule (``sum eta_k gap_k <= 1/(2 gamma)``) is again ``gamma <= gamma_bar``.

Against a theta* that does *not* end the path (trained longer, another seed's end point), the
factor ``1 - ||theta_K - theta*||^2 / ||theta_0 - theta*||^2`` is no longer 1 and the link
between gamma and speed is no longer algebra: only there can "gamma tracks speed" fail.

**Matched-loss reading.** Variants that converge at different speeds are compared over the
steps each needs to first reach one common training loss: :func:`prefix_gammas` gives, for every
whole epoch E, both gammas of the path's first E epochs (against the trace's theta*).

**Directions.** Per step, the angles of the update ``U_k`` and of the stochastic gradient ``g_k``
to ``theta_k - theta*``; by the triangle inequality on the sphere their difference is a lower
bound on the angle between ``U_k`` and ``g_k`` (the SGD direction), which the columns do not hold
directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .definition1 import step_bounds
from .theorem1 import epoch_ends
from .trace import Trace


@dataclass(frozen=True)
class SpeedIdentity:
    """The gamma-speed identity on one path (module docstring)."""

    gamma_bar: float | None  #: gap-weighted mean of the per-step gammas (None: the gaps sum to 0); eta_k gap_k-weighted under a schedule
    predicted: float | None  #: (1 - end_ratio) / (2 eta sum gap): what the algebra says gamma_bar is; (1 - end_ratio) / (2 sum eta_k gap_k) under a schedule
    rel_residual: float | None  #: |gamma_bar - predicted| / |predicted|
    end_ratio: float  #: ||theta_K - theta*||^2 / ||theta_0 - theta*||^2 (0: theta* ends the path)
    sum_gap: float  #: sum_k gap_k = K x the mean accumulated gap of Theorem 1 item 3
    gamma_max_over_bar: float | None  #: Definition 1's largest gamma / gamma_bar (item 3 at K: <= 1)
    #: under a schedule only: sum_k eta_k gap_k, what item 3 bounds by 1 / (2 gamma); None at a constant lr
    sum_eta_gap: float | None = None

    @property
    def ends_at_star(self) -> bool:
        """theta* is the end of the path (to float32 storage of the iterates)."""
        return self.end_ratio <= 1e-10

    def to_dict(self) -> dict:
        extra = {} if self.sum_eta_gap is None else {"sum_eta_gap": self.sum_eta_gap, "eta_weighted": True}
        return {"gamma_bar": self.gamma_bar, "predicted": self.predicted, "rel_residual": self.rel_residual,
                "end_ratio": self.end_ratio, "ends_at_star": self.ends_at_star, "sum_gap": self.sum_gap,
                "gamma_max_over_bar": self.gamma_max_over_bar, **extra}


def end_dist_sq(trace: Trace) -> float:
    """``||theta_K - theta*||^2``: the distance after the last recorded step (recording identity,
    with the last step's own ``eta_{K-1}``)."""
    lr = trace.lr if trace.constant_lr else float(trace.eta[-1])
    return float(trace.dist_sq[-1] - 2 * lr * trace.inner[-1] + lr**2 * trace.update_sq[-1])


def speed_identity(trace: Trace, gamma_max: float | None = None) -> SpeedIdentity:
    """Check the gamma-speed identity on ``trace``: ``gamma_bar`` from the per-step columns against
    ``(1 - ||theta_K - theta*||^2 / dist0_sq) / (2 eta sum gap)`` from the end point alone."""
    b = step_bounds(trace)
    sum_gap = float(b.gap.sum())
    end_ratio = max(end_dist_sq(trace), 0.0) / trace.dist0_sq
    if not trace.constant_lr:
        return _speed_identity_scheduled(trace, b, sum_gap, end_ratio, gamma_max)
    if sum_gap == 0:
        return SpeedIdentity(None, None, None, end_ratio, sum_gap, None)
    gamma_bar = float(b.num.sum() / (trace.dist0_sq * sum_gap))
    predicted = (1.0 - end_ratio) / (2.0 * trace.lr * sum_gap)
    rel = abs(gamma_bar - predicted) / abs(predicted) if predicted != 0 else abs(gamma_bar)
    return SpeedIdentity(gamma_bar, float(predicted), float(rel), float(end_ratio), sum_gap,
                         _over(gamma_max, gamma_bar))


def _over(gamma_max: float | None, gamma_bar: float) -> float | None:
    if gamma_max is not None and math.isfinite(gamma_max) and gamma_bar != 0:
        return float(gamma_max / gamma_bar)
    return None


def _speed_identity_scheduled(trace: Trace, b, sum_gap: float, end_ratio: float,
                              gamma_max: float | None) -> SpeedIdentity:
    """The eta-weighted identity (module docstring): weights ``eta_k gap_k``."""
    sum_eta_gap = float((trace.eta * b.gap).sum())
    if sum_eta_gap == 0:
        return SpeedIdentity(None, None, None, end_ratio, sum_gap, None, sum_eta_gap)
    gamma_bar = float((trace.eta * b.num).sum() / (trace.dist0_sq * sum_eta_gap))
    predicted = (1.0 - end_ratio) / (2.0 * sum_eta_gap)
    rel = abs(gamma_bar - predicted) / abs(predicted) if predicted != 0 else abs(gamma_bar)
    return SpeedIdentity(gamma_bar, float(predicted), float(rel), float(end_ratio), sum_gap,
                         _over(gamma_max, gamma_bar), sum_eta_gap)


def bound_quantiles(trace: Trace, qs=(0.01, 0.05, 0.5)) -> dict[str, float | None]:
    """Low quantiles of the per-step upper bounds x dist0_sq (dimensionless), beside their minimum
    (Definition 1's gamma_max when it holds): one extreme step decides gamma_max, and it moves with
    the bits; a quantile does not. Lower bounds (negative gaps) are left out."""
    b = step_bounds(trace)
    up = b.bound[b.is_upper] * trace.dist0_sq
    out: dict[str, float | None] = {"min": float(up.min()) if up.size else None}
    for q in qs:
        out[f"q{round(100 * q):02d}"] = float(np.quantile(up, q)) if up.size else None
    return out


@dataclass(frozen=True)
class PrefixGammas:
    """Both gammas over the first E whole epochs of a path, for every E (against its theta*)."""

    epochs: list[int]  #: E = 1, 2, ...: the number of whole epochs in the prefix
    steps: list[int]  #: steps in the prefix
    epoch_loss: list[float]  #: mean training loss of epoch E (its last epoch)
    gamma_max_x_d0: list[float | None]  #: Definition 1's largest gamma on the prefix, x dist0_sq
    median_x_d0: list[float | None]  #: median positive-gap bound on the prefix, x dist0_sq

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "steps": self.steps, "epoch_loss": self.epoch_loss,
                "gamma_max_x_d0": self.gamma_max_x_d0, "median_x_d0": self.median_x_d0}


def prefix_gammas(trace: Trace) -> PrefixGammas:
    """For every whole epoch E, Definition 1 and the paper's median on the steps of epochs 1..E.

    The prefix's largest feasible gamma is the running minimum of the upper bounds, provided no
    step so far is infeasible on its own and the running maximum of the lower bounds stays below it
    (the same rule as :func:`gamma_theory.definition_1`, without its round-off bookkeeping)."""
    b = step_bounds(trace)
    n = len(trace)
    big = np.inf
    up = np.where(b.is_upper, b.bound, big)
    lo = np.where(b.is_lower, b.bound, -big)
    bad = (b.is_upper & (b.num <= 0)) | (b.is_zero & (b.num < 0))
    run_up, run_lo = np.minimum.accumulate(up), np.maximum.accumulate(lo)
    run_bad = np.logical_or.accumulate(bad)
    ends = epoch_ends(trace)
    d0 = trace.dist0_sq
    epochs, steps, losses, gmax, med = [], [], [], [], []
    start = 0
    for e, k in enumerate(ends, start=1):
        i = k - 1
        ok = not run_bad[i] and run_up[i] > 0 and run_up[i] >= run_lo[i]
        gmax.append(float(run_up[i] * d0) if ok and math.isfinite(run_up[i]) else None)
        pos = b.bound[:k][b.is_upper[:k]]
        med.append(float(np.median(pos) * d0) if pos.size else None)
        epochs.append(e)
        steps.append(int(k))
        losses.append(float(np.mean(trace.loss[start:k])))
        start = k
    assert steps[-1] == n
    return PrefixGammas(epochs, steps, losses, gmax, med)


@dataclass(frozen=True)
class Directions:
    """Per-step angles (degrees) to theta_k - theta*, and the lower bound on angle(U_k, g_k)."""

    update_angle_median: float  #: median angle between U_k and theta_k - theta*
    grad_angle_median: float | None  #: median angle between g_k and theta_k - theta* (None: no g_k columns)
    gap_lower_bound_median: float | None  #: median over steps of |angle(U) - angle(g)| <= angle(U_k, g_k)
    share_over_45: float | None  #: share of steps whose lower bound exceeds 45 degrees

    def to_dict(self) -> dict:
        return {"update_angle_median": self.update_angle_median, "grad_angle_median": self.grad_angle_median,
                "angle_lower_bound_median": self.gap_lower_bound_median, "share_lower_bound_over_45": self.share_over_45}


def _angle(dot: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        c = dot / np.sqrt(sq_a * sq_b)
    return np.degrees(np.arccos(np.clip(np.nan_to_num(c, nan=0.0), -1.0, 1.0)))


def directions(trace: Trace) -> Directions:
    """Angles of the update and of the stochastic gradient to the direction of theta* (module doc).
    Steps where theta_k = theta* (the distance is 0) have no direction and are left out."""
    keep = trace.dist_sq > 0
    a_u = _angle(trace.inner[keep], trace.update_sq[keep], trace.dist_sq[keep])
    if not trace.has_grad:
        return Directions(float(np.median(a_u)), None, None, None)
    a_g = _angle(trace.grad_inner[keep], trace.grad_sq[keep], trace.dist_sq[keep])
    lb = np.abs(a_u - a_g)
    return Directions(float(np.median(a_u)), float(np.median(a_g)), float(np.median(lb)), float(np.mean(lb > 45.0)))
