"""``gpcheck deep ... --plan``: a suite's runs, their steps, and the time they will take, from
measured milliseconds per step, without running anything.

Where the ms/step come from, in this order, for a run's (device, network, width, batch size):

1. finished runs under the reports folder (``OUT/*/runs/*/trace.json``): pass 1's and pass 2's
   measured ms/step, the median over every run that matches, preferring runs that recorded the
   same extras (random theta*, sensitivity, ...) since those set pass 2's cost;
2. ``bench/results/*.json`` written by ``bench/step_cost.py`` (its ``runner_pass1`` and
   ``runner_pass2`` for the network, at the width and batch size of that benchmark);
3. otherwise the run's time is unknown, and the plan says how to measure it.

A run's time = its steps x (pass 1 + pass 2 ms/step). Runs that are already finished in the
folder are listed as done and cost nothing.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from .runner import DATASET_SHAPE, extras_for, report_dir
from .suites import PRESET_TABLE, get_suite

BENCH_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


@dataclass
class PlannedRun:
    name: str
    network: str
    epochs: int
    steps: int  #: steps of one pass
    ms_per_step: float | None  #: pass 1 + pass 2, per step
    source: str  #: where ms_per_step comes from
    done: bool

    @property
    def hours(self) -> float | None:
        if self.done:
            return 0.0
        return None if self.ms_per_step is None else self.steps * self.ms_per_step / 3.6e6


def _measured_runs(root: Path) -> list[dict]:
    out = []
    for p in sorted(root.glob("*/runs/*/trace.json")):
        try:
            info = json.loads(p.read_text())
            run, setup, env = info["run"], info["setup"], info["env"]
            ms = info["pass1"]["ms_per_step"] + info["pass2"]["ms_per_step"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append({"device_name": env.get("device_name"), "network": run.get("network"), "width": run.get("width"),
                    "batch_size": setup.get("batch_size"), "extras": setup.get("extras"), "ms": float(ms),
                    "where": str(p.parent)})
    return out


def _bench_runs(results: Path) -> list[dict]:
    out = []
    for p in sorted(results.glob("*.json")):
        try:
            d = json.loads(p.read_text())
            env, args = d["env"], d["args"]
            for net, r in d["ms_per_step"].items():
                out.append({"device_name": env.get("device_name"), "network": net, "width": args.get("width"),
                            "batch_size": args.get("batch_size"), "extras": None,
                            "ms": float(r["runner_pass1"] + r["runner_pass2"]), "where": str(p)})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


@dataclass
class Concurrency:
    """How many runs at once one device measured fastest (``bench/concurrency.py``)."""

    runs: int  #: runs at once with the highest throughput, all traces equal to one run's
    speedup: float  #: its throughput over one run's
    where: str


def best_concurrency(device_name: str, bench_results: str | Path = BENCH_RESULTS) -> Concurrency | None:
    """The measured best number of runs at once on ``device_name`` (the median speed-up where
    several results agree on it), or None when nothing was measured there. A level whose traces
    differed from the single run's does not count: it would not be the same measurement."""
    found = []
    for p in sorted(Path(bench_results).glob("*.json")):
        try:
            d = json.loads(p.read_text())
            if d["env"].get("device_name") != device_name:
                continue
            levels = [v for v in d["levels"].values() if v.get("bitwise_equal_to_1", False)]
            best = max(levels, key=lambda v: v["steps_per_s"])
            found.append((int(best["runs"]), float(best["speedup_over_1"]), str(p)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    if not found:
        return None
    runs = statistics.mode(k for k, _, _ in found)
    agree = [f for f in found if f[0] == runs]
    return Concurrency(runs, statistics.median(x for _, x, _ in agree), ", ".join(w for _, _, w in agree))


def concurrency_advice(device_name: str, gpus: int, bench_results: str | Path = BENCH_RESULTS) -> str:
    """One line for ``--plan`` on a GPU: the ``--jobs`` that won on this device, or how to find it."""
    c = best_concurrency(device_name, bench_results)
    if c is None:
        return (f"Runs at once per GPU: not measured on {device_name}; `python bench/concurrency.py --out "
                "bench/results/concurrency_<device>.json` measures 1, 2 and 4.")
    if c.runs == 1:
        return f"Runs at once per GPU: 1 was fastest on {device_name} ({c.where}): `--jobs {gpus}`."
    return (f"Runs at once per GPU: {c.runs} gave the most throughput on {device_name}, {c.speedup:.2f}x one run "
            f"({c.where}): `--jobs {c.runs * gpus}` on {gpus} GPU(s); the GPU-hours above are per run, so the "
            f"queue's wall time is about 1/{c.speedup * gpus:.2f} of them.")


def plan_suite(suite_name: str, preset: str, dataset: str, device_name: str, out_root: str | Path = "reports",
               seeds: int | None = None, labels: str = "true", star_extend: float = 0.0,
               bench_results: str | Path = BENCH_RESULTS) -> list[PlannedRun]:
    """Every run of the suite with its steps and its estimated time on ``device_name``."""
    suite = get_suite(suite_name, preset, seeds)
    p = PRESET_TABLE[preset]
    n_train = p.train_subset or DATASET_SHAPE[dataset][1]
    extras = extras_for(preset, star_extend).to_dict()
    folder = report_dir(out_root, suite_name, preset, dataset, labels)
    measured = _measured_runs(Path(out_root))
    bench = _bench_runs(Path(bench_results))
    planned = []
    for r in suite.runs:
        steps = r.epochs * math.ceil(n_train / r.batch_size)
        key = (device_name, r.network, r.width, r.batch_size)
        same = [m for m in measured if (m["device_name"], m["network"], m["width"], m["batch_size"]) == key]
        exact = [m for m in same if m["extras"] == extras]
        pick = exact or same
        if pick:
            ms = statistics.median(m["ms"] for m in pick)
            src = f"median of {len(pick)} measured run(s)" + ("" if exact else " with other extras")
        else:
            b = [m for m in bench if (m["device_name"], m["network"], m["width"], m["batch_size"]) == key]
            ms = statistics.median(m["ms"] for m in b) if b else None
            src = f"bench/results ({len(b)})" if b else "not measured on this device"
        done = (folder / "runs" / r.name / "trace.json").is_file()
        planned.append(PlannedRun(r.name, r.network, r.epochs, steps, ms, src, done))
    return planned


def render_plan(planned: list[PlannedRun], header: str, device_name: str, gpu: bool) -> str:
    unit = "GPU-hours" if gpu else "hours"
    lines = [header, "", f"| run | epochs | steps per pass | ms/step (pass 1 + 2) | {unit} | from |",
             "|---|---|---|---|---|---|"]
    for r in planned:
        ms = "n/a" if r.ms_per_step is None else f"{r.ms_per_step:.1f}"
        h = "done" if r.done else ("unknown" if r.hours is None else f"{r.hours:.2f}")
        lines.append(f"| {r.name} | {r.epochs} | {r.steps:,} | {ms} | {h} | {r.source} |")
    known = [r.hours for r in planned if r.hours is not None]
    unknown = [r.name for r in planned if r.hours is None]
    lines += ["", f"Total: {sum(known):.2f} {unit} on {device_name} for {len(known)} of {len(planned)} runs"
              + (f"; unknown for {len(unknown)} ({', '.join(sorted({n.split('-')[0] for n in unknown}))}): measure "
                 "them with `python bench/step_cost.py --networks ... --out bench/results/step_cost_<device>.json` "
                 "on that device, or finish one run of each" if unknown else "") + "."]
    return "\n".join(lines)
