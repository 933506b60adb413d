"""The report of one measured run: what a suite report says of each of its runs, for a run folder alone.

A run folder is what :func:`deep.measure.measure` writes (``setup.json``, ``trace.json``,
``trace.npz``, maybe ``companions/``, ``pass1.json``), on its own or as ``SUITE/runs/NAME`` of a
suite folder. :func:`build_run_report` reads it through the suite reports' own reader
(:func:`validation.run_summary.load_run`: the trace against the digest its ``trace.json``
records, each companion against its digest, and, for a run of a suite, the files against the
suite's manifest and the run's spec), summarizes it as a suite report does
(:func:`~validation.run_summary.summarize`), decides the suite's per-run claims on it with the same
code and thresholds (:func:`validation.claims.suite_claims`, the baseline of
:func:`validation.companion_claims.baseline_claim`), and writes, only inside the folder,
``report.md``, ``report.json`` and ``figures/run.png`` (the paper's three rows,
:func:`validation.figures.plot_paths`).

A folder that cannot be judged (no finished trace, a file that does not verify, a run that ended
in an error) raises :class:`RunReportError` with one sentence that says what to do.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from deep.suites import PRESET_TABLE
from deep.verify import read_manifest_file, stray_reason
from gamma_theory import Trace
from gamma_theory.files import BadFile, check_links, write_text

from .claims import CONVERGED_FRACTION, FAIL, NA, PASS, suite_claims
from .companion_claims import baseline_claim, candidate_label
from .md import cell, related_section, short, table, verdict_cell
from .report_sections import convergence_cells, gamma_cells, theorem_cells, timing_rows
from .report_text import (BASELINE_INTRO, CONVERGENCE_NOTE, FIGURE_CAPTION, GAMMA_READINGS_NOTE, SMOKE_BANNER,
                          THEOREM_NOTE)
from .run_summary import LoadedRun, against, load_run, run_numbers, summarize
from .util import feasible_set, fmt3, item1_cell, item2_cell, item3_cell, jsonable, pct

FIGURE = "figures/run.png"
#: the kinds of suite claims that speak of one run (the others compare runs: orders, agreement, ...)
PER_RUN_KINDS = ("primary", "pooled", "consequence", "premise", "baseline")
#: the suite claims' reasons, said of one run
ONE_RUN = (("in all 1 runs", "in this run"), ("all 1 runs", "this run"), ("in all 1 traces", "in this trace"),
           ("1 of 1 runs break it", "this run breaks it"), ("in 1 of 1 runs", "in this run"),
           ("(Fact 1) rejects the random theta* in 1 of these 1 runs", "(Fact 1) rejects it in this run"),
           ("(Fact 1) rejects the random theta* in 0 of these 1 runs", "(Fact 1) does not reject it here either"))
#: the claims whose NOT APPLICABLE a run of its own explains (the suite's reason is "no run could be judged")
PRIMARY, FACT1 = "principle holds on converged paths (Definition 1)", "theta* fits the training set (Fact 1)"

RUN_EXAMPLE = "reports/skip-cpu-cifar10-jpeg-resnet18/runs/resnet18-all"
SUITE_EXAMPLE = "reports/bn-smoke-cifar10-jpeg"


class RunReportError(ValueError):
    """A run folder that cannot be reported; the message says what is wrong and what to do."""


# -- what a folder is ----------------------------------------------------------------------------
def folder_kind(path: str | Path) -> str | None:
    """``"suite"`` for a suite folder (it has ``runs/``, or the suite's own files), ``"run"`` for a
    measured run folder (it has a ``trace.json``, ``trace.npz`` or ``setup.json``), else None."""
    p = Path(path)
    if (p / "runs").is_dir() or (p / "manifest.json").is_file() or (p / "suite.json").is_file():
        return "suite"
    if any((p / f).is_file() for f in ("trace.json", "trace.npz", "setup.json")):
        return "run"
    return None


def _suite_of(run_dir: Path) -> Path | None:
    """The suite folder a run folder lies in (``SUITE/runs/NAME``), or None."""
    suite = run_dir.parent.parent
    if run_dir.parent.name == "runs" and ((suite / "suite.json").is_file() or (suite / "manifest.json").is_file()):
        return suite
    return None


def load_run_folder(run_dir: str | Path) -> tuple[LoadedRun, dict]:
    """Read and verify one run folder as a suite report reads each of its runs; returns the run
    and what its suite says (``{}`` for a run of its own). :class:`RunReportError` when it cannot
    be judged."""
    from .deep_report import ReportError, _suite_specs, suite_info

    run_dir = Path(run_dir)
    name = run_dir.name
    suite = _suite_of(run_dir)
    info, expected, entry, stray = {}, None, None, None
    # load_run adds " to measure this run again"; measure() finds a damaged result itself and measures anew
    rerun = "call deep.measure.measure() again with the same arguments and workdir"
    if suite is not None:
        try:
            info = suite_info(suite)
        except ReportError as exc:
            raise RunReportError(str(exc)) from None
        known = None
        if (suite / "manifest.json").is_file():
            try:
                known = read_manifest_file(suite / "manifest.json").get("runs") or {}
            except BadFile as exc:
                raise RunReportError(f"{exc}; rerun the suite's `gpcheck deep` command to rebuild it") from None
        _, specs = _suite_specs(info) if info else (None, {})
        expected = specs.get(name)
        entry = (known or {}).get(name)
        stray = stray_reason(name, run_dir, specs, known)
        rerun = f"rerun `{info['command']}`" if info.get("command") else "rerun the suite's `gpcheck deep` command"
    if not (run_dir / "trace.json").is_file() and not (run_dir / "error.json").is_file():
        if (run_dir / "trace.npz").is_file():
            raise RunReportError(f"{run_dir}: has trace.npz but no trace.json, the sidecar with its digest and "
                                 f"metadata, so the trace cannot be verified; {rerun} to measure this run again")
        raise RunReportError(f"{run_dir}: the run is not finished (no trace.json); finish it first (call "
                             "deep.measure.measure() again with the same arguments: it resumes), then report it")
    run = load_run(run_dir, expected, entry, rerun, stray)
    if run.trace is None:
        row = run.row or {}
        if row.get("status") == "diverged":
            dv = row.get("diverged") or {}
            raise RunReportError(f"{run_dir}: the run diverged at step {dv.get('step')} (epoch {dv.get('epoch')}: "
                                 f"{dv.get('reason')}) before anything was measured; there is no trace to judge "
                                 "(lower the learning rate and measure it again)")
        why = row.get("error") or f"no trace to judge ({row.get('status')})"
        if row.get("status") == "error" and not (run_dir / "trace.json").is_file():
            why = f"the run ended in an error ({why}); fix the cause and measure it again"
        raise RunReportError(why if str(run_dir) in why else f"{run_dir}: {why}")
    return run, info


# -- the numbers ---------------------------------------------------------------------------------
def run_claims(summary: dict) -> list[dict]:
    """The suite's claims about one run, decided on this run alone with the suite's code: the
    principle (on a converged path, and pooled), its consequences (the gamma-speed identity among
    them), its premises, and the random-theta* baseline (inserted where a suite report puts it)."""
    from dataclasses import replace

    numbers, random = run_numbers(summary), against([summary], "random")
    own = not (summary.get("run") or {}).get("network")
    if own:  # a run of one's own: labelled by its folder (RunNumbers.label is network/variant)
        numbers, random = (replace(r, network=summary["name"], variant="", seed=0) for r in (numbers, random[0]))
        random = [random]
    claims = [c for c in suite_claims({}, [numbers], {}) if c.get("kind") in PER_RUN_KINDS]
    claims.insert(next((i for i, c in enumerate(claims) if c["kind"] == "premise"), len(claims)),
                  baseline_claim(random))
    for c in claims:  # the suite's wording for a count of one
        for many, one in ONE_RUN:
            c["why"] = c["why"].replace(many, one)
    for c in claims:  # why one run could not be judged, in its own terms
        if c["verdict"] == NA and c["claim"] in (PRIMARY, FACT1):
            c["why"] = _not_judged(c["claim"], summary)
    if own:  # the label "name/" reads "name"
        for c in claims:
            c["numbers"] = {k[:-1] if k == f"{summary['name']}/" else k: v for k, v in c["numbers"].items()}
            c["why"] = c["why"].replace(f"{summary['name']}/", summary["name"])
    return claims


def _not_judged(claim: str, summary: dict) -> str:
    """Why a claim cannot be decided on this run (NOT APPLICABLE)."""
    if claim == PRIMARY:
        conv = summary["convergence"]
        return (f"this run did not converge (last/first epoch mean loss {fmt3(conv['loss_ratio'])} > "
                f"{CONVERGED_FRACTION:g}): theta* is no minimizer, so the principle is not tested on this path "
                "(the pooled row judges it anyway)")
    ev = summary.get("theta_star_eval") or {}
    if not ev:
        return "trace.json records no evaluation of theta* on the training data (theta_star_eval)"
    if not classified(ev):
        return ("the run's loss is not a classification of the model's outputs, so theta*'s accuracy was not "
                "recorded; its loss on the training data is on the first screen, and the next row judges it in the "
                "measurement's mode")
    return "theta*'s accuracy in evaluation mode was not recorded"


def classified(ev: dict) -> bool:
    """Whether theta*'s evaluation on the training data has an accuracy (the loss classifies)."""
    return "accuracy" in (ev.get("eval") or {})


def random_step_line(rs) -> str:
    """The one line that says how a step's randomness (dropout) was replayed and which masks theta* saw."""
    rs = rs if isinstance(rs, dict) else {}
    return (f"the steps draw random numbers (dropout, noise): replayed {rs.get('replayed', 'bitwise')}; "
            + rs.get("theta_star", "each theta*'s loss on step k is taken with the random state of the step at "
                     "theta_k (the same dropout masks)"))


def companion_rows(summary: dict) -> list[dict]:
    """Definition 1 against each companion theta* the run recorded, beside its own."""
    epochs = (summary.get("run") or {}).get("epochs") or ((summary.get("setup") or {}).get("epochs"))
    out = []
    for name, c in (summary.get("companions") or {}).items():
        th, pa = c["theory"], c["paper"]
        out.append({
            "companion": name, "label": candidate_label(epochs, name), "theta_star": c.get("theta_star"),
            "steps": c.get("steps"), "dist0": c["dist0"], "holds": th["holds"], "gamma_max": th["gamma_max"],
            "gamma_max_x_dist0_sq": th["gamma_max_x_dist0_sq"], "n_violating": th["n_violating"],
            "share_positive": pa["share_positive"], "paper_median_x_dist0_sq": pa["gamma_median_x_dist0_sq"],
            "negative_gap_steps": c["negative_gap_steps"], "converged": c["convergence"]["converged"],
        })
    return out


def schedule(trace: Trace) -> dict | None:
    """The learning rates of a scheduled path (None at a constant rate)."""
    if trace.constant_lr:
        return None
    eta = trace.eta_k
    return {"base_lr": trace.lr, "eta_first": float(eta[0]), "eta_last": float(eta[-1]), "eta_min": float(eta.min()),
            "eta_max": float(eta.max()), "sum_eta": float(eta.sum()),
            "steps_at_base_lr": int((eta == trace.lr).sum()), "steps": len(eta)}


def build_run_report(run_dir: str | Path) -> dict:
    """Write ``report.md``, ``report.json`` and ``figures/run.png`` of one run folder; return the report."""
    run_dir = Path(run_dir)
    check_links(run_dir)  # nothing it writes may land outside the folder through a link
    run, info = load_run_folder(run_dir)
    trace = run.trace
    num_classes = info.get("num_classes") or trace.meta.get("num_classes")
    summary = summarize(run, num_classes)
    summary["setup"] = trace.meta.get("setup")
    preset = PRESET_TABLE.get(info.get("preset")) if info else None
    th = summary["theory"]
    report = {
        "kind": "run",
        "name": run.name,
        "run_dir": str(run_dir),
        "suite": {k: info.get(k) for k in ("suite", "preset", "dataset", "data", "command", "num_classes")}
        if info else None,
        "evidence": preset.evidence if preset else True,
        "dataset": info.get("dataset") or trace.meta.get("dataset"),
        "data": info.get("data") or trace.meta.get("data"),
        "dist0_sq": trace.dist0_sq,
        "gamma_max": th["gamma_max"],
        "gamma_max_x_dist0_sq": th["gamma_max_x_dist0_sq"],
        "converged": summary["convergence"]["converged"],
        "converged_fraction": CONVERGED_FRACTION,
        "schedule": schedule(trace),
        "random_step": trace.meta.get("random_step"),
        "run": summary,
        "companion_rows": companion_rows(summary),
        "claims": run_claims(summary),
        "report_built_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "figure": FIGURE,
    }
    _figure(run_dir, run.name, summary, trace, run.companions)
    write_text(run_dir / "report.json", json.dumps(jsonable(report), indent=2))
    write_text(run_dir / "report.md", render_run_markdown(report))
    return report


def _figure(run_dir: Path, name: str, summary: dict, trace: Trace, companions: dict[str, Trace]) -> None:
    """The paper's three rows for this path: a column against its theta* and, when recorded, one
    against the random theta* of the baseline (the same path, the same losses)."""
    from .figures import plot_paths

    own = "against its theta* (the last iterate)"
    columns = {own: {name: trace}}
    marks = {} if summary["convergence"]["converged"] else {own: {name: "not converged: its gamma is not comparable"}}
    if "random" in companions:
        columns["against a random theta* (baseline)"] = {name: companions["random"]}
    plot_paths(columns, run_dir / FIGURE, title=f"run {name}", marks=marks)


# -- the page ------------------------------------------------------------------------------------
SCHEDULE_READINGS = [
    "U_k is (theta_k - theta_{k+1}) / eta_k with each step's own rate, and inequality (2) is read with eta_k "
    "(num_k = inner_k - eta_k/2 ||U_k||^2). A scheduled path read with one constant rate gives every per-step bound "
    "times eta_k / eta and passes every self-check: gpcheck reads the trace's `eta` column.",
    "γ_max is still the largest gamma in (2), but each step bounds it with the same weight while the schedule weighs "
    "a step by eta_k: late steps with a tiny rate barely count towards convergence and their bounds are loose.",
    "γ_max·‖θ0−θ*‖² keeps its formula and its reference value (1 for a star-convex path), but its link to speed "
    "is gamma H_K with H_K = sum_k eta_k, not gamma eta K: runs with other schedules are not ordered by gamma alone.",
    "Theorem 1 item 3 becomes 1/(2 gamma H_K), a bound on the eta-weighted mean of the gaps (not their plain mean); "
    "item 2 needs rates that do not sum to a finite number.",
    "The gamma-speed identity weighs each per-step gamma by eta_k gap_k.",
]


def _yes(x) -> str:
    return "n/a" if x is None else ("yes" if x else "**no**")


def _mode(ev: dict, mode: str) -> str:
    m = ev.get(mode) or {}
    if not m:
        return "not recorded"
    if "accuracy" not in m:
        return f"loss {fmt3(m.get('loss'))}"
    return (f"loss {fmt3(m.get('loss'))}, accuracy {pct(m.get('accuracy'))}, largest sample cross-entropy "
            f"{fmt3(m.get('max_sample_cross_entropy'))}")


def _answer(rep: dict) -> list[str]:
    """The first screen: does Definition 1 hold, with which gamma, did it converge, does theta* fit."""
    s = rep["run"]
    d1 = s["check"]["definition_1"]
    th, pa, conv = s["theory"], s["paper"], s["convergence"]
    by = {c["claim"]: c for c in rep["claims"]}
    if th["holds"]:
        d1_text = (f"**Yes.** One gamma fits all {d1['n_steps']} steps: gamma in {feasible_set(d1)}. The largest, "
                   f"γ_max = {fmt3(th['gamma_max'])}, is **γ_max·‖θ0−θ*‖² = {fmt3(th['gamma_max_x_dist0_sq'])}** "
                   "dimensionless (1 for a star-convex path; ‖θ0−θ*‖ = "
                   f"{fmt3(s['dist0'])}).")
    else:
        first = ", ".join(map(str, d1["violating_steps"][:10]))
        d1_text = (f"**No.** No gamma > 0 fits every step: {d1['n_violating']} of {d1['n_steps']} steps break "
                   f"inequality (2) ({d1['n_own_infeasible']} on their own, {d1['n_conflicting']} by bounds in "
                   f"conflict; first: {first}).")
    if d1.get("n_undecidable"):
        d1_text += (f" {d1['n_undecidable']} step(s) are undecidable at float64"
                    + ("; the verdict rests on them alone." if d1.get("rests_on_undecidable") else "."))
    q = s.get("bound_quantiles_x_dist0_sq") or {}
    d1_text += (f" The paper's reading: {pct(pa['share_positive'])} of the per-step bounds are positive, their "
                f"median x ‖θ0−θ*‖² is {fmt3(pa['gamma_median_x_dist0_sq'])}; their 1% and 5% quantiles x ‖θ0−θ*‖² "
                f"are {fmt3(q.get('q01'))} and {fmt3(q.get('q05'))} (steadier than γ_max, which one step decides).")
    conv_text = (f"**{'Yes' if conv['converged'] else 'No'}.** The last epoch's mean training loss is "
                 f"{fmt3(conv['final_loss'])}, {fmt3(conv['loss_ratio'])} x the first epoch's "
                 f"({fmt3(conv['first_epoch_loss'])}); converged means at most {CONVERGED_FRACTION:g} x.")
    if s.get("status") != "ok":
        dv = s.get("diverged") or {}
        conv_text += (f" The run diverged at step {dv.get('step')} (epoch {dv.get('epoch')}); "
                      f"{s.get('epochs_measured')} epochs were measured.")
    if not conv["converged"]:
        conv_text += " theta* is then no minimizer, and gamma measures how the steps point at an arbitrary end point."
    ev = s.get("theta_star_eval") or {}
    fits = by.get("theta* fits the training set (Fact 1)", {})
    batch = by.get("theta* fits the training set (measurement's mode)", {})
    if ev:
        word = (f"**{_fit_word(fits.get('verdict'))}**" if classified(ev) else
                "**By its loss only:** the run's loss is not a classification of the model's outputs, so there is "
                "no accuracy.")
        fit_text = (f"{word} On all {ev.get('n')} training samples, in evaluation mode (BN running statistics, no "
                    f"dropout): {_mode(ev, 'eval')}; in training mode (batch statistics, dropout on, in-order "
                    f"batches of {ev.get('batch_size')}): {_mode(ev, 'train')}. On the steps' own batches of the "
                    f"last epoch (the measurement's mode) theta*'s mean loss is {fmt3(s.get('star_batch_loss'))}: "
                    f"{batch.get('verdict', NA)} (at most {CONVERGED_FRACTION:g} x the first epoch's mean loss).")
    else:
        fit_text = "**Not recorded.** The trace has no evaluation of theta* on the training data (theta_star_eval)."
    sc = rep.get("schedule")
    lines = []
    if sc:
        lines += [f"**Under a learning-rate schedule.** eta_k runs from {fmt3(sc['eta_first'])} to "
                  f"{fmt3(sc['eta_last'])} (min {fmt3(sc['eta_min'])}, max {fmt3(sc['eta_max'])}, base "
                  f"{fmt3(sc['base_lr'])}; H_K = sum_k eta_k = {fmt3(sc['sum_eta'])}). Every check reads "
                  "inequality (2) with each step's own eta_k; gamma_max, its dimensionless form, Theorem 1 item 3 "
                  "and the gamma-speed identity change meaning (the list under *Schedule* below, "
                  "docs/schedules.md).", ""]
    if rep.get("random_step"):
        lines += [f"**Randomness in the step.** {random_step_line(rep['random_step'])[0].upper()}"
                  f"{random_step_line(rep['random_step'])[1:]}.", ""]
    lines += [
        f"**Does Definition 1 hold on this path?** {d1_text}",
        "",
        f"**Did it converge?** {conv_text}",
        "",
        f"**Does theta* fit the training data?** {fit_text}",
        "",
    ]
    t1 = s["check"]["theorem_1"]
    rate = "rate 1/(2 gamma H_K) on the eta-weighted mean gap" if sc else "rate 1/(2 eta gamma K)"
    lines += [f"**Theorem 1:** item 1 (distance never grows) {item1_cell(t1['distance_monotone'])}; item 2 "
              f"(losses converge) {item2_cell(t1['loss_convergence'])}; item 3 ({rate}) "
              f"{item3_cell(t1['rate_bound'])}. Verdict: {verdict_cell(s['verdict'], rep['evidence'])} (Definition 1 "
              "and items 1-3).", ""]
    rnd = (s.get("companions") or {}).get("random")
    if rnd is not None:
        base = by.get("a random theta* is rejected (baseline)", {})
        rt = rnd["theory"]
        said = "Definition 1 holds against it too" if rt["holds"] else "rejected"
        lines += [f"**A random theta* (baseline):** {said} ({rt['n_violating']} of {rnd['steps']} steps break (2), "
                  f"{rnd['negative_gap_steps']} with a negative gap): {base.get('verdict', NA)}.", ""]
    else:
        lines += ["**A random theta* (baseline):** not recorded (measure with Extras(random_baseline=True), the "
                  "default).", ""]
    ident = by.get("gamma-speed identity (theta* = last iterate)", {})
    idd = s.get("identity") or {}
    if idd.get("ends_at_star"):
        algebra = "1/(2 sum_k eta_k gap_k)" if sc else "1/(2 eta sum_k gap_k)"
        lines += [f"**What holds by algebra:** theta* is the path's last iterate, so the gap-weighted mean of the "
                  f"per-step gammas, γ̄ = {fmt3(idd.get('gamma_bar'))}, is {algebra} exactly (checked: "
                  f"{ident.get('verdict', NA)}, relative residual {fmt3(idd.get('rel_residual'))}), and Theorem 1 "
                  "item 3 at the whole run cannot fail once Definition 1 holds. Those rows are consequences of "
                  "choosing theta* = theta_K, not evidence for the paper; only a theta* that does not end the path can "
                  "test \"larger gamma, faster\".", ""]
    return lines


def _fit_word(verdict: str | None) -> str:
    return {PASS: "Yes.", FAIL: "No.", None: "n/a."}.get(verdict, f"{verdict}.")


def _vertical(header: list[str], cells: list[str]) -> list[str]:
    return table(["quantity", "value"], [[cell(h), cell(c)] for h, c in zip(header, cells)])


def render_run_markdown(rep: dict) -> str:
    """The Markdown of a run's report: a pure function of its dict (report.json)."""
    s = rep["run"]
    evidence = rep.get("evidence", True)
    name = rep["name"]
    suite = rep.get("suite")
    lines = [f"# gpcheck: run `{name}`", ""]
    if suite:
        lines += [f"A run of the `{suite.get('suite')}` suite, `{suite.get('preset')}` preset, "
                  f"`{suite.get('dataset')}` (its suite report compares it with the others).", ""]
    if not evidence:
        lines += [SMOKE_BANNER.format(preset=(suite or {}).get("preset")), ""]
    lines += _answer(rep)
    claims = rep["claims"]
    lines += ["## Checks", "",
              "The suite reports' claims that speak of one run, decided on this run with the same code and thresholds "
              "(*primary*: the principle on a converged path; *consequence*: implied by Definition 1 or by algebra, "
              "never evidence; *premise*: what the principle assumes, Fact 1; *baseline*: a meaningless theta*).", "",
              *table(["claim", "kind", "verdict", "why"],
                     [[cell(c["claim"]), c.get("kind", ""), verdict_cell(c["verdict"], evidence), cell(short(c["why"]))]
                      for c in claims]),
              "", "## Figure", "",
              FIGURE_CAPTION.format(seed="").replace("a column per network, a curve per variant", "this run's path")
              + (" Right: the same path judged against the random theta* of the baseline (its losses are the run's)."
                 if "random" in (s.get("companions") or {}) else ""),
              "", f"![{name}]({rep['figure']})", ""]
    lines += _details(rep, evidence)
    return "\n".join(lines) + "\n"


def _details(rep: dict, evidence: bool) -> list[str]:
    s = rep["run"]
    conv = s["convergence"]
    conv_header = ["status", "epoch loss first → last", "last/first", "converged", "speed (mean loss)",
                   "epochs to loss", "theta* loss (eval)", "theta* accuracy", "theta* max sample loss",
                   "theta* loss (batch stats, in order)", "theta* loss (the steps' batches)"]
    conv_cells = convergence_cells(s)
    if conv["loss_threshold"] is None:
        conv_cells[5] = "n/a (the number of classes is not recorded)"
    ev = s.get("theta_star_eval") or {}
    if ev.get("eval") and not classified(ev):
        conv_cells[7] = conv_cells[8] = "none (the loss is not a classification)"
    gamma_header = ["‖θ0−θ*‖", "D1 holds", "feasible set", "γ_max", "γ_max·‖θ0−θ*‖²", "violating steps",
                    "negative-gap steps", "paper: share positive", "paper: median γ", "paper: median·‖θ0−θ*‖²",
                    "bounds·‖θ0−θ*‖²: 1% / 5%"]
    out = [
        "<details><summary>Convergence, and theta* on the whole training set</summary>", "",
        CONVERGENCE_NOTE.format(fraction=CONVERGED_FRACTION, threshold=fmt3(conv["loss_threshold"])), "",
        *_vertical(conv_header, conv_cells), "",
        "Epoch mean training loss: " + ", ".join(fmt3(x) for x in conv["epoch_mean_loss"]) + ".", "",
        "</details>", "",
        "<details><summary>Definition 1: two readings of gamma</summary>", "",
        GAMMA_READINGS_NOTE, "",
        *_vertical(gamma_header, gamma_cells(s)), "",
        "</details>", "",
        "<details><summary>Theorem 1 and the recording</summary>", "",
        THEOREM_NOTE, "",
        *_vertical(["item 1", "item 2", "item 3", "identity", "verdict"], theorem_cells(s, evidence)), "",
        "</details>", "",
    ]
    rows = rep.get("companion_rows") or []
    unjudged = s.get("companions_unjudged") or {}
    out += ["<details><summary>Against other theta* (the companions)</summary>", ""]
    if rows:
        out += [BASELINE_INTRO + " The iterates of earlier epochs (`epochNNNN`) are each judged on the steps before "
                "them.", "",
                *table(["theta*", "what it is", "steps judged", "‖θ0−θ*‖", "Definition 1", "γ_max·‖θ0−θ*‖²",
                        "violating steps", "negative-gap steps", "share positive", "paper: median·‖θ0−θ*‖²"],
                       [["this run's (last iterate)", "the run's end point", str(s["steps"]), fmt3(s["dist0"]),
                         _yes(s["theory"]["holds"]), fmt3(s["theory"]["gamma_max_x_dist0_sq"]),
                         str(s["theory"]["n_violating"]), str(s["negative_gap_steps"]),
                         pct(s["paper"]["share_positive"]), fmt3(s["paper"]["gamma_median_x_dist0_sq"])]]
                       + [[r["label"], cell(r["theta_star"] or ""), str(r["steps"]), fmt3(r["dist0"]), _yes(r["holds"]),
                           fmt3(r["gamma_max_x_dist0_sq"]), str(r["n_violating"]), str(r["negative_gap_steps"]),
                           pct(r["share_positive"]), fmt3(r["paper_median_x_dist0_sq"])] for r in rows])]
    else:
        out += ["No companion theta* was recorded with this run."]
    if unjudged:
        out += ["", "Recorded but not judged: " + "; ".join(f"{k} ({v})" for k, v in unjudged.items()) + "."]
    out += ["", "</details>", ""]
    related = [c for c in s.get("related") or [] if c.get("holds") is not None]
    out += ["<details><summary>Related path conditions</summary>", ""]
    if related:
        out += related_section([(rep["name"], s["related"])])[2:]
        if len(related) < len(s["related"]):
            out += ["", "*not measured*: the trace has no gradient columns (grad_inner, grad_sq), which those "
                    "conditions need; measure with Extras(record_grad=True), the default."]
    else:
        why = next((c.get("why") for c in s.get("related") or [] if c.get("why")), "")
        out += ["Not measured on this trace" + (f": {why}" if why else "") + " (they need the gradient columns "
                "grad_inner and grad_sq: measure with Extras(record_grad=True), the default)."]
    out += ["", "</details>", ""]
    if rep.get("schedule"):
        sc = rep["schedule"]
        out += ["<details open><summary>Schedule: which readings change meaning</summary>", "",
                f"The trace records eta_k for every step ({sc['steps_at_base_lr']} of {sc['steps']} at the base rate "
                f"{fmt3(sc['base_lr'])}); every checker above reads it (Definition 1 with eta_k, item 3 eta-weighted). "
                "What changes (docs/schedules.md has the derivation):", "",
                *[f"- {x}" for x in SCHEDULE_READINGS], "", "</details>", ""]
    env = s.get("env") or {}
    setup = s.get("setup") or {}
    rv = s.get("replay_verified") or {}
    out += ["<details><summary>What ran, and where</summary>", "",
            f"- Folder: `{rep['run_dir']}`; report built {rep['report_built_utc']} by `gpcheck report`",
            f"- Settings (setup.json): {cell(json.dumps(setup, sort_keys=True))}",
            f"- Data: {rep.get('data') or 'not recorded'}",
            f"- Device: {env.get('device_name')} ({env.get('device')}), {env.get('num_threads')} torch threads; torch "
            f"{env.get('torch')}, CUDA {env.get('cuda')}, Python {env.get('python')}, deterministic algorithms "
            f"{env.get('deterministic')}, TF32 {env.get('allow_tf32')}",
            f"- Replay: checkpoints {rv.get('checkpoints', 'not recorded')}; last iterate "
            f"{rv.get('final', 'not recorded')}; {s['steps']} steps, {s.get('num_params')} parameters",
            "", *timing_rows([s]), "", "</details>", ""]
    out += ["<details><summary>Every check's statement, numbers and full reason</summary>", ""]
    for c in rep["claims"]:
        nums = "; ".join(f"{k}: {v}" for k, v in c["numbers"].items())
        out += [f"**{c['claim']}** ({c.get('kind', '')}): {c['verdict']}. {c['statement']}.", "",
                f"- why: {c['why']}"] + ([f"- numbers: {nums}"] if nums else []) + [""]
    out += ["</details>"]
    return out


def summary_lines(rep: dict) -> list[str]:
    """What ``gpcheck report RUN_DIR`` prints: the first screen's answers, one line each."""
    s = rep["run"]
    th, conv = s["theory"], s["convergence"]
    d1 = s["check"]["definition_1"]
    ev = s.get("theta_star_eval") or {}
    e, t = ev.get("eval") or {}, ev.get("train") or {}
    out = [f"report: {rep['run_dir']}/report.md  (json: {rep['run_dir']}/report.json, figure: "
           f"{rep['run_dir']}/{rep['figure']})"]
    if not rep.get("evidence", True):
        out.append(f"  NOT EVIDENCE: the {(rep.get('suite') or {}).get('preset')} preset tests the machinery end to "
                   "end; its verdicts say nothing for or against the paper")
    if th["holds"]:
        out.append(f"  Definition 1: holds, gamma in {feasible_set(d1)}, gamma_max {fmt3(th['gamma_max'])}, "
                   f"x ||theta_0 - theta*||^2 = {fmt3(th['gamma_max_x_dist0_sq'])} (dimensionless)")
    else:
        out.append(f"  Definition 1: does not hold ({d1['n_violating']} of {d1['n_steps']} steps break (2))")
    out.append(f"  converged: {'yes' if conv['converged'] else 'no'} (last/first epoch mean loss "
               f"{fmt3(conv['loss_ratio'])}, at most {CONVERGED_FRACTION:g})")
    if not ev:
        out.append("  theta* on the training data: not recorded (no theta_star_eval in trace.json)")
    elif classified(ev):
        out.append(f"  theta* on the training data: eval mode loss {fmt3(e.get('loss'))}, accuracy "
                   f"{pct(e.get('accuracy'))}; training mode loss {fmt3(t.get('loss'))}, accuracy "
                   f"{pct(t.get('accuracy'))}")
    else:
        out.append(f"  theta* on the training data: eval mode loss {fmt3(e.get('loss'))}; training mode loss "
                   f"{fmt3(t.get('loss'))} (no accuracy: the loss is not a classification)")
    out.append(f"  Theorem 1 items 1-3 with Definition 1: {s['verdict']}")
    sc = rep.get("schedule")
    if sc:
        out.append(f"  under a learning-rate schedule: eta_k from {fmt3(sc['eta_first'])} to {fmt3(sc['eta_last'])} "
                   f"(H_K = {fmt3(sc['sum_eta'])}); gamma_max, its dimensionless form, item 3 and the identity are "
                   "read with eta_k and change meaning (report.md, Schedule)")
    if rep.get("random_step"):
        out.append(f"  {random_step_line(rep['random_step'])}")
    for c in rep["claims"]:
        out.append(f"  {c['verdict']:<14} {c['claim']}: {short(c['why'], 160)}")
    return out


__all__ = ["RunReportError", "build_run_report", "folder_kind", "load_run_folder", "render_run_markdown",
           "run_claims", "summary_lines"]
