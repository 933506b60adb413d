"""The Lightning callback's overhead on the CPU: a plain ``Trainer.fit`` against run 2 with
:class:`deep.lightning.MeasurePath` (the recording run: theta*'s forward, the Gram reductions,
the epoch digests), same small model and data, side by side in one process, one thread.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/lightning_overhead.py [--reps 3] [--epochs 2]

Run 1 is made once (untimed); then plain and run 2 fits alternate ``--reps`` times, and the ratio
of the medians is printed (also each fit's wall time, Lightning's start-up included).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import lightning as L

from deep.lightning import MeasurePath, cyclic_loader
from deep.tensordata import TensorData

V, T, C = 64, 8, 16


class TokenNet(torch.nn.Module):
    def __init__(self, hidden=256, dropout=0.1):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 32)
        self.drop = torch.nn.Dropout(dropout)
        self.fc = torch.nn.Linear(32 * T, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, C)

    def forward(self, x):
        h = self.drop(torch.relu(self.fc(self.drop(self.emb(x).flatten(1)))))
        return self.out(self.drop(torch.relu(self.fc2(h))))


class Lit(L.LightningModule):
    def __init__(self, steps):
        super().__init__()
        self.net, self.steps = TokenNet(), steps

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.1)
        warm = max(1, self.steps // 10)

        def f(k):
            return (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / self.steps)) + 0.05
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, f),
                                                   "interval": "step"}}


def fit(data, args, callbacks) -> float:
    steps = args.epochs * math.ceil(len(data) / args.batch)
    L.seed_everything(0, verbose=False)
    module = Lit(steps)
    trainer = L.Trainer(max_epochs=args.epochs, deterministic=True, gradient_clip_val=1.0, accelerator="cpu",
                        devices=1, callbacks=callbacks, enable_progress_bar=False, logger=False,
                        enable_model_summary=False, enable_checkpointing=False)
    t0 = time.perf_counter()
    trainer.fit(module, cyclic_loader(data, args.batch, 1))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (args.n, T), generator=g)
    data = TensorData(x, x.sum(1) % C)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        fit(data, args, [MeasurePath(run)])  # run 1 (untimed)
        plain, measured = [], []
        for _ in range(args.reps):
            plain.append(fit(data, args, []))
            cb = MeasurePath(run)
            measured.append(fit(data, args, [cb]))
            assert cb.mode == "replay" and cb.trace is not None
            (run / "trace.npz").unlink()
            (run / "trace.json").unlink()
    n_params = sum(p.numel() for p in TokenNet().parameters())
    steps = args.epochs * math.ceil(args.n / args.batch)
    p, m = statistics.median(plain), statistics.median(measured)
    print(f"lightning {L.__version__}, torch {torch.__version__}, 1 thread; {n_params} parameters, {steps} steps "
          f"(batch {args.batch}), {args.reps} reps")
    print(f"plain fit          : median {p:.3f} s  ({', '.join(f'{v:.3f}' for v in plain)})  {1e3 * p / steps:.2f} ms/step")
    print(f"run 2 (MeasurePath): median {m:.3f} s  ({', '.join(f'{v:.3f}' for v in measured)})  {1e3 * m / steps:.2f} ms/step")
    print(f"ratio run 2 / plain: {m / p:.2f}")


if __name__ == "__main__":
    main()
