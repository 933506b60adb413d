"""``gpcheck ladder``: every rung of the problem ladder with every optimizer, judged and reported.

A rung is a problem of :func:`gamma_theory.problems.ladder` (least squares, phase retrieval, small
wide MLPs); each is trained with every optimizer of :func:`gamma_theory.optimizers.optimizer_names`, the
exact trace is checked by :func:`gamma_theory.check_trace`, and the results are written as

* ``OUT/traces/<rung>-<optimizer>.npz`` (+ ``.json`` metadata), so anyone can re-check them;
* ``OUT/report.json``: everything, machine readable;
* ``OUT/report.md``: what ran, how, the verdict table and the findings;
* ``OUT/figures/ladder.png``: the paper's three rows, one column per rung.

A run's verdict is PASS iff ``check_trace(trace).holds``; a FAIL is a finding, not an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from pathlib import Path

from gamma_theory import check_trace
from gamma_theory import problems as P
from gamma_theory.files import write_text
from gamma_theory.related import related_conditions
from gamma_theory.trace import Trace

from .figures import plot_paths
from .md import related_section, table, verdict_cell
from .util import (
    environment,
    feasible_set,
    fmt3,
    identity_cell,
    item1_cell,
    item2_cell,
    item3_cell,
    jsonable,
    pct,
)

#: where `gpcheck ladder` writes by default: a git-ignored folder, so a run never rewrites the
#: committed reports/ladder/ (pass --out reports/ladder to rebuild those)
DEFAULT_OUT = "gpcheck-out/ladder"


def _command(out_dir: str, seed: int) -> str:
    cmd = "gpcheck ladder"
    if str(out_dir) != DEFAULT_OUT:
        cmd += f" --out {out_dir}"
    if seed != 0:
        cmd += f" --seed {seed}"
    return cmd


def _ls_floor(problem: P.Problem, res: P.PathResult) -> dict:
    """Least squares with SGD: the closed-form floor ``(2 - eta L) / dist0_sq`` on gamma."""
    L = P.ls_batch_smoothness(problem.data["X"], res.batches)
    lr = res.trace.lr
    return {
        "L": L,
        "lr_times_L": lr * L,
        "gamma_floor": (2.0 - lr * L) / res.trace.dist0_sq,
        "applies": bool(lr < 2.0 / L),
    }


def run_one(problem: P.Problem, optimizer: str, seed: int, trace_dir: Path) -> tuple[dict, Trace | None]:
    """Train, check and save one run; return its report entry and its trace (None if it diverged)."""
    t0 = time.perf_counter()
    entry: dict = {
        "rung": problem.name,
        "description": problem.description,
        "optimizer": optimizer,
        "lr": float(problem.lr[optimizer]),
        "epochs": problem.epochs,
        "batch_size": problem.batch_size,
        "n_samples": problem.n,
        "theta_star_rule": problem.theta_star_rule,
    }
    try:
        res = P.run_path(problem, optimizer, seed=seed)
    except FloatingPointError as exc:  # a diverged path is a finding too
        entry.update(check=None, verdict="FAIL", error=str(exc), wall_s=time.perf_counter() - t0)
        return entry, None
    result = check_trace(res.trace)
    entry["related"] = [c.to_dict() for c in related_conditions(res.trace)]
    entry["n_steps"] = len(res.trace)
    entry["dist0_sq"] = res.trace.dist0_sq
    entry["check"] = result.to_dict()
    entry["verdict"] = "PASS" if result.holds else "FAIL"
    if problem.name == "least_squares" and optimizer == "sgd":
        entry["closed_form"] = _ls_floor(problem, res)
    npz = res.trace.save(trace_dir / f"{problem.name}-{optimizer}")
    entry["trace"] = str(Path("traces") / npz.name)
    entry["wall_s"] = time.perf_counter() - t0
    return entry, res.trace


def run_ladder(out_dir: str = DEFAULT_OUT, seed: int = 0, progress: bool = True) -> dict:
    """Run every rung with every optimizer, check, save traces, write the reports; return the
    report dict (also written to ``out_dir/report.json``)."""
    import torch

    threads = torch.get_num_threads()
    # The rungs are tiny (d <= 1281): one thread is fastest, and on a busy machine several
    # OpenMP threads per op can spin-wait each other into runs 100x slower.
    torch.set_num_threads(1)
    try:
        return _run_ladder(out_dir, seed, progress)
    finally:
        torch.set_num_threads(threads)


def _run_ladder(out_dir: str, seed: int, progress: bool) -> dict:
    from tqdm import tqdm

    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc)
    out = Path(out_dir)
    trace_dir = out / "traces"
    trace_dir.mkdir(parents=True, exist_ok=True)

    rungs = P.ladder(seed)
    jobs = [(p, o) for p in rungs for o in P.optimizer_names()]
    runs: list[dict] = []
    columns: dict[str, dict[str, Trace]] = {p.name: {} for p in rungs}
    show = progress and sys.stderr.isatty()
    with tqdm(total=len(jobs), desc="ladder", unit="run", file=sys.stderr, disable=not show) as bar:
        for problem, opt in jobs:
            bar.set_postfix_str(f"{problem.name}/{opt}")
            entry, trace = run_one(problem, opt, seed, trace_dir)
            runs.append(entry)
            if trace is not None:
                columns[problem.name][opt] = trace
            bar.update(1)

    fig_path = plot_paths(columns, out / "figures" / "ladder.png",
                          title=f"gpcheck ladder (seed {seed}): the paper's three rows per rung")
    report = {
        "command": _command(out_dir, seed),
        "timestamp_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": seed,
        "environment": environment(),
        "n_runs": len(runs),
        "n_pass": sum(r["verdict"] == "PASS" for r in runs),
        "criteria": {
            "pass": "Definition 1's feasible gamma set is non-empty and Theorem 1 items 1-3 hold",
            "item_2": "last epoch's largest per-sample loss gap <= 5% of the first epoch's",
        },
        "figure": str(fig_path.relative_to(out)),
        "runs": runs,
        "wall_s": None,
    }
    report["wall_s"] = time.perf_counter() - t_start
    report = jsonable(report)
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "report.md", render_markdown(report))
    return report


# -- the Markdown report ------------------------------------------------------------------------
def _cells(run: dict) -> list[str]:
    base = [run["rung"], run["optimizer"], fmt3(run["lr"])]
    c = run.get("check")
    if c is None:
        return base + ["diverged"] + ["n/a"] * 7 + [verdict_cell(run["verdict"])]
    d1 = c["definition_1"]
    t1 = c["theorem_1"]
    return base + [
        feasible_set(d1),
        fmt3(d1["gamma_max"]),
        pct(d1["share_positive"]),
        str(d1["n_violating"]),
        item1_cell(t1["distance_monotone"]),
        item2_cell(t1["loss_convergence"]),
        item3_cell(t1["rate_bound"]),
        identity_cell(c["recording_identity"]),
        verdict_cell(run["verdict"]),
    ]


def findings(report: dict) -> list[str]:
    """Plain sentences drawn from the numbers: each FAIL and why, and the closed-form check."""
    runs = report["runs"]
    out = [f"{report['n_pass']} of {report['n_runs']} runs PASS."]
    for r in runs:
        name = f"{r['rung']}/{r['optimizer']}"
        c = r.get("check")
        if c is None:
            out.append(f"{name}: FAIL, the path diverged ({r.get('error', 'no trace')}).")
            continue
        d1, t1 = c["definition_1"], c["theorem_1"]
        dm, lc, rb = t1["distance_monotone"], t1["loss_convergence"], t1["rate_bound"]
        if r["verdict"] == "FAIL":
            why = []
            if not d1["holds"]:
                parts = []
                if d1["n_own_infeasible"]:
                    parts.append(f"{d1['n_own_infeasible']} on their own")
                if d1["n_conflicting"]:
                    parts.append(f"{d1['n_conflicting']} through conflicting bounds")
                first = ", ".join(str(s) for s in d1["violating_steps"][:5])
                why.append(f"{d1['n_violating']} of {d1['n_steps']} steps violate inequality (2) "
                           f"({'; '.join(parts)}; first at steps {first}), so no gamma > 0 fits the path")
            if not dm["holds"]:
                why.append(f"distance grows at {dm['n_increases']} steps "
                           f"(largest relative growth {fmt3(dm['max_rel_increase'])})")
            if lc["holds"] is False:
                why.append(f"the last epoch's {lc['mode']} gap is {fmt3(lc['ratio'])} of the first's "
                           f"(> {pct(lc['rel_tol'])})")
            if rb["holds"] is False:
                why.append(f"item 3 fails at {rb['n_violations']} epochs (max lhs/rhs {fmt3(rb['max_ratio'])})")
            if rb["holds"] is None:
                why.append("item 3 cannot be checked (no gamma > 0)")
            extra = []
            if dm["holds"]:
                extra.append("distance still never grows")
            if lc["holds"]:
                extra.append(f"losses still converge (last/first epoch gap {fmt3(lc['ratio'])})")
            sentence = f"{name}: FAIL: " + "; ".join(why) + "."
            if extra:
                sentence += " Yet " + " and ".join(extra) + "."
            out.append(sentence)
        if not c["recording_identity"]["holds"]:
            out.append(f"{name}: the recording identity is off by {fmt3(c['recording_identity']['max_rel_residual'])} "
                       "(relative): the trace itself is suspect.")
        cf = r.get("closed_form")
        if cf is not None and d1["gamma_max"] is not None:
            gmax = float(d1["gamma_max"])
            ok = gmax >= cf["gamma_floor"] * (1 - 1e-9)
            out.append(
                f"{name}: closed form (gamma_theory/problems.py, ls_closed_form_gamma; tested in "
                f"tests/test_least_squares.py): eta*L = {fmt3(cf['lr_times_L'])} < 2, so "
                f"gamma >= (2 - eta*L)/dist0_sq = {fmt3(cf['gamma_floor'])}; measured largest gamma "
                f"{fmt3(gmax)}: {'consistent' if ok else 'INCONSISTENT'}."
            )
    passing = [r for r in runs if r["verdict"] == "PASS"]
    if passing:
        ranked = sorted(passing, key=lambda r: float(r["check"]["definition_1"]["gamma_max"]))
        out.append("Largest gamma among PASS runs, smallest first: " + ", ".join(
            f"{r['rung']}/{r['optimizer']} {fmt3(r['check']['definition_1']['gamma_max'])}" for r in ranked) + ".")
    return out


def render_markdown(report: dict) -> str:
    env = report["environment"]
    header = ["rung", "optimizer", "lr", "feasible gamma set", "largest gamma", "share positive",
              "violating steps", "Thm1 item 1 (dist never grows)", "item 2 (last/first gap)",
              "item 3 (max lhs/rhs)", "recording identity (max rel residual)", "verdict"]
    rows = table(header, [_cells(r) for r in report["runs"]])
    descr = {}
    for r in report["runs"]:
        descr.setdefault(r["rung"], r)
    rung_lines = [f"- `{k}`: {v['description']}; {v['epochs']} epochs; theta* = {v['theta_star_rule']}"
                  for k, v in descr.items()]
    lines = [
        "# gpcheck ladder: the gamma-optimization principle on problems with known answers",
        "",
        "The ladder runs every rung, from over-parameterized least squares (closed form) through "
        "phase retrieval to small wide MLPs, with SGD, SGD with momentum 0.5 and Adam (eps 1e-2), "
        "records each exact path and judges it with the same checkers a deep run gets. A run "
        "**PASSES** iff the feasible set of gamma of Definition 1 (inequality (2) at every step, one "
        "gamma > 0 for all) is non-empty and Theorem 1 items 1-3 hold on the path: (1) the distance "
        "to theta* never grows; (2) the last epoch's loss gap is at most 5% of the first epoch's, per "
        "sample; (3) at the end of every epoch, after K steps, the mean loss gap of the first K steps is "
        "at most 1/(2 eta gamma K) with the largest feasible gamma. Anything else is a **FAIL**: a finding "
        "about the principle, stated with its numbers below, not an error of the tool.",
        "",
        "## How it was produced",
        "",
        f"- command: `{report['command']}` (from the repository root)",
        f"- date: {report['timestamp_utc']} (UTC), seed {report['seed']}",
        f"- versions: Python {env['python']}, torch {env['torch']}, numpy {env['numpy']}, "
        f"matplotlib {env['matplotlib']}",
        f"- machine: {env['cpu']}, {env['cpu_count']} cores ({env['torch_threads']} torch threads), "
        f"{env['platform']}; float64 on the CPU",
        f"- wall time: {report['wall_s']:.1f} s for {report['n_runs']} runs",
        "",
        "Rungs:",
        "",
        *rung_lines,
        "",
        "## Verdicts",
        "",
        *rows,
        "",
        "Numbers have 3 significant digits. *share positive*: share of the steps with a positive loss "
        "gap whose own upper bound on gamma is positive. *violating steps*: steps infeasible on their "
        "own or whose bounds conflict with another step's. Traces: `traces/<rung>-<optimizer>.npz`, "
        "re-check any with `gpcheck check PATH`.",
        "",
        "## Findings",
        "",
        *[f"- {s}" for s in findings(report)],
        "",
        *related_section([(f"{r['rung']} / {r['optimizer']}", r["related"]) for r in report["runs"] if r.get("related")]),
        "",
        "## Figure",
        "",
        "Rows: normalized distance to theta*, training loss (thin: per step, thick: per-epoch mean), "
        "and the per-step upper bound on gamma (steps with a positive gap, symlog scale; dotted: the "
        "largest feasible gamma; red x: steps that break inequality (2)).",
        "",
        f"![ladder]({report['figure']})",
        "",
    ]
    return "\n".join(lines)


__all__ = ["run_ladder", "run_one", "render_markdown", "findings", "DEFAULT_OUT"]

