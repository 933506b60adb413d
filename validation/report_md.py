"""The Markdown of a suite report: a pure function of the report's dict (deep_report.build_report
computes it; this module only renders). The first screen answers "what held?": the question, a
two-sentence answer, one row per network and variant, and the claims with their tally; the
statements, numbers and per-run tables follow, the long ones folded."""

from __future__ import annotations

from .claims import CONVERGED_FRACTION, FAIL, NA, PASS
from .md import cell, row, short, verdict_cell
from .report_sections import (baseline_section, per_run_section, pictures_section, rate_section, readings_section,
                              related_conditions_section, seeds_section, sensitivity_section, timing_rows)
from .report_text import CLAIM_KINDS, FIGURE_CAPTION, FIGURE_SEED, RECORDING_NOTE, SMOKE_BANNER
from .util import fmt3


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
        first += f"; pooled over every path: {pooled['verdict']} ({short(pooled['why'].split(' | ')[0], 120)})"
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
        verdict = verdict_cell(c["verdict"], evidence) + (" (fragile)" if c.get("fragile") else "")
        out.append(row([cell(c["claim"]), c.get("kind", ""), verdict, cell(short(c["why"]))]))
    return out


def _claims_details(rep: dict) -> list[str]:
    out = ["<details><summary>Every claim's statement, numbers and full reason</summary>", ""]
    for c in rep["claims"]:
        nums = "; ".join(f"{k}: {v}" for k, v in c["numbers"].items())
        out += [f"**{c['claim']}** ({c.get('kind', '')}): {c['verdict']}. {c['statement']}.", "",
                f"- why: {c['why']}"] + ([f"- numbers: {nums}"] if nums else []) + [""]
    return out + ["</details>"]


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
    lines += ["", "## Claims", "", f"_{tally}_ " + CLAIM_KINDS, ""]
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
        RECORDING_NOTE,
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
    lines += readings_section(rep) + rate_section(rep)
    lines += baseline_section(rep) + sensitivity_section(rep) + seeds_section(rep) + related_conditions_section(rep)
    lines += pictures_section(rep)
    lines += per_run_section(rep, evidence)
    lines += [
        "",
        "## Wall time",
        "",
        *timing_rows(rep["runs"]),
    ]
    if rep.get("figure"):
        seed = rep.get("figure_seed")
        lines += ["", "## Figure", "",
                  FIGURE_CAPTION.format(seed=FIGURE_SEED.format(seed=seed) if (rep.get("seeds") or 1) > 1 else ""),
                  "",
                  f"![{rep['suite']}]({rep['figure']})"]
    lines += ["", f"_{tally}_", ""]
    return "\n".join(lines)
