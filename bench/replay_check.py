"""Train and replay a network on a CIFAR-10 subset; show the bitwise replay check and step times.

This is the device check of the two-pass measurement (deep/measure.py):

1. a deterministic forward + backward step of every network family (AlexNet, ResNet-18/34,
   VGG-11/16) in ``torch.use_deterministic_algorithms(True)``, since CUDA raises in the
   backward pass of some ops that run fine on the CPU;
2. a measured run (pass 1 + pass 2) of ResNet-18 with a checkpoint every epoch, so the replay is
   compared with pass 1 bit for bit at every epoch and at theta*;
3. pass 1 and pass 2 ms per step, and their ratio.

Usage (from the repository root)::

    python bench/replay_check.py --device cuda --subset 5000 --epochs 3 --out $OUT/replay_check.json
    python bench/replay_check.py --device cpu --width 0.125 --subset 256 --epochs 2 --batch-size 64   # CPU smoke

The JSON it writes holds the device name and library versions with every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

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
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        try:
            run = run_one(spec, data, num_classes, Path(tmp) / "run", {"data": desc}, progress=False)
        except Exception as exc:  # a replay mismatch is a result here, not a crash
            result["replay"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()}
            run = None
        wall = time.perf_counter() - t0
    if run is not None:
        meta = run.trace.meta
        p1, p2 = meta["pass1"]["ms_per_step"], meta["pass2"]["ms_per_step"]
        result["replay"] = {
            "ok": True,
            "verified": meta["replay_verified"],
            "checkpoints_compared": meta["setup"]["epochs"] // meta["setup"]["checkpoint_every"],
            "steps": len(run.trace),
            "pass1_ms_per_step": p1,
            "pass2_ms_per_step": p2,
            "pass2_over_pass1": p2 / p1,
            "two_pass_wall_s": wall,
            "data": desc,
            "num_params": meta["num_params"],
        }
    print(json.dumps({k: v for k, v in result.items() if k != "env"}, indent=2, default=str))
    print(f"device: {result['env']['device_name']}, torch {result['env']['torch']}, CUDA {result['env']['cuda']}, "
          f"cuDNN {result['env']['cudnn']}, driver {result['env']['driver']}")
    if args.out:  # atomically, its folder made if needed
        write_json(args.out, result, default=str)
    ok = result["replay"]["ok"] and all(v == "ok" for v in result["deterministic_step"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
