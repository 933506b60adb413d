"""Small helpers shared by the reports and the command line: number formatting, the wording of
one check's cells, JSON that stays valid, and where a report was produced (files are written with
gamma_theory.files)."""

from __future__ import annotations

import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from deep.env import cpu_name


# -- numbers -------------------------------------------------------------------------------------
def fmt3(x: Any) -> str:
    """A number to 3 significant digits: ``0.958``, ``14.3``, ``2.39e-02``, ``1.20e+04``.

    Scientific notation below 0.1 and from 1000 on, so small gammas read like ``2.39e-02``.
    ``None`` gives ``n/a``; infinities and NaN are spelled out; the string ``'inf'`` that the
    checkers write for JSON is read back as infinity.
    """
    if x is None:
        return "n/a"
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            return x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 0.1 <= abs(x) < 1000:
        return f"{x:.3g}"
    return f"{x:.2e}"


def pct(x: float | None) -> str:
    """A share in [0, 1] as a percentage with 3 significant digits (``100%``, ``97.3%``); ``None``
    (a share of no steps) is ``n/a``."""
    if x is None:
        return "n/a"
    return f"{100.0 * float(x):.3g}%"


def as_float(x: Any) -> float | None:
    """Read a number from a checker's dict (which writes infinity as ``'inf'``)."""
    if x is None:
        return None
    return float(x)


# -- the wording of one check --------------------------------------------------------------------
def feasible_set(d1: dict) -> str:
    """Definition 1's feasible set of gamma from its ``to_dict()``: ``(0, 2.39e-02]`` or ``empty``.

    The set is ``{gamma > 0} ∩ [largest lower bound, smallest upper bound]``: open at 0 when no
    step bounds gamma from below by a positive number, closed at a positive lower bound.
    """
    if not d1.get("holds"):
        return "empty"
    lo, hi = as_float(d1["gamma_low"]), as_float(d1["gamma_high"])
    left = "(0" if lo <= 0 else f"[{fmt3(lo)}"
    right = "inf)" if math.isinf(hi) else f"{fmt3(hi)}]"
    return f"{left}, {right}"


def item1_cell(dm: dict) -> str:
    """Theorem 1 item 1 (distance never grows)."""
    if dm["holds"]:
        return "yes"
    return f"no ({dm['n_increases']} increases)"


def item2_cell(lc: dict) -> str:
    """Theorem 1 item 2: the ratio of the last epoch's gap to the first epoch's."""
    ratio = lc.get("ratio")
    if lc["holds"] is None:
        return "n/a (1 epoch)"
    shown = fmt3(ratio) if ratio is not None else f"last {fmt3(lc['last_epoch_gap'])}"
    return f"{'yes' if lc['holds'] else 'no'} ({shown})"


def item3_cell(rb: dict) -> str:
    """Theorem 1 item 3: the largest lhs/rhs over whole epochs, or n/a without a gamma > 0."""
    if rb["holds"] is None:
        return "n/a (no gamma > 0)"
    if rb["holds"]:
        return f"yes (max {fmt3(rb['max_ratio'])})"
    return f"no (max {fmt3(rb['max_ratio'])}, {rb['n_violations']} epochs)"


def identity_cell(ri: dict) -> str:
    """The recording identity: its largest relative residual."""
    return f"{'yes' if ri['holds'] else 'NO'} ({fmt3(ri['max_rel_residual'])})"


# -- related conditions (their registry: gamma_theory/related.py CONDITIONS) ----------------------
def _conditions():
    """The related conditions' registry, read when a report is rendered (one entry per condition)."""
    from gamma_theory import related

    return related.CONDITIONS


def condition_cell(c: dict) -> str:
    """One related condition on one path: holds or not, its constant, and the share of steps."""
    if c.get("holds") is None:
        return "not measured"
    entry = next((e for e in _conditions() if e.name == c["condition"]), None)
    key, label = (entry.key, entry.label) if entry else (None, "")
    const = (c.get("constants") or {}).get(key)
    share = f"{pct(c['share'])} of steps" if c.get("share") is not None else ""
    if c["holds"]:
        return f"yes, {label} {fmt3(const)}" + (f" ({share})" if share and c["share"] < 1 else "")
    return f"no ({share})" if share else "no"


def conditions_table(rows: list[tuple[str, list[dict]]]) -> list[str]:
    """Markdown lines: one row per path (label, its conditions), one column per condition of the
    registry, and one more for a condition a path holds that the registry does not (a trace
    judged by another version: shown, never dropped)."""
    names = [e.name for e in _conditions()]
    names += list(dict.fromkeys(c["condition"] for _, conds in rows for c in conds if c["condition"] not in names))
    out = ["| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, conds in rows:
        by = {c["condition"]: c for c in conds}
        out.append(f"| {label} | " + " | ".join(condition_cell(by[n]) if n in by else "n/a" for n in names) + " |")
    return out


def conditions_note() -> str:
    """The note above the related-conditions table, from the registry's entries."""
    return ("Each condition judged on the same recorded path (gamma_theory/related.py states each exactly). "
            + "; ".join(f"*{e.name}*{e.note}" for e in _conditions())
            + ". g_k is taken after backward, before the optimizer step. A \"no\" gives the share of steps that "
            "satisfy the condition on their own.")


# -- JSON --------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays turned into Python and non-finite floats into the
    strings ``'inf'``, ``'-inf'``, ``'nan'`` (strict JSON has no infinity), as the checkers do."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(obj, Path):
        return str(obj)
    return obj


# -- where and with what a report was made -------------------------------------------------------
def environment() -> dict:
    """Versions and machine: what a report needs to say where it came from."""
    import matplotlib
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "executable": sys.executable,
    }
