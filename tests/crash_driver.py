"""A measured run in its own process, for the crash tests: ``python crash_driver.py WORKDIR``.

The tests set ``GPCHECK_KILL_AT`` (gamma_theory/files.py) to make this process SIGKILL itself at an
exact point, then run it again without it and compare the trace with an undisturbed run's. It
prints the sha256 of the finished trace's columns and its companions' (random theta*, an
earlier iterate as theta*) on its last line.
"""

import hashlib
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 2)[0])

from deep.data import DeviceData  # noqa: E402
from deep.measure import load_companions, measure  # noqa: E402
from gamma_theory.optimizers import make_optimizer  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def main(workdir: str) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = DeviceData(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g),
                      torch.randint(0, 3, (40,), generator=g))
    run = measure(Net, lambda p: make_optimizer("momentum", p, 0.1), data, lr=0.1, epochs=3, batch_size=16,
                  workdir=workdir, seed=3, data_seed=5, checkpoint_every=1, progress=False, loss_fn=F.cross_entropy)
    h = hashlib.sha256()
    companions = load_companions(run.workdir, run.trace.meta)
    assert set(companions) == {"random", "epoch0002"}, companions.keys()
    for tr in [run.trace] + [companions[k] for k in sorted(companions)]:
        for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq", "step", "epoch", "grad_inner", "grad_sq"):
            h.update(np.ascontiguousarray(getattr(tr, col)).tobytes())
    print(h.hexdigest())


if __name__ == "__main__":
    main(sys.argv[1])
