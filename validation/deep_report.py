"""The report of one suite run on one data set, rebuilt from the files in its folder alone.

A suite folder ``reports/<suite>-<preset>-<dataset>/`` holds ``suite.json`` (what was asked),
``manifest.json`` (each finished run's status and trace digest) and ``runs/<network>-<variant>/``
with each run's ``trace.npz`` + ``trace.json`` (or ``error.json``). :func:`build_report` reads
only those and writes ``report.json``, ``report.md`` and ``figures/<suite>.png``, so
``gpcheck report DIR`` can regenerate a report anywhere. It trusts no file blindly: a trace that
does not match the digest in its ``trace.json`` or in the manifest, a run folder holding another
run's trace, a damaged JSON file, all make that run an ERROR row that says what to do; the other
runs are reported as usual.

The layers: ``run_summary`` reads and verifies each run and summarizes it (pure); the claims
modules (``claims``, ``more_claims``, ``companion_claims``) decide every claim from the frozen
``RunNumbers``; ``report_md`` renders the report's dict. This module only conducts them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from deep.runner import rebuild_manifest
from deep.suites import ASSUMPTIONS, PRESET_TABLE, SUITES, RunSpec, get_suite
from deep.verify import SUITE_JSON, stray_reason, suite_manifest
from gamma_theory import Trace, TraceError, load_trace
from gamma_theory.files import BadFile, check_links, clean_stale_tmp, read_json, write_text

from .claims import CONVERGED_FRACTION, suite_claims
from .companion_claims import baseline_claim, extended_link_claims, star_seed_claims, theta_star_sensitivity
from .more_claims import reading_reversals, violation_rate
from .report_md import render_markdown
from .run_summary import against, load_run, run_numbers, seed_table, sensitivity_runs, star_seed_runs, summarize
from .util import jsonable


class ReportError(ValueError):
    """A folder that holds no suite run, or whose suite.json cannot be used."""


def suite_info(out: Path) -> dict:
    """The suite folder's ``suite.json``, validated (``{}`` when there is none); :class:`ReportError`
    when it is damaged or says something no report can use. A suite or preset gpcheck does not
    list is no error: its report is built from what suite.json and the traces say."""
    path = out / "suite.json"
    if not path.exists():
        return {}
    try:
        info = read_json(path, SUITE_JSON, "a suite.json")
    except BadFile as exc:
        raise ReportError(f"{exc}; rerun the suite's `gpcheck deep` command to rewrite it") from None
    seeds = info.get("seeds", 1)
    if not (isinstance(seeds, int) and not isinstance(seeds, bool) and 1 <= seeds <= 1000):
        raise ReportError(f"{path} says seeds {seeds!r}; it must be a whole number from 1 to 1000 (rerun the suite's "
                          "`gpcheck deep` command to rewrite it)")
    if info.get("labels", "true") not in ("true", "random"):
        raise ReportError(f"{path} says labels {info.get('labels')!r}; it must be true or random (rerun the suite's "
                          "`gpcheck deep` command to rewrite it)")
    return info


_suite_info = suite_info  # the name validation/cli.py imports until the branches merge


def _suite_specs(info: dict):
    """The suite object (None for a suite gpcheck does not list) and its runs' specs by name: for
    an unknown suite, the runs suite.json lists."""
    name, preset = info.get("suite"), info.get("preset") or "paper"
    if name in SUITES and preset in PRESET_TABLE:
        suite = get_suite(name, preset, info.get("seeds") or 1, info.get("networks"), info.get("variants"))
        return suite, {r.name: r.to_dict() for r in suite.runs}
    specs = {}
    for r in info.get("runs") or []:
        try:
            specs[RunSpec(**r).name] = r
        except TypeError:  # a spec this version cannot read: the folders alone say which runs exist
            return None, {}
    return None, specs


def build_report(out_dir: str | Path) -> dict:
    """Rebuild ``report.json``, ``report.md`` and the figure of a suite folder from its files."""
    out = Path(out_dir)
    runs_dir = out / "runs"
    if not runs_dir.is_dir():
        raise ReportError(f"{out}: no runs/ folder; this is not a suite folder written by `gpcheck deep`")
    check_links(out)  # nothing it writes (report, figures) may land outside the folder through a link
    clean_stale_tmp(out)  # temporaries of killed processes (report, figure, run files)
    info = suite_info(out)
    try:
        known, rebuild = suite_manifest(out)  # None: no manifest.json
        manifest = known or {}
    except BadFile as exc:
        raise ReportError(f"{exc}; rerun the suite's `gpcheck deep` command to rebuild it") from None
    folders = {p.name: p for p in sorted(runs_dir.iterdir()) if p.is_dir()}
    traces: dict[str, Trace] = {}
    if not info:  # rebuild from the traces' own metadata
        for p in folders.values():
            try:
                meta = load_trace(p / "trace.npz").meta
            except TraceError:
                continue
            info = {k: meta.get(k) for k in ("suite", "preset", "dataset", "data")}
            break
    suite_name, preset_name = info.get("suite"), info.get("preset") or "paper"
    suite, specs = _suite_specs(info)
    rerun = f"rerun `{info['command']}`" if info.get("command") else "rerun the suite's command"
    summaries = []
    for name in list(specs) + [n for n in folders if n not in specs]:
        if name not in folders:
            summaries.append({"name": name, "status": "missing"})
            continue
        run = load_run(folders[name], specs.get(name), manifest.get(name), rerun,
                       stray_reason(name, folders[name], specs, known))
        summaries.append(summarize(run, info.get("num_classes")))
        if run.trace is not None:
            traces[name] = run.trace
    if not summaries:
        raise ReportError(f"{out}: runs/ is empty; nothing to report")
    if rebuild:  # the deleted manifest, from the runs of the suite that verified
        rebuild_manifest(out, [s["name"] for s in summaries if s["name"] in traces or s["status"] == "diverged"])
    preset = PRESET_TABLE.get(preset_name)
    orders = suite.orders_for(info.get("dataset")) if suite else {}
    checks = suite.checks_for(info.get("dataset")) if suite else {}
    numbers = [run_numbers(s) for s in summaries]
    claims = suite_claims(orders, numbers, checks)
    claims.insert(next(i for i, c in enumerate(claims) if c["kind"] == "premise"),
                  baseline_claim(against(summaries, "random")))
    claims += extended_link_claims(against(summaries, "extended"))
    claims += star_seed_claims(star_seed_runs(summaries))
    sensitivity = theta_star_sensitivity(sensitivity_runs(summaries), orders, claims, checks)

    fig_rel, fig_seed = _suite_figure(out, f"{suite_name} suite, {preset_name} preset, {info.get('dataset')}",
                                      suite_name, summaries, traces)

    report = {
        "suite": suite_name,
        "preset": preset_name,
        "evidence": preset.evidence if preset else True,
        "dataset": info.get("dataset"),
        "data": info.get("data"),
        "question": suite.question if suite else None,
        "command": info.get("command"),
        "device": info.get("device"),
        "threads": info.get("threads"),
        "seeds": info.get("seeds") or 1,
        "labels": info.get("labels") or "true",
        "extras": info.get("extras"),
        "assumptions": info.get("assumptions", ASSUMPTIONS),
        # the preset as defined now (a suite.json written earlier may carry an older wording)
        "preset_description": preset.description if preset else info.get("preset_description"),
        "started_utc": info.get("started_utc"),
        "finished_utc": info.get("finished_utc"),
        "suite_wall_s": info.get("wall_s"),
        "report_built_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": next((s["env"] for s in summaries if s.get("env")), None),
        "measures": MEASURES,
        "runs": summaries,
        "claims": claims,
        "sensitivity": sensitivity,
        "violation_rate": violation_rate(numbers),
        "readings": reading_reversals(orders, numbers),
        "figure_seed": fig_seed,
        "over_seeds": seed_table(summaries),
        "figure": fig_rel,
        "pictures": _pictures(out),
    }
    write_text(out / "report.json", json.dumps(jsonable(report), indent=2))
    write_text(out / "report.md", render_markdown(report))
    return report


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


def _suite_figure(out: Path, title: str, suite_name: str | None, summaries: list[dict],
                  traces: dict[str, Trace]) -> tuple[str | None, int | None]:
    """Draw ``figures/<suite>.png`` from the smallest seed's traces (a column per network, a curve
    per variant, non-converged ones marked); returns its path relative to ``out`` and that seed
    (both None without a trace)."""
    if not traces:
        return None, None
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
    if n_seeds > 1:
        title += f": seed {fig_seed} of {n_seeds} (every seed's numbers are in the report)"
    plot_paths(columns, out / fig_rel, title=title, marks=marks)
    return fig_rel, fig_seed


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


