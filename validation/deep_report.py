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
from gamma_theory.identity import bound_quantiles, directions, prefix_gammas, speed_identity
from gamma_theory.theorem1 import epoch_mean_gap, per_epoch_mean
from gamma_theory.related import related_conditions

from .claims import CONVERGED_FRACTION, FAIL, NA, PASS, RunNumbers, link_claims, suite_claims
from .more_claims import reading_reversals, violation_rate
from .report_md import candidate_label, render_markdown
from .util import jsonable


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
    last = trace.epoch == trace.epoch[-1]
    return {
        "dist0": math.sqrt(trace.dist0_sq),
        "identity": speed_identity(trace, d1.gamma_max).to_dict(),
        "bound_quantiles_x_dist0_sq": bound_quantiles(trace),
        "prefix": prefix_gammas(trace).to_dict(),
        "update_sq_by_epoch": per_epoch_mean(trace.update_sq, trace.epoch)[1].tolist(),
        "directions": directions(trace).to_dict(),
        "star_batch_loss": float(np.mean(trace.loss_star[last])),
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
            "share_positive": d1.share_positive if d1.n_upper else None,  # None: no step with a positive gap
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
        n_steps=int(src.get("steps") or s.get("steps") or 0), n_violating=int(src["theory"]["n_violating"]),
        identity_residual=(src.get("identity") or {}).get("rel_residual"),
        ends_at_star=bool((src.get("identity") or {}).get("ends_at_star")),
        end_ratio=(src.get("identity") or {}).get("end_ratio"),
        gamma_max_over_bar=(src.get("identity") or {}).get("gamma_max_over_bar"),
        prefix=src.get("prefix"), update_sq_by_epoch=src.get("update_sq_by_epoch"), directions=src.get("directions"),
        star_batch_loss=src.get("star_batch_loss"), first_loss=conv.get("first_epoch_loss"),
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
    suite = (get_suite(suite_name, preset_name, suite_info.get("seeds") or 1, suite_info.get("networks"),
                       suite_info.get("variants"))
             if suite_name in SUITES else None)
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
    checks = suite.checks_for(suite_info.get("dataset")) if suite else {}
    numbers = [_numbers(s) for s in summaries]
    claims = suite_claims(orders, numbers, checks)
    claims.insert(next(i for i, c in enumerate(claims) if c["kind"] == "premise"), baseline_claim(summaries))
    claims += _link_claims(summaries)
    sensitivity = theta_star_sensitivity(summaries, orders, claims, checks)

    fig_rel = None
    if traces:
        from .figures import plot_paths

        columns: dict[str, dict[str, Trace]] = {}
        marks: dict[str, dict[str, str]] = {}
        shown = [s for s in summaries if s["name"] in traces]
        fig_seed = min((s["run"] or {}).get("seed", 0) for s in shown)
        for s in shown:
            r = s["run"] or {}
            if r.get("seed", 0) != fig_seed:
                continue
            net, var = r.get("network", s["name"]), r.get("variant", s["name"])
            columns.setdefault(net, {})[var] = traces[s["name"]]
            if not s["convergence"]["converged"]:
                marks.setdefault(net, {})[var] = "not converged: its gamma is not comparable"
        fig_rel = f"figures/{suite_name or 'suite'}.png"
        n_seeds = len({(s["run"] or {}).get("seed", 0) for s in shown})
        title = (f"{suite_name} suite, {preset_name} preset, {suite_info.get('dataset')}"
                 + (f": seed {fig_seed} of {n_seeds} (every seed's numbers are in the report)" if n_seeds > 1 else ""))
        plot_paths(columns, out / fig_rel, title=title, marks=marks)

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
        # the preset as defined now (a suite.json written earlier may carry an older wording)
        "preset_description": preset.description if preset else suite_info.get("preset_description"),
        "started_utc": suite_info.get("started_utc"),
        "finished_utc": suite_info.get("finished_utc"),
        "suite_wall_s": suite_info.get("wall_s"),
        "report_built_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": next((s["env"] for s in summaries if s.get("env")), None),
        "measures": MEASURES,
        "runs": summaries,
        "claims": claims,
        "sensitivity": sensitivity,
        "violation_rate": violation_rate(numbers),
        "readings": reading_reversals(orders, numbers),
        "figure_seed": fig_seed if traces else None,
        "over_seeds": seed_table(summaries),
        "figure": fig_rel,
        "pictures": _pictures(out),
    }
    write_text(out / "report.json", json.dumps(jsonable(report), indent=2))
    write_text(out / "report.md", render_markdown(report))
    return report


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


def _link_claims(summaries: list[dict]) -> list[dict]:
    """"Gamma tracks speed" against the theta* trained longer, where the runs recorded one; else one
    NOT APPLICABLE row that says how to get it."""
    if not any("extended" in (s.get("companions") or {}) for s in summaries):
        return [{"claim": "gamma tracks speed vs a theta* that does not end the path", "kind": "agreement",
                 "statement": "among a network's converged variants, ranking by gamma gives the order of speed when "
                              "gamma is judged against a theta* that does not end the path (there the gamma-speed "
                              "identity does not force it)",
                 "verdict": NA, "numbers": {},
                 "why": "no run recorded a theta* trained longer: measure with --star-extend F (the long preset's "
                        "report has it)"}]
    return link_claims([_numbers(s, "extended") for s in summaries], "trained longer")


def theta_star_sensitivity(summaries: list[dict], orders: dict, claims: list[dict], checks: dict | None = None) -> dict:
    """The suite's claims decided again with each earlier (or later) theta*, on the steps before it.
    A claim that PASSes with one theta* and FAILs with another is marked fragile in ``claims``."""
    labels: dict[str, dict[str, str]] = {}  # label -> run name -> companion name
    for s in summaries:
        for c in s.get("companions") or {}:
            if c != "random":
                labels.setdefault(candidate_label(s, c), {})[s["name"]] = c
    verdicts: dict[str, dict[str, str]] = {c["claim"]: {"last iterate": c["verdict"]} for c in claims}
    for label, names in sorted(labels.items()):
        runs = [_numbers(s, names.get(s["name"], "-")) for s in summaries]
        for c in suite_claims(orders, runs, checks):
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
                "median": float(np.median(vals)), "n": len(vals)}

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


