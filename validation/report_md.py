"""The Markdown of a suite report: a pure function of the report's dict (deep_report.build_report
computes it; this module only renders). The first screen answers "what held?": the question, a
two-sentence answer, one row per network and variant, and the claims with their tally; the
statements, numbers and per-run tables follow, the long ones folded."""

from __future__ import annotations

from .claims import CONVERGED_FRACTION, FAIL, NA, PASS
from .companion_claims import along_the_path, candidate_label
from .util import (conditions_note, conditions_table, feasible_set, fmt3, identity_cell, item1_cell, item2_cell,
                   item3_cell, pct)


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
        fmt3(t.get("loss")), fmt3(s.get("star_batch_loss")),
    ]


def _gamma_cells(s: dict) -> list[str]:
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
        epochs = (s.get("run") or {}).get("epochs")
        by_label = {candidate_label(epochs, c): x for c, x in (s.get("companions") or {}).items() if along_the_path(c)}
        out.append(f"| {s['name']} | {_d1_cell(s)} | "
                   + " | ".join(_d1_cell(by_label[t]) if t in by_label else "n/a" for t in stars[1:]) + " |")
    return out


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
    return ["", "## Related path conditions", "", conditions_note(), "", *conditions_table(rows)]


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


WHY_SHORT = 240  #: characters of a claim's reason in the first-screen table (all of it further down)


def _short(text: str, n: int = WHY_SHORT) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _count(claims: list[dict], match, verdicts=(PASS,)) -> int:
    return sum(1 for c in claims if match(c) and c["verdict"] in verdicts)


def answer(rep: dict) -> list[str]:
    """Two sentences from the claims: the principle on converged paths (pooled beside it), then
    the orders: speed, gamma, and what the identity makes of "larger gamma, faster"."""
    claims = rep["claims"]
    by = {c["claim"]: c for c in claims}
    prim = by.get("principle holds on converged paths (Definition 1)")
    pooled = by.get("principle holds on every path (pooled)")
    if prim is None:
        return ["No claim could be judged."]
    first = f"Definition 1 on converged paths: **{prim['verdict']}** ({prim['why'].split(' | ')[0]})"
    if pooled:
        first += f"; pooled over every path: {pooled['verdict']} ({_short(pooled['why'].split(' | ')[0], 120)})"
    first += "."
    speed = [c for c in claims if c["claim"].endswith("speed order")]
    gamma = [c for c in claims if " gamma order" in c["claim"]]
    decided = [c for c in gamma if c["verdict"] != NA]
    second = (f"The paper's speed order holds in {_count(claims, lambda c: c in speed)} of {len(speed)} networks"
              if speed else "The paper states no speed order here")
    if gamma:
        second += (f"; of its {len(gamma)} gamma-order rows (converged runs and matched loss, both readings), "
                   f"{len(decided)} can be decided here, {_count(decided, lambda c: True)} PASS and "
                   f"{_count(decided, lambda c: True, (FAIL,))} FAIL")
    ident = by.get("gamma-speed identity (theta* = last iterate)")
    if ident and ident["verdict"] == PASS:
        second += ("; with theta* = the last iterate, \"larger gamma, faster\" holds by algebra for the average gamma "
                   "(the identity row), so only a theta* that does not end the path can test it")
    return [first, second + "."]


def _glance(rep: dict) -> list[str]:
    rows = rep.get("over_seeds") or []
    if not rows:
        return []

    def med(x):
        return "n/a" if x is None else fmt3(x["median"])

    out = ["| network | variant | converged | Definition 1 holds | γ_max·‖θ0−θ*‖² | paper median γ·‖θ0−θ*‖² | "
           "speed (mean loss) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['network']} | {r['variant']} | {r['converged']}/{r['seeds']} | {r['d1_holds']}/{r['seeds']} | "
                   f"{med(r['gamma_max_x_dist0_sq'])} | {med(r['paper_median_x_dist0_sq'])} | {med(r['speed'])} |")
    n = max(r["seeds"] for r in rows)
    out += ["", f"Counts over the {n} seed{'s' if n > 1 else ''} of each configuration; numbers are medians over the "
            "seeds where they exist (γ_max exists only where Definition 1 holds). Lower speed is faster."]
    return out


def _claims_table(rep: dict, evidence: bool) -> list[str]:
    out = ["| claim | kind | verdict | why |", "|---|---|---|---|"]
    for c in rep["claims"]:
        verdict = _verdict_cell(c["verdict"], evidence) + (" (fragile)" if c.get("fragile") else "")
        out.append(_row([_cell(c["claim"]), c.get("kind", ""), verdict, _cell(_short(c["why"]))]))
    return out


def _claims_details(rep: dict) -> list[str]:
    out = ["<details><summary>Every claim's statement, numbers and full reason</summary>", ""]
    for c in rep["claims"]:
        nums = "; ".join(f"{k}: {v}" for k, v in c["numbers"].items())
        out += [f"**{c['claim']}** ({c.get('kind', '')}): {c['verdict']}. {c['statement']}.", "",
                f"- why: {c['why']}"] + ([f"- numbers: {nums}"] if nums else []) + [""]
    return out + ["</details>"]


def _readings_section(rep: dict) -> list[str]:
    rows = rep.get("readings") or []
    if not rows:
        return []
    out = ["", "## Every reading of the gamma orders", "",
           "The paper's gamma orders read four ways (Definition 1's γ_max or the paper's median; raw, or times "
           "‖θ0−θ*‖²) on every run, converged or not, per adjacent pair of the stated order. Descriptive only: a "
           "run that did not converge has no minimizer to point at, so these rows decide nothing (the claims above "
           "compare converged runs, or runs at matched loss). A reversal is a reading that contradicts the paper.", "",
           "| network | order | reading | paper's order holds in | reversed in | values per seed (lower group vs upper) "
           "| every run converged |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        vals = "; ".join(f"{k}: {v}" for k, v in r["values"].items())
        out.append(_row([r["network"], r["pair"], f"{r['reading']}, {r['form']}", str(r["holds_in"]),
                         f"**{r['reversed_in']}**" if r["reversed_in"] else "0", _cell(vals),
                         "yes" if r["all_converged"] else "no"]))
    return out


def _rate_section(rep: dict) -> list[str]:
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


def render_markdown(rep: dict) -> str:
    env = rep.get("env") or {}
    evidence = rep.get("evidence", True)
    claims = rep["claims"]
    n_na = sum(c["verdict"] == NA for c in claims)
    n_fail = sum(c["verdict"] == FAIL for c in claims)
    tally = f"{len(claims)} claims: {len(claims) - n_na - n_fail} PASS, {n_fail} FAIL, {n_na} not applicable."
    lines = [f"# gpcheck: `{rep['suite']}` suite, `{rep['preset']}` preset, `{rep['dataset']}`", ""]
    if not evidence:
        lines += [SMOKE_BANNER.format(preset=rep["preset"]), ""]
    lines += [f"**Question.** {rep.get('question') or ''}", "", "**Answer.** " + " ".join(answer(rep)), ""]
    lines += _glance(rep)
    lines += ["", "## Claims", "", f"_{tally}_ Kinds: *primary*, the paper's claim on the runs it is about (converged); "
              "*pooled*, the same over every run; *consequence*, implied by Definition 1 or by algebra, never "
              "evidence; *premise*, what the principle assumes (Fact 1); *baseline*, a meaningless theta*; *order*, "
              "the paper's stated order for one network; *agreement*, whether gamma ranks a network's variants as "
              "their speed does; *equivalence*, the paper's \"as fast as\"; *observation*, a sentence of the paper "
              "tested on the columns.", ""]
    lines += _claims_table(rep, evidence) + [""] + _claims_details(rep)
    wall = rep.get("suite_wall_s")
    busy = sum(float((s.get(k) or {}).get("wall_s") or 0.0) for s in rep["runs"] for k in ("pass1", "pass2"))
    lines += [
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
        + (f", suite wall time {wall:.0f} s ({wall / 60:.1f} min, over the invocations of the command that recorded "
           "their time)" if wall else "")
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
        "What is compared: " + "; ".join(f"**{k}** = {v}" for k, v in rep["measures"].items()) + ".",
    ]
    lines += _readings_section(rep) + _rate_section(rep)
    lines += _baseline_section(rep) + _sensitivity_section(rep) + _seeds_section(rep) + _related_section(rep)
    lines += _pictures_section(rep)
    threshold = next((s["convergence"]["loss_threshold"] for s in rep["runs"] if "convergence" in s), None)
    lines += [
        "",
        "## Per run",
        "",
        "<details><summary>Convergence, and theta* on the whole training set</summary>",
        "",
        f"Converged: last/first epoch mean loss <= {CONVERGED_FRACTION:g}. Speed: mean training loss over the run "
        f"(lower is faster). Epochs to loss: the first epoch whose mean loss is <= {fmt3(threshold)} (a tenth of "
        "ln(classes), the loss of a uniform guess). theta*: the last iterate, evaluated on every training image in "
        "evaluation mode (BN running statistics) and in training mode on in-order batches (batch statistics); and, "
        "as the measurement sees it, its mean loss on the steps' own batches of the last epoch (loss_star).",
        "",
        *_table(["network", "variant", "status", "epoch loss first → last", "last/first", "converged",
                 "speed (mean loss)", "epochs to loss", "theta* loss (eval)", "theta* accuracy",
                 "theta* max sample loss", "theta* loss (batch stats, in order)", "theta* loss (the steps' batches)"],
                rep["runs"], _convergence_cells),
        "",
        "</details>",
        "",
        "<details><summary>Two readings of gamma</summary>",
        "",
        "*Theory*: Definition 1, one gamma > 0 for every step: does it exist, the feasible set, its largest element, "
        "that times ||theta_0 - theta*||^2, and the steps that break it (on their own, or by bounds in conflict). "
        "Steps with a negative loss gap bound gamma from below. *Paper*: the per-step upper bounds it plots: the "
        "share that is positive, their median, and that times ||theta_0 - theta*||^2. *Quantiles*: the 1% and 5% "
        "quantiles of the per-step upper bounds times ||theta_0 - theta*||^2, steadier than their minimum.",
        "",
        *_table(["network", "variant", "‖θ0−θ*‖", "D1 holds", "feasible set", "γ_max", "γ_max·‖θ0−θ*‖²",
                 "violating steps", "negative-gap steps", "paper: share positive", "paper: median γ",
                 "paper: median·‖θ0−θ*‖²", "bounds·‖θ0−θ*‖²: 1% / 5%"], rep["runs"], _gamma_cells),
        "",
        "</details>",
        "",
        "<details><summary>Theorem 1 and the recording</summary>",
        "",
        "Item 1 (distance never grows) follows from Definition 1 where every gap is >= 0. Item 2: last/first epoch "
        "mean loss gap <= 5% (gaps are relative to theta*, so a run that stopped far from a minimizer can meet it; "
        "see *converged* above). Item 3: the rate bound at the largest feasible gamma (at the whole run it is implied "
        "by Definition 1: the identity row). Identity: the recording identity's largest relative residual. Verdict "
        "PASS = Definition 1 and items 1-3 hold.",
        "",
        *_table(["network", "variant", "item 1", "item 2", "item 3", "identity", "verdict"], rep["runs"],
                lambda s: _theorem_cells(s, evidence)),
        "",
        "</details>",
        "",
        "## Wall time",
        "",
        *_timing_rows(rep["runs"]),
    ]
    if rep.get("figure"):
        seed = rep.get("figure_seed")
        lines += ["", "## Figure", "",
                  "Rows: normalized distance to theta*, training loss, per-step gamma bound; a column per network, "
                  "a curve per variant"
                  + (f", from seed {seed} (every seed's numbers are in the tables above)" if (rep.get("seeds") or 1) > 1
                     else "")
                  + ". A dashed curve did not converge: its gamma is not comparable. In the gamma row, lines are the "
                  "upper bounds the paper plots; a step with a negative gap (a lower bound) is a triangle, a step that "
                  "breaks inequality (2) on its own a red x, a step whose bound conflicts with another's an open "
                  "diamond (triangles and diamonds in the variant's color).", "",
                  f"![{rep['suite']}]({rep['figure']})"]
    lines += ["", f"_{tally}_", ""]
    return "\n".join(lines)
