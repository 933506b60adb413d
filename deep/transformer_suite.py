"""The transformer suite (issue 23): the principle on a transformer learning modular addition,
through memorization and grokking, every path measured exactly.

One base configuration (a 1-layer decoder-only transformer, :mod:`deep.models.transformer`, on
``(a + b) mod p``, :mod:`deep.algorithmic`; AdamW with weight decay and a linear warm-up, the
grokking setting of Power et al. 2022 and Nanda et al. 2023) and one variant per knob, each a
change of one setting from the base, as the paper's CIFAR suites change one knob:

* ``norm``: LayerNorm none (base) / post / pre (the bn suite's analogue);
* ``residual``: all (base) / none (the skip suite's analogue);
* ``activation``: ReLU (base) / GELU;
* ``optimizer``: AdamW with weight decay (base) / Adam / SGD-momentum 0.5 / SGD (the optimizer
  suite's analogue, and the grokking switch: without weight decay a network memorizes and need
  not grok);
* ``warmup``: on (base) / off.

Every run is :func:`deep.measure.measure` with ``Extras(events=True)`` and the held-out pairs: each
epoch's train and held-out accuracy, the iterates at memorization and at grokking as theta*
judged on the steps before them, the random-theta* baseline, and Definition 1 phase by phase
(:func:`gamma_theory.phases.definition_1_by_phase`). Variants start from the same weights wherever
they share a layer (initialization by layer name).

:func:`run_suite` measures every run of a preset into ``OUT/transformer-<preset>/runs/NAME`` (a
finished run is loaded, not measured again) and writes ``report.md`` and ``report.json``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from gamma_theory import check_trace, definition_1
from gamma_theory.phases import definition_1_by_phase

from .algorithmic import modular_addition
from .context import Extras
from .folder import RunFolder
from .measure import measure
from .models.transformer import build_transformer
from .tensordata import TensorData


@dataclass(frozen=True)
class Config:
    """One run's settings (the base, or the base with one knob changed)."""

    p: int = 97
    train_fraction: float = 0.4
    d_model: int = 128
    n_heads: int = 4
    norm: str = "none"
    residual: str = "all"
    activation: str = "relu"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1.0
    warmup: int = 10  #: linear warm-up over this many steps (0: off)
    batch_size: int = 512
    epochs: int = 300


@dataclass(frozen=True)
class Preset:
    name: str
    base: Config
    variants: tuple[tuple[str, dict], ...]  #: (name, the settings that differ from the base)
    seeds: int = 3
    note: str = ""


_KNOBS = (("base", {}), ("norm-post", {"norm": "post"}), ("norm-pre", {"norm": "pre"}),
          ("residual-none", {"residual": "none"}), ("gelu", {"activation": "gelu"}),
          ("adam", {"optimizer": "adam", "weight_decay": 0.0}),
          ("momentum", {"optimizer": "momentum", "weight_decay": 0.0, "lr": 0.5}),
          ("sgd", {"optimizer": "sgd", "weight_decay": 0.0, "lr": 0.5}),
          ("warmup-off", {"warmup": 0}))

PRESETS = {
    # in CI: mod 7 (29 training pairs), d_model 16, 3 variants, one seed, a few seconds: a wiring
    # check that exercises the events and the phases (the base memorizes at about epoch 28)
    "smoke": Preset("smoke", Config(p=7, train_fraction=0.6, d_model=16, n_heads=2, lr=3e-2, weight_decay=0.1,
                                    batch_size=16, epochs=40, warmup=0),
                    (("base", {}), ("norm-pre", {"norm": "pre"}), ("sgd", {"optimizer": "sgd", "weight_decay": 0.0,
                                                                            "lr": 0.5})), seeds=1,
                    note="a wiring check: mod 7 at d_model 16 for 40 epochs; its verdicts are not evidence"),
    # sized by bench/grokking_sizing.py (docs/transformer.md): AdamW wd 1.0, train fraction 0.4,
    # batch 512 and a 10-step warm-up grokked at epoch 240 in 33 s of plain training on one thread
    "cpu": Preset("cpu", Config(), _KNOBS, seeds=3),
}


def _optimizer(c: Config):
    if c.optimizer == "adamw":
        return lambda p: torch.optim.AdamW(p, lr=c.lr, betas=(0.9, 0.98), weight_decay=c.weight_decay)
    if c.optimizer == "adam":
        return lambda p: torch.optim.Adam(p, lr=c.lr, betas=(0.9, 0.98), weight_decay=c.weight_decay)
    if c.optimizer == "momentum":
        return lambda p: torch.optim.SGD(p, lr=c.lr, momentum=0.5, weight_decay=c.weight_decay)
    if c.optimizer == "sgd":
        return lambda p: torch.optim.SGD(p, lr=c.lr, weight_decay=c.weight_decay)
    raise ValueError(f"unknown optimizer {c.optimizer!r}; valid: adamw, adam, momentum, sgd")


def _warmup(steps: int):
    if not steps:
        return None
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / steps))


def measure_one(c: Config, seed: int, workdir: Path, progress: bool = False, desc: str = "run",
                random_labels: bool = False):
    """Measure one run of the suite (its split and its model from ``seed``; ``random_labels``: every
    pair's label permuted at random before the split, the skeptic's twin: noise can be memorized,
    never grokked)."""
    task = modular_addition(p=c.p, train_fraction=c.train_fraction, seed=seed, random_labels=random_labels)

    def model():
        return build_transformer(vocab_size=task.vocab_size, num_classes=task.num_classes, seq_len=task.seq_len,
                                 norm=c.norm, residual=c.residual, activation=c.activation, d_model=c.d_model,
                                 n_heads=c.n_heads, seed=seed)

    return measure(model, _optimizer(c), TensorData(task.x_train, task.y_train), lr=c.lr, epochs=c.epochs,
                   batch_size=c.batch_size, workdir=workdir, seed=seed, data_seed=seed,
                   held_out=TensorData(task.x_test, task.y_test), scheduler_fn=_warmup(c.warmup),
                   extras=Extras(events=True, sensitivity=(), record_grad=True),
                   meta={"run": {"suite": "transformer", "seed": seed, **asdict(c),
                                 **({"random_labels": True} if random_labels else {})}},
                   progress=progress, desc=desc)


def summarize(run, name: str, seed: int, c: Config, wall_s: float) -> dict:
    """What the report shows of one run: convergence, the events, Definition 1 on the whole path,
    phase by phase, and against each companion theta*."""
    tr = run.trace
    meta = tr.meta
    rows = meta["epoch_eval"]
    last = rows[-1]
    res = check_trace(tr)
    d1 = res.definition_1
    events = meta["events"]
    cuts = {k: (v or {}).get("step") for k, v in events.items()}
    by = definition_1_by_phase(tr, cuts)
    comps = RunFolder(run.workdir).load_companions(meta)
    against = {}
    for k, ctr in comps.items():
        cd = definition_1(ctr)
        against[k] = {"steps": len(ctr), "holds": cd.holds, "gamma_max": cd.gamma_max,
                      "n_violating": int(cd.violating_steps.size),
                      # Fact 1 along the path: a minimizer's loss is never above the path's on a batch
                      "n_negative_gap": int((ctr.gap < 0).sum())}
    return {
        "name": name, "seed": seed, "config": asdict(c), "steps": len(tr), "wall_s": wall_s,
        "diverged": run.diverged if run.status == "diverged" else None,
        "final_train_accuracy": last["train"]["accuracy"], "final_train_loss": last["train"]["loss"],
        "final_held_out_accuracy": last["held_out"]["accuracy"],
        "converged": last["train"]["accuracy"] == 1.0 and run.status != "diverged",
        "memorization_epoch": (events["memorization"] or {}).get("epoch"),
        "grokking_epoch": (events["grokking"] or {}).get("epoch"),
        "memorization_step": (events["memorization"] or {}).get("step"),
        "grokking_step": (events["grokking"] or {}).get("step"),
        "definition_1": {"holds": d1.holds, "gamma_max": d1.gamma_max,
                         "dimensionless": None if d1.gamma_max is None else d1.gamma_max * tr.dist0_sq,
                         "n_violating": int(d1.violating_steps.size),
                         "share_positive": d1.share_positive},
        "theorem_1_holds": res.holds,
        "phases": by,
        "against": against,
        "epoch_eval": rows,
    }


def run_suite(preset: str, out: str | Path, seeds: int | None = None, progress: bool = True,
              random_labels: bool = False, measure_missing: bool = True) -> dict:
    """Measure every run of ``preset`` (a finished one is loaded) and write the report after every
    run measured, so an interrupted suite keeps a report of what it finished (``random_labels``: the twin on
    permuted labels, in ``OUT/transformer-<preset>-random-labels``). ``measure_missing=False``:
    measure nothing, report the finished runs and list the others as not measured."""
    if preset not in PRESETS:
        raise ValueError(f"unknown transformer preset {preset!r}; valid: {', '.join(PRESETS)}")
    ps = PRESETS[preset]
    n_seeds = ps.seeds if seeds is None else int(seeds)
    folder = Path(out) / (f"transformer-{preset}" + ("-random-labels" if random_labels else ""))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transformer_suite.json").write_text(json.dumps(
        {"preset": preset, "seeds": n_seeds, "random_labels": random_labels}, indent=2) + "\n")
    todo = [(seed, vname, replace(ps.base, **change)) for seed in range(n_seeds) for vname, change in ps.variants]
    runs, traces = [], {}
    report = None
    for seed, vname, c in todo:
        name = f"{vname}-s{seed}"
        workdir = folder / "runs" / name
        finished = (workdir / "trace.json").exists()
        if not measure_missing and not finished:
            continue
        t0 = time.perf_counter()
        run = measure_one(c, seed, workdir, progress, name, random_labels)
        wall = run.meta.get("pass1", {}).get("wall_s", 0.0) + run.meta.get("pass2", {}).get("wall_s", 0.0)
        if run.trace is None:
            runs.append({"name": name, "seed": seed, "config": asdict(c), "diverged": run.diverged})
        else:
            runs.append(summarize(run, name, seed, c, wall or time.perf_counter() - t0))
            traces[name] = run.trace
        # after a run measured now, the report so far; a loaded run waits for the next write (a
        # rebuild draws the figures once, not once per run)
        report = _write(folder, ps, preset, n_seeds, random_labels, runs, traces, todo) if not finished else None
    return report if report is not None else _write(folder, ps, preset, n_seeds, random_labels, runs, traces, todo)


def rebuild(folder: str | Path) -> dict:
    """The report of a transformer suite folder from the runs finished in it (nothing measured)."""
    folder = Path(folder)
    info = json.loads((folder / "transformer_suite.json").read_text())
    return run_suite(info["preset"], folder.parent, info["seeds"], progress=False,
                     random_labels=info["random_labels"], measure_missing=False)


def _write(folder, ps, preset, n_seeds, random_labels, runs, traces, todo) -> dict:
    done = {r["name"] for r in runs}
    report = {"suite": "transformer", "preset": preset, "note": ps.note, "seeds": n_seeds,
              "labels": "random" if random_labels else "true",
              "platform": platform.platform(), "torch": torch.__version__, "runs": runs,
              "not_measured": [f"{v}-s{s}" for s, v, _ in todo if f"{v}-s{s}" not in done],
              "claims": claims(runs)}
    from validation.grok_figure import plot_suite

    report["figures"] = [str(p.relative_to(folder)) for p in plot_suite(runs, traces, folder)] if traces else []
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=_json) + "\n")
    (folder / "report.md").write_text(render(report))
    return report


def claims(runs: list[dict]) -> list[dict]:
    """The paper's claims, in this suite's terms, decided over the runs measured."""
    ok = [r for r in runs if "definition_1" in r]
    conv = [r for r in ok if r["converged"]]
    out = []
    held = [r for r in conv if r["definition_1"]["holds"]]
    out.append({"claim": "the principle (Definition 1) holds on converged paths",
                "verdict": "NOT APPLICABLE" if not conv else ("PASS" if len(held) == len(conv) else "FAIL"),
                "numbers": f"{len(held)} of {len(conv)} converged runs ({len(ok)} measured)"})
    grok = [r for r in ok if r["grokking_epoch"] is not None and r["memorization_epoch"] is not None]
    ph_ok = [r for r in grok if all(p["holds"] for p in r["phases"]["phases"])]
    out.append({"claim": "Definition 1 holds in each phase (before memorization, to grokking, after)",
                "verdict": "NOT APPLICABLE" if not grok else ("PASS" if len(ph_ok) == len(grok) else "FAIL"),
                "numbers": f"{len(ph_ok)} of {len(grok)} runs that memorized and grokked"})
    rnd = [r for r in ok if "random" in r["against"]]
    rnd_held = [r for r in rnd if r["against"]["random"]["holds"]]
    fact1 = [r for r in rnd_held if r["against"]["random"]["n_negative_gap"] > 0]
    out.append({"claim": "skeptic: a random theta* at the same distance is refused",
                "verdict": "NOT APPLICABLE" if not rnd else ("PASS" if not rnd_held else "FAIL"),
                "numbers": f"Definition 1 accepts it in {len(rnd_held)} of {len(rnd)} runs; Fact 1 (no negative gap: "
                           f"theta*'s batch loss never above the path's) rejects it in {len(fact1)} of those "
                           f"{len(rnd_held)} (a point whose loss is above the path's on a step only bounds gamma "
                           "from below there, so Definition 1 alone cannot reject it)"})
    return out


def _json(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return str(o)


def _g(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def render(report: dict) -> str:
    lines = [f"# Transformer suite, preset {report['preset']}: modular addition through grokking"
             + (" (RANDOM LABELS: the skeptic's twin)" if report.get("labels") == "random" else ""), ""]
    if report["note"]:
        lines += [f"Preset note: {report['note']}.", ""]
    lines += ["Question: does every update of a transformer's training point toward the final minimizer "
              "strongly enough (Definition 1), before memorization, between memorization and grokking, and after?",
              "", "| run | train acc | held-out acc | memorized | grokked | Definition 1 | gamma_max | "
              "gamma x dist0^2 | phases (holds) | vs memorization theta* | vs random theta* | wall s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        if "definition_1" not in r:
            lines.append(f"| {r['name']} | diverged: {r['diverged']} |||||||||||")
            continue
        d = r["definition_1"]
        ph = ", ".join(f"{p['phase']}: {'yes' if p['holds'] else 'no'}" for p in r["phases"]["phases"])
        mem = r["against"].get("memorization")
        rnd = r["against"].get("random")
        lines.append(f"| {r['name']} | {r['final_train_accuracy']:.3f} | {r['final_held_out_accuracy']:.3f} | "
                     f"{r['memorization_epoch'] or '-'} | {r['grokking_epoch'] or '-'} | "
                     + (f"diverged in epoch {r['diverged'].get('epoch')} ({r['diverged'].get('reason')}); up to there "
                        f"{'holds' if r['definition_1']['holds'] else 'fails'}" if r.get("diverged") else
                        f"{'holds' if d['holds'] else 'FAILS (' + str(d['n_violating']) + ' steps)'}") + " | "
                     f"{_g(d['gamma_max'])} | {_g(d['dimensionless'])} | {ph} | "
                     f"{'-' if mem is None else ('holds' if mem['holds'] else 'fails')} | "
                     f"{'-' if rnd is None else ('accepted' if rnd['holds'] else 'refused')} | {r['wall_s']:.0f} |")
    for f in report.get("figures", []):
        lines += ["", f"![{f}]({f})"]
    if report.get("not_measured"):
        lines += ["", f"Not measured (yet): {', '.join(report['not_measured'])}."]
    lines += ["", "## Claims", "", "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {c['numbers']} |" for c in report["claims"]]
    lines += ["", "theta* is each run's last iterate unless a column says otherwise; the memorization theta* is "
              "judged on the steps before memorization only. Dropout is off in this suite, so no step draws "
              "random numbers.", ""]
    return "\n".join(lines)


__all__ = ["PRESETS", "Config", "Preset", "claims", "measure_one", "rebuild", "render", "run_suite", "summarize"]
