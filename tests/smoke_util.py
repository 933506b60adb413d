"""What the tests that run a real ``gpcheck deep`` share: the command, and how two suite folders
are compared (traces bit for bit, reports without clocks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deep.data import default_jpeg_archive

COLUMNS = ("loss", "loss_star", "inner", "update_sq", "dist_sq", "step", "epoch")
needs_archive = pytest.mark.skipif(not default_jpeg_archive().exists(), reason="no shared CIFAR-10 JPEG archive")


def gpcheck(args, cwd=None, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "validation.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def stable(obj):
    """report.json without what must differ between two runs: clocks and timestamps, and how many
    steps each invocation ran (a resumed pass ran in several; how many differs from a run that
    was not interrupted)."""
    volatile = ("wall_s", "ms_per_step", "utc", "command", "invocations")
    if isinstance(obj, dict):
        return {k: ({"path": v.get("path"), "fallback": v.get("fallback")} if k == "step_path" and isinstance(v, dict)
                    else stable(v)) for k, v in obj.items() if not any(w in k for w in volatile)}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


def traces_of(suite_dir: Path) -> dict:
    out = {}
    for npz in sorted(suite_dir.glob("runs/*/trace.npz")):
        with np.load(npz) as z:
            out[npz.parent.name] = {c: z[c].tobytes() for c in COLUMNS}
    return out


SMOKE = ["deep", "--suite", "skip", "--preset", "smoke", "--quiet"]


def _same_as_reference(out: Path, ref: Path, moments) -> None:
    got, want = out / "skip-smoke-cifar10-jpeg", ref / "skip-smoke-cifar10-jpeg"
    assert traces_of(got) == traces_of(want), moments
    assert stable(json.loads((got / "report.json").read_text())) == \
        stable(json.loads((want / "report.json").read_text())), moments
    assert not list(got.rglob(".*.tmp")) and not list(got.rglob("checkpoints/*.pt")), moments


