"""Test-wide settings.

Threads: one per torch process. The tests run many tiny ops; on a 2-core machine that is busy
with anything else, OpenMP threads spin-wait on each other and a run took 947 s instead of 134 s.
``OMP_NUM_THREADS`` is set before torch is imported, so subprocesses (the crash tests) inherit it.

Under CI (``CI`` set) hypothesis runs derandomized: the same examples every time, so a landing
never hangs on a draw nobody saw locally. Local runs draw fresh examples each time and keep
exploring; ``HYPOTHESIS_PROFILE=ci`` reproduces CI's draws.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
