"""The device scripts in bench/ run end to end (on the CPU here, tiny), so a GPU session only runs them."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from deep.data import default_jpeg_archive

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.skipif(not default_jpeg_archive().exists(), reason="no shared CIFAR-10 JPEG archive")
def test_replay_check_runs_and_verifies(tmp_path):
    out = tmp_path / "rc.json"
    rc = load("replay_check").main(["--device", "cpu", "--width", "0.125", "--subset", "128", "--epochs", "2",
                                    "--batch-size", "64", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0
    assert res["replay"]["ok"] and res["replay"]["verified"]["final"] == "bitwise equal to theta*"
    assert res["replay"]["checkpoints_compared"] == 2 and res["replay"]["steps"] == 4
    assert set(res["deterministic_step"]) == {"alexnet", "resnet18", "resnet34", "vgg11", "vgg16"}
    assert res["env"]["torch"] == torch.__version__


def test_step_cost_writes_ratios(tmp_path):
    out = tmp_path / "sc.json"
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    load("step_cost").main(["--device", "cpu", "--networks", "vgg11", "--width", "0.125", "--steps", "2",
                            "--warmup", "1", "--workers", "0", "--images", "256", "--runner-images", "128",
                            "--runner-epochs", "1", "--batch-size", "64", "--out", str(out)])
    res = json.loads(out.read_text())
    r = res["ms_per_step"]["vgg11"]
    for k in ("typical", "resident", "deterministic", "record_only", "replay", "runner_two_pass_per_step"):
        assert r[k] > 0
    assert r["ratios"]["two_pass_over_typical"] == pytest.approx((r["deterministic"] + r["replay"]) / r["typical"])
    assert r["runner_replay_verified"]["final"] == "bitwise equal to theta*"
    # one stated precision for every loop (strict fp32 on the CPU), and the caller's settings kept
    assert r["tf32"] is False and r["runner_allow_tf32"] is False and res["args"]["tf32"] == "off"
    assert "ms_per_step_tf32" not in res
    assert torch.backends.cudnn.allow_tf32 == cudnn_tf32 and not torch.are_deterministic_algorithms_enabled()


def test_step_cost_refuses_tf32_on_the_cpu():
    with pytest.raises(SystemExit) as exc:
        load("step_cost").main(["--device", "cpu", "--tf32", "both"])
    assert exc.value.code == 2


@pytest.mark.skipif(not default_jpeg_archive().exists(), reason="no shared CIFAR-10 JPEG archive")
def test_device_script_dry_run(tmp_path):
    """`bench/device_run.sh all` on the CPU at tiny sizes: every phase runs and what comes back from a
    device fits its limits (at most 8 files of at most 16 MiB, no checkpoints)."""
    import os
    import subprocess
    import tarfile

    out = tmp_path / "out"
    env = {**os.environ, "GPCHECK_DRY_RUN": "1", "OUT": str(out), "GPCHECK_CACHE": str(tmp_path / "cache"),
           "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "bench" / "device_run.sh"), "all"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["concurrency.json", "device.log", "device.txt", "lite-reports.tar.gz", "replay_check.json",
                     "step_cost.json"]
    assert all((out / f).stat().st_size < 16 * 2**20 for f in files)
    with tarfile.open(out / "lite-reports.tar.gz") as tf:
        names = tf.getnames()
    for suite in ("bn", "optimizer"):
        assert f"./{suite}-smoke-cifar10-jpeg/report.json" in names
    assert not any(n.endswith(".pt") or "checkpoints" in n for n in names)
    assert json.loads((out / "replay_check.json").read_text())["replay"]["ok"]
    conc = json.loads((out / "concurrency.json").read_text())["levels"]
    assert sorted(conc) == ["1", "2"] and all(v["bitwise_equal_to_1"] for v in conc.values())
    assert "== done, exit 0" in (out / "device.log").read_text()
