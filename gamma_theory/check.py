"""One call that judges a trace: Definition 1, Theorem 1 items 1-3, the recording identity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .definition1 import Definition1Result, definition_1
from .theorem1 import (
    DistanceMonotone,
    LossConvergence,
    RateBound,
    RecordingIdentity,
    distance_monotone,
    loss_convergence,
    rate_bound,
    recording_identity,
)
from .trace import Trace


@dataclass(frozen=True)
class Tolerances:
    """Stated tolerances of the checks (all relative; see each checker)."""

    distance_rtol: float = 1e-9  #: dist_sq may grow by this, relative to the step's terms
    identity_rtol: float = 1e-9  #: recording identity, relative to the size of its terms
    rate_rtol: float = 1e-9  #: item 3, relative round-off allowance
    convergence_rel: float = 0.05  #: item 2: last epoch's gap <= this times the first's


@dataclass(frozen=True)
class CheckResult:
    definition_1: Definition1Result
    distance: DistanceMonotone
    convergence: LossConvergence
    rate: RateBound
    identity: RecordingIdentity
    #: ``||theta_0 - theta*||^2`` of the trace: gamma_max times it is the dimensionless gamma (1 on a
    #: star-convex path at eta -> 0), comparable across runs and scales
    dist0_sq: float | None = None

    @property
    def holds(self) -> bool:
        """Definition 1 and Theorem 1 items 1-3 all hold (item 2 counts only when decidable)."""
        return bool(
            self.definition_1.holds
            and self.distance.holds
            and self.convergence.holds is not False
            and self.rate.holds
        )

    def to_dict(self) -> dict:
        d1 = self.definition_1.to_dict()
        if self.dist0_sq is not None:
            d1["gamma_max_x_dist0_sq"] = (None if self.definition_1.gamma_max is None
                                          else float(self.definition_1.gamma_max) * float(self.dist0_sq))
        return {
            "holds": self.holds,
            "definition_1": d1,
            "theorem_1": {
                "distance_monotone": self.distance.to_dict(),
                "loss_convergence": self.convergence.to_dict(),
                "rate_bound": self.rate.to_dict(),
            },
            "recording_identity": self.identity.to_dict(),
        }


def check_trace(trace: Trace, tol: Tolerances = Tolerances(), gamma: float | None = None) -> CheckResult:
    """Judge ``trace``; item 3 uses ``gamma`` if given, else Definition 1's largest gamma.

    Extreme but finite columns (a subnormal gap, a huge bound) may overflow to infinity on the way;
    every checker handles infinities explicitly, so numpy's floating-point warnings are silenced."""
    with np.errstate(all="ignore"):
        return _check(trace, tol, gamma)


def _check(trace: Trace, tol: Tolerances, gamma: float | None) -> CheckResult:
    d1 = definition_1(trace)
    return CheckResult(
        definition_1=d1,
        distance=distance_monotone(trace, tol.distance_rtol),
        convergence=loss_convergence(trace, tol.convergence_rel),
        rate=rate_bound(trace, d1.gamma_max if gamma is None else gamma, tol.rate_rtol),
        identity=recording_identity(trace, tol.identity_rtol),
        dist0_sq=float(trace.dist0_sq),
    )
