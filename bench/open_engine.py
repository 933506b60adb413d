"""What each piece of the open engine (issue 22) costs, side by side in one run, on one model.

One token model (embedding, two hidden layers; dropout where a row says so) on random token data
(``--n`` samples, ``--batch-size``), measured with :func:`deep.measure.measure` in fresh folders,
the rows interleaved and repeated (``--repeats``; medians):

* ``plain``: SGD with momentum at a constant rate, no randomness (the engine as it was);
* ``schedule``: the same with a per-step warm-up plus cosine (eta_k read and recorded every step);
* ``dropout``: dropout 0.1 (the step draws random numbers: saved in every checkpoint, replayed,
  and each theta*'s forward restarted from the step's random state);
* ``recipe``: AdamW with weight decay, a warm-up plus cosine, clipping, 2 micro-batches, bf16
  autocast and dropout: everything at once.

Per row: pass 1 and pass 2 ms per step (from the trace's metadata), and the ratios of each to
``plain``'s. Also, timed alone: the fingerprint (built once per ``measure()`` call), and the random
state's save and restores per step (``rng_state`` once, ``set_rng_state`` once per theta* plus
once) next to a dropout step of pass 2. Writes JSON (``--out``) with the machine and versions.

Usage::

    OMP_NUM_THREADS=1 python bench/open_engine.py --threads 1 --out bench/results/open_engine_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from deep.context import Extras  # noqa: E402
from deep.fingerprint import fingerprint  # noqa: E402
from deep.losses import as_loss  # noqa: E402
from deep.measure import measure  # noqa: E402
from deep.step import rng_state, set_rng_state  # noqa: E402
from deep.tensordata import TensorData  # noqa: E402

V, T = 64, 8


class Net(torch.nn.Module):
    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 32)
        self.drop = torch.nn.Dropout(dropout)
        self.fc1 = torch.nn.Linear(32 * T, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, V)

    def forward(self, x):
        h = self.drop(torch.relu(self.fc1(self.emb(x).flatten(1))))
        return self.out(self.drop(torch.relu(self.fc2(h))))


def warmup_cosine(total_steps: int, warm: int):
    def f(k):
        if k < warm:
            return (k + 1) / warm
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(k - warm, total_steps) / total_steps))
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, f)


def rows(args, steps: int):
    sched = warmup_cosine(steps, max(1, steps // 10))
    sgd = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5)  # noqa: E731
    adamw = lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1)  # noqa: E731
    return {
        "plain": dict(model=lambda: Net(args.hidden, 0.0), opt=sgd, lr=0.1),
        "schedule": dict(model=lambda: Net(args.hidden, 0.0), opt=sgd, lr=0.1, scheduler_fn=sched),
        "dropout": dict(model=lambda: Net(args.hidden, 0.1), opt=sgd, lr=0.1),
        "recipe": dict(model=lambda: Net(args.hidden, 0.1), opt=adamw, lr=1e-3, scheduler_fn=sched, grad_clip=1.0,
                       accumulate=2, autocast="bf16"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (args.n, T), generator=g)
    data = TensorData(x, x.sum(1) % V)
    steps = args.epochs * math.ceil(args.n / args.batch_size)
    table = rows(args, steps)
    extras = Extras()  # the default companions: a random theta* and three earlier iterates
    got: dict[str, dict[str, list[float]]] = {k: {"pass1": [], "pass2": [], "wall": []} for k in table}
    stars = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, row in table.items():
                kw = {k: v for k, v in row.items() if k not in ("model", "opt")}
                t0 = time.perf_counter()
                run = measure(row["model"], row["opt"], data, epochs=args.epochs, batch_size=args.batch_size,
                              workdir=Path(tmp) / f"{name}-{r}", seed=1, progress=False, extras=extras, **kw)
                got[name]["wall"].append(time.perf_counter() - t0)
                got[name]["pass1"].append(run.meta["pass1"]["ms_per_step"])
                got[name]["pass2"].append(run.meta["pass2"]["ms_per_step"])
                stars = run.meta["pass2"]["theta_stars"]
                print(f"repeat {r} {name:9s} pass 1 {got[name]['pass1'][-1]:.3f} ms/step, pass 2 "
                      f"{got[name]['pass2'][-1]:.3f} ms/step", flush=True)
    med = {k: {c: statistics.median(v) for c, v in cols.items()} for k, cols in got.items()}
    base = med["plain"]
    result = {k: {**v, "pass1_vs_plain": v["pass1"] / base["pass1"], "pass2_vs_plain": v["pass2"] / base["pass2"],
                  "pass2_vs_own_pass1": v["pass2"] / v["pass1"]} for k, v in med.items()}
    # the fingerprint, alone
    fp_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fingerprint(table["recipe"]["model"], table["recipe"]["opt"], table["recipe"]["scheduler_fn"],
                    as_loss(torch.nn.functional.cross_entropy), data, 1, 1e-3, args.epochs, args.batch_size)
        data._gpcheck_digest = None  # each time from scratch, the data digest too
        fp_times.append(time.perf_counter() - t0)
    # the random state's save and restores of one pass-2 step, alone
    dev = torch.device("cpu")
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        s = rng_state(dev)
        a = rng_state(dev)
        for _ in range(stars):
            set_rng_state(s, dev)
        set_rng_state(a, dev)
    fork_ms = 1e3 * (time.perf_counter() - t0) / reps
    out = {
        "command": " ".join(sys.argv),
        "device": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads,
        "n": args.n, "batch_size": args.batch_size, "hidden": args.hidden, "epochs": args.epochs,
        "steps": steps, "repeats": args.repeats, "theta_stars": stars,
        "rows_ms_per_step_median": result,
        "fingerprint_s_median": statistics.median(fp_times),
        "fingerprint_vs_plain_measure_wall": statistics.median(fp_times) / base["wall"],
        "rng_fork_ms_per_step": fork_ms,
        "rng_fork_vs_dropout_pass2_step": fork_ms / med["dropout"]["pass2"],
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
