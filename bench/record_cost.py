"""What recording one step costs: the recorder reading a flat parameter buffer (as the runner
does) against the same recorder concatenating the parameters every step, side by side.

Both record the same steps (a fixed small change of every parameter, gradient columns on) of a
real network against ``--stars`` theta*, interleaved over ``--repeats`` rounds; the median ms per
``record()`` call of each, and their ratio.

Usage::

    python bench/record_cost.py --network resnet18 --width 1 --stars 1 5 --out bench/results/record_cost_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from deep.env import environment, resolve_device  # noqa: E402
from deep.models import build_model  # noqa: E402
from gamma_theory import PathRecorder  # noqa: E402
from gamma_theory.files import write_json  # noqa: E402
from gamma_theory.flat import FlatParams  # noqa: E402


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make(network: str, width: float, stars: int, flat: bool, dev):
    torch.manual_seed(0)
    model = build_model(network, 10, width=width).to(dev)
    fp = FlatParams(model) if flat else None
    if fp is not None:
        fp.flat_grads()
    for p in model.parameters():
        g = torch.randn_like(p)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)
    d = fp.layout.size if fp else sum(p.numel() for p in model.parameters())
    rec = PathRecorder(fp if fp else model.parameters(), torch.randn(stars, d, device=dev), 0.01, record_grad=True)

    def step():
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3)
        rec.capture_grad()
        _sync(dev)
        t = time.perf_counter()
        rec.record(1.0, [1.0] * stars, 0)
        _sync(dev)
        if len(rec) >= 32:
            rec.flush()
        return time.perf_counter() - t

    return step, d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--network", default="resnet18")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--stars", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    rows = []
    for m in args.stars:
        steps = {mode: make(args.network, args.width, m, mode == "flat", dev) for mode in ("concatenated", "flat")}
        times: dict[str, list[float]] = {mode: [] for mode in steps}
        for rep in range(-1, args.repeats):  # round -1 warms up
            for mode, (step, _) in steps.items():
                ts = [step() for _ in range(args.steps)]
                if rep >= 0:
                    times[mode] += ts
        med = {mode: 1e3 * statistics.median(t) for mode, t in times.items()}
        rows.append({"stars": m, "params": steps["flat"][1], "ms_concatenated": med["concatenated"],
                     "ms_flat": med["flat"], "speedup": med["concatenated"] / med["flat"]})
        print(f"{args.network} x{args.width}, {m} theta* + gradient: concatenated {med['concatenated']:.1f} ms, "
              f"flat {med['flat']:.1f} ms per record() ({rows[-1]['speedup']:.2f}x)", flush=True)
    if args.out:
        write_json(args.out, {"command": "python bench/record_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "env": environment(dev), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
