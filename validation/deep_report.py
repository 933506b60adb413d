"""The report of one suite run on one data set, rebuilt from the files in its folder alone.

A suite folder ``reports/<suite>-<preset>-<dataset>/`` holds ``suite.json`` (what was asked) and
``runs/<network>-<variant>/`` with each run's ``trace.npz`` + ``trace.json`` (or ``error.json``).
:func:`build_report` reads only those and writes ``report.json``, ``report.md`` and
``figures/<suite>.png``, so ``gpcheck report DIR`` can regenerate a report anywhere.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from deep.suites import ASSUMPTIONS, get_suite
from gamma_theory import Trace, TraceError, check_trace, load_trace
from gamma_theory.definition1 import step_bounds
from gamma_theory.theorem1 import epoch_mean_gap, per_epoch_mean

from .claims import NA, THRESHOLD_FRACTION, RunNumbers, suite_claims
from .util import feasible_set, fmt3, identity_cell, item1_cell, item2_cell, item3_cell, jsonable, pct, write_atomic


class ReportError(ValueError):
    """A folder that holds no suite run."""


def gamma_summary(trace: Trace) -> float | None:
    """Median of the per-step upper bounds (steps with a positive gap), as the paper plots."""
    b = step_bounds(trace)
    up = b.bound[b.is_upper]
    return float(np.median(up)) if up.size else None


def convergence(trace: Trace) -> dict:
    losses = per_epoch_mean(trace.loss, trace.epoch)[1]
    first, last = float(losses[0]), float(losses[-1])
    hit = np.flatnonzero(losses <= THRESHOLD_FRACTION * first)
    return {
        "first_epoch_loss": first,
        "final_loss": last,
        "speed": math.log(first / last) if first > 0 and last > 0 else None,
        "epochs_to_threshold": int(hit[0]) + 1 if hit.size else None,
        "threshold": f"{THRESHOLD_FRACTION:g} x first-epoch mean loss",
        "epoch_mean_loss": losses.tolist(),
        "epoch_mean_gap": epoch_mean_gap(trace)[1].tolist(),
    }


def summarize_run(run_dir: Path) -> tuple[dict, Trace | None]:
    """Everything the report says about one run, and its trace (None when there is none)."""
    name = run_dir.name
    if (run_dir / "error.json").exists():
        err = json.loads((run_dir / "error.json").read_text())
        return {"name": name, "status": "error", "error": f"{err['error']}: {err['message']}"}, None
    info_path = run_dir / "trace.json"
    if not info_path.exists():
        return {"name": name, "status": "missing"}, None
    info = json.loads(info_path.read_text())
    if not (run_dir / "trace.npz").exists():  # diverged before anything could be measured
        return {"name": name, "status": "diverged", "diverged": info.get("diverged"),
                "run": info.get("run"), "pass1": info.get("pass1")}, None
    try:
        trace = load_trace(run_dir / "trace.npz")
    except TraceError as exc:
        return {"name": name, "status": "error", "error": str(exc)}, None
    meta = trace.meta
    result = check_trace(trace)
    summary = {
        "name": name,
        "status": meta.get("status", "ok"),
        "diverged": meta.get("diverged"),
        "run": meta.get("run"),
        "steps": len(trace),
        "epochs_measured": meta.get("epochs_measured"),
        "num_params": meta.get("num_params"),
        "gamma_summary": gamma_summary(trace),
        "convergence": convergence(trace),
        "check": result.to_dict(),
        "verdict": "PASS" if result.holds else "FAIL",
        "pass1": meta.get("pass1"),
        "pass2": meta.get("pass2"),
        "env": meta.get("env"),
        "replay_verified": meta.get("replay_verified"),
    }
    return summary, trace


def _numbers(s: dict) -> RunNumbers:
    run = s.get("run") or {}
    network, variant = run.get("network"), run.get("variant")
    if network is None:  # error/missing runs: the folder name is network-variant
        network, _, variant = s["name"].partition("-")
    chk = s.get("check")
    conv = s.get("convergence") or {}
    return RunNumbers(
        network=network, variant=variant, status=s["status"], gamma=s.get("gamma_summary"),
        speed=conv.get("speed"),
        d1_holds=chk["definition_1"]["holds"] if chk else None,
        share_positive=chk["definition_1"]["share_positive"] if chk else None,
        distance_holds=chk["theorem_1"]["distance_monotone"]["holds"] if chk else None,
        gamma_strict=_strict_gamma(chk["definition_1"]) if chk else None,
    )


def _strict_gamma(d1: dict) -> float:
    """Definition 1's largest feasible gamma, 0 when there is none ('inf' stays infinite)."""
    return float(d1["gamma_max"]) if d1["holds"] else 0.0


def build_report(out_dir: str | Path) -> dict:
    """Rebuild ``report.json``, ``report.md`` and the figure of a suite folder from its files."""
    out = Path(out_dir)
    runs_dir = out / "runs"
    if not runs_dir.is_dir():
        raise ReportError(f"{out}: no runs/ folder; this is not a suite folder written by `gpcheck deep`")
    suite_info = json.loads((out / "suite.json").read_text()) if (out / "suite.json").exists() else {}
    summaries, traces = [], {}
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        s, tr = summarize_run(d)
        summaries.append(s)
        if tr is not None:
            traces[d.name] = tr
    if not summaries:
        raise ReportError(f"{out}: runs/ is empty; nothing to report")
    if not suite_info:  # rebuild from the traces' own metadata
        meta = next(iter(traces.values())).meta if traces else {}
        suite_info = {k: meta.get(k) for k in ("suite", "preset", "dataset", "data")}
    suite_name = suite_info.get("suite")
    suite = get_suite(suite_name, suite_info.get("preset") or "paper") if suite_name else None
    order = {r.name: i for i, r in enumerate(suite.runs)} if suite else {}
    summaries.sort(key=lambda s: order.get(s["name"], len(order)))
    claims = suite_claims(suite.orders_for(suite_info.get("dataset")) if suite else {},
                          [_numbers(s) for s in summaries])

    fig_rel = None
    if traces:
        from .figures import plot_paths

        columns: dict[str, dict[str, Trace]] = {}
        for s in summaries:
            if s["name"] in traces:
                r = s["run"] or {}
                columns.setdefault(r.get("network", s["name"]), {})[r.get("variant", s["name"])] = traces[s["name"]]
        fig_rel = f"figures/{suite_name or 'suite'}.png"
        title = f"{suite_name} suite, {suite_info.get('preset')} preset, {suite_info.get('dataset')}"
        plot_paths(columns, out / fig_rel, title=title)

    report = {
        "suite": suite_name,
        "preset": suite_info.get("preset"),
        "dataset": suite_info.get("dataset"),
        "data": suite_info.get("data"),
        "question": suite.question if suite else None,
        "command": suite_info.get("command"),
        "device": suite_info.get("device"),
        "assumptions": suite_info.get("assumptions", ASSUMPTIONS),
        "preset_description": suite_info.get("preset_description"),
        "started_utc": suite_info.get("started_utc"),
        "finished_utc": suite_info.get("finished_utc"),
        "report_built_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": next((s["env"] for s in summaries if s.get("env")), None),
        "measures": {
            "gamma_summary": "median over steps with a positive loss gap of num_k / (dist0_sq * gap_k)",
            "strict_gamma": "Definition 1's largest feasible gamma, 0 where the feasible set is empty",
            "speed": "log(first-epoch mean loss / last-epoch mean loss); diverged runs rank slowest",
            "epochs_to_threshold": f"first epoch with mean loss <= {THRESHOLD_FRACTION:g} x the first epoch's",
        },
        "runs": summaries,
        "claims": claims,
        "figure": fig_rel,
    }
    write_atomic(out / "report.json", json.dumps(jsonable(report), indent=2))
    write_atomic(out / "report.md", render_markdown(report))
    return report


def _run_row(s: dict) -> str:
    r = s.get("run") or {}
    label = f"{r.get('network', s['name'])} | {r.get('variant', '')}"
    if s["status"] in ("error", "missing"):
        what = s.get("error", "not run yet")
        return f"| {label} | {s['status'].upper()}: {what} |" + " |" * 11
    if "check" not in s:
        dv = s.get("diverged") or {}
        return f"| {label} | DIVERGED at step {dv.get('step')} (epoch {dv.get('epoch')}): {dv.get('reason')} |" + " |" * 11
    c = s["check"]
    d1, t1 = c["definition_1"], c["theorem_1"]
    conv = s["convergence"]
    status = "ok" if s["status"] == "ok" else f"DIVERGED at step {s['diverged']['step']}, measured {s['epochs_measured']} epochs"
    cells = [
        label, status, feasible_set(d1), pct(d1["share_positive"]), fmt3(s["gamma_summary"]),
        f"{d1['n_violating']}/{d1['n_steps']}", item1_cell(t1["distance_monotone"]),
        item2_cell(t1["loss_convergence"]), item3_cell(t1["rate_bound"]), identity_cell(c["recording_identity"]),
        fmt3(conv["final_loss"]), str(conv["epochs_to_threshold"] or "not reached"), s["verdict"],
    ]
    return "| " + " | ".join(cells) + " |"


def _timing_row(s: dict) -> str:
    r = s.get("run") or {}
    p1, p2 = s.get("pass1") or {}, s.get("pass2") or {}
    return (f"| {s['name']} | {r.get('epochs', '')} | {s.get('steps', '')} | {s.get('num_params') or ''} | "
            f"{fmt3(p1.get('wall_s'))} | {fmt3(p2.get('wall_s'))} | {fmt3(p1.get('ms_per_step'))} | "
            f"{fmt3(p2.get('ms_per_step'))} |")


def render_markdown(rep: dict) -> str:
    env = rep.get("env") or {}
    lines = [
        f"# gpcheck: `{rep['suite']}` suite, `{rep['preset']}` preset, `{rep['dataset']}`",
        "",
        f"**Question.** {rep.get('question') or ''}",
        "",
        "## What ran, and where",
        "",
        f"- Command: `{rep.get('command')}` (report rebuilt by `gpcheck report DIR` from the traces in `runs/`)",
        f"- Preset: {rep.get('preset_description')}",
        f"- Data: {rep.get('data')}",
        f"- Device: {env.get('device_name', rep.get('device'))} ({env.get('device', rep.get('device'))}); "
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, driver {env.get('driver')}, "
        f"Python {env.get('python')}, deterministic algorithms {env.get('deterministic')}, TF32 {env.get('allow_tf32')}",
        f"- Started {rep.get('started_utc')}, finished {rep.get('finished_utc')}, report built {rep['report_built_utc']}",
        "- Every trace comes from the exact two-pass measurement (deep/measure.py): pass 2 reproduced pass 1 bit for "
        "bit at every checkpoint and ended on theta*, or the run says otherwise below.",
        "",
        "Assumptions where the paper is silent:",
        "",
    ]
    lines += [f"- {a}" for a in rep.get("assumptions") or []]
    lines += [
        "",
        "## Claims",
        "",
        "Measures: " + "; ".join(f"**{k}** = {v}" for k, v in rep["measures"].items()) + ".",
        "",
        "| claim | verdict | statement | numbers | why |",
        "|---|---|---|---|---|",
    ]
    for c in rep["claims"]:
        nums = ", ".join(f"{k}: {v}" for k, v in c["numbers"].items())
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {c['statement']} | {nums} | {c['why']} |")
    lines += [
        "",
        "## Per run",
        "",
        "Definition 1: feasible gamma set (empty = no single gamma > 0 fits every step), share of per-step "
        "upper bounds that are positive, gamma summary, violating steps. Theorem 1: item 1 distance never grows, "
        "item 2 last/first epoch gap (<= 5%), item 3 rate bound at the largest feasible gamma. "
        "Verdict PASS = Definition 1 and items 1-3 hold.",
        "",
        "| network | variant | status | feasible set | share positive | gamma summary | violating | item 1 | item 2 | "
        "item 3 | identity | final loss | epochs to threshold | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_run_row(s) for s in rep["runs"]]
    lines += [
        "",
        "## Wall time",
        "",
        "| run | epochs | steps | parameters | pass 1 s | pass 2 s | pass 1 ms/step | pass 2 ms/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [_timing_row(s) for s in rep["runs"] if s.get("pass1")]
    if rep.get("figure"):
        lines += ["", "## Figure", "",
                  "Rows: normalized distance to theta*, training loss, per-step gamma bound; a column per network, "
                  "a curve per variant (red x: steps that break inequality (2)).", "",
                  f"![{rep['suite']}]({rep['figure']})"]
    n_na = sum(c["verdict"] == NA for c in rep["claims"])
    lines += ["", f"_{len(rep['claims'])} claims, {n_na} not applicable._", ""]
    return "\n".join(lines)
