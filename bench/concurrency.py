"""Throughput of a whole device with 1, 2, 4 ... measured runs at once (what ``--jobs N`` does on
one GPU: N workers pinned to it).

A batch-128 CIFAR network leaves an H100/H200 mostly idle, so several runs at once may measure
more runs per hour. For each K in ``--concurrency``, K worker processes each measure the same
run (both passes of deep/measure.py, on random CIFAR-shaped data). Each worker starts CUDA,
builds its data and model, says it is ready, and waits; when all K are ready they start
together, so start-up is not counted. Throughput = K x steps / (last finish - first start), in
steps (of both passes) per second; the speed-up of K is its throughput over K = 1's. Every
worker's trace must equal the K = 1 trace bit for bit (concurrency must not change a result).

Usage (from the repository root)::

    python bench/concurrency.py --device cuda --network resnet18 --concurrency 1 2 4 --out $OUT/concurrency.json
    python bench/concurrency.py --device cpu --network vgg11 --width 0.125 --images 128 --epochs 1 \\
        --batch-size 64 --concurrency 1 2                                    # CPU check

The JSON it writes holds the device name and library versions with every number. It is written
after every level (``complete`` is true only at the end), so a run cut by its time limit keeps the
levels it measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gamma_theory.files import write_json  # noqa: E402


def worker(args) -> int:
    """One measured run, started when ``<dir>/go`` appears; writes ``<dir>/result-<i>.json``."""
    import torch

    from deep.data import DeviceData
    from deep.env import resolve_device
    from deep.measure import measure
    from deep.models import build_model

    dev = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    data = DeviceData(images, labels, device=dev, channels_last=dev.type == "cuda")
    here = Path(args.worker_dir)
    (here / f"ready-{args.index}").write_text("")
    while not (here / "go").exists():
        time.sleep(0.01)
    t0 = time.time()
    run = measure(lambda: build_model(args.network, 10, width=args.width), lambda p: torch.optim.SGD(p, lr=0.01),
                  data, lr=0.01, epochs=args.epochs, batch_size=args.batch_size, workdir=here / f"run-{args.index}",
                  channels_last=dev.type == "cuda", progress=False)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t1 = time.time()
    import numpy as np

    h = hashlib.sha256()  # the trace's columns, not the .npz file (whose zip entries carry a clock)
    with np.load(here / f"run-{args.index}" / "trace.npz") as z:
        for name in sorted(z.files):
            h.update(name.encode() + z[name].tobytes())
    digest = h.hexdigest()
    (here / f"result-{args.index}.json").write_text(json.dumps({
        "start": t0, "end": t1, "steps": 2 * len(run.trace), "trace_sha256": digest,
        "pass1_ms_per_step": run.trace.meta["pass1"]["ms_per_step"],
        "pass2_ms_per_step": run.trace.meta["pass2"]["ms_per_step"]}))
    return 0


def one_level(k: int, args, tmp: Path) -> dict:
    here = tmp / f"k{k}"
    here.mkdir()
    base = [sys.executable, __file__, "--worker-dir", str(here), "--device", args.device or "",
            "--network", args.network, "--width", str(args.width), "--images", str(args.images),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    procs = [subprocess.Popen(base + ["--index", str(i)], env=env) for i in range(k)]
    try:
        deadline = time.monotonic() + args.timeout
        while sum((here / f"ready-{i}").exists() for i in range(k)) < k:
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                raise SystemExit(f"concurrency {k}: a worker did not get ready (see its output above)")
            time.sleep(0.02)
        (here / "go").write_text("")
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        if any(p.returncode for p in procs):
            raise SystemExit(f"concurrency {k}: a worker failed (see its output above)")
    finally:  # stopped, cut or failed: no worker outlives its level
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    res = [json.loads((here / f"result-{i}.json").read_text()) for i in range(k)]
    span = max(r["end"] for r in res) - min(r["start"] for r in res)
    steps = sum(r["steps"] for r in res)
    return {"runs": k, "wall_s": span, "steps": steps, "steps_per_s": steps / span,
            "runs_per_hour": 3600 * k / span, "trace_sha256": sorted({r["trace_sha256"] for r in res}),
            "per_run_ms_per_step": [r["pass1_ms_per_step"] + r["pass2_ms_per_step"] for r in res]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--network", default="resnet18")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per worker (OMP_NUM_THREADS)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per level, start-up included")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = args.device or None
    if args.worker_dir:
        return worker(args)
    if 1 not in args.concurrency or any(k < 1 for k in args.concurrency):
        ap.error("--concurrency must include 1 (the reference) and only positive counts")

    from deep.env import environment, resolve_device

    dev = resolve_device(args.device)
    result = {"command": " ".join(["python", "bench/concurrency.py", *sys.argv[1:]]), "args": vars(args),
              "env": environment(dev), "levels": {}, "complete": False}

    def save():
        if args.out:  # atomically, its folder made if needed
            write_json(args.out, result, default=str)

    save()
    with tempfile.TemporaryDirectory(prefix="gpcheck-concurrency-") as tmp:
        for k in sorted(set(args.concurrency)):
            lv = one_level(k, args, Path(tmp))
            result["levels"][str(k)] = lv
            base = result["levels"]["1"]
            lv["speedup_over_1"] = lv["steps_per_s"] / base["steps_per_s"]
            lv["bitwise_equal_to_1"] = lv["trace_sha256"] == base["trace_sha256"]
            result["best"] = max(result["levels"].values(), key=lambda v: v["steps_per_s"])["runs"]
            save()
            print(f"{k} run(s) at once: {lv['steps_per_s']:.1f} steps/s, {lv['runs_per_hour']:.0f} runs/hour, "
                  f"{lv['speedup_over_1']:.2f}x one run; traces equal to one run's: {lv['bitwise_equal_to_1']}",
                  flush=True)
    result["complete"] = True
    save()
    e = result["env"]
    print(f"best: {result['best']} at once; device: {e['device_name']} ({e['device']}), torch {e['torch']}")
    return 0 if all(v["bitwise_equal_to_1"] for v in result["levels"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
