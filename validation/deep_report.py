"""The report of one suite run on one data set, rebuilt from the files in its folder alone.

A suite folder ``reports/<suite>-<preset>-<dataset>/`` holds ``suite.json`` (what was asked),
``manifest.json`` (each finished run's status and trace digest) and ``runs/<network>-<variant>/``
with each run's ``trace.npz`` + ``trace.json`` (or ``error.json``). :func:`build_report` reads
only those and writes ``report.json``, ``report.md`` and ``figures/<suite>.png``, so
``gpcheck report DIR`` can regenerate a report anywhere. It trusts no file blindly: a trace that
does not match the digest in its ``trace.json`` or in the manifest, a run folder holding another
run's trace, a damaged JSON file, all make that run an ERROR row that says what to do; the other
runs are reported as usual.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from deep.measure import load_companions
from deep.runner import rebuild_manifest
from deep.verify import SUITE_JSON, consistent_status, manifest_problem, read_trace_json, stray_reason, suite_manifest
from deep.suites import ASSUMPTIONS, PRESET_TABLE, SUITES, get_suite
from gamma_theory import Trace, TraceError, check_trace, load_trace
from gamma_theory.definition1 import step_bounds
from gamma_theory.files import BadFile, check_links, clean_stale_tmp, read_json, write_text
from gamma_theory.theorem1 import epoch_mean_gap, per_epoch_mean
from gamma_theory.related import related_conditions

from .claims import CONVERGED_FRACTION, FAIL, NA, PASS, RunNumbers, suite_claims
from .util import (CONDITIONS_NOTE, conditions_table, feasible_set, fmt3, identity_cell, item1_cell, item2_cell,
                   item3_cell, jsonable, pct)


class ReportError(ValueError):
    """A folder that holds no suite run, or whose suite.json cannot be used."""


def gamma_summary(trace: Trace) -> float | None:
    """Median of the per-step upper bounds (steps with a positive gap), as the paper plots."""
    b = step_bounds(trace)
    up = b.bound[b.is_upper]
    return float(np.median(up)) if up.size else None


def convergence(trace: Trace, num_classes: int | None) -> dict:
    """How fast and how far the run's training loss went, on an absolute scale."""
    losses = per_epoch_mean(trace.loss, trace.epoch)[1]
    first, last = float(losses[0]), float(losses[-1])
    threshold = 0.1 * math.log(num_classes) if num_classes else None
    hit = np.flatnonzero(losses <= threshold) if threshold else np.empty(0)
    return {
        "first_epoch_loss": first,
        "final_loss": last,
        "loss_ratio": last / first if first > 0 else None,
        "converged": bool(last <= CONVERGED_FRACTION * first),
        "mean_loss": float(np.mean(trace.loss)),
        "loss_threshold": threshold,
        "epochs_to_threshold": int(hit[0]) + 1 if hit.size else None,
        "epoch_mean_loss": losses.tolist(),
        "epoch_mean_gap": epoch_mean_gap(trace)[1].tolist(),
    }


def _error(name: str, message: str, todo: str) -> dict:
    return {"name": name, "status": "error", "error": f"{message}; {todo}"}


def summarize_run(run_dir: Path, expected: dict | None = None, manifest_entry: dict | None = None,
                  rerun: str = "rerun the suite's command", num_classes: int | None = None,
                  stray: str | None = None) -> tuple[dict, Trace | None]:
    """Everything the report says about one run, and its trace (None when there is none).

    ``expected`` is the run's spec from suite.json, ``manifest_entry`` what the manifest recorded
    when the run finished: the files must agree with both. ``stray``: why the folder is no run
    this suite measured (deep/verify.py ``stray_reason``), an ERROR row then."""
    name = run_dir.name
    todo = f"{rerun} to measure this run again"
    if stray is not None:
        return _error(name, stray, "remove the folder; the suite's runs are measured by its `gpcheck deep` "
                      "command"), None
    if (run_dir / "error.json").exists():
        try:
            err = read_json(run_dir / "error.json")
            return {"name": name, "status": "error", "error": f"{err['error']}: {err['message']}"}, None
        except (BadFile, KeyError, TypeError):
            return _error(name, "the run failed, and its error.json is damaged", todo), None
    info_path = run_dir / "trace.json"
    if not info_path.exists():
        return {"name": name, "status": "missing"}, None
    try:
        info = read_trace_json(info_path)
        consistent_status(info, info_path)
    except BadFile as exc:
        return _error(name, str(exc), todo), None
    changed = manifest_problem(info, manifest_entry)
    if changed:
        return _error(name, f"{info_path} {changed}", todo), None
    if info.get("status") == "diverged" and "npz_sha256" not in info:  # diverged before anything was measured
        return {"name": name, "status": "diverged", "diverged": info.get("diverged"),
                "run": info.get("run"), "pass1": info.get("pass1")}, None
    try:
        trace = load_trace(run_dir / "trace.npz")
    except TraceError as exc:
        return _error(name, str(exc), todo), None
    meta = trace.meta
    spec = meta.get("run") or {}
    if expected is not None and spec and {k: spec.get(k) for k in expected} != expected:
        return _error(name, f"{run_dir} holds the trace of another run ({spec.get('network')}-{spec.get('variant')}, "
                      f"{spec.get('epochs')} epochs)", todo), None
    result = check_trace(trace)
    try:
        companions = load_companions(run_dir, meta)
    except TraceError as exc:
        return _error(name, str(exc), todo), None
    summary = {
        "name": name,
        "status": meta.get("status", "ok"),
        "diverged": meta.get("diverged"),
        "run": meta.get("run"),
        "steps": len(trace),
        "epochs_measured": meta.get("epochs_measured"),
        "num_params": meta.get("num_params"),
        **path_numbers(trace, num_classes, result),
        "theta_star_eval": meta.get("theta_star_eval"),
        "check": result.to_dict(),
        "verdict": "PASS" if result.holds else "FAIL",
        "related": [c.to_dict() for c in related_conditions(trace)],
        "companions": {c: {"theta_star": tr.meta.get("theta_star"), "steps": len(tr), **path_numbers(tr, num_classes)}
                       for c, tr in companions.items()},
        "companions_unjudged": meta.get("companions_unjudged") or {},
        "pass1": meta.get("pass1"),
        "pass2": meta.get("pass2"),
        "env": meta.get("env"),
        "replay_verified": meta.get("replay_verified"),
    }
    return summary, trace


def path_numbers(trace: Trace, num_classes: int | None, result=None) -> dict:
    """What the report says about one path against one theta*: both gamma readings, the distance,
    the gaps, convergence, and Definition 1's verdict (with its undecidable steps)."""
    result = result or check_trace(trace)
    d1 = result.definition_1
    gaps = trace.gap
    paper_gamma = gamma_summary(trace)
    return {
        "dist0": math.sqrt(trace.dist0_sq),
        "theory": {
            "holds": d1.holds,
            "gamma_max": d1.gamma_max,
            "gamma_max_x_dist0_sq": None if d1.gamma_max is None else d1.gamma_max * trace.dist0_sq,
            "n_violating": int(d1.violating_steps.size),
            "n_undecidable": int(d1.undecidable_steps.size),
            "rests_on_undecidable": d1.rests_on_undecidable,
        },
        "paper": {
            "gamma_median": paper_gamma,
            "gamma_median_x_dist0_sq": None if paper_gamma is None else paper_gamma * trace.dist0_sq,
            "share_positive": d1.share_positive,
        },
        "negative_gap_steps": int((gaps < 0).sum()),
        "min_gap": float(gaps.min()),
        "distance_holds": result.distance.holds,
        "convergence": convergence(trace, num_classes),
    }


def _numbers(s: dict, companion: str | None = None) -> RunNumbers:
    """The claims' view of a run: against its theta*, or against one of its companion theta*."""
    run = s.get("run") or {}
    network, variant, seed = run.get("network"), run.get("variant"), run.get("seed", 0)
    if network is None:  # error/missing runs: the folder name is network-variant[-sN]
        network, _, variant = s["name"].partition("-")
        variant, _, sd = variant.partition("-s")
        seed = int(sd) if sd.isdigit() else 0
    src = s if companion is None else (s.get("companions") or {}).get(companion)
    if "check" not in s or src is None:
        return RunNumbers(network, variant, s["status"] if companion is None else "missing", seed=seed)
    conv, ev = src["convergence"], s.get("theta_star_eval") or {}
    return RunNumbers(
        network=network, variant=variant, status=s["status"],
        converged=conv["converged"] and s["status"] == "ok",
        d1_holds=src["theory"]["holds"],
        gamma_theory=src["theory"]["gamma_max"], gamma_paper=src["paper"]["gamma_median"], dist0=src["dist0"],
        speed=conv["mean_loss"], share_positive=src["paper"]["share_positive"],
        distance_holds=src["distance_holds"], min_gap=src["min_gap"],
        star_accuracy=(ev.get("eval") or {}).get("accuracy") if companion is None else None, seed=seed,
        d1_undecidable=src["theory"].get("n_undecidable", 0),
        d1_rests_on_undecidable=bool(src["theory"].get("rests_on_undecidable")),
    )


def _suite_info(out: Path) -> dict:
    path = out / "suite.json"
    if not path.exists():
        return {}
    try:
        info = read_json(path, SUITE_JSON, "a suite.json")
    except BadFile as exc:
        raise ReportError(f"{exc}; rerun the suite's `gpcheck deep` command to rewrite it") from None
    if info.get("suite") not in SUITES or info.get("preset") not in PRESET_TABLE:
        raise ReportError(f"{path} names suite {info.get('suite')!r} and preset {info.get('preset')!r}; gpcheck "
                          f"knows the suites {', '.join(SUITES)} and the presets {', '.join(PRESET_TABLE)}")
    seeds = info.get("seeds", 1)
    if not (isinstance(seeds, int) and not isinstance(seeds, bool) and 1 <= seeds <= 1000):
        raise ReportError(f"{path} says seeds {seeds!r}; it must be a whole number from 1 to 1000 (rerun the suite's "
                          "`gpcheck deep` command to rewrite it)")
    if info.get("labels", "true") not in ("true", "random"):
        raise ReportError(f"{path} says labels {info.get('labels')!r}; it must be true or random (rerun the suite's "
                          "`gpcheck deep` command to rewrite it)")
    return info


def build_report(out_dir: str | Path) -> dict:
    """Rebuild ``report.json``, ``report.md`` and the figure of a suite folder from its files."""
    out = Path(out_dir)
    runs_dir = out / "runs"
    if not runs_dir.is_dir():
        raise ReportError(f"{out}: no runs/ folder; this is not a suite folder written by `gpcheck deep`")
    check_links(out)  # nothing it writes (report, figures) may land outside the folder through a link
    clean_stale_tmp(out)  # temporaries of killed processes (report, figure, run files)
    suite_info = _suite_info(out)
    try:
        known, rebuild = suite_manifest(out)  # None: no manifest.json
        manifest = known or {}
    except BadFile as exc:
        raise ReportError(f"{exc}; rerun the suite's `gpcheck deep` command to rebuild it") from None
    folders = {p.name: p for p in sorted(runs_dir.iterdir()) if p.is_dir()}
    traces: dict[str, Trace] = {}
    if not suite_info:  # rebuild from the traces' own metadata
        for p in folders.values():
            try:
                meta = load_trace(p / "trace.npz").meta
            except TraceError:
                continue
            suite_info = {k: meta.get(k) for k in ("suite", "preset", "dataset", "data")}
            break
    suite_name, preset_name = suite_info.get("suite"), suite_info.get("preset") or "paper"
    suite = get_suite(suite_name, preset_name, suite_info.get("seeds") or 1) if suite_name in SUITES else None
    specs = {r.name: r.to_dict() for r in suite.runs} if suite else {}
    rerun = f"rerun `{suite_info['command']}`" if suite_info.get("command") else "rerun the suite's command"
    summaries = []
    for name in list(specs) + [n for n in folders if n not in specs]:
        if name not in folders:
            summaries.append({"name": name, "status": "missing"})
            continue
        s, tr = summarize_run(folders[name], specs.get(name), manifest.get(name), rerun,
                              suite_info.get("num_classes"), stray_reason(name, folders[name], specs, known))
        summaries.append(s)
        if tr is not None:
            traces[name] = tr
    if not summaries:
        raise ReportError(f"{out}: runs/ is empty; nothing to report")
    if rebuild:  # the deleted manifest, from the runs of the suite that verified
        rebuild_manifest(out, [s["name"] for s in summaries if s["name"] in traces or s["status"] == "diverged"])
    preset = PRESET_TABLE.get(preset_name)
    orders = suite.orders_for(suite_info.get("dataset")) if suite else {}
    claims = suite_claims(orders, [_numbers(s) for s in summaries])
    claims.insert(1, baseline_claim(summaries))
    sensitivity = theta_star_sensitivity(summaries, orders, claims)

    fig_rel = None
    if traces:
        from .figures import plot_paths

        columns: dict[str, dict[str, Trace]] = {}
        for s in summaries:
            if s["name"] in traces:
                r = s["run"] or {}
                columns.setdefault(r.get("network", s["name"]), {})[r.get("variant", s["name"])] = traces[s["name"]]
        fig_rel = f"figures/{suite_name or 'suite'}.png"
        title = f"{suite_name} suite, {preset_name} preset, {suite_info.get('dataset')}"
        plot_paths(columns, out / fig_rel, title=title)

    report = {
        "suite": suite_name,
        "preset": preset_name,
        "evidence": preset.evidence if preset else True,
        "dataset": suite_info.get("dataset"),
        "data": suite_info.get("data"),
        "question": suite.question if suite else None,
        "command": suite_info.get("command"),
        "device": suite_info.get("device"),
        "threads": suite_info.get("threads"),
        "seeds": suite_info.get("seeds") or 1,
        "labels": suite_info.get("labels") or "true",
        "extras": suite_info.get("extras"),
        "assumptions": suite_info.get("assumptions", ASSUMPTIONS),
        "preset_description": suite_info.get("preset_description"),
        "started_utc": suite_info.get("started_utc"),
        "finished_utc": suite_info.get("finished_utc"),
        "suite_wall_s": suite_info.get("wall_s"),
        "report_built_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": next((s["env"] for s in summaries if s.get("env")), None),
        "measures": MEASURES,
        "runs": summaries,
        "claims": claims,
        "sensitivity": sensitivity,
        "over_seeds": seed_table(summaries),
        "figure": fig_rel,
        "pictures": _pictures(out),
    }
    write_text(out / "report.json", json.dumps(jsonable(report), indent=2))
    write_text(out / "report.md", render_markdown(report))
    return report


def _candidate_label(s: dict, name: str) -> str:
    """A companion theta* named for how far into the run it lies: "50%" for the iterate half-way,
    "last + 50%" for one trained half the epochs longer."""
    epochs = (s.get("run") or {}).get("epochs") or 1
    if name.startswith("epoch"):
        return f"{round(100 * int(name[5:]) / epochs)}%"
    if name == "extended":
        return "trained longer"
    return name


def baseline_claim(summaries: list[dict]) -> dict:
    """The skeptic's first question: does a meaningless theta* pass too?"""
    rows = {s["name"]: s["companions"]["random"]["theory"]["holds"] for s in summaries
            if "random" in (s.get("companions") or {})}
    statement = ("for every run, the same path judged against a random theta* (the distance of the real theta* "
                 "from theta_0, a random direction) breaks Definition 1: the check tells a real minimizer from a "
                 "meaningless point")
    name = "a random theta* is rejected (baseline)"
    if not rows:
        return {"claim": name, "kind": "baseline", "statement": statement, "verdict": NA, "numbers": {},
                "why": "no run recorded a random theta*"}
    passing = [n for n, holds in rows.items() if holds]
    numbers = {n: ("passes" if h else "rejected") for n, h in rows.items()}
    if passing:
        rand = {s["name"]: s["companions"]["random"] for s in summaries if s["name"] in passing}
        vacuous = [n for n in passing if rand[n]["paper"]["gamma_median"] is None]  # no step with a positive gap
        detail = "; ".join(f"{n} ({rand[n]['negative_gap_steps']} steps with a loss below the random point's"
                           + (", none above: it passes only because the random point is no minimizer, which "
                              "Fact 1 rules out" if n in vacuous else "") + ")" for n in passing)
        premise = sum(rand[n]["negative_gap_steps"] > 0 for n in passing)
        return {"claim": name, "kind": "baseline", "statement": statement, "verdict": FAIL, "numbers": numbers,
                "why": f"the random theta* satisfies Definition 1 in {len(passing)} of {len(rows)} runs: {detail}. "
                       "Definition 1 alone cannot reject a point whose loss is above the path's on every step: such "
                       "steps only bound gamma from below. The premise 'no loss gap is negative' (Fact 1) rejects "
                       f"the random theta* in {premise} of these {len(passing)} runs"}
    return {"claim": name, "kind": "baseline", "statement": statement, "verdict": PASS, "numbers": numbers,
            "why": f"rejected in all {len(rows)} runs"}


def theta_star_sensitivity(summaries: list[dict], orders: dict, claims: list[dict]) -> dict:
    """The suite's claims decided again with each earlier (or later) theta*, on the steps before it.
    A claim that PASSes with one theta* and FAILs with another is marked fragile in ``claims``."""
    labels: dict[str, dict[str, str]] = {}  # label -> run name -> companion name
    for s in summaries:
        for c in s.get("companions") or {}:
            if c != "random":
                labels.setdefault(_candidate_label(s, c), {})[s["name"]] = c
    verdicts: dict[str, dict[str, str]] = {c["claim"]: {"last iterate": c["verdict"]} for c in claims}
    for label, names in sorted(labels.items()):
        runs = [_numbers(s, names.get(s["name"], "-")) for s in summaries]
        for c in suite_claims(orders, runs):
            verdicts.setdefault(c["claim"], {})[label] = c["verdict"]
    for c in claims:
        v = verdicts.get(c["claim"], {})
        flips = {PASS, FAIL} <= set(v.values())
        c["fragile"] = flips
        if flips:
            c["why"] += " | FRAGILE: " + ", ".join(f"{k}: {x}" for k, x in v.items())
    return {"theta_stars": ["last iterate"] + sorted(labels), "verdicts": verdicts}


def seed_table(summaries: list[dict]) -> list[dict]:
    """Per configuration (network, variant), its numbers over seeds: how many converged and obey
    Definition 1, and the mean and spread of the dimensionless gammas and of speed."""
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        r = s.get("run") or {}
        if "check" in s:
            groups.setdefault((r.get("network"), r.get("variant")), []).append(s)

    def stat(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "n": len(vals)}

    return [{
        "network": net, "variant": var, "seeds": len(rows),
        "converged": sum(bool(x["convergence"]["converged"]) for x in rows),
        "d1_holds": sum(bool(x["theory"]["holds"]) for x in rows),
        "gamma_max_x_dist0_sq": stat([x["theory"]["gamma_max_x_dist0_sq"] for x in rows]),
        "paper_median_x_dist0_sq": stat([x["paper"]["gamma_median_x_dist0_sq"] for x in rows]),
        "speed": stat([x["convergence"]["mean_loss"] for x in rows]),
        "random_rejected": sum(not x["companions"]["random"]["theory"]["holds"] for x in rows
                               if "random" in (x.get("companions") or {})),
    } for (net, var), rows in groups.items()]


MEASURES = {
    "converged": f"the last epoch's mean training loss is at most {CONVERGED_FRACTION:g} x the first epoch's",
    "speed": "mean training loss over the whole run, (1/K) sum_k l(theta_k; z_k) (lower is faster): the "
             "accumulated loss of Theorem 1 item 3 on one absolute scale; a diverged run is slowest",
    "gamma (theory)": "Definition 1's largest feasible gamma (none when no gamma > 0 fits every step)",
    "gamma (paper)": "median over the steps with a positive loss gap of the per-step bound num_k / (dist0_sq gap_k), "
                     "the curves the paper plots",
    "x dist0^2": "gamma * ||theta_0 - theta*||^2, dimensionless: 1 for a star-convex path (the paper's Discussion); "
                 "raw gammas scale as 1/||theta_0 - theta*||^2",
    "compared": "gammas only between converged runs of one network (theta* must be a minimizer for gamma to mean "
                "what the paper says); no pooling across networks",
}


# -- Markdown ------------------------------------------------------------------------------------
def _verdict_cell(v: str, evidence: bool) -> str:
    return f"**{v}**" if evidence and v in (PASS, FAIL) else v


def _label(s: dict) -> str:
    """``network | variant``, the variant with its seed when it is not 0: "all (seed 2)"."""
    r = s.get("run") or {}
    if r:
        seed = r.get("seed") or 0
        return f"{r.get('network')} | {r.get('variant')}" + (f" (seed {seed})" if seed else "")
    net, _, var = s["name"].partition("-")
    var, _, sd = var.partition("-s")
    return f"{net} | {var}" + (f" (seed {sd})" if sd.isdigit() and sd != "0" else "")


def _status_cell(s: dict) -> str | None:
    """The one cell that stands for a run without a trace (None when it has one)."""
    if s["status"] == "error":
        return f"ERROR: {s.get('error')}"
    if s["status"] == "missing":
        return "not measured yet (run the suite's command)"
    if "check" not in s:
        dv = s.get("diverged") or {}
        return f"DIVERGED at step {dv.get('step')} (epoch {dv.get('epoch')}): {dv.get('reason')}"
    return None


def _cell(text) -> str:
    """Text for a Markdown table cell: a literal | (as in ||theta||) would end the cell."""
    return str(text).replace("|", "\\|")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], runs: list[dict], cells) -> list[str]:
    lines = [_row(header), "|" + "---|" * len(header)]
    for s in runs:
        bad = _status_cell(s)
        if bad is not None:
            lines.append(_row([_label(s), bad] + [""] * (len(header) - 3)))
        else:
            lines.append(_row([_label(s)] + cells(s)))
    return lines


def _status(s: dict) -> str:
    if s["status"] == "ok":
        return "ok"
    return f"diverged at step {s['diverged']['step']}; {s['epochs_measured']} epochs measured"


def _convergence_cells(s: dict) -> list[str]:
    c, ev = s["convergence"], s.get("theta_star_eval") or {}
    e, t = ev.get("eval") or {}, ev.get("train") or {}
    return [
        _status(s), f"{fmt3(c['first_epoch_loss'])} → {fmt3(c['final_loss'])}", fmt3(c["loss_ratio"]),
        "yes" if c["converged"] else "**no**", fmt3(c["mean_loss"]),
        str(c["epochs_to_threshold"] or "not reached"),
        fmt3(e.get("loss")), pct(e.get("accuracy")) if e else "n/a", fmt3(e.get("max_sample_cross_entropy")),
        fmt3(t.get("loss")),
    ]


def _gamma_cells(s: dict) -> list[str]:
    d1 = s["check"]["definition_1"]
    th, pa = s["theory"], s["paper"]
    viol = f"{d1['n_violating']}/{d1['n_steps']}"
    if d1["n_violating"]:
        viol += f" ({d1['n_own_infeasible']} alone, {d1['n_conflicting']} in conflict)"
    if d1.get("n_undecidable"):
        viol += f"; {d1['n_undecidable']} undecidable at float64"
        if d1.get("rests_on_undecidable"):
            viol += " (the verdict rests on them alone)"
    return [
        fmt3(s["dist0"]), "yes" if th["holds"] else "no", feasible_set(d1), fmt3(th["gamma_max"]),
        fmt3(th["gamma_max_x_dist0_sq"]), viol, f"{s['negative_gap_steps']} (min gap {fmt3(s['min_gap'])})",
        pct(pa["share_positive"]), fmt3(pa["gamma_median"]), fmt3(pa["gamma_median_x_dist0_sq"]),
    ]


def _theorem_cells(s: dict, evidence: bool) -> list[str]:
    c = s["check"]
    t1 = c["theorem_1"]
    return [item1_cell(t1["distance_monotone"]), item2_cell(t1["loss_convergence"]), item3_cell(t1["rate_bound"]),
            identity_cell(c["recording_identity"]), _verdict_cell(s["verdict"], evidence)]


def _d1_cell(x: dict) -> str:
    th = x["theory"]
    if th["holds"]:
        return f"yes, γ_max·‖θ0−θ*‖² {fmt3(th['gamma_max_x_dist0_sq'])}"
    return f"no ({th['n_violating']} steps)"


def _baseline_section(rep: dict) -> list[str]:
    runs = [s for s in rep["runs"] if "random" in (s.get("companions") or {})]
    if not runs:
        return ["", "## A random theta* (baseline)", "", "Not recorded in this report's runs.", ""]
    out = ["", "## A random theta* (baseline)", "",
           "The same path judged against a meaningless theta*: a point at the real theta*'s distance from theta_0, "
           "in a random direction (seeded; the seed is in each run's companions/random.json). If the principle "
           "held there too, \"the principle holds\" would say nothing about minimizers.", "",
           "| run | real theta*: Definition 1 | share positive | random theta*: Definition 1 | share positive | "
           "negative-gap steps | median γ·‖θ0−θ*‖² (paper) |",
           "|---|---|---|---|---|---|---|"]
    for s in runs:
        r = s["companions"]["random"]
        out.append(f"| {s['name']} | {_d1_cell(s)} | {pct(s['paper']['share_positive'])} | {_d1_cell(r)} | "
                   f"{pct(r['paper']['share_positive'])} | {r['negative_gap_steps']}/{s['steps']} | "
                   f"{fmt3(r['paper']['gamma_median_x_dist0_sq'])} |")
    return out


def _sensitivity_section(rep: dict) -> list[str]:
    sens = rep.get("sensitivity") or {}
    stars = sens.get("theta_stars") or []
    if len(stars) < 2:
        return ["", "## Sensitivity to theta*", "", "No earlier or later theta* was recorded in this report's runs.", ""]
    out = ["", "## Sensitivity to theta*", "",
           "Every claim decided again with theta* = the iterate at 50%, 75% and 90% of the epochs (each judged on "
           "the steps before it) and, where recorded, a theta* trained longer. A claim that PASSes with one theta* "
           "and FAILs with another is marked fragile in the claims table (NOT APPLICABLE does not count: early "
           "iterates are rarely converged).", "",
           "| claim | " + " | ".join(stars) + " |", "|---|" + "---|" * len(stars)]
    for claim, v in sens["verdicts"].items():
        out.append(f"| {claim} | " + " | ".join(v.get(t, "") for t in stars) + " |")
    out += ["", "Per run, Definition 1 against each theta*:", "",
            "| run | last iterate | " + " | ".join(stars[1:]) + " |", "|---|---|" + "---|" * (len(stars) - 1)]
    for s in rep["runs"]:
        if "check" not in s:
            continue
        by_label = {_candidate_label(s, c): x for c, x in (s.get("companions") or {}).items() if c != "random"}
        out.append(f"| {s['name']} | {_d1_cell(s)} | "
                   + " | ".join(_d1_cell(by_label[t]) if t in by_label else "n/a" for t in stars[1:]) + " |")
    return out


def _pictures(out: Path) -> list[dict]:
    """The Fig. 12 pictures `gpcheck picture` drew for runs of this suite (figures/picture-*.json)."""
    found = []
    for js in sorted((out / "figures").glob("picture-*.json")):
        try:
            d = read_json(js)
            rows = [{"name": p["name"], "explained_variance": p["explained_variance"],
                     "mean_sgd_cos_to_step": p.get("mean_sgd_cos_to_step"), "subset": p["subset"],
                     "replay_max_rel_err": p["replay_max_rel_err"]} for p in d["pictures"]]
        except (BadFile, KeyError, TypeError):
            continue
        found.append({"figure": f"figures/{js.with_suffix('.png').name}", "command": d.get("command"), "runs": rows})
    return found


def _pictures_section(rep: dict) -> list[str]:
    pics = rep.get("pictures") or []
    if not pics:
        return []
    out = ["", "## Paths in the plane of their principal components (the paper's Fig. 12)", "",
           "Drawn by `gpcheck picture`, which replays each run bit for bit: per run, the epoch iterates projected on "
           "the first two principal components of the path, theta* at the origin, the loss over that plane (a "
           "seeded subset of the training images, batch statistics), and the SGD direction -grad f at every "
           "epoch's iterate. cos: between that SGD direction and the run's own step over the next epoch, in the "
           "full parameter space.", "",
           "| run | PC1 | PC2 | mean cos(SGD direction, the run's step) | replay vs trace |", "|---|---|---|---|---|"]
    for p in pics:
        for r in p["runs"]:
            ev = r["explained_variance"]
            out.append(f"| {r['name']} | {pct(ev[0])} | {pct(ev[1])} | {fmt3(r['mean_sgd_cos_to_step'])} | "
                       f"{r['replay_max_rel_err']:.1e} |")
    out.append("")
    out += [f"![{', '.join(r['name'] for r in p['runs'])}]({p['figure']})" for p in pics]
    return out


def _related_section(rep: dict) -> list[str]:
    rows = [(s["name"], s["related"]) for s in rep["runs"] if s.get("related")]
    if not rows:
        return []
    return ["", "## Related path conditions", "", CONDITIONS_NOTE, "", *conditions_table(rows)]


def _seeds_section(rep: dict) -> list[str]:
    rows = rep.get("over_seeds") or []
    if (rep.get("seeds") or 1) < 2 or not rows:
        return []

    def ms(x):
        return "n/a" if x is None else f"{fmt3(x['mean'])} ± {fmt3(x['sd'])}"

    out = ["", "## Over seeds", "",
           f"Each configuration from {rep['seeds']} initializations (seed s also seeds the sampler). Mean ± standard "
           "deviation over the seeds where the number exists.", "",
           "| network | variant | seeds | converged | Definition 1 holds | γ_max·‖θ0−θ*‖² | paper median γ·‖θ0−θ*‖² | "
           "speed (mean loss) | random theta* rejected |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['network']} | {r['variant']} | {r['seeds']} | {r['converged']} | {r['d1_holds']} | "
                   f"{ms(r['gamma_max_x_dist0_sq'])} | {ms(r['paper_median_x_dist0_sq'])} | {ms(r['speed'])} | "
                   f"{r['random_rejected']} |")
    return out


def _step_path(p: dict) -> str:
    return (p.get("step_path") or {}).get("path") or ""


def _timing_rows(runs: list[dict]) -> list[str]:
    """The wall-time table; with a column saying how the steps ran where any run used CUDA graphs."""
    runs = [s for s in runs if s.get("pass1")]
    graphs = any(_step_path(s.get(k) or {}) not in ("", "eager") for s in runs for k in ("pass1", "pass2"))
    head = ["run", "epochs", "steps", "parameters", "pass 1 s", "pass 2 s", "pass 1 ms/step", "pass 2 ms/step"]
    head += ["steps ran as (pass 1 / pass 2)"] if graphs else []
    out = [_row(head), "|" + "---|" * len(head)]
    for s in runs:
        r = s.get("run") or {}
        p1, p2 = s.get("pass1") or {}, s.get("pass2") or {}
        cells = [s["name"], r.get("epochs", ""), s.get("steps", ""), s.get("num_params") or "", fmt3(p1.get("wall_s")),
                 fmt3(p2.get("wall_s")), fmt3(p1.get("ms_per_step")), fmt3(p2.get("ms_per_step"))]
        cells += [f"{_step_path(p1) or '?'} / {_step_path(p2) or '?'}"] if graphs else []
        out.append(_row([str(c) for c in cells]))
    return out


SMOKE_BANNER = ("> **Not evidence.** The `{preset}` preset tests the machinery end to end: its networks are tiny "
                "and train for a few steps, so their verdicts say nothing for or against the paper. They are listed "
                "without emphasis and are not tallied in the index of the reports.")


def _findings(rep: dict) -> list[str]:
    """Plain sentences from the numbers: the counts a reader wants first."""
    runs = [s for s in rep["runs"] if "check" in s]
    if not runs:
        return ["No run has a trace to judge."]
    conv = [s for s in runs if s["convergence"]["converged"] and s["status"] == "ok"]
    holds = [s for s in runs if s["theory"]["holds"]]
    fits = [s for s in runs if ((s.get("theta_star_eval") or {}).get("eval") or {}).get("accuracy") == 1.0]
    out = [
        f"{len(conv)} of {len(runs)} measured runs converged (last/first epoch loss <= {CONVERGED_FRACTION:g}); "
        f"not converged: {', '.join(s['name'] for s in runs if s not in conv) or 'none'}.",
        f"Definition 1 holds on {len(holds)} of {len(runs)} paths "
        f"({len([s for s in holds if s in conv])} of the {len(conv)} converged ones).",
        f"theta* fits every training image in {len(fits)} of {len(runs)} runs.",
    ]

    def span(rows, get):
        vals = [get(s) for s in rows if get(s) is not None]
        return f"{fmt3(min(vals))} to {fmt3(max(vals))}" if vals else "n/a"

    if conv:
        out.append("Among the converged runs, the paper's median gamma x ||theta_0 - theta*||^2 ranges from "
                   f"{span(conv, lambda s: s['paper']['gamma_median_x_dist0_sq'])} (1 for a star-convex path), and "
                   f"Definition 1's largest gamma x ||theta_0 - theta*||^2 from "
                   f"{span(conv, lambda s: s['theory']['gamma_max_x_dist0_sq'])}.")
    if conv and len(conv) < len(runs):
        out.append(f"||theta_0 - theta*|| is {span(conv, lambda s: s['dist0'])} for the converged runs and "
                   f"{span([s for s in runs if s not in conv], lambda s: s['dist0'])} for the others. Raw gammas scale "
                   "as 1/||theta_0 - theta*||^2 (a run that barely moves gets a large one), so they are compared "
                   "only between converged runs.")
    disagree = [c for c in rep["claims"] if c["claim"].endswith("(theory)")]
    for c in disagree:
        twin = next((d for d in rep["claims"] if d["claim"] == c["claim"].replace("(theory)", "(paper)")), None)
        if twin and twin["verdict"] != c["verdict"]:
            out.append(f"The two readings disagree on '{c['claim'][:-9]}': theory {c['verdict']}, paper "
                       f"{twin['verdict']}.")
    others = [s for s in rep["runs"] if "check" not in s]
    if others:
        out.append("Without a trace: " + ", ".join(f"{s['name']} ({s['status']})" for s in others) + ".")
    return out


def render_markdown(rep: dict) -> str:
    env = rep.get("env") or {}
    evidence = rep.get("evidence", True)
    lines = [f"# gpcheck: `{rep['suite']}` suite, `{rep['preset']}` preset, `{rep['dataset']}`", ""]
    if not evidence:
        lines += [SMOKE_BANNER.format(preset=rep["preset"]), ""]
    wall = rep.get("suite_wall_s")
    busy = sum(float((s.get(k) or {}).get("wall_s") or 0.0) for s in rep["runs"] for k in ("pass1", "pass2"))
    lines += [
        f"**Question.** {rep.get('question') or ''}",
        "",
        "## What ran, and where",
        "",
        f"- Command: `{rep.get('command')}` (report rebuilt by `gpcheck report DIR` from the traces in `runs/`)",
        f"- Preset: {rep.get('preset_description')}",
        f"- Data: {rep.get('data')}",
        f"- Device: {env.get('device_name', rep.get('device'))} ({env.get('device', rep.get('device'))}), "
        f"{rep.get('threads') or env.get('num_threads')} torch threads; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
        f"cuDNN {env.get('cudnn')}, driver {env.get('driver')}, Python {env.get('python')}, deterministic algorithms "
        f"{env.get('deterministic')}, TF32 {env.get('allow_tf32')}",
        f"- Started {rep.get('started_utc')}, finished {rep.get('finished_utc')}"
        + (f", suite wall time {wall:.0f} s ({wall / 60:.1f} min, every invocation of the command that recorded "
           "its time: an interrupted one does since 2026-11-29)" if wall else "")
        + (f"; the runs' own pass 1 + pass 2 time adds up to "
           f"{f'{busy / 3600:.2f} h' if busy >= 360 else f'{busy:.0f} s'} (spread over the workers of "
           "`--jobs`)" if busy else "")
        + f"; report built {rep['report_built_utc']}",
        "- Every trace comes from the exact two-pass measurement (deep/measure.py): pass 2 reproduced pass 1 bit for "
        "bit at every checkpoint and ended on theta*, and the trace meets the recording identity, or the run says "
        "otherwise below.",
        "",
        "Assumptions where the paper is silent:",
        "",
        *[f"- {a}" for a in rep.get("assumptions") or []],
        "",
        "## Findings",
        "",
        *[f"- {x}" for x in _findings(rep)],
        "",
        "## Claims",
        "",
        "What is compared: " + "; ".join(f"**{k}** = {v}" for k, v in rep["measures"].items()) + ".",
        "",
        "Kinds: *primary*, the paper's claim itself; *consequence*, implied by Definition 1 and shown as such; "
        "*premise*, what the principle assumes (Fact 1); *order*, the paper's stated order for one network; "
        "*agreement*, whether gamma ranks a network's variants as their speed does.",
        "",
        "| claim | kind | verdict | statement | numbers | why |",
        "|---|---|---|---|---|---|",
    ]
    for c in rep["claims"]:
        nums = ", ".join(f"{k}: {v}" for k, v in c["numbers"].items())
        verdict = _verdict_cell(c["verdict"], evidence) + (" (fragile)" if c.get("fragile") else "")
        lines.append(_row([_cell(c["claim"]), c.get("kind", ""), verdict, _cell(c["statement"]), _cell(nums),
                           _cell(c["why"])]))
    lines += _baseline_section(rep) + _sensitivity_section(rep) + _seeds_section(rep) + _related_section(rep)
    lines += _pictures_section(rep)
    threshold = next((s["convergence"]["loss_threshold"] for s in rep["runs"] if "convergence" in s), None)
    lines += [
        "",
        "## Per run",
        "",
        "### Convergence, and theta* on the whole training set",
        "",
        f"Converged: last/first epoch mean loss <= {CONVERGED_FRACTION:g}. Speed: mean training loss over the run "
        f"(lower is faster). Epochs to loss: the first epoch whose mean loss is <= {fmt3(threshold)} (a tenth of "
        "ln(classes), the loss of a uniform guess). theta*: the last iterate, evaluated on every training image in "
        "evaluation mode (BN running statistics) and in training mode (batch statistics, as loss_star is taken).",
        "",
        *_table(["network", "variant", "status", "epoch loss first → last", "last/first", "converged",
                 "speed (mean loss)", "epochs to loss", "theta* loss (eval)", "theta* accuracy",
                 "theta* max sample loss", "theta* loss (batch stats)"], rep["runs"], _convergence_cells),
        "",
        "### Two readings of gamma",
        "",
        "*Theory*: Definition 1, one gamma > 0 for every step: does it exist, the feasible set, its largest element, "
        "that times ||theta_0 - theta*||^2, and the steps that break it (on their own, or by bounds in conflict). "
        "Steps with a negative loss gap bound gamma from below. *Paper*: the per-step upper bounds it plots: the "
        "share that is positive, their median, and that times ||theta_0 - theta*||^2.",
        "",
        *_table(["network", "variant", "‖θ0−θ*‖", "D1 holds", "feasible set", "γ_max", "γ_max·‖θ0−θ*‖²",
                 "violating steps", "negative-gap steps", "paper: share positive", "paper: median γ",
                 "paper: median·‖θ0−θ*‖²"], rep["runs"], _gamma_cells),
        "",
        "### Theorem 1 and the recording",
        "",
        "Item 1 (distance never grows) follows from Definition 1 where every gap is >= 0. Item 2: last/first epoch "
        "mean loss gap <= 5% (gaps are relative to theta*, so a run that stopped far from a minimizer can meet it; "
        "see *converged* above). Item 3: the rate bound at the largest feasible gamma. Identity: the recording "
        "identity's largest relative residual. Verdict PASS = Definition 1 and items 1-3 hold.",
        "",
        *_table(["network", "variant", "item 1", "item 2", "item 3", "identity", "verdict"], rep["runs"],
                lambda s: _theorem_cells(s, evidence)),
        "",
        "## Wall time",
        "",
        *_timing_rows(rep["runs"]),
    ]
    if rep.get("figure"):
        lines += ["", "## Figure", "",
                  "Rows: normalized distance to theta*, training loss, per-step gamma bound; a column per network, "
                  "a curve per variant. In the gamma row, lines are the upper bounds the paper plots; a step with a "
                  "negative gap (a lower bound) is a triangle, a step that breaks inequality (2) on its own a red x, "
                  "a step whose bound conflicts with another's an open diamond (triangles and diamonds in the "
                  "variant's color).", "",
                  f"![{rep['suite']}]({rep['figure']})"]
    n_na = sum(c["verdict"] == NA for c in rep["claims"])
    n_fail = sum(c["verdict"] == FAIL for c in rep["claims"])
    lines += ["", f"_{len(rep['claims'])} claims: {len(rep['claims']) - n_na - n_fail} PASS, {n_fail} FAIL, "
              f"{n_na} not applicable._", ""]
    return "\n".join(lines)
