"""Deterministic execution and a record of where a run ran.

Replay (pass 2) must reproduce pass 1 bit for bit, which needs deterministic kernels and, on
CUDA, ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA initialises. cuBLAS/cuDNN only promise equal
bits on the same GPU model, driver and library versions, so :func:`environment` records them and
:func:`same_environment` says whether a replay may trust a checkpoint.
"""

from __future__ import annotations

import os
import platform
import subprocess
from contextlib import contextmanager

import numpy as np
import torch

# Must be in the environment before the first CUDA call (cuBLAS reads it once).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


#: PyTorch's per-backend float32 precision (2.9 and later), which deprecates the ``allow_tf32``
#: flags; once it has been set, reading a legacy flag raises, so this module reads and writes it only
_NEW_PRECISION_API = hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def _precision_targets():
    b = torch.backends
    return (b.cuda.matmul, b.cudnn.conv, b.cudnn.rnn) if _NEW_PRECISION_API else ()


def set_tf32(on: bool) -> None:
    """TF32 in CUDA matmuls and cuDNN convolutions, on or off, explicitly (PyTorch's defaults
    differ: matmuls off, convolutions on); with the current precision API where torch has it."""
    if _NEW_PRECISION_API:
        for t in _precision_targets():
            t.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def precision_state() -> tuple:
    """The TF32 settings, to hand back to :func:`restore_precision`."""
    if _NEW_PRECISION_API:
        return tuple(t.fp32_precision for t in _precision_targets())
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def restore_precision(state: tuple) -> None:
    if _NEW_PRECISION_API:
        for t, v in zip(_precision_targets(), state):
            t.fp32_precision = v
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = state


def tf32_enabled() -> bool:
    """Whether CUDA matmuls may use TF32 (what a trace records as ``allow_tf32``)."""
    if _NEW_PRECISION_API:
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32)


def set_deterministic(allow_tf32: bool = False) -> None:
    """Deterministic algorithms everywhere; TF32 is an explicit, recorded choice (off by default)."""
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    set_tf32(allow_tf32)


@contextmanager
def deterministic(allow_tf32: bool = False):
    """:func:`set_deterministic` inside the block; the caller's settings are restored after it."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, precision_state())
    set_deterministic(allow_tf32)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2:4]
        restore_precision(before[4])


def resolve_device(device: str | None) -> torch.device:
    """``None``/"auto" picks CUDA when present; raises ValueError for an unusable device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no usable CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return dev


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """Hardware and library versions of this process, for the trace's metadata."""
    env = {
        "device": str(device),
        "device_name": cpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": None,
        "num_threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "allow_tf32": tf32_enabled(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["driver"] = _driver_version()
    return env


#: what must match for a replay to be trusted to reproduce bits; on the CPU the thread count too,
#: since a kernel may split a reduction differently over another number of threads
_REPLAY_KEYS = ("device_name", "torch", "cuda", "cudnn", "driver", "allow_tf32")


def same_environment(a: dict, b: dict) -> list[str]:
    """The replay-relevant keys on which two environments differ (empty: same)."""
    keys = _REPLAY_KEYS + (("num_threads",) if str(a.get("device", "")).startswith("cpu") else ())
    return [k for k in keys if a.get(k) != b.get(k)]


def differ_advice(differ: list[str], then: dict, now: dict, threads_how: str = "pass --threads {n}") -> str:
    """What differs between the environment a run was measured in (``then``) and this one
    (``now``), and what to do: a thread count alone is fixed with ``threads_how`` (the same
    machine), anything else needs the machine, device and libraries it ran with."""
    detail = ", ".join(f"{k}: {then.get(k)} then vs {now.get(k)} now" for k in differ)
    hardware = [k for k in differ if k != "num_threads"]
    todo = []
    if "num_threads" in differ:
        todo.append(threads_how.format(n=then.get("num_threads")) + " (the thread count it ran with)")
    if hardware:
        todo.append(f"run it where the same {', '.join(hardware)} are (a replay is bitwise only on the same "
                    "device model, driver and libraries)")
    return f"{detail}; to go on, {' and '.join(todo)}, or delete the folder to start over"


def environment_mismatch(where, then: dict, now: dict, what: str = "pass 1 ran with other settings",
                         threads_how: str = "pass --threads {n}") -> str | None:
    """The one message for a replay asked of another environment: ``"{where}: {what}: ..."`` with
    what differs and what to do (:func:`differ_advice`), or None when ``then`` and ``now`` agree
    on everything a bitwise replay depends on. Pass 1 resuming, pass 2 and the picture say it so."""
    differ = same_environment(then, now)
    if not differ:
        return None
    return f"{where}: {what}: {differ_advice(differ, then, now, threads_how)}"
