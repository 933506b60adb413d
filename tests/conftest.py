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


# -- the tests leave the checkout as they found it ----------------------------------------------
# Every test writes under its tmp_path; one that wrote into the tree (a ladder or a suite with the
# default --out, a rebuilt committed report) would dirty a clean clone. `git status` before and
# after the session says so: under CI the run fails, locally it warns (someone may edit meanwhile).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git_status():
    import subprocess

    try:
        res = subprocess.run(["git", "-C", _REPO, "status", "--porcelain", "--untracked-files=all"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller only (pytest-xdist workers skip it)
        session.config._git_status_before = _git_status()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_git_status_before", None)
    if before is None:
        return
    after = _git_status()
    if after is None or after == before:
        return
    changed = sorted(set(after.splitlines()) ^ set(before.splitlines()))
    msg = "the tests changed the checkout (git status): " + "; ".join(changed[:20])
    if os.environ.get("CI"):
        print(f"\nERROR: {msg}")
        session.exitstatus = 1
    else:
        import warnings

        warnings.warn(msg)
        print(f"\nWARNING: {msg}")


# -- torch's global determinism switch is put back after every test -----------------------------
# Lightning's Trainer(deterministic=True) turns torch's deterministic algorithms on for the whole
# process and leaves them on; a module-scoped fixture that fits once does so before any function
# fixture of its module can look. Every test ends with the switch as the session started.
import pytest  # noqa: E402

_DETERMINISTIC_AT_START = torch.are_deterministic_algorithms_enabled()


@pytest.fixture(autouse=True)
def _determinism_as_at_start():
    yield
    if torch.are_deterministic_algorithms_enabled() != _DETERMINISTIC_AT_START:
        torch.use_deterministic_algorithms(_DETERMINISTIC_AT_START)
