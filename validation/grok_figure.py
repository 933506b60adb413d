"""The transformer suite's figures (deep/transformer_suite.py): the paper's three rows for every
variant, one column per seed (:func:`validation.figures.plot_paths`), and the accuracy curves
through memorization and grokking with Definition 1's per-step gamma beside them, one pair of rows
per seed. Every seed measured is drawn, each in its own column or rows (never overlaid), and every
title says which seed it shows."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

import numpy as np  # noqa: E402

from gamma_theory.definition1 import step_bounds  # noqa: E402
from gamma_theory.files import write_bytes  # noqa: E402
from gamma_theory.trace import Trace  # noqa: E402

from .figures import COLORS, DPI, plot_paths  # noqa: E402


def plot_suite(runs: list[dict], traces: dict[str, Trace], folder: Path,
               seeds: list[int] | None = None) -> list[Path]:
    """``figures/paths.png`` (the paper's rows, one column per seed; variants that did not converge
    dashed and marked "not comparable") and ``figures/grokking.png`` (per variant and seed: train
    and held-out accuracy by epoch with the events marked, and the per-step gamma upper bounds by
    step). ``seeds``: the seeds to draw (default: every seed with a trace)."""
    drawn = [r for r in runs if r["name"] in traces]
    seeds = sorted({r["seed"] for r in drawn}) if seeds is None else list(seeds)
    by_seed = {s: [r for r in drawn if r["seed"] == s] for s in seeds}
    shown = ", ".join(str(s) for s in seeds)
    n_all = len({r["seed"] for r in runs})
    title = (f"transformer suite: seed{'s' if len(seeds) > 1 else ''} {shown} ({len(seeds)} of {n_all} measured), "
             "one column per seed; theta* = each run's last iterate")
    cols = {f"seed {s}": {r["name"]: traces[r["name"]] for r in mine} for s, mine in by_seed.items()}
    marks = {f"seed {s}": {r["name"]: "not converged: not comparable" for r in mine if not r["converged"]}
             for s, mine in by_seed.items()}
    out = [plot_paths(cols, folder / "figures" / "paths.png", title=title, marks=marks)]
    n = max([len(mine) for mine in by_seed.values()] + [1])
    fig = Figure(figsize=(3.6 * n + 0.8, 6.4 * max(len(seeds), 1)), dpi=DPI)
    axes = fig.subplots(2 * max(len(seeds), 1), n, squeeze=False)
    for row, (seed, mine) in enumerate(by_seed.items()):
        for c in range(len(mine), n):  # a seed with fewer runs leaves its last panels empty
            axes[2 * row, c].set_axis_off()
            axes[2 * row + 1, c].set_axis_off()
        for c, r in enumerate(mine):
            _plot_run(axes[2 * row, c], axes[2 * row + 1, c], r, traces[r["name"]])
        axes[2 * row, 0].set_ylabel(f"seed {seed}\naccuracy")
        axes[2 * row + 1, 0].set_ylabel(f"seed {seed}\ngamma bound (inequality (2))")
    fig.suptitle("Memorization and grokking, and Definition 1's per-step gamma (theta* = the last iterate): "
                 f"seed{'s' if len(seeds) > 1 else ''} {shown}, two rows per seed", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    path = folder / "figures" / "grokking.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buf.getvalue())
    return out + [path]


def _plot_run(ax_a, ax_g, r: dict, tr: Trace) -> None:
    """One run's two panels: accuracy by epoch with its events, and the per-step gamma bounds."""
    rows = r["epoch_eval"]
    ep = [x["epoch"] for x in rows]
    ax_a.plot(ep, [x["train"]["accuracy"] for x in rows], color=COLORS[0], label="train")
    ax_a.plot(ep, [x["held_out"]["accuracy"] for x in rows], color=COLORS[1], label="held out")
    for name, e, ls in (("memorized", r["memorization_epoch"], "--"), ("grokked", r["grokking_epoch"], ":")):
        if e is not None:
            ax_a.axvline(e, color="0.3", ls=ls, lw=1, label=f"{name} (epoch {e})")
    ax_a.set_title(r["name"] + ("" if r["converged"] else "\n(not converged)"), fontsize=10)
    ax_a.set_ylim(-0.02, 1.02)
    ax_a.set_xlabel("epoch")
    ax_a.legend(fontsize=7, loc="lower right")
    b = step_bounds(tr)
    up = b.is_upper & np.isfinite(b.bound) & (b.bound > 0)
    ax_g.semilogy(tr.step[up], b.bound[up], ".", ms=1.5, color=COLORS[2], label="per-step upper bound on gamma")
    bad = (b.is_upper & (b.bound <= 0)) | (b.is_zero & (b.num < 0))
    if bad.any():
        lo = b.bound[up].min() if up.any() else 1e-6
        ax_g.plot(tr.step[bad], np.full(int(bad.sum()), lo), "x", color="red", ms=4,
                  label=f"{int(bad.sum())} step(s) no gamma > 0 allows")
    for s, ls in ((r.get("memorization_step"), "--"), (r.get("grokking_step"), ":")):
        if s is not None:
            ax_g.axvline(s, color="0.3", ls=ls, lw=1)
    ax_g.set_xlabel("step")
    ax_g.legend(fontsize=7, loc="lower right")


__all__ = ["plot_suite"]
