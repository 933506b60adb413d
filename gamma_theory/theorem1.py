r"""Theorem 1 of the paper and the recording identity, as pure functions of a trace.

* item 1: ``||theta_{k+1} - theta*|| <= ||theta_k - theta*||`` for every k;
* item 2: every sample's loss converges to its minimum along the path. A finite trace can only
  show a trend, so the check is stated: the last epoch's gap is at most ``rel_tol`` times the
  first epoch's, per sample where the trace carries ``sample_gap_max`` (the largest per-sample
  gap ``l(theta_{i(P)}; z_i) - l(theta*; z_i)`` of each epoch P) and per epoch mean otherwise;
* item 3: for K a whole number of epochs,
  ``mean(loss[:K]) - mean(loss_star[:K]) <= 1 / (2 * eta * gamma * K)``. The left side is
  the paper's ``(1/K) sum l(theta_k; z_k) - f(theta*)``: over whole epochs each sample is used
  once, so ``mean(loss_star[:K])`` is ``f(theta*)`` (exactly, for equal batches), and it is the
  quantity the proof (Appendix A, eq. 5) actually bounds.

  Under a learning-rate schedule (the trace's ``eta`` column) Appendix A's telescoping gives the
  eta-weighted form ``sum_k eta_k gap_k / sum_k eta_k <= 1 / (2 * gamma * sum_k eta_k)``
  (``docs/schedules.md``), checked at the same epoch ends; for a constant eta it is the line above.

The recording identity ``dist_sq[k+1] = dist_sq[k] - 2*eta_k*inner[k] + eta_k^2*update_sq[k]`` is
exact algebra for ``U_k = (theta_k - theta_{k+1}) / eta_k``, so it checks any recording. Every
checker reads ``eta_k`` as :attr:`Trace.step_lr`: the constant ``lr`` when the trace has no
schedule, so a constant-lr trace gives bitwise the numbers it gave before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .trace import Trace


def _last(lr):
    """``eta_{K-1}``, the learning rate of the last recorded step (``lr`` itself when constant)."""
    return lr if np.ndim(lr) == 0 else lr[-1]


def _head(lr):
    """``eta_k`` for every step but the last (``lr`` itself when constant)."""
    return lr if np.ndim(lr) == 0 else lr[:-1]


def _steps(idx: np.ndarray, trace: Trace, limit: int = 50) -> list[int]:
    return [int(s) for s in trace.step[idx][:limit]]


@dataclass(frozen=True)
class DistanceMonotone:
    holds: bool
    n_increases: int  #: steps where dist_sq grew by more than ``tol``
    max_increase: float  #: largest growth of dist_sq (<= 0 means it never grew)
    max_rel_increase: float  #: largest growth relative to dist_sq[k]
    tol: float  #: relative round-off allowance per step
    first_steps: list[int]  #: the steps k with dist_sq[k+1] > dist_sq[k] + tol (first 50)

    def to_dict(self) -> dict:
        return {
            "holds": self.holds,
            "n_increases": self.n_increases,
            "max_increase": self.max_increase,
            "max_rel_increase": self.max_rel_increase,
            "rtol": self.tol,
            "increase_steps": self.first_steps,
        }


def distance_monotone(trace: Trace, rtol: float = 1e-9) -> DistanceMonotone:
    """Item 1: ``dist_sq`` never increases, beyond round-off.

    Round-off is judged per step, relative to the terms of that step,
    ``rtol * (dist_sq[k] + 2*eta_k*|inner[k]| + eta_k^2*update_sq[k])``, so an increase late in a
    run, when the distance itself is small, is still seen. The distance after the last
    recorded step, ``||theta_K - theta*||^2``, is not a column; it follows exactly from the last
    row (recording identity) and is checked too.
    """
    lr = trace.step_lr
    lr_last = _last(lr)
    last = trace.dist_sq[-1] - 2 * lr_last * trace.inner[-1] + (lr_last * lr_last) * trace.update_sq[-1]
    d = np.append(trace.dist_sq, max(last, 0.0))
    inc = np.diff(d)
    tol_k = rtol * (trace.dist_sq + 2 * lr * np.abs(trace.inner) + (lr * lr) * trace.update_sq)
    bad = np.flatnonzero(inc > tol_k)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(d[:-1] > 0, inc / d[:-1], np.where(inc > 0, np.inf, 0.0))
    return DistanceMonotone(
        holds=bad.size == 0,
        n_increases=int(bad.size),
        max_increase=float(inc.max()) if inc.size else 0.0,
        max_rel_increase=float(rel.max()) if rel.size else 0.0,
        tol=rtol,
        first_steps=_steps(bad, trace),
    )


@dataclass(frozen=True)
class LossConvergence:
    holds: bool | None  #: None when fewer than two epochs were recorded
    mode: str  #: "per-sample" or "per-epoch"
    rel_tol: float
    first: float
    last: float
    by_epoch: list[float]

    def to_dict(self) -> dict:
        return {
            "holds": self.holds,
            "mode": self.mode,
            "rel_tol": self.rel_tol,
            "first_epoch_gap": self.first,
            "last_epoch_gap": self.last,
            "ratio": (self.last / self.first) if self.first > 0 else None,
            "gap_by_epoch": self.by_epoch,
        }


def per_epoch_mean(values: np.ndarray, epoch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct epochs and the mean of ``values`` over the steps of each."""
    epochs, inverse = np.unique(epoch, return_inverse=True)
    return epochs, np.bincount(inverse, weights=values) / np.bincount(inverse)


def epoch_mean_gap(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """The epochs of the trace and the mean loss gap ``loss - loss_star`` in each."""
    return per_epoch_mean(trace.gap, trace.epoch)


def loss_convergence(trace: Trace, rel_tol: float = 0.05) -> LossConvergence:
    """Item 2, in the stated finite form (module docstring)."""
    if trace.sample_gap_max is not None:
        series, mode = np.asarray(trace.sample_gap_max, dtype=np.float64), "per-sample"
    else:
        series, mode = epoch_mean_gap(trace)[1], "per-epoch"
    if len(series) < 2:
        return LossConvergence(None, mode, rel_tol, float(series[0]), float(series[-1]), series.tolist())
    first, last = float(series[0]), float(series[-1])
    return LossConvergence(
        holds=bool(last <= rel_tol * first),
        mode=mode,
        rel_tol=rel_tol,
        first=first,
        last=last,
        by_epoch=[float(x) for x in series],
    )


@dataclass(frozen=True)
class RateBound:
    holds: bool | None  #: None when no gamma > 0 is available (Definition 1 failed)
    gamma: float | None
    epochs: list[int]
    K: list[int]
    lhs: list[float]  #: mean(loss[:K]) - mean(loss_star[:K]); eta-weighted under a schedule
    rhs: list[float]  #: 1 / (2 eta gamma K); 1 / (2 gamma sum_{k<K} eta_k) under a schedule
    n_violations: int
    min_slack: float | None  #: min(rhs - lhs)
    max_ratio: float | None  #: max(lhs / rhs): how close the path comes to the bound
    #: the schedule's form: lhs = sum eta_k gap_k / sum eta_k, rhs = 1 / (2 gamma sum eta_k)
    eta_weighted: bool = False

    def to_dict(self) -> dict:
        extra = {"eta_weighted": True} if self.eta_weighted else {}  # a constant-lr report is unchanged
        return {**extra,
            "holds": self.holds,
            "gamma": self.gamma,
            "n_epochs_checked": len(self.K),
            "n_violations": self.n_violations,
            "min_slack": self.min_slack,
            "max_ratio": self.max_ratio,
            "K": self.K,
            "lhs": self.lhs,
            "rhs": self.rhs,
        }


def epoch_ends(trace: Trace) -> np.ndarray:
    """K for each whole epoch: the number of steps through the end of that epoch."""
    change = np.flatnonzero(np.diff(trace.epoch) != 0) + 1
    return np.append(change, len(trace))


def rate_bound(trace: Trace, gamma: float | None, rtol: float = 1e-9) -> RateBound:
    """Item 3 at every whole epoch, for ``gamma`` (normally Definition 1's largest gamma); under a
    schedule in its eta-weighted form (module docstring)."""
    ends = epoch_ends(trace)
    epochs = [int(trace.epoch[k - 1]) for k in ends]
    weighted = not trace.constant_lr
    if weighted:  # sum eta_k gap_k / sum eta_k <= 1 / (2 gamma sum eta_k)  (docs/schedules.md)
        cum_eta = np.cumsum(trace.eta)[ends - 1]
        cum_gap = np.cumsum(trace.eta * trace.gap)
        lhs = cum_gap[ends - 1] / cum_eta
    else:
        cum_gap = np.cumsum(trace.gap)
        lhs = cum_gap[ends - 1] / ends
    if gamma is None or not gamma > 0:
        return RateBound(None, None, epochs, ends.tolist(), lhs.tolist(), [], 0, None, None, weighted)
    if weighted:
        rhs = 1.0 / (2.0 * gamma * cum_eta)
        scale = np.abs(cum_gap[ends - 1]).max() / cum_eta + rhs
    else:
        rhs = 1.0 / (2.0 * trace.lr * gamma * ends)  # gamma = inf gives 0: then every gap is <= 0
        scale = np.abs(cum_gap[ends - 1]).max() / ends + rhs
    bad = lhs > rhs + rtol * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(rhs > 0, lhs / rhs, np.where(lhs > 0, np.inf, 0.0))
    return RateBound(
        holds=not bad.any(),
        gamma=float(gamma),
        epochs=epochs,
        K=ends.tolist(),
        lhs=lhs.tolist(),
        rhs=rhs.tolist(),
        n_violations=int(bad.sum()),
        min_slack=float((rhs - lhs).min()),
        max_ratio=float(ratio.max()),
        eta_weighted=weighted,
    )


@dataclass(frozen=True)
class RecordingIdentity:
    holds: bool
    max_rel_residual: float
    rtol: float
    worst_step: int | None

    def to_dict(self) -> dict:
        return {
            "holds": self.holds,
            "max_rel_residual": self.max_rel_residual,
            "rtol": self.rtol,
            "worst_step": self.worst_step,
        }


def recording_identity(trace: Trace, rtol: float = 1e-9) -> RecordingIdentity:
    """``dist_sq[k+1] == dist_sq[k] - 2*eta_k*inner[k] + eta_k^2*update_sq[k]``, and
    ``dist_sq[0] == dist0_sq``, to ``rtol`` relative to the size of the terms."""
    lr = _head(trace.step_lr)
    d, inner, upd = trace.dist_sq, trace.inner, trace.update_sq
    pred = d[:-1] - 2 * lr * inner[:-1] + (lr * lr) * upd[:-1]
    scale = d[:-1] + 2 * lr * np.abs(inner[:-1]) + (lr * lr) * upd[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(d[1:] - pred) / np.where(scale > 0, scale, 1.0)
    rel0 = abs(d[0] - trace.dist0_sq) / trace.dist0_sq
    rel_all = np.append(rel0, rel)
    worst = int(np.argmax(rel_all))
    return RecordingIdentity(
        holds=bool(rel_all.max() <= rtol),
        max_rel_residual=float(rel_all.max()),
        rtol=rtol,
        worst_step=int(trace.step[max(worst - 1, 0)]) if worst > 0 else int(trace.step[0]),
    )
