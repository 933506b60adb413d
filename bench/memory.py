"""Peak memory of a measured run, in parameter-sized copies: the plain loop, pass 1, pass 2.

Each phase runs in a fresh process (``python bench/memory.py --phase ...``), so that one
phase's allocations cannot hide in another's. The process builds its data, resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``), runs the phase and reads the new peak (``VmHWM``):
the phase's peak over what it found, divided by the bytes of one float32 copy of the
parameters, is the number of parameter-sized copies it held at its worst moment. (Linux only;
tensors of this size are allocated with ``mmap`` and returned at once when freed, so RSS follows
the live tensors: the phase runs with a fixed ``MALLOC_MMAP_THRESHOLD_``.)

Phases, on the same network, data and seed:

* ``plain``: the training loop alone (pass 1's ``train_epoch``), SGD with momentum: parameters,
  gradients and momentum are 3 copies;
* ``pass1``: :func:`deep.measure.measure` with pass 2 switched off (so checkpoints, theta* and
  its evaluation);
* ``pass2``: pass 2 alone, replaying the ``pass1`` phase's folder.

``--extras none`` measures the path against theta* alone; ``all`` adds what the presets record
by default (the random theta*, three earlier theta* and the gradient's columns: each extra theta*
holds one more copy).

The default network has most of its weights in one layer (3072 x 4096, 12.6 M parameters), so
that parameter-sized buffers dominate and the count is sharp; ``--network resnet18`` measures
a real one.

Usage::

    python bench/memory.py                       # both extras settings, table + JSON
    python bench/memory.py --network resnet18 --width 1 --out bench/results/memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Reset the peak-RSS mark to the current RSS; returns the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return 1024 * _status_kb("VmRSS")


def peak() -> int:
    return 1024 * _status_kb("VmHWM")


def _model_fn(network: str, width: float, hidden: int):
    import torch

    from deep.models import build_model

    if network == "wide-mlp":
        return lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 10))
    return lambda: build_model(network, 10, width=width)


def phase(args) -> dict:
    """One phase in this process; returns its numbers."""
    import torch

    torch.set_num_threads(args.threads)
    from deep.data import DeviceData
    from deep.measure import NO_EXTRAS, Extras

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    data = DeviceData(images, labels)
    model_fn = _model_fn(args.network, args.width, args.hidden)
    torch.manual_seed(0)
    nparams = sum(p.numel() for p in model_fn().parameters())
    extras = NO_EXTRAS if args.extras == ["none"] else Extras()
    with tempfile.TemporaryDirectory() as tmp:  # the same work on a tiny network first: the code
        # that the phase runs (torch's kernels, MKL, ...) is paged in before the peak is reset
        _work(args.phase, _model_fn("wide-mlp", 1.0, 8), data, args, extras, Path(tmp) / "warm", warm=True)
    base = reset_peak()
    _work(args.phase, model_fn, data, args, extras, Path(args.workdir or "."), warm=False)
    top = peak()
    return {"phase": args.phase, "extras": args.extras[0], "params": nparams, "param_mb": 4 * nparams / 2**20,
            "base_mb": base / 2**20, "peak_mb": top / 2**20, "copies": (top - base) / (4 * nparams)}


def _work(name: str, model_fn, data, args, extras, work: Path, warm: bool) -> None:
    import torch

    from deep.data import CyclicSampler
    from deep.measure import measure
    from deep.step import train_epoch

    opt_fn = lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)  # noqa: E731
    if name == "plain":
        torch.manual_seed(0)
        model = model_fn()
        opt = opt_fn(model.parameters())
        sampler = CyclicSampler(len(data), args.batch_size, 0)
        for _ in range(args.epochs):
            train_epoch(model, opt, sampler, data)
        return
    import deep.measure as dm  # the conductor looks its passes up in its module when it runs
    real_pass2 = dm.pass2
    if name == "pass1":  # no pass 2: the run is then filed as "diverged", which the pass2 phase undoes
        dm.pass2 = lambda *a, **k: None
    try:
        run = lambda: measure(model_fn, opt_fn, data, lr=0.01, epochs=args.epochs,  # noqa: E731
                              batch_size=args.batch_size, workdir=work, progress=False, extras=extras,
                              keep_checkpoints=True)
        if name == "pass2" and warm:
            dm.pass2 = lambda *a, **k: None
            run()
            dm.pass2 = real_pass2
        if name == "pass2":  # pass 1 is there: drop what pass 2 made, so that only pass 2 runs
            for f in ("trace.json", "trace.npz", "pass2_partial.npz"):
                (work / f).unlink(missing_ok=True)
        out = run()
        assert name == "pass1" or out.trace is not None
    finally:
        dm.pass2 = real_pass2


def _run_phase(args, name: str, extras: str, workdir: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--extras", extras, "--workdir", workdir,
           "--network", args.network, "--width", str(args.width), "--hidden", str(args.hidden),
           "--images", str(args.images), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
           "--threads", str(args.threads)]
    # a fixed mmap threshold: every allocation of 128 KiB or more is its own mapping, returned
    # when freed, so RSS follows the live tensors (glibc's moving threshold would keep freed
    # chunks of a few MiB on the heap)
    env = {**os.environ, "PYTHONHASHSEED": "0", "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"phase {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", default="wide-mlp", help="wide-mlp (default) or a deep.models name")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--hidden", type=int, default=4096, help="wide-mlp: hidden units")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--extras", nargs="+", default=["none", "all"], choices=["none", "all"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--phase", choices=["plain", "pass1", "pass2"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("bench/memory.py needs Linux (/proc/self/clear_refs resets the peak-RSS mark)")
    if args.phase:
        print(json.dumps(phase(args)))
        return 0
    rows = [_run_phase(args, "plain", "none", "")]
    for extras in args.extras:
        with tempfile.TemporaryDirectory() as tmp:
            rows += [_run_phase(args, p, extras, str(Path(tmp) / "run")) for p in ("pass1", "pass2")]
    print(f"{args.network}: {rows[0]['params']:,} parameters ({rows[0]['param_mb']:.1f} MB as float32)")
    print("| phase | extras | peak over start, MB | parameter-sized copies |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['extras']} | {r['peak_mb'] - r['base_mb']:.0f} | {r['copies']:.2f} |")
    if args.out:
        import torch

        from deep.env import environment
        from gamma_theory.files import write_json

        write_json(args.out, {"command": "python bench/memory.py " + " ".join(argv or sys.argv[1:]),
                              "env": environment(torch.device("cpu")), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
