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

The report's claims (:func:`claims`), each from the run dicts :func:`summarize` writes:

* on the paths, pooled: Definition 1 on the converged runs, phase by phase, and against a random
  theta*; the **gamma-speed identity** (:func:`validation.more_claims.identity_claim`, in its
  eta_k-weighted form for the warm-up): with theta* = the last iterate the (eta_k gap_k)-weighted
  mean gamma *is* ``1 / (2 sum_k eta_k gap_k)``, so "larger gamma, faster" against the end point is
  forced by algebra and is never evidence; and the **related conditions**
  (:func:`gamma_theory.related.related_conditions`) counted over the converged paths;
* per seed, for each knob pair of :data:`PAIRS`: the **speed order** (:data:`SPEED_RULE`: the
  memorization epoch, then the final training loss) and the **gamma order** (does the faster of
  the two have the larger gamma?) in the readings of :data:`READINGS`: against the end point
  (identity-bound; NOT APPLICABLE where a run did not converge or Definition 1 fails) and at
  matched loss (:func:`validation.more_claims.matched_gamma_order_claim`: each variant's gamma on
  its steps until a training loss both reach, a theta* that does not end them, so a reading that
  can fail), raw and x ``||theta_0 - theta*||^2``, Definition 1's largest gamma and the paper's
  median per-step bound; then **gamma tracks speed** (Kendall's tau over the seed's converged
  variants) in the same readings. They are summarized over the seeds by
  :func:`validation.seeds.over_all_seeds` (share of seeds, Clopper-Pearson interval).

:func:`render` writes them under a "Findings" list generated from them, with the per-seed tables,
a table of the events and gammas over seeds (:func:`seed_table`) and the related conditions per run.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats

from gamma_theory import check_trace, definition_1
from gamma_theory.identity import prefix_gammas, speed_identity
from gamma_theory.phases import definition_1_by_phase
from gamma_theory.related import related_conditions
from validation.claims import (FAIL, NA, PASS, RunNumbers, _comparable, _gamma_cell, broken_order, claim_row, fmt,
                               order_margin)
from validation.more_claims import IDENTITY_RTOL, _matched_point, identity_claim, matched_gamma_order_claim
from validation.seeds import over_all_seeds
from validation.util import conditions_note, conditions_table, fmt3, jsonable

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
    layers: int = 1  #: transformer blocks (the registry's ``transformer1`` / ``transformer2``)

    def spec(self) -> dict:
        """The settings as a run's spec (``setup.json``'s ``run``): ``layers`` was added after the
        cpu runs were committed, so it is named only when it is not 1 (those runs keep their setup)."""
        d = asdict(self)
        if d["layers"] == 1:
            del d["layers"]
        return d


@dataclass(frozen=True)
class Preset:
    name: str
    base: Config
    variants: tuple[tuple[str, dict], ...]  #: (name, the settings that differ from the base)
    seeds: int = 3
    note: str = ""
    sized_for: str = "cpu"  #: "cpu" (2 cores, the runs committed here) or "gpu" (one GPU)


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
    # one GPU: Power et al. (2022)'s 2-layer transformer (d_model 128, 4 heads), 1,000 epochs of 8
    # steps. Sized by bench/grokking_sizing.py (plain training, one thread, split and init seed 0,
    # --layers 2 --train-fraction 0.4 --batch 512 --warmup 10): memorized at epoch 300, grokked at 370
    "lite": Preset("lite", Config(layers=2, epochs=1000), _KNOBS, seeds=3, sized_for="gpu",
                   note="sized for one GPU: 2 layers, train fraction 0.4, 1,000 epochs (8,000 steps a run)"),
    # one GPU, hours: 2 layers at train fraction 0.3 for 10,000 epochs (about 60,000 steps, the order
    # of Power et al.'s 10^5). Not sized by a run to its end here: in plain training (as above with
    # --train-fraction 0.3) it memorized at epoch 240, and at epoch 1,000 held-out accuracy was 0.136
    # and rising, so its grokking lies beyond 1,000 epochs; --plan gives the time
    "paper": Preset("paper", Config(train_fraction=0.3, layers=2, epochs=10000), _KNOBS, seeds=3, sized_for="gpu",
                    note="sized for one GPU: 2 layers, train fraction 0.3, 10,000 epochs (60,000 steps a run)"),
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


def model_fn(c: Config, task, seed: int):
    """The run's model: ``transformer<layers>`` of the registry with the knobs of ``c``."""
    def model():
        return build_transformer(f"transformer{c.layers}", vocab_size=task.vocab_size, num_classes=task.num_classes,
                                 seq_len=task.seq_len, norm=c.norm, residual=c.residual, activation=c.activation,
                                 d_model=c.d_model, n_heads=c.n_heads, seed=seed)
    return model


def measure_one(c: Config, seed: int, workdir: Path, progress: bool = False, desc: str = "run",
                random_labels: bool = False, device: str | torch.device = "cpu"):
    """Measure one run of the suite (its split and its model from ``seed``; ``random_labels``: every
    pair's label permuted at random before the split, the skeptic's twin: noise can be memorized,
    never grokked) on ``device`` (the pairs are put there once)."""
    task = modular_addition(p=c.p, train_fraction=c.train_fraction, seed=seed, random_labels=random_labels)
    return measure(model_fn(c, task, seed), _optimizer(c), TensorData(task.x_train, task.y_train, device=device),
                   lr=c.lr, epochs=c.epochs,
                   batch_size=c.batch_size, workdir=workdir, seed=seed, data_seed=seed,
                   held_out=TensorData(task.x_test, task.y_test, device=device), scheduler_fn=_warmup(c.warmup),
                   extras=Extras(events=True, sensitivity=(), record_grad=True),
                   meta={"run": {"suite": "transformer", "seed": seed, **c.spec(),
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
    si = speed_identity(tr, d1.gamma_max).to_dict()
    si["holds"] = si["rel_residual"] is not None and si["rel_residual"] <= IDENTITY_RTOL
    pre = prefix_gammas(tr)
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
        # the knob claims' inputs (claims() reads only these dicts): the path's scale, Fact 1's
        # premise, the gamma-speed identity, both gammas over every whole-epoch prefix (the
        # matched-loss reading) and the related conditions
        "variant": _variant(name), "dist0_sq": float(tr.dist0_sq), "min_gap": float(tr.gap.min()),
        "n_negative_gap": int((tr.gap < 0).sum()),
        "speed_identity": jsonable(si),
        "prefix": jsonable({"steps": pre.steps, "epoch_loss": pre.epoch_loss, "gamma_max_x_d0": pre.gamma_max_x_d0,
                             "median_x_d0": pre.median_x_d0}),
        "related": jsonable([c.to_dict() for c in related_conditions(tr)]),
    }


def run_suite(preset: str, out: str | Path, seeds: int | None = None, progress: bool = True,
              random_labels: bool = False, measure_missing: bool = True, device: str = "cpu") -> dict:
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
        run = measure_one(c, seed, workdir, progress, name, random_labels, device)
        wall = run.meta.get("pass1", {}).get("wall_s", 0.0) + run.meta.get("pass2", {}).get("wall_s", 0.0)
        if run.trace is None:
            runs.append({"name": name, "variant": vname, "seed": seed, "config": asdict(c), "diverged": run.diverged})
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
              "not_measured": [f"{v}-s{s}" for s, v, _ in todo if f"{v}-s{s}" not in done]}
    per_seed = per_seed_claims(runs)
    report["claims"] = claims(runs, per_seed)
    report["claims_per_seed"] = {f"s{s}": c for s, c in per_seed.items()}
    report["over_seeds"] = seed_table(runs)
    from validation.grok_figure import plot_suite

    report["figures"] = [str(p.relative_to(folder)) for p in plot_suite(runs, traces, folder)] if traces else []
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=_json) + "\n")
    (folder / "report.md").write_text(render(report))
    return report


# -- the claims ------------------------------------------------------------------------------------
class Pair(NamedTuple):
    """One knob comparison: the technique, the variant without it, and what the paper says."""

    knob: str
    technique: str  #: the variant with the technique (the base where the base has it)
    without: str  #: the variant without it
    label: str  #: how the report names the pair
    paper: str  #: what the paper says of this pair
    paper_order: bool  #: the paper states that the technique is faster, with the larger gamma


#: the knob comparisons. Theorem 1's direction (the faster variant has the larger gamma) is decided
#: for every pair; the speed order is stated as "the technique is faster", which the paper claims
#: only where ``paper_order``.
_BN = "the paper: normalization (BN) speeds training and gives the larger gamma (Sec. 3.2)"
PAIRS = (
    Pair("norm", "norm-post", "base", "norm post-LN vs none", _BN, True),
    Pair("norm", "norm-pre", "base", "norm pre-LN vs none", _BN, True),
    Pair("residual", "base", "residual-none", "residual all vs none",
         "the paper: more skip connections, faster and a larger gamma (Sec. 3.3)", True),
    Pair("activation", "base", "gelu", "activation ReLU vs GELU",
         "the paper states no order: its ReLU-type activations share one group (Sec. 3.1); ReLU is the base here",
         False),
    Pair("optimizer", "base", "adam", "optimizer AdamW vs Adam",
         "the paper states no order: it has no weight-decay comparison; AdamW wd 1.0 is the base (the grokking "
         "switch)", False),
    Pair("optimizer", "base", "momentum", "optimizer AdamW vs SGD-momentum",
         "the paper: Adam faster than SGD-momentum, with the larger gamma (Sec. 4; at one lr, 1e-3 vs 0.5 here)", True),
    Pair("optimizer", "base", "sgd", "optimizer AdamW vs SGD",
         "the paper: Adam faster than SGD, with the larger gamma (Sec. 4; at one lr, 1e-3 vs 0.5 here)", True),
    Pair("warmup", "base", "warmup-off", "warm-up on vs off",
         "the paper states no order (it has no warm-up comparison); a warm-up is the base here", False),
)
#: the gamma readings of a pair and of "gamma tracks speed": (where theta* is, form, which gamma:
#: "theory" Definition 1's largest gamma, "paper" the median per-step bound the paper plots)
READINGS = (("end point", "raw", "theory"), ("end point", "x dist0^2", "theory"), ("matched loss", "raw", "theory"),
            ("matched loss", "x dist0^2", "theory"), ("matched loss", "raw", "paper"),
            ("matched loss", "x dist0^2", "paper"))
NETWORK = "transformer"
SPEED_RULE = ("speed = the epoch at which the iterate first fits the training set (memorization); a variant that "
              "never memorizes is slower than one that does, and the final training loss decides between two that "
              "memorize in the same epoch or that never memorize; a diverged variant is the slowest")
END_POINT_NOTE = ("theta* = each run's last iterate: IDENTITY-BOUND (with theta* ending the path the gap-weighted mean "
                  "gamma equals 1 / (2 sum_k eta_k gap_k) by algebra, so an end-point gamma order agreeing with speed "
                  "is largely that algebra, not evidence)")
MATCHED_NOTE = ("each variant's gamma over its steps until it first reaches the lowest epoch-mean "
                "training loss both reach, against its own last iterate: a theta* that does not end the steps "
                "judged, so no identity forces it: this reading CAN FAIL")


def _variant(name: str) -> str:
    return name.rsplit("-s", 1)[0]


def _measured(r: dict | None) -> bool:
    return r is not None and "definition_1" in r


def _run_numbers(r: dict) -> RunNumbers:
    """One run of this suite as :class:`validation.claims.RunNumbers`, the view the CIFAR claims
    read (their speed, the mean training loss, is not this suite's and is left unset)."""
    variant = r.get("variant") or _variant(r["name"])
    if not _measured(r):
        return RunNumbers(NETWORK, variant, "diverged", seed=r["seed"], name=r["name"])
    d, si = r["definition_1"], r.get("speed_identity") or {}
    return RunNumbers(NETWORK, variant, "diverged" if r.get("diverged") else "ok", converged=r["converged"],
                      d1_holds=d["holds"], gamma_theory=d["gamma_max"],
                      dist0=math.sqrt(r["dist0_sq"]) if r.get("dist0_sq") is not None else None,
                      share_positive=d.get("share_positive"), min_gap=r.get("min_gap"), seed=r["seed"],
                      n_steps=r.get("steps", 0), n_violating=d["n_violating"],
                      identity_residual=si.get("rel_residual"), ends_at_star=bool(si.get("ends_at_star")),
                      end_ratio=si.get("end_ratio"), gamma_max_over_bar=si.get("gamma_max_over_bar"),
                      prefix=r.get("prefix"), name=r["name"], n_negative_gap=r.get("n_negative_gap", 0),
                      gamma_bar=si.get("gamma_bar"))


def speed_key(r: dict | None) -> tuple | None:
    """A run's speed as a sort key, lower is faster (:data:`SPEED_RULE`); None: no run."""
    if r is None:
        return None
    if r.get("memorization_epoch") is not None:
        loss = r.get("final_train_loss")
        return (0, r["memorization_epoch"], loss if loss is not None and math.isfinite(loss) else math.inf)
    if r.get("diverged") or not _measured(r):
        return (2,)
    return (1, r["final_train_loss"])


def speed_text(r: dict) -> str:
    """The numbers behind a run's speed key."""
    div = r.get("diverged")
    tail = f"; diverged in epoch {div.get('epoch')}" if div else ""
    if not _measured(r):
        return "diverged before its trace" + tail
    if r.get("memorization_epoch") is not None:
        acc = "" if r["converged"] else f", final train acc {r['final_train_accuracy']:.3f}"
        loss = fmt(r["final_train_loss"])
        return f"memorized at epoch {r['memorization_epoch']} (final train loss {loss}{acc}){tail}"
    return (f"never memorized (final train acc {r['final_train_accuracy']:.3f}, final train loss "
            f"{fmt(r['final_train_loss'])}){tail}")


def _pair_label(pair: Pair) -> str:
    return pair.label


def _faster(pair, runs: dict[str, dict]):
    """(faster, slower) of the pair's two variants in ``runs`` (one seed), or a reason why not."""
    a, b = pair.technique, pair.without
    missing = [v for v in (a, b) if v not in runs]
    if missing:
        return None, f"no measured run for {', '.join(missing)}"
    ka, kb = speed_key(runs[a]), speed_key(runs[b])
    if ka == kb:
        return None, f"a tie: {a} {speed_text(runs[a])}; {b} {speed_text(runs[b])}"
    return ((a, b) if ka < kb else (b, a)), ""


def speed_order_claim(pair, runs: dict[str, dict]) -> dict:
    """The technique of ``pair`` trains faster than the variant without it (one seed's runs by
    variant)."""
    a, b = pair.technique, pair.without
    name = f"{_pair_label(pair)}: speed order"
    statement = f"{pair.knob}: {a} trains faster than {b} ({SPEED_RULE}). {pair.paper[0].upper() + pair.paper[1:]}"
    order, why = _faster(pair, runs)
    numbers = {v: speed_text(runs[v]) for v in (a, b) if v in runs}
    if order is None:
        return claim_row(name, "order", statement, NA, numbers, why)
    fast, slow = order
    numbers["faster"] = fast
    ea, eb = runs[a].get("memorization_epoch"), runs[b].get("memorization_epoch")
    margin = eb - ea if ea is not None and eb is not None else None
    if margin is not None:
        numbers["epochs saved by the faster"] = abs(margin)
    text = f"{fast} is faster: {fast} {speed_text(runs[fast])}; {slow} {speed_text(runs[slow])}"
    return {**claim_row(name, "order", statement, PASS if fast == a else FAIL, numbers, text), "margin": margin}


def _not_comparable(v: str, r: dict | None, why: str) -> str:
    """Why a variant's end-point gamma is not compared, with its numbers."""
    if _measured(r) and "Definition 1 fails" in why:
        return f"{v}: Definition 1 fails ({r['definition_1']['n_violating']} steps break inequality (2))"
    if _measured(r) and why == "did not converge":
        return f"{v}: did not converge (final train acc {r['final_train_accuracy']:.3f})"
    return f"{v}: {why}"


def _direction(pair: Pair, fast: str, larger: bool) -> str:
    """How one seed's verdict reads against the paper's direction (the technique speeds training
    and has the larger gamma), where the paper states one for the pair."""
    size = "larger" if larger else "smaller"
    if not pair.paper_order:
        return f"the faster ({fast}) has the {size} gamma; the paper states no order for this pair"
    if fast == pair.technique:
        return (f"the technique ({fast}) is the faster and has the {size} gamma: the paper's direction "
                f"{'holds' if larger else 'is REVERSED'}")
    return (f"the technique ({pair.technique}) is the slower here, against the paper's speed order; the faster "
            f"({fast}) has the {size} gamma")


def _what(form: str, reading: str) -> str:
    g = ("Definition 1's largest gamma" if reading == "theory"
         else "the median per-step gamma bound (the paper's curves)")
    return g + ("" if form == "raw" else " x ||theta_0 - theta*||^2")


def _reading_name(where: str, form: str, reading: str) -> str:
    return f"{where}{'' if reading == 'theory' else ', median'}, {form}"


def _lr(r: dict) -> float | None:
    return (r.get("config") or {}).get("lr")


def _eta_scaled(values: dict[str, float], runs: dict[str, dict]) -> tuple[dict[str, float], str]:
    """Where the compared variants' learning rates differ, their gammas times eta (Theorem 1 item 3
    bounds the mean accumulated gap by 1 / (2 eta gamma K): with different learning rates it is the
    product that goes with speed, and gamma scales like 1/eta for the same displacement), with what
    the row says of it; otherwise the gammas unchanged."""
    lrs = {v: _lr(runs[v]) for v in values}
    if len(set(lrs.values())) <= 1 or None in lrs.values():
        return values, ""
    return ({v: g * lrs[v] for v, g in values.items()},
            "learning rates differ (" + ", ".join(f"{v} {lr:g}" for v, lr in lrs.items()) + "): compared as eta x "
            "gamma, the product Theorem 1 item 3 ties to speed; ")


def gamma_order_claim(pair, runs: dict[str, dict], where: str, form: str, reading: str = "theory") -> dict:
    """Does the faster variant of ``pair`` (by :func:`speed_key`) have the larger gamma? ``where``:
    "end point" (Definition 1's gamma_max against each run's last iterate, both runs converged:
    theory reading only) or "matched loss"
    (:func:`validation.more_claims.matched_gamma_order_claim` decides whether it applies, and its
    gammas are compared); ``form``: "raw" or "x dist0^2"; ``reading``: "theory" (Definition 1's
    largest gamma) or "paper" (the median per-step bound). Where the two learning rates differ, eta
    x gamma is compared (:func:`_eta_scaled`)."""
    a, b = pair.technique, pair.without
    name = f"{_pair_label(pair)}: gamma order ({_reading_name(where, form, reading)})"
    statement = (f"{pair.knob} ({a} vs {b}): the faster of the two (its speed order) has the larger "
                 f"{_what(form, reading)} (Theorem 1 item 3: larger gamma, faster; eta x gamma where the learning "
                 "rates differ); " + (END_POINT_NOTE if where == "end point" else MATCHED_NOTE))
    order, why = _faster(pair, runs)
    if order is None:
        return claim_row(name, "order", statement, NA, {}, f"no speed order to compare with: {why}")
    fast, slow = order
    rn = {v: _run_numbers(runs[v]) for v in (a, b)}
    if where == "matched loss":
        c = matched_gamma_order_claim(NETWORK, [[slow], [fast]], rn, reading, form)
        numbers = {"faster": fast, **c["numbers"]}
        for v in (fast, slow):
            if runs[v].get("converged") is False:
                numbers[v] = f"{numbers.get(v, 'n/a')}; did not converge"
        if c["verdict"] == NA:
            return claim_row(name, "order", statement, NA, numbers, c["why"])
        level = max(min(rn[v].prefix["epoch_loss"]) for v in (fast, slow))  # the claim's matched loss
        values = {v: _matched_value(rn[v], level, reading, form) for v in (fast, slow)}
        at = f" at matched loss {c['numbers']['matched loss']}"
    else:
        values, why_not = _comparable([slow, fast], rn, reading)
        numbers = {"faster": fast, **{v: _gamma_cell(rn[v], reading, why_not.get(v)) for v in (fast, slow)}}
        if why_not:
            return claim_row(name, "order", statement, NA, numbers, "not comparable: "
                             + "; ".join(_not_comparable(v, runs[v], w) for v, w in why_not.items()))
        if form != "raw":
            values = {v: runs[v]["definition_1"]["dimensionless"] for v in values}
        at = ""
    values, scaled = _eta_scaled(values, runs)
    if scaled:
        numbers["compared"] = "eta x gamma"
    groups = [[slow], [fast]]
    margin = order_margin(groups, values, larger_is_better=True)
    ok = not broken_order(groups, values, larger_is_better=True)
    text = (f"{scaled}{'the faster has the larger gamma' if ok else 'REVERSED: the faster has the smaller gamma'}: "
            f"{fast} {fmt(values[fast])} vs {slow} {fmt(values[slow])}{at}; " + _direction(pair, fast, ok))
    return {**claim_row(name, "order", statement, PASS if ok else FAIL, numbers, text), "margin": margin,
            "values": {fast: values[fast], slow: values[slow]}}


def _matched_value(r: RunNumbers, level: float, reading: str, form: str) -> float | None:
    """``r``'s gamma over its steps until it first reaches ``level`` (the prefix
    :func:`validation.more_claims.matched_gamma_order_claim` reads, found the same way)."""
    g = r.prefix["gamma_max_x_d0" if reading == "theory" else "median_x_d0"][_matched_point(r, level)]
    return g if g is None or form != "raw" else g / r.dist0**2


def tracks_speed_claim(runs: dict[str, dict], where: str, form: str, reading: str = "theory") -> dict:
    """Among one seed's converged variants, the ranking by gamma is the ranking by speed
    (Kendall's tau = 1); descriptive, no p-value (as :func:`validation.claims.agreement_claim`)."""
    bound = "identity-bound" if where == "end point" else "can fail"
    name = f"gamma tracks speed ({_reading_name(where, form, reading)}; {bound})"
    statement = (f"among one seed's converged variants, ranking by {_what(form, reading)} gives the ranking by speed "
                 f"({SPEED_RULE}); " + (END_POINT_NOTE if where == "end point"
                                        else MATCHED_NOTE.replace("both reach", "all reach")))
    conv = {v: r for v, r in runs.items() if _measured(r) and r["converged"]}
    values, left_out, numbers = {}, [], {}
    if where == "end point":
        for v, r in conv.items():
            g = r["definition_1"]["gamma_max" if form == "raw" else "dimensionless"]
            if g is None:
                left_out.append(f"{v} (Definition 1 fails: {r['definition_1']['n_violating']} steps)")
            else:
                values[v] = g
    elif conv:
        rn = {v: _run_numbers(r) for v, r in conv.items()}
        if any(x.prefix is None for x in rn.values()):
            return claim_row(name, "agreement", statement, NA, {}, "no prefix gammas in these runs")
        level = max(min(x.prefix["epoch_loss"]) for x in rn.values())
        first = max(x.prefix["epoch_loss"][0] for x in rn.values())
        numbers["matched loss"] = fmt(level)
        if not level < 0.5 * first:
            return claim_row(name, "agreement", statement, NA, numbers,
                             f"the loss every converged variant reaches ({fmt(level)}) is not below half the first "
                             f"epoch's ({fmt(first)})")
        for v, x in rn.items():
            g = _matched_value(x, level, reading, form)
            if g is None:
                left_out.append(f"{v} (no gamma fits its first {_matched_point(x, level) + 1} epochs)"
                                if reading == "theory" else f"{v} (no positive-gap step)")
            else:
                values[v] = g
    numbers.update({v: f"gamma {fmt(g)}, {speed_text(conv[v])}" for v, g in values.items()})
    values, scaled = _eta_scaled(values, conv)
    if scaled:
        numbers["compared"] = "eta x gamma"
    out = f" ({'; '.join(left_out)}: left out)" if left_out else ""
    if len(values) < 2:
        return claim_row(name, "agreement", statement, NA, numbers,
                         f"fewer than 2 comparable variants of {len(conv)} converged{out}")
    keys = sorted({speed_key(conv[v]) for v in values})
    v = list(values)
    g, s = [values[x] for x in v], [-keys.index(speed_key(conv[x])) for x in v]  # larger = faster
    if len(set(g)) == 1 or len(set(s)) == 1:
        return claim_row(name, "agreement", statement, NA, numbers, "ties: nothing to rank")
    tau = float(stats.kendalltau(g, s).statistic)
    numbers["kendall_tau"] = round(tau, 3)
    order = ", ".join(f"{x} {fmt(values[x])}" for x in sorted(v, key=lambda x: speed_key(conv[x])))
    return {**claim_row(name, "agreement", statement, PASS if tau == 1.0 else FAIL, numbers,
                        f"{scaled}tau = {tau:.2f} over {len(values)} variants (fastest first: {order}){out}"),
            "margin": tau,
            "compared": sorted(v, key=lambda x: speed_key(conv[x]))}


def identity_row(runs: list[dict]) -> dict:
    """:func:`validation.more_claims.identity_claim` on this suite's traces (a warm-up schedule:
    the eta_k gap_k-weighted form), with the order it forces: per seed, ranking the runs by the
    gap-weighted mean gamma is ranking them by 1 / (2 sum_k eta_k gap_k)."""
    rows = [r for r in runs if _measured(r) and r.get("speed_identity")]
    c = identity_claim([_run_numbers(r) for r in rows])
    c["statement"] = ("with theta* = theta_K (the last iterate, or any theta* that ends the steps it judges), the "
                      "recording identity telescopes to sum_k eta_k num_k = ||theta_0 - theta*||^2 / 2 exactly, so the "
                      "(eta_k gap_k)-weighted mean of the per-step gammas is 1 / (2 sum_k eta_k gap_k): ordering runs "
                      "by that mean gamma IS ordering them by their accumulated loss gap, whatever the network does, "
                      "and Theorem 1 item 3 at the whole run cannot fail once Definition 1 holds. So 'larger gamma, "
                      "faster' against the end point is forced: a consequence, checked on every trace, not evidence")
    ends = [r for r in rows if r["speed_identity"].get("ends_at_star") and r["speed_identity"].get("gamma_bar")]
    taus = {}
    for seed in sorted({r["seed"] for r in ends}):
        mine = [r["speed_identity"] for r in ends if r["seed"] == seed]
        if len(mine) >= 2:
            taus[seed] = (float(stats.kendalltau([x["gamma_bar"] for x in mine],
                                                 [x["predicted"] for x in mine]).statistic), len(mine))
    if taus:
        c["numbers"]["order by mean gamma = order by 1 / (2 sum eta_k gap_k)"] = "; ".join(
            f"s{s}: tau {t:.3g} over {n} runs" for s, (t, n) in taus.items())
        if c["verdict"] == PASS and any(t < 1.0 for t, _ in taus.values()):
            c = {**c, "verdict": FAIL, "why": c["why"] + "; yet the order it forces does not hold"}
    return c


def related_claim(runs: list[dict]) -> dict:
    """The related conditions of :mod:`gamma_theory.related` on the converged paths, counted per
    condition."""
    name = "the related conditions hold on converged paths"
    statement = ("each related condition (gamma_theory/related.py: regularity, star-convex path, RSI, alpha-beta, "
                 "Definition 1 with the gradient) holds on every converged run's path, against its last iterate")
    conv = [r for r in runs if _measured(r) and r["converged"] and r.get("related")]
    if not conv:
        return claim_row(name, "observation", statement, NA, {}, "no converged run with the related conditions")
    names = list(dict.fromkeys(c["condition"] for r in conv for c in r["related"]))
    numbers, everywhere, some = {}, [], []
    for n in names:
        judged = [c for r in conv for c in r["related"] if c["condition"] == n and c["holds"] is not None]
        k = sum(1 for c in judged if c["holds"])
        numbers[n] = f"{k} of {len(judged)}"
        (everywhere if judged and k == len(judged) else some).append(f"{n} ({k} of {len(judged)})")
    ok = not some
    why = (f"all hold on all {len(conv)} converged paths" if ok else
           f"of {len(conv)} converged paths: " + (f"hold on every one: {', '.join(everywhere)}; " if everywhere else "")
           + f"fail on some: {', '.join(some)}")
    return claim_row(name, "observation", statement, PASS if ok else FAIL, numbers, why)


def per_seed_claims(runs: list[dict]) -> dict[int, list[dict]]:
    """The claims decided within one seed: per knob pair its speed order and its gamma order in
    every reading, then "gamma tracks speed" in every reading."""
    present = {r.get("variant") or _variant(r["name"]) for r in runs}
    pairs = [p for p in PAIRS if p.technique in present and p.without in present]
    out = {}
    for seed in sorted({r["seed"] for r in runs}):
        mine = {r.get("variant") or _variant(r["name"]): r for r in runs if r["seed"] == seed}
        cl = []
        for p in pairs:
            cl.append(speed_order_claim(p, mine))
            cl += [gamma_order_claim(p, mine, *r) for r in READINGS]
        cl += [tracks_speed_claim(mine, *r) for r in READINGS]
        out[seed] = cl
    return out


def claims(runs: list[dict], per_seed: dict[int, list[dict]] | None = None) -> list[dict]:
    """The paper's claims, in this suite's terms, decided over the runs measured: the principle on
    the paths (pooled), the gamma-speed identity and the related conditions (pooled), then the
    per-seed claims (:func:`per_seed_claims`) summarized over the seeds
    (:func:`validation.seeds.over_all_seeds`: with one seed, that seed's)."""
    per_seed = per_seed_claims(runs) if per_seed is None else per_seed
    out = _path_claims(runs)
    out.append(identity_row(runs))
    out.append(related_claim(runs))
    return out + (over_all_seeds(per_seed) if per_seed else [])


def seed_table(runs: list[dict]) -> dict[str, dict]:
    """Per variant, over its seeds: the memorization and grokking epochs and the gamma readings
    (mean, range and how many seeds have the number)."""
    out = {}
    for v in dict.fromkeys(r.get("variant") or _variant(r["name"]) for r in runs):
        mine = [r for r in runs if (r.get("variant") or _variant(r["name"])) == v]
        row = {"seeds": [r["seed"] for r in mine]}
        for key, get in (("memorization_epoch", lambda r: r.get("memorization_epoch")),
                         ("grokking_epoch", lambda r: r.get("grokking_epoch")),
                         ("gamma_max", lambda r: r["definition_1"]["gamma_max"] if _measured(r) else None),
                         ("gamma_max_x_dist0_sq",
                          lambda r: r["definition_1"]["dimensionless"] if _measured(r) else None),
                         ("gamma_bar", lambda r: (r.get("speed_identity") or {}).get("gamma_bar"))):
            xs = [float(x) for x in map(get, mine) if x is not None]
            row[key] = {"n": len(xs), "of": len(mine), "values": xs,
                        **({"mean": float(np.mean(xs)), "min": min(xs), "max": max(xs)} if xs else {})}
        out[v] = row
    return out


def _path_claims(runs: list[dict]) -> list[dict]:
    """Definition 1 on the paths: on the converged ones, phase by phase, and against a random theta*."""
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


def _md(x) -> str:
    """A table cell: a claim's numbers (a dict or a string) as text, its pipes escaped."""
    text = "; ".join(f"{k}: {v}" for k, v in x.items()) if isinstance(x, dict) else str(x)
    return text.replace("|", "\\|")


def _identity_cell(r: dict) -> str:
    si = r.get("speed_identity")
    if not si or si.get("rel_residual") is None:
        return "n/a"
    return f"{'yes' if si['holds'] else 'NO'} ({fmt3(si['rel_residual'])})"


def _is_gamma_order(c: dict) -> bool:
    return ": gamma order (" in c["claim"]


def _why_na(c: dict) -> str:
    """The kind of reason a gamma order is NOT APPLICABLE, for the findings' count."""
    w = c["why"]
    for key, label in (("Definition 1 fails", "Definition 1 fails on a run (end point)"),
                       ("no gamma fits", "no gamma fits a run's steps to the matched loss"),
                       ("did not converge", "a run did not converge"), ("diverged", "a run diverged"),
                       ("not below half", "the pair shares no stretch of progress (matched loss)"),
                       ("no speed order", "no speed order")):
        if key in w:
            return label
    return w


def _short(c: dict, seed: str) -> str:
    """A decided gamma order in a few words: the reading, the seed, faster vs slower with their gammas."""
    reading = c["claim"].split(": gamma order (", 1)[1].rstrip(")")
    v = c.get("values") or {}
    fast = (c["numbers"] or {}).get("faster")
    pair = " vs ".join(f"{x} {fmt(g)}" for x, g in sorted(v.items(), key=lambda kv: kv[0] != fast))
    eta = " (eta x gamma: the learning rates differ)" if (c["numbers"] or {}).get("compared") else ""
    return f"{c['claim'].split(': gamma order')[0]} ({reading}, {seed}): faster {pair}{eta}"


def findings(report: dict) -> list[str]:
    """The report's findings, built from its claims alone (no number written by hand), the
    surprising first: how many gamma orders could be decided and which reversed the paper's
    direction, speed orders against the technique, "gamma tracks speed" where a reading that can
    fail decided it, then the pooled claims."""
    per = report.get("claims_per_seed") or {}
    seeds = list(per)
    out = []
    gam = [(s, c) for s, cs in per.items() for c in cs if _is_gamma_order(c)]
    if gam:
        na = [c for _, c in gam if c["verdict"] == NA]
        why: dict[str, int] = {}
        for c in na:
            why[_why_na(c)] = why.get(_why_na(c), 0) + 1
        rev = [(s, c) for s, c in gam if c["verdict"] == FAIL]
        held = [(s, c) for s, c in gam if c["verdict"] == PASS]
        by: dict[str, list[int]] = {}
        for _, c in gam:
            r = c["claim"].split(": gamma order (", 1)[1].rstrip(")")
            by.setdefault(r, [0, 0, 0])[[PASS, FAIL, NA].index(c["verdict"])] += 1
        out.append(f"**{len(gam) - len(na)} of {len(gam)} per-seed gamma orders could be decided: {len(held)} with the "
                   f"faster variant's gamma the larger, {len(rev)} REVERSED**; by reading: "
                   + "; ".join(f"{r}: {p} hold, {f} reversed, {n} not applicable" for r, (p, f, n) in by.items())
                   + ". Not applicable: " + "; ".join(f"{k} ({n})" for k, n in sorted(why.items(), key=lambda x: -x[1]))
                   + ".")
        if rev:
            out.append("**Reversals** (the faster variant of the pair has the smaller gamma): "
                       + "; ".join(_short(c, s) for s, c in rev) + ".")
        if held:
            out.append("Orders that hold (the faster has the larger gamma): " + "; ".join(_short(c, s) for s, c in held)
                       + ".")
    speed = [c for c in report["claims"] if c["claim"].endswith(": speed order")]
    for c in speed:
        if c["verdict"] == FAIL:
            cs = {s: x for s in seeds for x in per[s] if x["claim"] == c["claim"]}
            out.append(f"**{c['claim']}: FAIL**, " + "; ".join(f"{s} {x['verdict']}: {x['why']}" for s, x in cs.items())
                       + ".")
    ok = [c["claim"].removesuffix(": speed order") for c in speed if c["verdict"] == PASS]
    if ok:
        out.append(f"The technique trains faster in every seed for: {', '.join(ok)} (epochs in the per-knob table).")
    tracks = list(dict.fromkeys(c["claim"] for cs in per.values() for c in cs if c["claim"].startswith("gamma tracks")))
    for n in tracks:
        cs = {s: x for s in seeds for x in per[s] if x["claim"] == n}
        if any(x["verdict"] != NA for x in cs.values()):
            out.append(f"{n}: " + "; ".join(
                f"{s} {x['verdict']}" + (f" (tau {fmt(x['margin'])} over {len(x['compared'])}: "
                                         f"{', '.join(x['compared'])})" if x.get("compared") else "")
                for s, x in cs.items()) + ".")
    for c in report["claims"]:
        if c.get("kind") in (None, "consequence", "observation"):
            out.append(f"{c['claim']}: **{c['verdict']}** ({_md(c.get('why') or c['numbers'])}).")
    return out


def _per_seed_table(report: dict, names: list[str], first: str, label) -> list[str]:
    """One row per claim name, one column per seed (its verdict and why), and the summary over the
    seeds when there are several."""
    per = report.get("claims_per_seed") or {}
    seeds = list(per)
    summary = {c["claim"]: c for c in report["claims"]}
    many = len(seeds) > 1
    lines = [f"| {first} | " + " | ".join(seeds) + (" | over seeds |" if many else " |"),
             "|---|" + "---|" * (len(seeds) + many)]
    for n in names:
        cells = []
        for s in seeds:
            c = next((x for x in per[s] if x["claim"] == n), None)
            cells.append("-" if c is None else _md(f"**{c['verdict']}**: {c['why']}"))
        if many and n in summary:
            cells.append(_md(f"**{summary[n]['verdict']}**: {summary[n]['why']}"))
        lines.append(f"| {label(n)} | " + " | ".join(cells) + " |")
    return lines


def _spread(x: dict, digits=None) -> str:
    if not x["n"]:
        return f"- (0 of {x['of']})"
    f = (lambda v: f"{v:.0f}") if digits == 0 else fmt3
    rng = f"{f(x['mean'])} [{f(x['min'])}, {f(x['max'])}]" if x["n"] > 1 else f(x["mean"])
    return f"{rng} ({x['n']} of {x['of']})"


def render(report: dict) -> str:
    lines = [f"# Transformer suite, preset {report['preset']}: modular addition through grokking"
             + (" (RANDOM LABELS: the skeptic's twin)" if report.get("labels") == "random" else ""), ""]
    if report["note"]:
        lines += [f"Preset note: {report['note']}.", ""]
    lines += ["Question: does every update of a transformer's training point toward the final minimizer "
              "strongly enough (Definition 1), before memorization, between memorization and grokking, and after? "
              "And does the faster variant of each knob have the larger gamma?", ""]
    found = findings(report) if report.get("claims") else []
    if found:
        lines += ["## Findings", "", "Generated from the claims below (the surprising first).", ""]
        lines += [f"- {x}" for x in found] + [""]
    lines += ["## Runs", "", "| run | train acc | held-out acc | memorized | grokked | Definition 1 | gamma_max | "
              "gamma x dist0^2 | phases (holds) | vs memorization theta* | vs random theta* | gamma-speed identity "
              "(residual) | wall s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        if "definition_1" not in r:
            lines.append(f"| {r['name']} | diverged: {r['diverged']} ||||||||||||")
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
                     f"{'-' if rnd is None else ('accepted' if rnd['holds'] else 'refused')} | {_identity_cell(r)} | "
                     f"{r['wall_s']:.0f} |")
    for f in report.get("figures", []):
        lines += ["", f"![{f}]({f})"]
    if report.get("not_measured"):
        lines += ["", f"Not measured (yet): {', '.join(report['not_measured'])}."]
    lines += ["", "## Claims", "", "Claims decided within a seed are summarized over the seeds (share of seeds, 95% "
              "Clopper-Pearson interval; PASS when it holds in every seed where it can be decided); their seed-by-"
              "seed verdicts are in the next sections.", "", "| claim | verdict | numbers | why |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {_md(c['numbers'])} | {_md(c.get('why', ''))} |"
              for c in report["claims"]]
    per = report.get("claims_per_seed") or {}
    names = list(dict.fromkeys(c["claim"] for cs in per.values() for c in cs))
    knob = [n for n in names if not n.startswith("gamma tracks speed")]
    if knob:
        lines += ["", "## Per-knob orders, seed by seed", "",
                  f"Speed: {SPEED_RULE}. Each gamma order asks whether the faster of the pair (as that seed's speed "
                  "order says) has the larger gamma. End point: " + END_POINT_NOTE + ". Matched loss: " + MATCHED_NOTE
                  + ". The gamma is Definition 1's largest feasible gamma on those steps, or, in the rows marked "
                  "median, the median per-step upper bound the paper plots (decidable where Definition 1 fails); raw, "
                  "or x ||theta_0 - theta*||^2 (the variants' distances differ, so the two forms can disagree)"
                  + ". A variant that did not converge, or on whose path Definition 1 fails (no gamma > 0 fits "
                  "every step), makes the end-point order NOT APPLICABLE; a reversal is a FAIL and is reported.", ""]
        lines += _per_seed_table(report, knob, "comparison", lambda n: n)
    tracks = [n for n in names if n.startswith("gamma tracks speed")]
    if tracks:
        lines += ["", "## gamma tracks speed, seed by seed", "",
                  "Kendall's tau between speed and gamma over one seed's converged variants (tau = 1: PASS). The "
                  "end-point readings are identity-bound; the matched-loss readings can fail.", ""]
        lines += _per_seed_table(report, tracks, "reading", lambda n: n)
    table = report.get("over_seeds") or {}
    if table:
        lines += ["", "## Over seeds, per variant", "",
                  "Mean [min, max] over the seeds that have the number (how many of the seeds measured).", "",
                  "| variant | seeds | memorized (epoch) | grokked (epoch) | gamma_max | gamma x dist0^2 | "
                  "gap-weighted mean gamma (the identity's) |", "|---|---|---|---|---|---|---|"]
        for v, row in table.items():
            lines.append(f"| {v} | {', '.join(f's{s}' for s in row['seeds'])} | "
                         f"{_spread(row['memorization_epoch'], 0)} | {_spread(row['grokking_epoch'], 0)} | "
                         f"{_spread(row['gamma_max'])} | {_spread(row['gamma_max_x_dist0_sq'])} | "
                         f"{_spread(row['gamma_bar'])} |")
    rel = [(r["name"], r["related"]) for r in report["runs"] if r.get("related")]
    if rel:
        lines += ["", "## Related conditions per run", "", conditions_note(), ""] + conditions_table(rel)
    lines += ["", "theta* is each run's last iterate unless a column says otherwise; the memorization theta* is "
              "judged on the steps before memorization only. Dropout is off in this suite, so no step draws "
              "random numbers.", ""]
    return "\n".join(lines)


__all__ = ["PAIRS", "PRESETS", "Pair", "READINGS", "Config", "Preset", "claims", "findings", "gamma_order_claim",
           "identity_row", "measure_one", "per_seed_claims", "rebuild", "related_claim", "render", "run_suite",
           "seed_table", "speed_key", "speed_order_claim", "summarize", "tracks_speed_claim"]
