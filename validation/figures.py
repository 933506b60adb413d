"""Figures in the paper's layout, drawn from traces only (no computing beyond the checkers).

One column per network/problem, three rows, as in the paper's Figures 1-6:

1. the normalized distance to theta*, ``sqrt(dist_sq / dist0_sq)``;
2. the training loss: each step's mini-batch loss (thin) and its per-epoch mean (thick);
3. the per-step gamma bound of Definition 1, ``num_k / (dist0_sq * gap_k)`` on the steps with
   ``gap_k > 0`` (the upper bounds the paper plots, as lines), on a symlog scale with the zero
   line; the steps with ``gap_k < 0``, whose bound is a *lower* bound, as triangles; the steps
   that break the principle on their own as red x and those whose bound conflicts with another
   step's as open diamonds, so that none of them can pass for an upper bound.

The x-axis is epochs. Matplotlib runs on the Agg backend through ``Figure`` directly, so no
display and no pyplot state are involved.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

import numpy as np  # noqa: E402

from gamma_theory.definition1 import definition_1, step_bounds  # noqa: E402
from gamma_theory.files import write_bytes  # noqa: E402
from gamma_theory.theorem1 import per_epoch_mean  # noqa: E402
from gamma_theory.trace import Trace  # noqa: E402

from .util import fmt3  # noqa: E402

#: the most points one curve is drawn with (min/max per bucket keeps the spikes)
MAX_POINTS = 2000
DPI = 110
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
ROW_LABELS = ("distance to $\\theta^*$\n$\\|\\theta_k-\\theta^*\\| / \\|\\theta_0-\\theta^*\\|$",
              "training loss",
              "per-step bound on $\\gamma$ (Definition 1)\nlines: upper bounds; triangles: lower")


def decimate(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of the curve ``(x, y)``, keeping each bucket's min and max.

    Non-finite points are dropped first. Keeping both extremes of every bucket means a single
    spike (a negative gamma, a loss jump) is still drawn after thinning.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(y)
    if n <= max_points:
        return x, y
    n_buckets = max(max_points // 2, 1)
    edges = np.linspace(0, n, n_buckets + 1).astype(np.int64)
    starts = edges[:-1]
    lo = np.minimum.reduceat(y, starts)
    hi = np.maximum.reduceat(y, starts)
    # index of the min and the max in each bucket
    keep = []
    for b in range(n_buckets):
        s, e = edges[b], edges[b + 1]
        if e <= s:
            continue
        seg = y[s:e]
        i_lo = s + int(np.flatnonzero(seg == lo[b])[0])
        i_hi = s + int(np.flatnonzero(seg == hi[b])[0])
        keep.extend(sorted({i_lo, i_hi}))
    idx = np.asarray(keep, dtype=np.int64)
    return x[idx], y[idx]


def steps_per_epoch(trace: Trace) -> float:
    """``meta['steps_per_epoch']`` if the trace carries it, else counted from the epoch column."""
    spe = trace.meta.get("steps_per_epoch") if trace.meta else None
    try:
        if spe is not None and float(spe) > 0:
            return float(spe)
    except (TypeError, ValueError):
        pass
    if len(trace) == 0:
        return 1.0
    _, counts = np.unique(trace.epoch, return_counts=True)
    # the first epoch is whole unless the run was cut; the largest count is the safest guess
    return float(max(counts.max(), 1))


def epochs_axis(trace: Trace) -> np.ndarray:
    """Each step's position in epochs: ``step / steps_per_epoch``."""
    return np.asarray(trace.step, dtype=np.float64) / steps_per_epoch(trace)


def epoch_means(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch mean of the finite step losses, placed at the middle of each epoch."""
    x = epochs_axis(trace)
    loss = trace.loss
    ok = np.isfinite(loss)
    if not ok.any():
        return np.empty(0), np.empty(0)
    return per_epoch_mean(x[ok], trace.epoch[ok])[1], per_epoch_mean(loss[ok], trace.epoch[ok])[1]


VIOLATION_RED = "#d62728"


def _special_steps(trace: Trace, b, d1, color: str) -> list[tuple[np.ndarray, dict]]:
    """(mask, marker style) of the steps the gamma row marks, so that none passes for an upper
    bound: lower bounds (negative gap) as triangles filled in the variant's color, steps that break
    (2) on their own as red x, steps in conflict with another step's bound as open diamonds in the
    variant's color."""
    own = np.isin(trace.step, d1.own_infeasible_steps)
    conflict = np.isin(trace.step, d1.conflicting_steps)
    lower = b.is_lower & ~own & ~conflict
    return [
        (lower, dict(marker="^", ms=3.5, markerfacecolor=color, markeredgecolor="black", mew=0.5)),
        (own, dict(marker="x", ms=3.5, color=VIOLATION_RED, mew=0.9)),
        (conflict, dict(marker="D", ms=3.5, markerfacecolor="none", markeredgecolor=color, mew=0.9)),
    ]


def _first_nonfinite(trace: Trace) -> int | None:
    bad = np.zeros(len(trace), dtype=bool)
    for name in ("loss", "loss_star", "inner", "update_sq", "dist_sq"):
        bad |= ~np.isfinite(getattr(trace, name))
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def _symlog_linthresh(values: list[np.ndarray]) -> float:
    """A linear zone for the gamma row below the typical size of the bounds."""
    allv = np.concatenate([v[np.isfinite(v) & (v != 0)] for v in values]) if values else np.empty(0)
    if allv.size == 0:
        return 1e-3
    small = float(np.percentile(np.abs(allv), 5))
    return 10.0 ** math.floor(math.log10(small)) if small > 0 else 1e-3


def _gamma_axis(ax, values: list[np.ndarray]) -> None:
    """Symlog y-scale for the gamma row, the zero line, and a readable number of ticks."""
    linthresh = _symlog_linthresh(values)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.grid(alpha=0.3)
    allv = np.concatenate(values) if values else np.empty(0)
    allv = allv[np.isfinite(allv)]
    if allv.size == 0:
        return
    e0 = int(round(math.log10(linthresh)))
    ticks = [0.0]
    for sign, big in ((1.0, allv.max()), (-1.0, -allv.min())):
        if big <= linthresh:
            continue
        e1 = math.ceil(math.log10(big))
        step = max(1, math.ceil((e1 - e0 + 1) / 4))
        ticks += [sign * 10.0**e for e in range(e1, e0 - 1, -step)]
    ax.set_yticks(sorted(ticks))
    hi = ax.get_ylim()[1]
    if allv.min() >= 0:  # nothing negative: keep just enough room to show the zero line
        ax.set_ylim(-linthresh, hi)


def plot_paths(columns: dict[str, dict[str, Trace]], path: str | os.PathLike,
               title: str | None = None, marks: dict[str, dict[str, str]] | None = None) -> Path:
    """Draw the paper's three rows for every column and save a PNG atomically; return its path.

    ``columns`` maps a column title (a network or problem) to ``{legend label: trace}`` (one
    curve per variant, e.g. per optimizer). A trace may be short or diverged: non-finite values
    are left out of the curves and the legend says from which step they start. ``marks`` maps a
    column and label to a note (e.g. "not converged: not comparable"): that variant is drawn
    dashed and its legend entry carries the note instead of its gamma.
    """
    marks = marks or {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_cols = max(len(columns), 1)
    fig = Figure(figsize=(4.3 * n_cols + 0.9, 9.6), dpi=DPI)
    axes = fig.subplots(3, n_cols, squeeze=False, sharex="col")

    for c, (col_title, variants) in enumerate(columns.items() or [("(no runs)", {})]):
        ax_d, ax_l, ax_g = axes[0, c], axes[1, c], axes[2, c]
        ax_d.set_title(col_title, fontsize=11, fontweight="bold")
        notes: list[str] = []
        gamma_values: list[np.ndarray] = []
        loss_positive = True
        any_loss = False
        for v, (label, trace) in enumerate((variants or {}).items()):
            color = COLORS[v % len(COLORS)]
            mark = marks.get(col_title, {}).get(label)
            ls = "--" if mark else "-"
            if trace is None or len(trace) == 0:
                notes.append(f"{label}: no steps")
                continue
            x = epochs_axis(trace)
            bad_from = _first_nonfinite(trace)  # a diverged run: said in the legend

            # row 1: normalized distance
            with np.errstate(invalid="ignore", divide="ignore"):
                dist = np.sqrt(np.maximum(trace.dist_sq, 0.0) / trace.dist0_sq)
            mk = "o" if len(trace) < 3 else None  # a one-step run is a point, not a line
            ax_d.plot(*decimate(x, dist), color=color, lw=1.4, marker=mk, ms=4, ls=ls)

            # row 2: per-step loss (thin) and per-epoch mean (thick)
            fin = trace.loss[np.isfinite(trace.loss)]
            if fin.size:
                any_loss = True
                loss_positive &= bool((fin > 0).all())
            ax_l.plot(*decimate(x, trace.loss), color=color, lw=0.5, alpha=0.35)
            ex, ey = epoch_means(trace)
            ax_l.plot(ex, ey, color=color, lw=2.0, marker=mk, ms=4, ls=ls)

            # row 3: per-step upper bounds on gamma, violations as red x
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                b = step_bounds(trace)
                d1 = definition_1(trace)
            up = b.is_upper & np.isfinite(b.bound)
            gamma_values.append(b.bound[up])
            ax_g.plot(*decimate(x[up], b.bound[up]), color=color, lw=0.7, alpha=0.5 if mark else 0.9, marker=mk,
                      ms=4, ls=ls)
            # steps that are not upper bounds, each drawn so it cannot pass for one
            for mask, style in _special_steps(trace, b, d1, color):
                if mask.any():
                    yv = np.where(np.isfinite(b.bound[mask]), b.bound[mask], 0.0)
                    xv, yv = decimate(x[mask], yv)
                    gamma_values.append(yv)
                    ax_g.plot(xv, yv, linestyle="none", zorder=5, **style)
            if bad_from is not None:
                dlabel = f"{label}: diverged at step {int(trace.step[bad_from])}"
            elif mark:
                dlabel = f"{label}: {mark}"
            elif d1.holds and d1.gamma_max is not None and np.isfinite(d1.gamma_max):
                ax_g.axhline(d1.gamma_max, color=color, lw=0.8, ls=":", alpha=0.9, zorder=1.5)
                dlabel = f"{label}: $\\gamma_{{max}}$ = {fmt3(d1.gamma_max)}"
            elif d1.holds:
                dlabel = f"{label}: every $\\gamma>0$ fits"
            else:
                dlabel = f"{label}: no $\\gamma>0$ ({d1.violating_steps.size} steps break (2))"
            ax_d.plot([], [], color=color, lw=1.4, ls=ls, label=dlabel)

        # axes cosmetics
        ax_d.set_ylim(bottom=0)
        ax_d.grid(alpha=0.3)
        if variants:
            ax_d.legend(fontsize=7.5, loc="upper right", framealpha=0.85)
        if any_loss and loss_positive:
            ax_l.set_yscale("log")
        ax_l.grid(alpha=0.3, which="major")
        _gamma_axis(ax_g, gamma_values)
        ax_g.set_xlabel("epoch")
        if not variants:
            notes.append("no runs")
        if notes:
            ax_d.text(0.02, 0.03, "\n".join(notes), transform=ax_d.transAxes, fontsize=7,
                      color="#d62728", va="bottom", ha="left")
        if c == 0:
            for r, text in enumerate(ROW_LABELS):
                axes[r, 0].set_ylabel(text, fontsize=9)

    if title:
        fig.suptitle(title, fontsize=12)
    key = [
        Line2D([], [], color="0.4", lw=0.5, alpha=0.6), Line2D([], [], color="0.4", lw=2.0),
        Line2D([], [], color="0.4", lw=0.8, ls=":"),
        Line2D([], [], linestyle="none", marker="^", markerfacecolor="0.6", markeredgecolor="black", ms=5),
        Line2D([], [], linestyle="none", marker="x", color=VIOLATION_RED, ms=5, mew=1.0),
        Line2D([], [], linestyle="none", marker="D", markeredgecolor="0.3", markerfacecolor="none", ms=5, mew=1.0),
    ]
    fig.legend(key, ["loss per step", "loss, per-epoch mean",
                     "largest feasible $\\gamma$ (when the path obeys (2))",
                     "lower bound on $\\gamma$ (negative loss gap; variant's color)",
                     "step breaking (2) on its own (at its bound; 0 if gap = 0)",
                     "step whose bound conflicts with another's (variant's color)"],
               loc="lower center", ncol=3, fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    write_bytes(path, buf.getvalue())
    return path


def plot_picture(pictures: list, path: str | Path, title: str = "") -> Path:
    """The paper's Fig. 12: per run, its path in the plane of its first two principal components
    over the loss contours of that plane, with the SGD direction at every epoch's iterate (arrows,
    lengths scaled for display). ``pictures``: :class:`deep.picture.PathPicture` objects.

    The axes are to scale (equal aspect: an arrow's angle is the plane's), so a path whose second
    component is small draws a flat panel: each panel's height follows its data, the colorbar sits
    under it and the legend under the figure, so that nothing overlaps whatever the shape."""
    n = len(pictures)

    def ratio(p):  # height / width of the panel's data at equal aspect (grid extents)
        w = float(np.ptp(p.grid_a)) or 1.0
        return min(max(float(np.ptp(p.grid_b)) / w, 0.12), 1.6)

    width = 5.6
    panel_h = max(ratio(p) for p in pictures) * width
    fig = Figure(figsize=(width * n, panel_h + 2.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    handles = None
    for ax, p in zip(axes, pictures):
        A, B = np.meshgrid(p.grid_a, p.grid_b)
        z = np.log10(np.maximum(p.grid_loss, 1e-12))
        cs = ax.contourf(A, B, z, levels=20, cmap="viridis", alpha=0.85)
        ax.contour(A, B, z, levels=20, colors="k", linewidths=0.3, alpha=0.5)
        fig.colorbar(cs, ax=ax, orientation="horizontal", location="bottom", shrink=0.8, aspect=35,
                     label="log10 loss on the subset")
        c = p.coords
        ax.plot(c[:, 0], c[:, 1], "-o", color="white", markeredgecolor="0.2", markeredgewidth=0.4, markersize=3,
                linewidth=1.2, label="path (per epoch)")
        ax.plot(c[0, 0], c[0, 1], "s", color="white", markeredgecolor="k", markersize=7, label="theta_0")
        ax.plot(0, 0, "*", color="red", markeredgecolor="k", markersize=13, label="theta* (the last iterate)")
        d = p.sgd_dirs
        if d.size:
            span = max(np.ptp(c[:, 0]), np.ptp(c[:, 1]), 1e-12)
            norm = np.linalg.norm(d, axis=1, keepdims=True)
            u = np.where(norm > 0, d / np.maximum(norm, 1e-300), 0.0) * 0.08 * span
            ax.quiver(c[:-1, 0], c[:-1, 1], u[:, 0], u[:, 1], angles="xy", scale_units="xy", scale=1,
                      color="orange", width=0.004, label="SGD direction (projected; length for display)")
        r = p.meta.get("run") or {}
        cos = fmt3(float(np.nanmean(p.sgd_cos_to_step))) if p.sgd_cos_to_step.size else "n/a"
        share = fmt3(float(np.nanmean(p.sgd_inplane))) if p.sgd_inplane.size else "n/a"
        star = "n/a" if p.star_loss is None else fmt3(p.star_loss)
        ax.set_title(f"{p.name} ({r.get('optimizer')}, lr {fmt3(r.get('lr'))}); theta*'s subset loss {star}\n"
                     f"mean cos(SGD direction, epoch step) {cos}; in-plane share of the SGD direction {share}",
                     fontsize=8)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"PC1 ({100 * p.explained[0]:.1f}% of variance)", fontsize=8)
        ax.set_ylabel(f"PC2 ({100 * p.explained[1]:.1f}%)", fontsize=8)
        ax.tick_params(labelsize=7)
        handles = ax.get_legend_handles_labels()
    fig.legend(*handles, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    head = (title + "\n" if title else "") + "axes to scale (equal aspect): the arrows' angles are the plane's"
    fig.suptitle(head, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, buf.getvalue())
    return out
