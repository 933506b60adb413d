"""What each skeptic's addition costs per step: the real runner with each one switched on alone.

Every variant runs the real two-pass runner (deep/measure.py) on the same network, data and
seed, one after another in one process, and the whole set is repeated ``--repeats`` times
(interleaved, so that a slow spell of the machine hits every variant alike). Per variant it
reports pass 2's ms per step (median over the repeats) and the addition's cost:

* ``extra ms`` = pass 2 with it - pass 2 without anything;
* ``of a measured step`` = extra / (pass 1 + pass 2 without anything): what a run's wall time grows by;
* ``of a pass-2 step`` = extra / pass 2 without anything.

Variants: ``none`` (the path against theta* only), ``grad`` (the gradient's columns),
``random`` (the random-theta* baseline: one forward at it per step), ``sensitivity`` (the
iterates at 50/75/90% as theta*: one forward each on the steps before it), ``extend`` (a theta*
trained 50% longer: its training, plus one forward per step), ``all`` (the presets' default:
grad + random + sensitivity).

Usage::

    python bench/extras_cost.py --network resnet18 --width 0.25 --images 512 --epochs 8 \\
        --out bench/results/extras_cost_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from deep.data import DeviceData  # noqa: E402
from deep.env import environment, resolve_device  # noqa: E402
from deep.measure import NO_EXTRAS, Extras, measure  # noqa: E402
from deep.models import build_model  # noqa: E402
from gamma_theory.files import write_json  # noqa: E402

VARIANTS = {
    "none": NO_EXTRAS,
    "grad": Extras(random_baseline=False, sensitivity=(), record_grad=True),
    "random": Extras(random_baseline=True, sensitivity=(), record_grad=False),
    "sensitivity": Extras(random_baseline=False, sensitivity=(0.5, 0.75, 0.9), record_grad=False),
    "extend": Extras(random_baseline=False, sensitivity=(), star_extend=0.5, record_grad=False),
    "all": Extras(),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--network", default="resnet18")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    data = DeviceData(images, labels, device=dev, channels_last=dev.type == "cuda")
    p1: dict[str, list[float]] = {v: [] for v in args.variants}
    p2: dict[str, list[float]] = {v: [] for v in args.variants}
    wall: dict[str, list[float]] = {v: [] for v in args.variants}
    for rep in range(-1, args.repeats):  # repeat -1: warm-up (allocator, kernels), not counted
        for name in args.variants if rep >= 0 else ["none"]:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                run = measure(lambda: build_model(args.network, 10, width=args.width),
                              lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), data, lr=0.01,
                              epochs=args.epochs, batch_size=args.batch_size, workdir=Path(tmp) / "r",
                              channels_last=dev.type == "cuda", progress=False, extras=VARIANTS[name])
                t = time.perf_counter() - t0
            if rep < 0:
                continue
            wall[name].append(t)
            p1[name].append(run.trace.meta["pass1"]["ms_per_step"])
            p2[name].append(run.trace.meta["pass2"]["ms_per_step"])
            print(f"repeat {rep + 1}/{args.repeats} {name}: pass 1 {p1[name][-1]:.1f} ms/step, "
                  f"pass 2 {p2[name][-1]:.1f} ms/step, wall {wall[name][-1]:.1f} s", flush=True)
    med = {v: {"pass1_ms": statistics.median(p1[v]), "pass2_ms": statistics.median(p2[v]),
               "wall_s": statistics.median(wall[v])} for v in args.variants}
    base = med.get("none")
    result = {"command": " ".join(["python", "bench/extras_cost.py", *sys.argv[1:]]), "args": vars(args),
              "env": environment(dev), "threads": torch.get_num_threads(), "median": med,
              "samples": {"pass1_ms": p1, "pass2_ms": p2, "wall_s": wall}}
    if base:
        step = base["pass1_ms"] + base["pass2_ms"]
        result["cost"] = {}
        print(f"\n{'variant':<12} {'pass 2 ms':>9} {'extra ms':>9} {'of a measured step':>19} {'of a pass-2 step':>17}"
              f" {'run wall':>9}")
        for v in args.variants:
            extra = med[v]["pass2_ms"] - base["pass2_ms"]
            wall_ratio = med[v]["wall_s"] / base["wall_s"]
            result["cost"][v] = {"extra_ms": extra, "of_measured_step": extra / step,
                                 "of_pass2_step": extra / base["pass2_ms"], "run_wall_ratio": wall_ratio}
            print(f"{v:<12} {med[v]['pass2_ms']:>9.1f} {extra:>9.1f} {100 * extra / step:>18.1f}% "
                  f"{100 * extra / base['pass2_ms']:>16.1f}% {wall_ratio:>8.2f}x")
    e = result["env"]
    print(f"device: {e['device_name']} ({e['device']}), {torch.get_num_threads()} threads, torch {e['torch']}")
    if args.out:  # atomically, its folder made if needed
        write_json(args.out, result, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
