"""Train and replay a network on a CIFAR-10 subset; show the bitwise replay check and step times.

This is the device check of the two-pass measurement (deep/measure.py) and of its CUDA graphs
(deep/graphs.py):

1. a deterministic forward + backward step of every network family (AlexNet, ResNet-18/34,
   VGG-11/16) in ``torch.use_deterministic_algorithms(True)``, since CUDA raises in the
   backward pass of some ops that run fine on the CPU;
2. a measured run (pass 1 + pass 2) of ResNet-18 with a checkpoint every epoch, so the replay is
   compared with pass 1 bit for bit at every epoch and at theta*; on CUDA its steps are CUDA
   graph replays (the runner's default there);
3. on CUDA: the same run again without graphs (eager): its trace must equal the graph run's bit
   for bit, every column of it and of its companions; the two runs' ms per step side by side; and
   a run with Adam (whose graphs need its ``capturable`` mode) that must pass its replay checks;
4. pass 1 and pass 2 ms per step, and their ratio.

Usage (from the repository root)::

    python bench/replay_check.py --device cuda --subset 5000 --epochs 3 --out $OUT/replay_check.json
    python bench/replay_check.py --device cpu --width 0.125 --subset 256 --epochs 2 --batch-size 64   # CPU smoke

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

from deep.measure import load_companions  # noqa: E402
from deep.env import environment, resolve_device, set_deterministic  # noqa: E402
from deep.models import MODEL_NAMES, build_model  # noqa: E402
from deep.runner import load_train_data, run_one  # noqa: E402
from deep.suites import RunSpec  # noqa: E402
from gamma_theory.files import write_json  # noqa: E402


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


def measured(spec, data, num_classes, desc, workdir: Path, graphs: bool):
    """``(summary, run)`` of one measured run; a failure (a replay mismatch) is a result here."""
    t0 = time.perf_counter()
    try:
        run = run_one(spec, data, num_classes, workdir, {"data": desc}, progress=False, cuda_graphs=graphs)
    except Exception as exc:  # noqa: BLE001 - a replay mismatch is a result here, not a crash
        return {"ok": False, "cuda_graphs": graphs, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}, None
    meta = run.trace.meta
    p1, p2 = meta["pass1"]["ms_per_step"], meta["pass2"]["ms_per_step"]
    return {
        "ok": True,
        "cuda_graphs": graphs,
        "optimizer": spec.optimizer,
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--network", default="resnet18")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--dataset", default="cifar10-jpeg")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    dev = resolve_device(args.device)
    result: dict = {"command": " ".join(["python", "bench/replay_check.py", *sys.argv[1:]]),
                    "args": vars(args), "env": environment(dev)}
    result["deterministic_step"] = deterministic_step_of_every_family(dev, args.width)
    print("deterministic forward+backward:", result["deterministic_step"])

    data, num_classes, desc = load_train_data(args.dataset, args.subset, dev, args.data_root)
    spec = RunSpec(args.network, "bench", lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                   width=args.width)
    graphs = dev.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        result["replay"], graphed = measured(spec, data, num_classes, desc, Path(tmp) / "run", graphs)
        if graphs:  # the graph path against the eager one, and Adam's capturable mode
            result["replay_eager"], eager = measured(spec, data, num_classes, desc, Path(tmp) / "eager", False)
            result["graphs_vs_eager"] = compare(graphed, eager)
            if result["graphs_vs_eager"].get("bitwise_equal") is not None:
                result["graphs_vs_eager"]["speedup"] = {
                    k: result["replay_eager"][k] / result["replay"][k]
                    for k in ("pass1_ms_per_step", "pass2_ms_per_step") if result["replay"].get(k)}
            adam = dataclasses.replace(spec, optimizer="adam", lr=1e-3)
            result["replay_adam"], _ = measured(adam, data, num_classes, desc, Path(tmp) / "adam", True)
    print(json.dumps({k: v for k, v in result.items() if k != "env"}, indent=2, default=str))
    print(f"device: {result['env']['device_name']}, torch {result['env']['torch']}, CUDA {result['env']['cuda']}, "
          f"cuDNN {result['env']['cudnn']}, driver {result['env']['driver']}")
    if args.out:  # atomically, its folder made if needed
        write_json(args.out, result, default=str)
    ok = (result["replay"]["ok"] and all(v == "ok" for v in result["deterministic_step"].values())
          and all(result[k]["ok"] for k in ("replay_eager", "replay_adam") if k in result)
          and result.get("graphs_vs_eager", {}).get("bitwise_equal", True) is not False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
