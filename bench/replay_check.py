"""Train and replay a network on a CIFAR-10 subset; show the bitwise replay check and step times.

This is the device check of the two-pass measurement (deep/measure.py) and of its CUDA graphs
(deep/graphs.py), built so that it cannot pass by accident:

1. a deterministic forward + backward step of every network family (AlexNet, ResNet-18/34,
   VGG-11/16) in ``torch.use_deterministic_algorithms(True)``, since CUDA raises in the
   backward pass of some ops that run fine on the CPU;
2. a measured run (pass 1 + pass 2) of ResNet-18 with a checkpoint every epoch, so the replay is
   compared with pass 1 bit for bit at every epoch and at theta*;
3. with CUDA graphs (on CUDA; ``--cuda-graphs on`` elsewhere, which only the tests' stand-in
   backends make possible), for SGD, SGD with momentum (its first step takes the ``clone`` path,
   later ones ``mul_``) and Adam in its ``capturable`` mode: a run with graphs and the same run
   without (Adam capturable in both, so the graphs are the only difference), whose traces must
   be equal bit for bit, every column of them and of their companions. The check fails unless
   both passes of every graph run report ``cuda-graphs`` as their path, with no fallback, and
   pass 1 captured a graph for the smaller last batch too (a fallback to eager would give eager
   bits on both sides, and pass);
4. the subset must leave a smaller last batch (``--subset`` not a multiple of ``--batch-size``),
   as the paper's 50,000 images do, so that two graphs of different batch sizes interleave;
5. pass 1 and pass 2 ms per step, and their ratio.

The JSON is written after every run (a phase cut by its time limit keeps what finished), with
``complete`` true only at the end, and ``ok`` the verdict.

Usage (from the repository root)::

    python bench/replay_check.py --device cuda --subset 1000 --epochs 8 --out $OUT/replay_check.json
    python bench/replay_check.py --device cpu --width 0.125 --subset 160 --epochs 2 --batch-size 64   # CPU smoke

The JSON it writes holds the device name and library versions with every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deep.env import environment, resolve_device, set_deterministic  # noqa: E402
from deep.measure import CAPTURE_DEVICES, load_companions, measure  # noqa: E402
from deep.models import MODEL_NAMES, build_model, model_for_run  # noqa: E402
from deep.runner import load_train_data  # noqa: E402
from deep.suites import RunSpec  # noqa: E402
from gamma_theory.files import write_json  # noqa: E402
from gamma_theory.optimizers import make_optimizer  # noqa: E402



def deterministic_step_of_every_family(device: torch.device, width: float) -> dict:
    set_deterministic()
    out = {}
    for name in MODEL_NAMES:
        try:
            torch.manual_seed(0)
            m = build_model(name, 10, width=width).to(device)
            if device.type == "cuda":
                m = m.to(memory_format=torch.channels_last)
            x = torch.randn(8, 3, 32, 32, device=device)
            loss = torch.nn.functional.cross_entropy(m(x), torch.arange(8, device=device) % 10)
            loss.backward()
            out[name] = "ok"
        except RuntimeError as exc:  # the point of the check: report, go on
            out[name] = f"FAILED: {str(exc).splitlines()[0]}"
    return out


def _capturable(opt):
    for group in opt.param_groups:
        group["capturable"] = True
    return opt


def measured(spec, data, num_classes, desc, workdir: Path, graphs: bool, capturable: bool = False,
             graphs_backend=None):
    """``(summary, run)`` of one measured run (the runner's model and optimizer for ``spec``;
    ``capturable``: the optimizer in its capturable mode even without graphs); a failure (a
    replay mismatch) is a result here."""
    t0 = time.perf_counter()

    def optimizer_fn(params):
        opt = make_optimizer(spec.optimizer, params, spec.lr)
        return _capturable(opt) if capturable else opt

    try:
        run = measure(lambda: model_for_run(spec, num_classes), optimizer_fn, data, lr=spec.lr, epochs=spec.epochs,
                      batch_size=spec.batch_size, workdir=workdir, seed=spec.seed, data_seed=spec.data_seed,
                      channels_last=data.channels_last, meta={"data": desc, "run": spec.to_dict()}, progress=False,
                      cuda_graphs=graphs, graphs_backend=graphs_backend)
    except Exception as exc:  # noqa: BLE001 - a replay mismatch is a result here, not a crash
        return {"ok": False, "cuda_graphs": graphs, "optimizer": spec.optimizer, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}, None
    meta = run.trace.meta
    p1, p2 = meta["pass1"]["ms_per_step"], meta["pass2"]["ms_per_step"]
    return {
        "ok": True,
        "cuda_graphs": graphs,
        "optimizer": spec.optimizer,
        "capturable": bool(capturable or (graphs and spec.optimizer == "adam")),
        "verified": meta["replay_verified"],
        "checkpoints_compared": meta["setup"]["epochs"] // meta["setup"]["checkpoint_every"],
        "steps": len(run.trace),
        "pass1_ms_per_step": p1,
        "pass2_ms_per_step": p2,
        "pass2_over_pass1": p2 / p1,
        "step_path": {"pass1": meta["pass1"].get("step_path"), "pass2": meta["pass2"].get("step_path")},
        "two_pass_wall_s": time.perf_counter() - t0,
        "data": desc,
        "num_params": meta["num_params"],
    }, run


def graph_path_problems(summary: dict) -> list[str]:
    """Why a run that asked for CUDA graphs did not really run on them (empty: it did): both
    passes must report ``cuda-graphs`` with no fallback, and pass 1 must have captured two graphs
    (the full batch and the smaller last one)."""
    if not summary.get("ok"):
        return [f"the run failed: {summary.get('error')}"]
    out = []
    for p in ("pass1", "pass2"):
        sp = summary["step_path"].get(p) or {}
        if sp.get("path") != "cuda-graphs" or sp.get("fallback"):
            out.append(f"{p} ran {sp.get('path')!r}" + (f" ({sp['fallback']})" if sp.get("fallback") else ""))
        elif not sp.get("replayed_steps"):
            out.append(f"{p} replayed no step")
    g1 = (summary["step_path"].get("pass1") or {}).get("graphs", 0)
    if not out and g1 < 2:
        out.append(f"pass 1 captured {g1} graph(s), not one per batch size (is there a smaller last batch, and "
                   "enough epochs for its warm-up steps?)")
    return out


def compare(a, b) -> dict:
    """Are two measured runs' traces (and their companions) equal bit for bit?"""
    if a is None or b is None:
        return {"bitwise_equal": None, "why": "a run failed"}
    cols = ("loss", "loss_star", "inner", "update_sq", "dist_sq", "grad_inner", "grad_sq")
    differ = []
    pairs = [("theta*", a.trace, b.trace)]
    ca, cb = load_companions(a.workdir, a.trace.meta), load_companions(b.workdir, b.trace.meta)
    pairs += [(name, ca[name], cb.get(name)) for name in ca]
    for name, x, y in pairs:
        for c in cols:
            u, v = getattr(x, c, None), None if y is None else getattr(y, c, None)
            if (u is None) != (v is None) or (u is not None and not np.array_equal(u, v, equal_nan=True)):
                differ.append(f"{name}.{c}")
    return {"bitwise_equal": not differ, "columns_compared": len(pairs) * len(cols), "differ": differ}


#: the graph checks: (name, optimizer, lr)
GRAPH_CHECKS = (("sgd", "sgd", 0.05), ("momentum", "momentum", 0.05), ("adam", "adam", 1e-3))


def verdict(result: dict) -> tuple[bool, list[str]]:
    """``(ok, why not)`` of a result (complete or not)."""
    why = [f"deterministic step of {k}: {v}" for k, v in result.get("deterministic_step", {}).items() if v != "ok"]
    if not result.get("last_batch_smaller", False):
        why.append("the subset leaves no smaller last batch")
    if "replay" not in result:
        why.append("the replay run did not run")
    elif not result["replay"].get("ok"):
        why.append(f"the replay run failed: {result['replay'].get('error')}")
    for name, g in result.get("graphs", {}).items():
        for side in ("with_graphs", "without_graphs"):
            if side in g and not g[side].get("ok"):
                why.append(f"{name} {side.replace('_', ' ')}: {g[side].get('error')}")
        why += [f"{name} with graphs: {p}" for p in g.get("graph_path_problems", [])]
        if g.get("compare", {}).get("bitwise_equal") is False:
            why.append(f"{name}: graphs and eager differ in {', '.join(g['compare']['differ'])}")
    if set(result.get("graphs", {})) != set(result.get("graph_checks", [])):
        why.append("not every graph check ran")
    return not why, why


def main(argv=None, graphs_backend=None) -> int:
    """``graphs_backend``: a factory of a stand-in graph backend (tests: the graph checks on the CPU)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--network", default="resnet18")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--subset", type=int, default=1000, help="images; not a multiple of --batch-size")
    ap.add_argument("--epochs", type=int, default=8,
                    help="enough for the smaller last batch's graph: its warm-up steps, then a capture")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--dataset", default="cifar10-jpeg")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--cuda-graphs", choices=("auto", "on", "off"), default="auto",
                    help="the graph checks: auto (on CUDA), on, off")
    ap.add_argument("--optimizers", nargs="+", choices=[n for n, _, _ in GRAPH_CHECKS],
                    default=[n for n, _, _ in GRAPH_CHECKS], help="the graph checks to run (default: all)")
    ap.add_argument("--out", default=None, help="write the results as JSON here (after every run)")
    args = ap.parse_args(argv)

    dev = resolve_device(args.device)
    graphs = dev.type == "cuda" if args.cuda_graphs == "auto" else args.cuda_graphs == "on"
    if graphs and graphs_backend is None and dev.type not in CAPTURE_DEVICES:
        ap.error(f"--cuda-graphs on: CUDA graphs need a CUDA device, not {dev}")
    result: dict = {"command": " ".join(["python", "bench/replay_check.py", *sys.argv[1:]]),
                    "args": vars(args), "env": environment(dev), "complete": False, "ok": False,
                    "graphs_requested": graphs, "graph_checks": args.optimizers if graphs else [],
                    "last_batch_smaller": args.subset % args.batch_size != 0}

    def save():
        result["ok"], result["why_not"] = verdict(result)
        if args.out:  # atomically, its folder made if needed
            write_json(args.out, result, default=str)

    if not result["last_batch_smaller"]:
        save()
        ap.error(f"--subset {args.subset} is a multiple of --batch-size {args.batch_size}: there would be no smaller "
                 "last batch, so no second graph; take e.g. --subset 1000 with --batch-size 128")
    result["deterministic_step"] = deterministic_step_of_every_family(dev, args.width)
    print("deterministic forward+backward:", result["deterministic_step"], flush=True)
    save()

    data, num_classes, desc = load_train_data(args.dataset, args.subset, dev, args.data_root)
    spec = RunSpec(args.network, "bench", lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                   width=args.width)
    with tempfile.TemporaryDirectory() as tmp:
        result["replay"], _ = measured(spec, data, num_classes, desc, Path(tmp) / "run", False)
        print(f"replay (eager): ok {result['replay']['ok']}", flush=True)
        save()
        result["graphs"] = {}
        for name, opt, lr in [c for c in GRAPH_CHECKS if c[0] in result["graph_checks"]]:
            s = dataclasses.replace(spec, optimizer=opt, lr=lr)
            capturable = opt == "adam"  # Adam with graphs runs capturable: so does its eager twin
            g = result["graphs"][name] = {}
            g["with_graphs"], a = measured(s, data, num_classes, desc, Path(tmp) / f"{name}-graphs", True,
                                           graphs_backend=graphs_backend)
            g["graph_path_problems"] = graph_path_problems(g["with_graphs"])
            save()
            g["without_graphs"], b = measured(s, data, num_classes, desc, Path(tmp) / f"{name}-eager", False,
                                              capturable)
            g["compare"] = compare(a, b)
            if g["compare"].get("bitwise_equal") is not None:
                g["speedup"] = {k: g["without_graphs"][k] / g["with_graphs"][k]
                                for k in ("pass1_ms_per_step", "pass2_ms_per_step")}
            print(f"{name}: graphs vs eager bitwise equal: {g['compare'].get('bitwise_equal')}; graph path: "
                  f"{'; '.join(g['graph_path_problems']) or 'cuda-graphs in both passes'}", flush=True)
            save()
    result["complete"] = True
    save()
    print(json.dumps({k: v for k, v in result.items() if k != "env"}, indent=2, default=str))
    print(f"device: {result['env']['device_name']}, torch {result['env']['torch']}, CUDA {result['env']['cuda']}, "
          f"cuDNN {result['env']['cudnn']}, driver {result['env']['driver']}")
    print("replay_check: " + ("PASS" if result["ok"] else "FAIL: " + "; ".join(result["why_not"])))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
