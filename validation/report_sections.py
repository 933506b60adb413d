"""The sections of a suite report below its first screen: the per-run tables, the baseline, the
sensitivity to theta*, the seeds, the related conditions, the pictures, the readings and the
violation rate. Each is a pure function of the report's dict (report.json) that returns Markdown
lines; report_md arranges them into the page, report_text holds their prose."""

from __future__ import annotations

from .claims import CONVERGED_FRACTION
from .companion_claims import along_the_path, candidate_label
from .md import cell, related_section, row, rule, verdict_cell
from .report_text import (BASELINE_INTRO, CONVERGENCE_NOTE, GAMMA_READINGS_NOTE, PICTURES_INTRO, READINGS_INTRO,
                          SENSITIVITY_INTRO, THEOREM_NOTE)
from .util import feasible_set, fmt3, identity_cell, item1_cell, item2_cell, item3_cell, pct


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


def run_table(header: list[str], runs: list[dict], cells) -> list[str]:
    lines = [row(header), rule(len(header))]
    for s in runs:
        bad = _status_cell(s)
        if bad is not None:
            lines.append(row([_label(s), bad] + [""] * (len(header) - 3)))
        else:
            lines.append(row([_label(s)] + cells(s)))
    return lines


def _status(s: dict) -> str:
    if s["status"] == "ok":
        return "ok"
    return f"diverged at step {s['diverged']['step']}; {s['epochs_measured']} epochs measured"


def convergence_cells(s: dict) -> list[str]:
    c, ev = s["convergence"], s.get("theta_star_eval") or {}
    e, t = ev.get("eval") or {}, ev.get("train") or {}
    return [
        _status(s), f"{fmt3(c['first_epoch_loss'])} → {fmt3(c['final_loss'])}", fmt3(c["loss_ratio"]),
        "yes" if c["converged"] else "**no**", fmt3(c["mean_loss"]),
        str(c["epochs_to_threshold"] or "not reached"),
        fmt3(e.get("loss")), pct(e.get("accuracy")) if e else "n/a", fmt3(e.get("max_sample_cross_entropy")),
        fmt3(t.get("loss")), fmt3(s.get("star_batch_loss")),
    ]


def gamma_cells(s: dict) -> list[str]:
    q = s.get("bound_quantiles_x_dist0_sq") or {}
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
        f"{fmt3(q.get('q01'))} / {fmt3(q.get('q05'))}",
    ]


def theorem_cells(s: dict, evidence: bool) -> list[str]:
    c = s["check"]
    t1 = c["theorem_1"]
    return [item1_cell(t1["distance_monotone"]), item2_cell(t1["loss_convergence"]), item3_cell(t1["rate_bound"]),
            identity_cell(c["recording_identity"]), verdict_cell(s["verdict"], evidence)]


def _d1_cell(x: dict) -> str:
    th = x["theory"]
    if th["holds"]:
        return f"yes, γ_max·‖θ0−θ*‖² {fmt3(th['gamma_max_x_dist0_sq'])}"
    return f"no ({th['n_violating']} steps)"


def baseline_section(rep: dict) -> list[str]:
    runs = [s for s in rep["runs"] if "random" in (s.get("companions") or {})]
    if not runs:
        return ["", "## A random theta* (baseline)", "", "Not recorded in this report's runs.", ""]
    out = ["", "## A random theta* (baseline)", "",
           BASELINE_INTRO, "",
           "| run | real theta*: Definition 1 | share positive | random theta*: Definition 1 | share positive | "
           "negative-gap steps | median γ·‖θ0−θ*‖² (paper) |",
           "|---|---|---|---|---|---|---|"]
    for s in runs:
        r = s["companions"]["random"]
        out.append(f"| {s['name']} | {_d1_cell(s)} | {pct(s['paper']['share_positive'])} | {_d1_cell(r)} | "
                   f"{pct(r['paper']['share_positive'])} | {r['negative_gap_steps']}/{s['steps']} | "
                   f"{fmt3(r['paper']['gamma_median_x_dist0_sq'])} |")
    return out


def sensitivity_section(rep: dict) -> list[str]:
    sens = rep.get("sensitivity") or {}
    stars = sens.get("theta_stars") or []
    if len(stars) < 2:
        return ["", "## Sensitivity to theta*", "", "No earlier or later theta* was recorded in this report's runs.", ""]
    out = ["", "## Sensitivity to theta*", "",
           SENSITIVITY_INTRO, "",
           "| claim | " + " | ".join(stars) + " |", "|---|" + "---|" * len(stars)]
    for claim, v in sens["verdicts"].items():
        out.append(f"| {claim} | " + " | ".join(v.get(t, "") for t in stars) + " |")
    out += ["", "Per run, Definition 1 against each theta*:", "",
            "| run | last iterate | " + " | ".join(stars[1:]) + " |", "|---|---|" + "---|" * (len(stars) - 1)]
    for s in rep["runs"]:
        if "check" not in s:
            continue
        epochs = (s.get("run") or {}).get("epochs")
        by_label = {candidate_label(epochs, c): x for c, x in (s.get("companions") or {}).items() if along_the_path(c)}
        out.append(f"| {s['name']} | {_d1_cell(s)} | "
                   + " | ".join(_d1_cell(by_label[t]) if t in by_label else "n/a" for t in stars[1:]) + " |")
    return out


def pictures_section(rep: dict) -> list[str]:
    pics = rep.get("pictures") or []
    if not pics:
        return []
    out = ["", "## Paths in the plane of their principal components (the paper's Fig. 12)", "",
           PICTURES_INTRO, "",
           "| run | PC1 | PC2 | mean cos(SGD direction, the run's step) | replay vs trace |", "|---|---|---|---|---|"]
    for p in pics:
        for r in p["runs"]:
            ev = r["explained_variance"]
            out.append(f"| {r['name']} | {pct(ev[0])} | {pct(ev[1])} | {fmt3(r['mean_sgd_cos_to_step'])} | "
                       f"{r['replay_max_rel_err']:.1e} |")
    out.append("")
    out += [f"![{', '.join(r['name'] for r in p['runs'])}]({p['figure']})" for p in pics]
    return out


def related_conditions_section(rep: dict) -> list[str]:
    section = related_section([(s["name"], s["related"]) for s in rep["runs"] if s.get("related")])
    return [""] + section if section else []


def seeds_section(rep: dict) -> list[str]:
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


def timing_rows(runs: list[dict]) -> list[str]:
    """The wall-time table; with a column saying how the steps ran where any run used CUDA graphs."""
    runs = [s for s in runs if s.get("pass1")]
    graphs = any(_step_path(s.get(k) or {}) not in ("", "eager") for s in runs for k in ("pass1", "pass2"))
    head = ["run", "epochs", "steps", "parameters", "pass 1 s", "pass 2 s", "pass 1 ms/step", "pass 2 ms/step"]
    head += ["steps ran as (pass 1 / pass 2)"] if graphs else []
    out = [row(head), "|" + "---|" * len(head)]
    for s in runs:
        r = s.get("run") or {}
        p1, p2 = s.get("pass1") or {}, s.get("pass2") or {}
        cells = [s["name"], r.get("epochs", ""), s.get("steps", ""), s.get("num_params") or "", fmt3(p1.get("wall_s")),
                 fmt3(p2.get("wall_s")), fmt3(p1.get("ms_per_step")), fmt3(p2.get("ms_per_step"))]
        cells += [f"{_step_path(p1) or '?'} / {_step_path(p2) or '?'}"] if graphs else []
        out.append(row([str(c) for c in cells]))
    return out



def readings_section(rep: dict) -> list[str]:
    rows = rep.get("readings") or []
    if not rows:
        return []
    out = ["", "## Every reading of the gamma orders", "",
           READINGS_INTRO, "",
           "| network | order | reading | paper's order holds in | reversed in | values per seed (lower group vs upper) "
           "| every run converged |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        vals = "; ".join(f"{k}: {v}" for k, v in r["values"].items())
        out.append(row([r["network"], r["pair"], f"{r['reading']}, {r['form']}", str(r["holds_in"]),
                         f"**{r['reversed_in']}**" if r["reversed_in"] else "0", cell(vals),
                         "yes" if r["all_converged"] else "no"]))
    return out


def rate_section(rep: dict) -> list[str]:
    v = rep.get("violation_rate")
    if not v:
        return []
    lo, hi = v["ci95"]
    plo, phi = v["p_violation_at_paper_length_ci95"]
    return ["", "## How often a converged path breaks Definition 1", "",
            f"{v['violating_steps']} violating steps in {v['steps']:,} steps of {v['runs']} converged runs: a per-step "
            f"rate of {fmt3(v['rate'])} (95% Clopper-Pearson interval {fmt3(lo)} to {fmt3(hi)}). At that rate a path of "
            f"the paper's length ({v['paper_steps']:,} steps) breaks it at least once with probability "
            f"{fmt3(v['p_violation_at_paper_length'])} (interval {fmt3(plo)} to {fmt3(phi)}). γ_max is one extreme "
            "step and moves with the bits (another thread count or CPU model gives another draw of the same "
            "configuration): the low quantiles of the per-step bounds in the per-run table are steadier."]


def per_run_section(rep: dict, evidence: bool) -> list[str]:
    """The folded per-run tables: convergence and theta*, the two readings of gamma, Theorem 1 and
    the recording."""
    threshold = next((s["convergence"]["loss_threshold"] for s in rep["runs"] if "convergence" in s), None)
    return [
        "",
        "## Per run",
        "",
        "<details><summary>Convergence, and theta* on the whole training set</summary>",
        "",
        CONVERGENCE_NOTE.format(fraction=CONVERGED_FRACTION, threshold=fmt3(threshold)),
        "",
        *run_table(["network", "variant", "status", "epoch loss first → last", "last/first", "converged",
                   "speed (mean loss)", "epochs to loss", "theta* loss (eval)", "theta* accuracy",
                   "theta* max sample loss", "theta* loss (batch stats, in order)", "theta* loss (the steps' batches)"],
                  rep["runs"], convergence_cells),
        "",
        "</details>",
        "",
        "<details><summary>Two readings of gamma</summary>",
        "",
        GAMMA_READINGS_NOTE,
        "",
        *run_table(["network", "variant", "‖θ0−θ*‖", "D1 holds", "feasible set", "γ_max", "γ_max·‖θ0−θ*‖²",
                   "violating steps", "negative-gap steps", "paper: share positive", "paper: median γ",
                   "paper: median·‖θ0−θ*‖²", "bounds·‖θ0−θ*‖²: 1% / 5%"], rep["runs"], gamma_cells),
        "",
        "</details>",
        "",
        "<details><summary>Theorem 1 and the recording</summary>",
        "",
        THEOREM_NOTE,
        "",
        *run_table(["network", "variant", "item 1", "item 2", "item 3", "identity", "verdict"], rep["runs"],
                  lambda s: theorem_cells(s, evidence)),
        "",
        "</details>",
    ]
