"""``gpcheck deep ... --plan``: a suite's runs, their steps, and the time they will take, without
running any of them.

(About 425 lines: the three sources of a step's cost and their order are one rule.)

Where a run's ms/step (pass 1 + pass 2) come from, for its (device, network, width, batch size),
in this order, and the plan says which:

1. finished runs of that device under the reports folder (``OUT/*/runs/*/trace.json``), then
   under the repository's committed ``reports/``: their measured pass 1 and pass 2 ms/step, the
   median over every run that matches, preferring runs that recorded the same extras (random
   theta*, earlier theta*, ...) since those set pass 2's cost;
2. ``bench/results/*.json`` written by ``bench/step_cost.py`` on that device: its measured loops
   (a deterministic training step, a forward at theta*, the recorder's row; as CUDA graphs where
   they ran as such) put into :func:`pass_costs`, the estimate model below;
3. on a GPU with neither: :func:`prototype_costs`, the model with step costs from the prototype's
   H200 measurement, scaled to the runner's settings: an **estimate, not measured**;
4. on a CPU with neither: a few steps timed here (:func:`time_steps`), put into the model.

The model (:func:`pass_costs`): pass 1's step is a deterministic training step ``T``; pass 2's is
``T`` + ``F`` forwards at theta* + the recorder's float64 Gram matrix, where ``F`` is the average
number of theta* judged per step (:func:`theta_star_forwards`: the real one, the random one, and
each earlier iterate over the part of the path before it; about 4.15 for the presets' extras),
and the Gram matrix costs ``R`` per row, with ``F + 2`` rows (theta*'s, the update, the gradient).

A run's time = its steps x (pass 1 + pass 2 ms/step). Runs already finished in the folder are
listed as done and cost nothing; when every run is finished the plan says so.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .tasks import DATASET_SHAPE, SuiteConfig, resolve_suites

REPO = Path(__file__).resolve().parent.parent
BENCH_RESULTS = REPO / "bench" / "results"
COMMITTED_REPORTS = REPO / "reports"


@dataclass(frozen=True)
class StepCosts:
    """ms of one network's step parts on one device, at the runner's settings (strict fp32,
    deterministic; CUDA graphs on a GPU)."""

    train: float  #: a deterministic training step (pass 1's step)
    forward: float  #: one forward at a theta* on the same batch (batch statistics)
    record_row: float  #: the recorder's float64 Gram matrix, per row of it
    source: str
    measured: bool


def theta_star_forwards(epochs: int, extras: dict, external: int = 0) -> float:
    """The average number of theta* forwards per pass-2 step with ``extras`` (Extras.to_dict()):
    the real theta* and the random and extended ones on every step, each earlier iterate (at the
    start of epoch ``e``) on the ``e / epochs`` of the path before it, and each external theta*
    (``extras``' own and ``external`` more: ``--star-seed``'s) on every step."""
    from .measure import Extras

    ex = Extras(**{k: (tuple(v) if k == "sensitivity" else v) for k, v in extras.items() if k != "external_stars"})
    f = 1.0 + bool(ex.random_baseline) + bool(ex.extend_epochs(epochs)) + len(extras.get("external_stars") or ())
    return f + external + sum(e / epochs for e in ex.candidate_epochs(epochs))


def _where(measured: list[dict]) -> str:
    """Where the runs an estimate comes from were measured."""
    return "committed run(s) in reports/" if measured[0].get("committed") else "measured run(s)"


def _extras_key(extras: dict | None) -> tuple[dict | None, int]:
    """A run's extras as the plan compares them: without the external theta* (whose paths differ
    from run to run), and how many there are."""
    if not isinstance(extras, dict):
        return extras, 0
    return {k: v for k, v in extras.items() if k != "external_stars"}, len(extras.get("external_stars") or ())


def star_seed_plan_line(config: SuiteConfig) -> str:
    """``--plan`` with ``--star-seed N``: which runs go first, and what the others cost more."""
    n = config.star_seed
    first = [r for r in config.runs if config.star_run(r) is None]
    judged = [r for r in config.runs if config.star_run(r) is not None]
    return (f"--star-seed {n}: the {len(first)} runs of seed {n} are measured first (their end points are the other "
            f"runs' theta*), then the {len(judged)} others, each judged against seed {n}'s end point of its network "
            "and variant: one more theta* forward (and Gram row) per pass-2 step, counted above.")


def pass_costs(c: StepCosts, forwards: float) -> tuple[float, float]:
    """``(pass 1, pass 2)`` ms per step under the model."""
    return c.train, c.train + forwards * c.forward + (forwards + 2) * c.record_row


# -- the prototype's H200 step, scaled to the runner's settings -----------------------------------
#: training FLOPs per image (forward + backward, a multiply-add counted as 2) at width 1, from
#: torch.utils.flop_counter on the project's models (tests/test_plan.py recounts them), and the
#: parameters, which set the recorder's cost
TRAIN_FLOPS = {"alexnet": 143_154_432, "resnet18": 3_328_997_376, "resnet34": 6_952_876_032,
               "vgg11": 916_224_000, "vgg16": 1_878_816_768}
PARAMS = {"alexnet": 1_387_786, "resnet18": 11_173_962, "resnet34": 21_282_122, "vgg11": 9_756_426,
          "vgg16": 15_253_578}

#: ``shared/design/gpu-prototype`` (H200, torch 2.11, ResNet-18, batch 128, channels_last, CUDA
#: graphs): a deterministic training step 5.20 ms, with cuDNN's TF32 on (its log: cudnn_tf32 true);
#: the replay step (+ one theta* forward + float64 inner products over a flat buffer) 7.34 ms
PROTOTYPE = {"device": "NVIDIA H200", "train_ms": 5.20, "replay_ms": 7.34, "batch": 128}
#: H200 float32 peak without tensor cores (TF32 is off in the runner: strict fp32), TFLOP/s
H200_FP32_PEAK = 67.0
#: the model's assumptions, as (low, central, high) cost: the share of the prototype's TF32 step
#: that is not convolution math (memory-bound kernels: BN, activations, the optimizer, which strict
#: fp32 does not change), and the sustained strict-fp32 rate of the convolutions (55-90% of peak)
NON_CONV_SHARE = (0.5, 0.6, 0.7)
FP32_TFLOPS = (60.0, 45.0, 35.0)
#: the float64 Gram matrix per row, ms per million parameters (a float32 row read and written as
#: float64 into the workspace, read again by the product: about 20 bytes per entry at about 4 TB/s)
GRAM_MS_PER_MPARAM_ROW = 0.005


def prototype_costs(network: str, width: float = 1.0, batch_size: int = 128, case: int = 1) -> StepCosts:
    """The model's step parts for ``network`` on an H200 from the prototype's ResNet-18 step, at
    strict fp32: the non-convolution part of the prototype's step scaled by the training FLOPs,
    plus the convolution FLOPs at :data:`FP32_TFLOPS`; a forward a third of a training step (its
    FLOPs); the Gram matrix by the parameters. ``case``: 0 low, 1 central, 2 high cost."""
    r = TRAIN_FLOPS[network] / TRAIN_FLOPS["resnet18"] * width ** 2 * batch_size / PROTOTYPE["batch"]
    flops = TRAIN_FLOPS[network] * width ** 2 * batch_size
    train = NON_CONV_SHARE[case] * PROTOTYPE["train_ms"] * r + flops / (FP32_TFLOPS[case] * 1e12) * 1e3
    train = max(train, 0.5)  # no step is cheaper than its launch and memory floor
    mparams = PARAMS[network] * width ** 2 / 1e6
    what = ("estimate, not measured: the prototype's H200 ResNet-18 step (TF32 convolutions) scaled to strict fp32 "
            f"and to {network} by FLOPs (model in deep/plan.py)")
    return StepCosts(train, train / 3, GRAM_MS_PER_MPARAM_ROW * mparams, what, False)


# -- measured step parts: bench/results and timed steps -------------------------------------------
def _bench_costs(results: Path) -> list[dict]:
    """Step parts measured by bench/step_cost.py (strict fp32; the graph loops where they ran as
    graphs), per (device, network, width, batch)."""
    out = []
    for p in sorted(Path(results).glob("*.json")):
        try:
            d = json.loads(p.read_text())
            env, args = d["env"], d["args"]
            for net, r in d["ms_per_step"].items():
                g = "graph_" if "graph_replay" in r and not r.get("fell_back") else ""
                train, rec_only, replay = r[f"{g}deterministic"], r[f"{g}record_only"], r[f"{g}replay"]
                # step_cost's recorder: one theta* and the update, no gradient columns: 2 rows of the Gram
                c = StepCosts(train, max(replay - rec_only, 0.0), max(rec_only - train, 0.0) / 2,
                              f"bench/results/{p.name} ({'CUDA graphs' if g else 'eager'} loops)", True)
                out.append({"device_name": env.get("device_name"), "network": net, "width": args.get("width"),
                            "batch_size": args.get("batch_size"), "costs": c})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


def time_parts(m, fp, opt, stars, x, y, lr: float, steps: int) -> dict[str, float]:
    """ms of the parts of a measured step, each over ``steps`` steps after one untimed step: a
    training step of ``m`` (its flat buffers ``fp``, optimizer ``opt``) on the batch ``(x, y)``,
    the forwards at the theta* ``stars`` (batch statistics), and the recorder's row with one row
    per theta* and the gradient columns. :func:`time_steps` and the transformer suite's plan time
    their runs with it."""
    import torch
    import torch.nn.functional as F

    from gamma_theory import PathRecorder
    from gamma_theory.flat import FlatParams

    from .measure import batch_stats_only

    dev = x.device

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    _, rows = FlatParams.like(stars)
    rec = PathRecorder(fp, rows, lr, record_grad=True)
    t = {"train": 0.0, "forward": 0.0, "record": 0.0}
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        fp.zero_grad()
        loss.backward()
        rec.capture_grad()
        opt.step()
        sync()
        t1 = time.perf_counter()
        ls = []
        for star in stars:
            with torch.no_grad(), batch_stats_only(star):
                ls.append(F.cross_entropy(star(x), y))
        sync()
        t2 = time.perf_counter()
        row = rec.row(loss.detach(), ls)
        sync()
        t3 = time.perf_counter()
        rec.push(row)
        if i:  # the first step of each is a warm-up
            t["train"] += t1 - t0
            t["forward"] += t2 - t1
            t["record"] += t3 - t2
    return {k: 1e3 * v / steps for k, v in t.items()}


def time_steps(network: str, width: float, batch_size: int, device: str = "cpu", steps: int = 2) -> StepCosts:
    """Time a few steps here, at the runner's settings: a deterministic training step with flat
    buffers, a forward at a theta*, and the recorder's row (one theta*, gradient columns); after
    one untimed step of each (:func:`time_parts`). Random CIFAR-shaped data."""
    import torch

    from .env import deterministic
    from .measure import flat_model
    from .models import build_model

    dev = torch.device(device)
    with deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cl = dev.type == "cuda"
        m = build_model(network, 10, width=width).to(dev)
        star = build_model(network, 10, width=width, seed=1).to(dev)
        if cl:
            m, star = m.to(memory_format=torch.channels_last), star.to(memory_format=torch.channels_last)
        fp = flat_model(m)
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        x = torch.randn(batch_size, 3, 32, 32, device=dev)
        if cl:
            x = x.to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch_size,), device=dev)
        ms = time_parts(m, fp, opt, [star], x, y, 0.01, steps)
    return StepCosts(ms["train"], ms["forward"], ms["record"] / 3,
                     f"timed here ({steps} steps of each part, eager)", True)


@dataclass
class PlannedRun:
    name: str
    network: str
    epochs: int
    steps: int  #: steps of one pass
    ms_per_step: float | None  #: pass 1 + pass 2, per step (the central estimate where it is one)
    source: str  #: where ms_per_step comes from
    done: bool
    measured: bool = True  #: False: an estimate of the model, not a measurement on this device
    ms_range: tuple[float, float] | None = None  #: (low, high) where the model gives a range

    @property
    def hours(self) -> float | None:
        if self.done:
            return 0.0
        return None if self.ms_per_step is None else self.steps * self.ms_per_step / 3.6e6

    def hours_range(self) -> tuple[float, float] | None:
        if self.done or self.ms_per_step is None:
            return (0.0, 0.0) if self.done else None
        lo, hi = self.ms_range or (self.ms_per_step, self.ms_per_step)
        return self.steps * lo / 3.6e6, self.steps * hi / 3.6e6


def _measured_runs(root: Path) -> list[dict]:
    out = []
    for p in sorted(root.glob("*/runs/*/trace.json")):
        try:
            info = json.loads(p.read_text())
            run, setup, env = info["run"], info["setup"], info["env"]
            ms = info["pass1"]["ms_per_step"] + info["pass2"]["ms_per_step"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            ms1, ms2 = float(info["pass1"]["ms_per_step"]), float(info["pass2"]["ms_per_step"])
        except (KeyError, TypeError, ValueError):
            ms1 = ms2 = None
        out.append({"device_name": env.get("device_name"), "network": run.get("network"), "width": run.get("width"),
                    "batch_size": setup.get("batch_size"), "extras": setup.get("extras"), "ms": float(ms),
                    "ms1": ms1, "ms2": ms2, "epochs": setup.get("epochs") or run.get("epochs"),
                    "where": str(p.parent)})
    return out


def _per_theta_star(m: dict) -> float | None:
    """A measured run's pass-2 cost per theta* it judged: what pass 2 took beyond pass 1's step (the
    forwards at theta* and the recorder's rows), over its average number of theta* per step (None
    when its trace.json does not say)."""
    try:
        f = theta_star_forwards(int(m["epochs"]), m["extras"])
        return max(m["ms2"] - m["ms1"], 0.0) / f
    except (KeyError, TypeError, ValueError):
        return None


def _with_external(m: dict, epochs: int, external: int) -> float:
    """A measured run's ms/step (pass 1 + 2), with pass 2's cost per theta* (:func:`_per_theta_star`)
    added for each external theta* more than it judged (taken off for each fewer)."""
    return m["ms"] + (external - _extras_key(m["extras"])[1]) * _per_theta_star(m)


def _external_text(more: int, per: float) -> str:
    """What :func:`_with_external` added: ``more`` external theta* per step at ``per`` ms each."""
    word = "more" if more > 0 else "fewer"
    return (f"{abs(more)} theta* {word} per pass-2 step (another seed's end point) at their pass 2's "
            f"{per:.1f} ms per theta* (median)")


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
               bench_results: str | Path | None = None, device: str = "cpu",
               committed: str | Path | None = COMMITTED_REPORTS, timings: dict | None = None,
               networks: tuple[str, ...] | None = None, variants: tuple[str, ...] | None = None) -> list[PlannedRun]:
    """Every run of the suite with its steps and its estimated time on ``device_name`` (of type
    ``device``: "cpu" or "cuda"). ``timings``: a cache of timed steps shared between calls."""
    config, = resolve_suites(suite_name, preset, dataset, out_root, seeds=seeds, labels=labels, star_extend=star_extend,
                             networks=networks, variants=variants)
    return plan_config(config, device_name, bench_results, device, committed, timings)


def plan_config(config: SuiteConfig, device_name: str, bench_results: str | Path | None = None, device: str = "cpu",
                committed: str | Path | None = COMMITTED_REPORTS, timings: dict | None = None) -> list[PlannedRun]:
    """:func:`plan_suite` for a resolved suite folder (:class:`deep.tasks.SuiteConfig`)."""
    out_root = config.out_root
    n_train = config.settings.train_subset or DATASET_SHAPE[config.dataset][1]
    extras = config.extras.to_dict()
    folder = config.out
    measured = _measured_runs(Path(out_root))
    if committed is not None and Path(committed).resolve() != Path(out_root).resolve():
        measured += [{**m, "committed": True} for m in _measured_runs(Path(committed))]
    bench = _bench_costs(Path(BENCH_RESULTS if bench_results is None else bench_results))
    timings = {} if timings is None else timings
    planned = []
    for r in config.runs:
        steps = r.epochs * math.ceil(n_train / r.batch_size)
        done = (folder / "runs" / r.name / "trace.json").is_file()
        key = (device_name, r.network, r.width, r.batch_size)
        same = [m for m in measured if (m["device_name"], m["network"], m["width"], m["batch_size"]) == key]
        mine = [m for m in same if not m.get("committed")]
        same = mine or same  # runs of this folder first, then the committed ones
        external = 1 if config.star_run(r) is not None else 0  # --star-seed: seed N's end point
        want = (extras, external)
        exact = [m for m in same if _extras_key(m["extras"]) == want]
        # the same extras but for the external theta*: their ms/step, with pass 2's cost per theta* for each
        # external one more or less
        near = [m for m in same if _extras_key(m["extras"])[0] == extras and _per_theta_star(m) is not None]
        forwards = theta_star_forwards(r.epochs, extras, external)
        if exact:
            planned.append(PlannedRun(r.name, r.network, r.epochs, steps, statistics.median(m["ms"] for m in exact),
                                      f"median of {len(exact)} {_where(exact)}", done))
            continue
        if near:
            ms = statistics.median(_with_external(m, r.epochs, external) for m in near)
            more = external - _extras_key(near[0]["extras"])[1]
            per = statistics.median(_per_theta_star(m) for m in near)
            planned.append(PlannedRun(r.name, r.network, r.epochs, steps, ms,
                                      f"median of {len(near)} {_where(near)}, {_external_text(more, per)}", done))
            continue
        if same:
            planned.append(PlannedRun(r.name, r.network, r.epochs, steps, statistics.median(m["ms"] for m in same),
                                      f"median of {len(same)} {_where(same)} with other extras", done))
            continue
        b = [m["costs"] for m in bench if (m["device_name"], m["network"], m["width"], m["batch_size"]) == key]
        if b:
            ms = statistics.median(sum(pass_costs(c, forwards)) for c in b)
            planned.append(PlannedRun(r.name, r.network, r.epochs, steps, ms,
                                      f"{b[0].source}, model for {forwards:.2f} theta* forwards", done))
            continue
        if device == "cuda":
            if r.network not in TRAIN_FLOPS:
                planned.append(PlannedRun(r.name, r.network, r.epochs, steps, None, "no model for this network", done))
                continue
            lo, mid, hi = (sum(pass_costs(prototype_costs(r.network, r.width, r.batch_size, c), forwards))
                           for c in range(3))
            note = "" if device_name == PROTOTYPE["device"] else f" (measured on an H200, not on {device_name})"
            planned.append(PlannedRun(r.name, r.network, r.epochs, steps, mid, "estimate from the prototype's H200 "
                                      f"step, strict fp32, {forwards:.2f} theta* forwards{note}", done,
                                      measured=False, ms_range=(lo, hi)))
            continue
        if done:
            planned.append(PlannedRun(r.name, r.network, r.epochs, steps, None, "finished", done))
            continue
        tkey = (r.network, r.width, r.batch_size)
        if tkey not in timings:
            timings[tkey] = time_steps(r.network, r.width, r.batch_size, device)
        c = timings[tkey]
        planned.append(PlannedRun(r.name, r.network, r.epochs, steps, sum(pass_costs(c, forwards)),
                                  f"{c.source}, model for {forwards:.2f} theta* forwards", done))
    return planned


def render_plan(planned: list[PlannedRun], header: str, device_name: str, gpu: bool) -> str:
    unit = "GPU-hours" if gpu else "hours"
    lines = [header, "", f"| run | epochs | steps per pass | ms/step (pass 1 + 2) | {unit} | from |",
             "|---|---|---|---|---|---|"]
    for r in planned:
        ms = "n/a" if r.ms_per_step is None else f"{r.ms_per_step:.1f}" + ("" if r.measured else " (est.)")
        h = "done" if r.done else ("unknown" if r.hours is None else f"{r.hours:.2f}")
        lines.append(f"| {r.name} | {r.epochs} | {r.steps:,} | {ms} | {h} | {r.source} |")
    lines += ["", summary_line(planned, device_name, unit)]
    return "\n".join(lines)


def summary_line(planned: list[PlannedRun], device_name: str, unit: str) -> str:
    """The plan's last line: what is left to measure and its time; or that every run is finished."""
    todo = [r for r in planned if not r.done]
    done = len(planned) - len(todo)
    if not todo:
        return (f"All {len(planned)} runs are finished under the output folder: nothing is left to measure "
                "(`gpcheck deep` with these options rebuilds the report from their traces).")
    known = [r for r in todo if r.hours is not None]
    unknown = [r.name for r in todo if r.hours is None]
    total = sum(r.hours for r in known)
    lo = sum(r.hours_range()[0] for r in known)
    hi = sum(r.hours_range()[1] for r in known)
    est = [r for r in known if not r.measured]
    text = (f"Total: {_hours(total, unit)} on {device_name} for the {len(known)} of {len(todo)} runs left to measure"
            + (f" ({done} of {len(planned)} already finished)" if done else ""))
    if est:
        text += (f"; an ESTIMATE for {len(est)} of them (not measured on this device; range {lo:.2f}-{hi:.2f} "
                 f"{unit}): measure with `python bench/step_cost.py --out bench/results/step_cost_<device>.json`")
    if unknown:
        text += (f"; unknown for {len(unknown)} ({', '.join(sorted({n.split('-')[0] for n in unknown}))}): measure "
                 "them with `python bench/step_cost.py --networks ... --out bench/results/step_cost_<device>.json` "
                 "on that device, or finish one run of each")
    return text + "."


def _hours(h: float, unit: str) -> str:
    return f"{h:.2f} {unit}" + (f" (about {60 * h:.1f} minutes)" if 0 < h < 0.1 else "")


def protocol_table(gpu: str = "NVIDIA H200") -> list[dict]:
    """The README's GPU-hours table: every run of the ``paper`` protocol (every suite, CIFAR-10
    and CIFAR-100) under the estimate model, with no run measured: per network, the steps and the
    low, central and high GPU-hours."""
    from .suites import SUITES

    rows: dict[str, dict] = {}
    for s in SUITES:
        for ds in ("cifar10", "cifar100"):
            for r in plan_suite(s, "paper", ds, gpu, out_root="/nonexistent", bench_results="/nonexistent",
                                device="cuda", committed=None):
                row = rows.setdefault(r.network, {"network": r.network, "runs": 0, "steps": 0, "ms": r.ms_per_step,
                                                  "low": 0.0, "central": 0.0, "high": 0.0})
                lo, hi = r.hours_range()
                row["runs"] += 1
                row["steps"] += r.steps
                row["low"] += lo
                row["central"] += r.hours
                row["high"] += hi
    return list(rows.values())


def main() -> None:  # pragma: no cover - prints the README's table: python -m deep.plan
    rows = protocol_table()
    print("| network | runs | steps per pass | ms/step, pass 1 + pass 2 (central) | GPU-hours (low-central-high) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['runs']} | {r['steps']:,} | {r['ms']:.1f} | "
              f"{r['low']:.1f} - {r['central']:.1f} - {r['high']:.1f} |")
    tot = {k: sum(r[k] for r in rows) for k in ("runs", "steps", "low", "central", "high")}
    print(f"| all | {tot['runs']} | {tot['steps']:,} | | {tot['low']:.0f} - {tot['central']:.0f} - {tot['high']:.0f} |")


if __name__ == "__main__":
    main()
