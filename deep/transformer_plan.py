"""``gpcheck deep --suite transformer --preset P --plan``: the suite's runs, their steps and the
time they will take, without running any of them.

Where a run's ms/step (pass 1 + pass 2) come from, in this order, and the plan says which:

1. finished runs on the same device (its ``device_name``) under the output folder
   (``OUT/transformer-*/runs/*/trace.json``), then under the repository's committed ``reports/``,
   of the same shape (p, train fraction, width, heads, layers, batch size): their measured pass 1
   and pass 2 ms/step, the median over the runs of the same variant settings, or else over every
   run of that shape;
2. else a few steps timed here on the device (:func:`time_steps`): a deterministic training step
   with the flat buffers and the run's optimizer (pass 1), and again with the forwards at the
   theta* pass 2 judges and the recorder's row (pass 2);
3. a device that is not here (``--device cuda`` on a machine without one) and has no measured
   run: no estimate, said so, with the time on this machine's CPU beside it.

A run's time = its steps x (pass 1 + pass 2 ms/step). Runs already finished in the output folder
cost nothing.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMITTED_REPORTS = REPO / "reports"
#: the spec keys that set a step's cost (the shape) and those that set it further (the variant)
SHAPE_KEYS = ("p", "train_fraction", "d_model", "n_heads", "layers", "batch_size")
VARIANT_KEYS = ("norm", "residual", "activation", "optimizer", "warmup")
#: theta* judged on a pass-2 step: the last iterate, the random one, memorization's, grokking's
STARS = 4


@dataclass
class PlannedRun:
    name: str
    epochs: int
    steps: int  #: steps of one pass
    ms_per_step: float | None  #: pass 1 + pass 2
    source: str
    done: bool

    @property
    def hours(self) -> float | None:
        if self.done:
            return 0.0
        return None if self.ms_per_step is None else self.steps * self.ms_per_step / 3.6e6


def _shape(spec: dict) -> tuple:
    return tuple(spec.get(k, 1 if k == "layers" else None) for k in SHAPE_KEYS)


def _variant(spec: dict) -> tuple:
    return tuple(spec.get(k) for k in VARIANT_KEYS)


def measured_runs(roots) -> list[dict]:
    """Every finished transformer run under ``roots`` (folders holding ``transformer-*``): its
    spec, device name and pass 1 + pass 2 ms/step."""
    out = []
    for root in roots:
        for p in sorted(Path(root).glob("transformer-*/runs/*/trace.json")):
            try:
                meta = json.loads(p.read_text())
                spec = meta["run"]
                ms = float(meta["pass1"]["ms_per_step"]) + float(meta["pass2"]["ms_per_step"])
                device = meta["env"]["device_name"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if spec.get("suite") == "transformer" and math.isfinite(ms):
                out.append({"path": str(p), "spec": spec, "device_name": device, "ms": ms})
    return out


def time_steps(c, device: str = "cpu", steps: int = 3) -> tuple[float, float]:
    """(pass 1, pass 2) ms/step of config ``c`` timed here on ``device`` with
    :func:`deep.plan.time_parts`: a deterministic training step of the run's model and optimizer
    on a batch of its task (flat buffers), and that step plus :data:`STARS` forwards at a theta* and
    the recorder's row; one untimed step first."""
    import torch

    from .algorithmic import modular_addition
    from .env import deterministic
    from .plan import time_parts
    from .step import flat_model
    from .transformer_suite import _optimizer, model_fn

    dev = torch.device(device)
    task = modular_addition(p=c.p, train_fraction=c.train_fraction, seed=0)
    with deterministic(), torch.random.fork_rng(devices=[]):
        m = model_fn(c, task, 0)().to(dev)
        stars = [model_fn(c, task, 1 + i)().to(dev) for i in range(STARS)]
        fp = flat_model(m)
        opt = _optimizer(c)(m.parameters())
        n = min(c.batch_size, len(task.y_train))
        ms = time_parts(m, fp, opt, stars, task.x_train[:n].to(dev), task.y_train[:n].to(dev), c.lr, steps)
    return ms["train"], ms["train"] + ms["forward"] + ms["record"]


def _here(device: str) -> bool:
    import torch

    d = torch.device(device)
    return d.type == "cpu" or (d.type == "cuda" and torch.cuda.is_available())


def _device_name(device: str) -> str:
    from .env import environment

    import torch

    return environment(torch.device(device))["device_name"]


def plan(preset: str, seeds: int | None, out_root: str | Path, device: str = "cpu", random_labels: bool = False,
         committed: Path | None = COMMITTED_REPORTS, timer=time_steps) -> tuple[list[PlannedRun], str, str]:
    """The runs of ``preset`` (``seeds`` of them per variant) with their ms/step and the source of
    each, the device's name, and a note for a device that is not here."""
    from .algorithmic import modular_addition
    from .transformer_suite import PRESETS

    ps = PRESETS[preset]
    n_seeds = ps.seeds if seeds is None else int(seeds)
    folder = Path(out_root) / (f"transformer-{preset}" + ("-random-labels" if random_labels else ""))
    here = _here(device)
    name = _device_name(device) if here else str(device)
    roots = [Path(out_root)] + ([committed] if committed is not None and Path(committed) != Path(out_root) else [])
    runs = measured_runs(roots)
    found = [m for m in runs if m["device_name"] == name]
    timed: dict[tuple, tuple[float, str]] = {}
    planned = []
    for seed in range(n_seeds):
        for vname, change in ps.variants:
            c = replace(ps.base, **change)
            spec = c.spec()  # without "layers" when 1, as _shape reads it
            run = f"{vname}-s{seed}"
            n_train = len(modular_addition(p=c.p, train_fraction=c.train_fraction, seed=seed).y_train)
            steps = c.epochs * math.ceil(n_train / c.batch_size)
            done = (folder / "runs" / run / "trace.json").exists()
            same = [m["ms"] for m in found if _shape(m["spec"]) == _shape(spec)]
            twin = [m["ms"] for m in found if _shape(m["spec"]) == _shape(spec) and _variant(m["spec"]) == _variant(spec)]
            if twin or same:
                use = twin or same
                ms, src = statistics.median(use), (f"median of {len(use)} finished run(s) of "
                                                   f"{'this variant' if twin else 'this shape'}")
            elif here:
                key = _shape(spec) + _variant(spec)
                if key not in timed:
                    p1, p2 = timer(c, device)
                    timed[key] = (p1 + p2, "timed here (3 steps of pass 1 and of pass 2, eager)")
                ms, src = timed[key]
            else:
                ms, src = None, "no estimate: no finished run on this device and none here to time"
            planned.append(PlannedRun(run, c.epochs, steps, ms, src, done))
    note = ""
    if not here:
        cpu_name = _device_name("cpu")
        cpu = [m["ms"] for m in runs if m["device_name"] == cpu_name and _shape(m["spec"]) == _shape(ps.base.spec())]
        cpu_ms = statistics.median(cpu) if cpu else sum(timer(ps.base, "cpu"))
        steps = sum(p.steps for p in planned if not p.done)
        note = (f"{device} is not on this machine and no finished run measured on one was found, so there is no "
                f"estimate for it; on this machine's CPU ({cpu_name}) the runs left would take about "
                f"{steps * cpu_ms / 3.6e6:.1f} hours ({cpu_ms:.1f} ms/step, the base variant)")
    return planned, name, note


def render(preset: str, planned: list[PlannedRun], device_name: str, note: str, sized_for: str) -> str:
    lines = [f"Plan: `transformer` suite, `{preset}` preset (sized for {'one GPU' if sized_for == 'gpu' else '2 CPU cores'}), "
             f"on {device_name}", "", "| run | epochs | steps per pass | ms/step (pass 1 + 2) | hours | from |",
             "|---|---|---|---|---|---|"]
    for p in planned:
        if p.done:
            lines.append(f"| {p.name} | {p.epochs} | {p.steps:,} | - | done | finished in the output folder |")
        else:
            ms = "?" if p.ms_per_step is None else f"{p.ms_per_step:.1f}"
            h = "?" if p.hours is None else f"{p.hours:.2f}"
            lines.append(f"| {p.name} | {p.epochs} | {p.steps:,} | {ms} | {h} | {p.source} |")
    left = [p for p in planned if not p.done]
    known = [p.hours for p in left if p.hours is not None]
    lines.append("")
    if not left:
        lines.append(f"Total: every one of the {len(planned)} runs is finished.")
    elif len(known) == len(left):
        lines.append(f"Total: {sum(known):.2f} hours on {device_name} for the {len(left)} of {len(planned)} runs left "
                     "to measure, one at a time.")
    else:
        lines.append(f"Total: unknown for {len(left) - len(known)} of the {len(left)} runs left.")
    if note:
        lines += ["", note + "."]
    return "\n".join(lines) + "\n"


__all__ = ["PlannedRun", "measured_runs", "plan", "render", "time_steps"]
