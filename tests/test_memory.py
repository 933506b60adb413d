"""Pass 2's peak memory, in parameter-sized copies, measured (peak RSS of fresh processes) by
bench/memory.py on a network whose parameters dominate its memory."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_pass2_holds_one_copy_per_theta_star_and_one_for_theta_k(tmp_path):
    spec = importlib.util.spec_from_file_location("memory", ROOT / "bench" / "memory.py")
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    out = tmp_path / "memory.json"
    assert memory.main(["--images", "64", "--out", str(out)]) == 0
    rows = {(r["phase"], r["extras"]): r for r in json.loads(out.read_text())["rows"]}
    plain = rows["plain", "none"]["copies"]
    # training with SGD + momentum: parameters, gradients, momentum, and the gradient that
    # backward makes before it is added into the (flat) gradient buffer
    assert 3.5 < plain < 4.5
    # pass 2 adds theta* and the copy of theta_k, nothing parameter-sized per step (it held 14
    # copies more before flat buffers); the bound: at most 5 copies beyond what training
    # itself needs (4 here: parameters, gradients, theta*, theta_k, and at most one more)
    assert rows["pass2", "none"]["copies"] - plain < 2.5
    # the presets' extras: the random theta* and the sensitivity check's iterate at 50% (a run of
    # 2 epochs has no other inside it): one copy each, the gradient columns none
    assert rows["pass2", "all"]["copies"] - plain < 4.5
    # pass 1 keeps the iterates that start this and the previous epoch (to fall back on when a run
    # diverges) and streams its checkpoints to disk
    assert rows["pass1", "none"]["copies"] - plain < 3.5
