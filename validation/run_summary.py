"""One run of a suite, from its folder to its summary: the one module that knows the summary's layout.

:func:`load_run` reads a run folder and verifies it (digests against its ``trace.json`` and the
suite's manifest, the spec against suite.json, each companion against its recorded digest);
:func:`summarize` turns the verified trace into the dict the report holds for it (a pure function
of the trace); :func:`run_numbers` reads a summary back as the frozen
:class:`~validation.claims.RunNumbers` the claims take, against its theta* or a companion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deep.measure import load_companions
from deep.verify import consistent_status, manifest_problem, read_trace_json
from gamma_theory import Trace, TraceError, check_trace, load_trace
from gamma_theory.definition1 import step_bounds
from gamma_theory.files import BadFile, read_json
from gamma_theory.identity import bound_quantiles, directions, prefix_gammas, speed_identity
from gamma_theory.related import related_conditions
from gamma_theory.theorem1 import epoch_mean_gap, per_epoch_mean

from .claims import CONVERGED_FRACTION, RunNumbers
from .companion_claims import STAR_SEED, along_the_path, candidate_label


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


@dataclass(frozen=True)
class LoadedRun:
    """One run folder read and verified: either its trace (with its companions) or the row that
    stands for it (error, missing, diverged before anything was measured)."""

    name: str
    row: dict | None = None  #: the summary of a run without a trace; None when ``trace`` is set
    trace: Trace | None = None
    companions: dict[str, Trace] = field(default_factory=dict)


def load_run(run_dir: Path, expected: dict | None = None, manifest_entry: dict | None = None,
             rerun: str = "rerun the suite's command", stray: str | None = None) -> LoadedRun:
    """Read one run folder and verify it: its files must agree with ``expected`` (the run's spec
    from suite.json) and with ``manifest_entry`` (what the manifest recorded when the run
    finished), and each companion with the digest its trace recorded. ``stray``: why the folder is
    no run this suite measured (deep/verify.py ``stray_reason``), an ERROR row then."""
    name = run_dir.name
    todo = f"{rerun} to measure this run again"
    if stray is not None:
        return LoadedRun(name, _error(name, stray, "remove the folder; the suite's runs are measured by its `gpcheck "
                                      "deep` command"))
    if (run_dir / "error.json").exists():
        try:
            err = read_json(run_dir / "error.json")
            return LoadedRun(name, {"name": name, "status": "error", "error": f"{err['error']}: {err['message']}"})
        except (BadFile, KeyError, TypeError):
            return LoadedRun(name, _error(name, "the run failed, and its error.json is damaged", todo))
    info_path = run_dir / "trace.json"
    if not info_path.exists():
        return LoadedRun(name, {"name": name, "status": "missing"})
    try:
        info = read_trace_json(info_path)
        consistent_status(info, info_path)
    except BadFile as exc:
        return LoadedRun(name, _error(name, str(exc), todo))
    changed = manifest_problem(info, manifest_entry)
    if changed:
        return LoadedRun(name, _error(name, f"{info_path} {changed}", todo))
    if info.get("status") == "diverged" and "npz_sha256" not in info:  # diverged before anything was measured
        return LoadedRun(name, {"name": name, "status": "diverged", "diverged": info.get("diverged"),
                                "run": info.get("run"), "pass1": info.get("pass1")})
    try:
        trace = load_trace(run_dir / "trace.npz")
    except TraceError as exc:
        return LoadedRun(name, _error(name, str(exc), todo))
    spec = trace.meta.get("run") or {}
    if expected is not None and spec and {k: spec.get(k) for k in expected} != expected:
        return LoadedRun(name, _error(name, f"{run_dir} holds the trace of another run ({spec.get('network')}-"
                                      f"{spec.get('variant')}, {spec.get('epochs')} epochs)", todo))
    try:
        companions = load_companions(run_dir, trace.meta)
    except TraceError as exc:
        return LoadedRun(name, _error(name, str(exc), todo))
    return LoadedRun(name, None, trace, companions)


def summarize(run: LoadedRun, num_classes: int | None = None) -> dict:
    """Everything the report says about one run: a pure function of the verified files."""
    if run.trace is None:
        return run.row
    trace, meta = run.trace, run.trace.meta
    result = check_trace(trace)
    return {
        "name": run.name,
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
                       for c, tr in run.companions.items()},
        "companions_unjudged": meta.get("companions_unjudged") or {},
        "pass1": meta.get("pass1"),
        "pass2": meta.get("pass2"),
        "env": meta.get("env"),
        "replay_verified": meta.get("replay_verified"),
        # --star-seed N: which end point the run was judged against too, or why not (deep/runner.py)
        **({"star_seed": meta["star_seed"]} if isinstance(meta.get("star_seed"), dict) else {}),
    }


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


def run_numbers(s: dict, companion: str | None = None) -> RunNumbers:
    """The claims' view of a run summary: against its theta*, or against its companion theta*
    ``companion`` (a run without it reads as ``missing``)."""
    run = s.get("run") or {}
    network, variant, seed = run.get("network"), run.get("variant"), run.get("seed", 0)
    if network is None:  # error/missing runs: the folder name is network-variant[-sN]
        network, _, variant = s["name"].partition("-")
        variant, _, sd = variant.partition("-s")
        seed = int(sd) if sd.isdigit() else 0
    src = s if companion is None else (s.get("companions") or {}).get(companion)
    if "check" not in s or src is None:
        return RunNumbers(network, variant, s["status"] if companion is None else "missing", seed=seed, name=s["name"])
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
        star_batch_loss=src.get("star_batch_loss"), first_loss=conv.get("first_epoch_loss"), name=s["name"],
        n_negative_gap=int(src.get("negative_gap_steps") or 0), gamma_bar=(src.get("identity") or {}).get("gamma_bar"),
    )


def companions_of(summaries: list[dict]) -> list[str]:
    """Every companion theta* some run recorded, in the order first seen."""
    return list(dict.fromkeys(c for s in summaries for c in s.get("companions") or {}))


def against(summaries: list[dict], companion: str) -> list[RunNumbers]:
    """Every run judged against its companion ``companion`` (``missing`` where it has none)."""
    return [run_numbers(s, companion) for s in summaries]


def sensitivity_runs(summaries: list[dict]) -> dict[str, list[RunNumbers]]:
    """For the sensitivity table: each theta* along the paths, by its label ("50%", "trained
    longer"), and every run judged against its own companion of that label."""
    labels: dict[str, dict[str, str]] = {}  # label -> run name -> companion name
    for s in summaries:
        for c in s.get("companions") or {}:
            if along_the_path(c):
                labels.setdefault(candidate_label((s.get("run") or {}).get("epochs"), c), {})[s["name"]] = c
    return {label: [run_numbers(s, names.get(s["name"], "-")) for s in summaries] for label, names in labels.items()}


class StarSeedRuns(dict):
    """:func:`star_seed_runs`' answer: for each seed N, every run judged against its
    ``star_seed<N>`` companion (a dict, as :func:`validation.companion_claims.star_seed_claims`
    takes it), and in ``unusable[N][(network, variant)]`` why seed N's end point of that
    configuration cannot serve as another near-minimizer (it diverged or ended in an error, so no
    run recorded it; or its run did not converge), with its numbers."""

    def __init__(self, runs: dict[int, list[RunNumbers]], unusable: dict[int, dict[tuple[str, str], str]]):
        super().__init__(runs)
        self.unusable = unusable


def _star_convergence(s: dict) -> str | None:
    """Why seed N's run ``s`` (its summary) gives no near-minimizer as theta*, or None when it does."""
    if s.get("status") == "diverged":
        return f"seed {(s.get('run') or {}).get('seed', 0)}'s run {s['name']} diverged"
    if "check" not in s:
        return f"seed {(s.get('run') or {}).get('seed', 0)}'s run {s['name']} has no trace ({s.get('status')})"
    conv = s["convergence"]
    if not conv["converged"] or s.get("status") != "ok":
        ratio = conv.get("loss_ratio")
        return (f"seed {(s.get('run') or {}).get('seed', 0)}'s run {s['name']} did not converge (last/first epoch "
                f"loss {conv['final_loss']:.3g}/{conv['first_epoch_loss']:.3g} = "
                f"{'n/a' if ratio is None else format(ratio, '.3g')} > {CONVERGED_FRACTION}): its end point is no "
                "near-minimizer")
    return None


def star_seed_runs(summaries: list[dict]) -> StarSeedRuns:
    """For each seed N whose end point some run recorded as a companion ``star_seed<N>``, or that a
    run measured with ``--star-seed N`` names (its trace's ``star_seed``), every run judged against
    it, and why seed N's end point of a configuration cannot serve (:class:`StarSeedRuns`)."""
    seeds = {int(m.group(1)) for c in companions_of(summaries) if (m := STAR_SEED.match(c))}
    seeds |= {int(s["star_seed"]["seed"]) for s in summaries if isinstance((s.get("star_seed") or {}).get("seed"), int)}
    unusable: dict[int, dict[tuple[str, str], str]] = {}
    for n in sorted(seeds):
        bad = unusable.setdefault(n, {})
        for s in summaries:
            r = run_numbers(s)
            info = s.get("star_seed") or {}
            if info.get("seed") == n and info.get("why") and not info.get("companion"):
                bad.setdefault((r.network, r.variant), info["why"])  # measured without it, and why (deep/runner.py)
            if r.seed == n:  # seed N's own run: is its end point a near-minimizer?
                why = _star_convergence(s)
                if why is not None:
                    bad.setdefault((r.network, r.variant), why)
    return StarSeedRuns({n: against(summaries, f"star_seed{n}") for n in sorted(seeds)}, unusable)


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


