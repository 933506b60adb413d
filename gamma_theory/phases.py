"""Definition 1 phase by phase: the steps of a path cut at given steps (a grokking run's
memorization and grokking events, say), each phase judged on its own.

Inequality (2) is one condition per step with one gamma for the whole path, scaled by
``||theta_0 - theta*||^2`` of the path's own start. A phase keeps that scale (it is the same
path, against the same theta*), so a phase's feasible gammas are exactly the gammas its steps
alone allow, and the whole path's feasible set is the intersection of its phases': the path
obeys Definition 1 iff every phase does and their feasible intervals meet. That is what
:func:`definition_1_by_phase` reports, with each phase's largest feasible gamma and violations.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .definition1 import definition_1
from .trace import Trace


def sub_trace(trace: Trace, lo: int, hi: int) -> Trace:
    """The rows of ``trace`` whose step lies in ``[lo, hi)``, with the path's own ``lr``,
    ``dist0_sq`` and (under a schedule) ``eta_k``."""
    keep = (trace.step >= lo) & (trace.step < hi)
    cols = {name: getattr(trace, name)[keep] for name in ("loss", "loss_star", "inner", "update_sq", "dist_sq",
                                                         "step", "epoch")}
    for name in ("grad_inner", "grad_sq", "eta"):
        if getattr(trace, name) is not None:
            cols[name] = getattr(trace, name)[keep]
    return replace(trace, sample_gap_max=None, meta={}, **cols)


def definition_1_by_phase(trace: Trace, cuts: dict[str, int | None]) -> dict:
    """Definition 1 on each phase of ``trace``: the steps before the first cut, between cuts, and
    after the last (``cuts``: name -> the step it starts at; None or a step outside the path: no
    cut). Returns the phases in order (name, steps ``[lo, hi)``, the result's dict) and whether
    their feasible sets meet (which is the whole path's verdict)."""
    n0, n1 = int(trace.step[0]), int(trace.step[-1]) + 1
    inside = sorted({(s, k) for k, s in cuts.items() if s is not None and n0 < s < n1})
    edges = [n0] + [s for s, _ in inside] + [n1]
    names = ["start"] + [k for _, k in inside]
    phases = []
    for (lo, hi), after in zip(zip(edges[:-1], edges[1:]), names):
        if hi <= lo:
            continue
        r = definition_1(sub_trace(trace, lo, hi))
        label = "before " + inside[0][1] if after == "start" and inside else ("whole path" if after == "start"
                                                                              else f"from {after}")
        phases.append({"phase": label, "steps": [lo, hi], **r.to_dict()})
    lows = [max(0.0, float(p["gamma_low"])) for p in phases]
    highs = [np.inf if p["gamma_high"] == "inf" else float(p["gamma_high"]) for p in phases]
    meet = all(p["holds"] for p in phases) and max(lows) < min(highs)
    return {"phases": phases, "cuts": {k: v for k, v in cuts.items()}, "feasible_sets_meet": bool(meet)}


__all__ = ["definition_1_by_phase", "sub_trace"]
