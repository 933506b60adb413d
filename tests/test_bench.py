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
    rc = load("replay_check").main(["--device", "cpu", "--width", "0.125", "--subset", "160", "--epochs", "2",
                                    "--batch-size", "64", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and res["ok"] and res["complete"] and res["last_batch_smaller"]
    assert res["replay"]["ok"] and res["replay"]["verified"]["final"] == "bitwise equal to theta*"
    assert res["replay"]["checkpoints_compared"] == 2 and res["replay"]["steps"] == 6  # 64 + 64 + 32 per epoch
    assert res["graphs"] == {} and not res["graphs_requested"]  # no graphs on the CPU
    assert set(res["deterministic_step"]) == {"alexnet", "resnet18", "resnet34", "vgg11", "vgg16"}
    assert res["env"]["torch"] == torch.__version__


def test_step_cost_writes_ratios(tmp_path):
    from deep.env import precision_state

    out = tmp_path / "sc.json"
    before = precision_state()
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
    assert precision_state() == before and not torch.are_deterministic_algorithms_enabled()
    assert res["complete"] and res["fell_back"] == {} and "graph_replay" not in r  # no graph loops on the CPU


@pytest.fixture
def graphs_on_the_cpu(monkeypatch):
    """Adam's capturable mode allowed on the CPU (as torch allows it on CUDA); returns the
    ``graphs_backend`` to give bench/replay_check.py's main for a stand-in backend class."""
    import importlib

    from test_graphs import StandIn

    adam = importlib.import_module("torch.optim.adam")
    supported = adam._get_capturable_supported_devices
    monkeypatch.setattr(adam, "_get_capturable_supported_devices", lambda *a, **k: [*supported(*a, **k), "cpu"])
    return StandIn


REPLAY_ARGS = ["--device", "cpu", "--network", "vgg11", "--width", "0.125", "--subset", "80", "--epochs", "8",
               "--batch-size", "32", "--cuda-graphs", "on"]


@pytest.mark.skipif(not default_jpeg_archive().exists(), reason="no shared CIFAR-10 JPEG archive")
def test_replay_check_passes_with_graphs_that_run_and_fails_when_they_fall_back(tmp_path, graphs_on_the_cpu):
    """With the strict stand-in every graph check passes: SGD, momentum and capturable Adam, graphs
    against no graphs, both passes on the graph path, a graph for the smaller last batch. With a
    backend whose every capture fails, the runs fall back to eager, their traces still equal the
    eager ones bit for bit, and the check must fail all the same."""
    from strict_graphs import StrictBackend
    from test_graphs import FailingBackend

    rc_mod = load("replay_check")
    out = tmp_path / "ok.json"
    assert rc_mod.main(REPLAY_ARGS + ["--out", str(out)], graphs_backend=graphs_on_the_cpu(StrictBackend)) == 0
    res = json.loads(out.read_text())
    assert res["ok"] and res["why_not"] == [] and set(res["graphs"]) == {"sgd", "momentum", "adam"}
    for name, g in res["graphs"].items():
        assert g["compare"]["bitwise_equal"] is True and g["graph_path_problems"] == [], name
        assert g["with_graphs"]["step_path"]["pass1"]["graphs"] == 2  # full and last batch
    assert res["graphs"]["adam"]["without_graphs"]["capturable"] is True

    out = tmp_path / "fallback.json"
    with pytest.warns(UserWarning, match="the pass goes on without CUDA graphs"):
        assert rc_mod.main(REPLAY_ARGS + ["--optimizers", "sgd", "--out", str(out)],
                           graphs_backend=graphs_on_the_cpu(FailingBackend)) == 1
    res = json.loads(out.read_text())
    assert not res["ok"] and res["complete"] and list(res["graphs"]) == ["sgd"]
    assert res["graphs"]["sgd"]["compare"]["bitwise_equal"] is True  # eager equals eager: not enough to pass
    assert any("pass1 ran 'eager (capture failed)'" in w for w in res["why_not"])


def test_replay_check_refuses_a_subset_without_a_smaller_last_batch(tmp_path):
    with pytest.raises(SystemExit) as exc:
        load("replay_check").main(["--device", "cpu", "--subset", "128", "--batch-size", "64",
                                   "--out", str(tmp_path / "r.json")])
    assert exc.value.code == 2
    why = json.loads((tmp_path / "r.json").read_text())["why_not"]
    assert why == ["the subset leaves no smaller last batch", "the replay run did not run"]


def test_step_cost_says_when_a_graph_loop_fell_back(tmp_path):
    from test_graphs import FailingBackend

    out = tmp_path / "sc.json"
    with pytest.warns(UserWarning, match="without CUDA graphs"):
        rc = load("step_cost").main(["--device", "cpu", "--networks", "vgg11", "--width", "0.125", "--steps", "2",
                                     "--warmup", "1", "--workers", "0", "--images", "256", "--runner-images", "128",
                                     "--runner-epochs", "1", "--batch-size", "64", "--out", str(out)],
                                    graphs_backend=FailingBackend)
    res = json.loads(out.read_text())
    r = res["ms_per_step"]["vgg11"]
    assert rc == 1 and res["fell_back"] == {"vgg11 (strict fp32)": ["graph_deterministic", "graph_record_only",
                                                                    "graph_replay"]}
    assert all(p["path"] == "eager (capture failed)" for p in r["graph_paths"].values())
    assert "graph_two_pass_over_typical" not in r["ratios"]  # no eager time passed off as a graph time


def test_step_cost_with_graphs_that_run_reports_their_path(tmp_path):
    from strict_graphs import StrictBackend

    out = tmp_path / "sc.json"
    assert load("step_cost").main(["--device", "cpu", "--networks", "vgg11", "--width", "0.125", "--steps", "2",
                                   "--warmup", "1", "--workers", "0", "--images", "256", "--runner-images", "128",
                                   "--runner-epochs", "1", "--batch-size", "64", "--out", str(out)],
                                  graphs_backend=StrictBackend) == 0
    r = json.loads(out.read_text())["ms_per_step"]["vgg11"]
    assert r["fell_back"] == [] and all(p["path"] == "cuda-graphs" for p in r["graph_paths"].values())
    # 3 eager warm-up steps, then the capture (replayed at once), then the 2 timed steps: replays only
    assert all((p["eager_steps"], p["replayed_steps"]) == (3, 1 + 2) for p in r["graph_paths"].values())
    assert "graph_two_pass_over_typical" in r["ratios"]


def test_the_bench_scripts_write_their_json_after_every_unit(tmp_path, monkeypatch):
    """Cut after the first network / level / run (as a phase's time limit cuts it): the JSON holds
    what finished, marked incomplete."""
    sc = load("step_cost")
    real, calls = sc.bench_network, []

    def cut_second(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sc, "bench_network", cut_second)
    out = tmp_path / "sc.json"
    with pytest.raises(KeyboardInterrupt):
        sc.main(["--device", "cpu", "--networks", "vgg11", "alexnet", "--width", "0.125", "--steps", "1",
                 "--warmup", "1", "--workers", "0", "--images", "128", "--runner-images", "128", "--runner-epochs",
                 "1", "--batch-size", "64", "--out", str(out)])
    res = json.loads(out.read_text())
    assert list(res["ms_per_step"]) == ["vgg11"] and res["complete"] is False

    conc = load("concurrency")
    levels = []

    def level(k, args, tmp):
        levels.append(k)
        if k == 2:
            raise KeyboardInterrupt
        return {"runs": k, "steps_per_s": 10.0, "runs_per_hour": 36.0, "trace_sha256": ["x"]}

    monkeypatch.setattr(conc, "one_level", level)
    out = tmp_path / "conc.json"
    with pytest.raises(KeyboardInterrupt):
        conc.main(["--device", "cpu", "--concurrency", "1", "2", "4", "--out", str(out)])
    res = json.loads(out.read_text())
    assert list(res["levels"]) == ["1"] and res["complete"] is False and levels == [1, 2]


def test_step_cost_refuses_tf32_on_the_cpu():
    with pytest.raises(SystemExit) as exc:
        load("step_cost").main(["--device", "cpu", "--tf32", "both"])
    assert exc.value.code == 2


def _device_run(tmp_path, *args, **env_extra):
    import os
    import subprocess

    out = tmp_path / "out"
    env = {**os.environ, "GPCHECK_DRY_RUN": "1", "OUT": str(out), "GPCHECK_CACHE": str(tmp_path / "cache"),
           "GPCHECK_REPORTS": str(tmp_path / "reports"), "PYTHON": sys.executable, **env_extra}
    res = subprocess.run(["bash", str(ROOT / "bench" / "device_run.sh"), *args], env=env, capture_output=True,
                         text=True, timeout=2400)
    lines = [json.loads(line) for line in (out / "phases.jsonl").read_text().splitlines()]
    return res, out, lines[0], {r["phase"]: r for r in lines[1:]}


@pytest.mark.slow  # about 2 minutes on 2 cores: .ci/run runs it on purpose, after the default run
@pytest.mark.skipif(not default_jpeg_archive().exists(), reason="no shared CIFAR-10 JPEG archive")
def test_device_script_dry_run(tmp_path):
    """`bench/device_run.sh all` on the CPU at tiny sizes: the phases' limits fit the 5-minute budget,
    every phase ran to its end inside its limit and left its file, and what comes back from a
    device fits its limits (one flat folder of at most 8 files of at most 16 MiB, no checkpoints)."""
    import tarfile

    res, out, head, phases = _device_run(tmp_path, "all")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert head["budget_s"] == 300 and sum(head["limits"].values()) <= head["budget_s"]
    assert list(phases) == ["preflight", "data", "checks", "cost", "concurrency", "lite-bn", "lite-optimizer", "pack"]
    want = {"preflight": "device.txt", "checks": "replay_check.json", "cost": "step_cost.json",
            "concurrency": "concurrency.json", "pack": "reports.tar.gz"}
    for name, r in phases.items():
        assert r["rc"] == 0 and not r["cut"] and not r["skipped"], r
        assert r["limit_s"] == head["limits"][name] and r["limit_here_s"] == r["limit_s"] * head["scale"]
        assert r["ran_s"] <= r["limit_here_s"], r
        if name in want:
            assert r["files"].get(want[name], 0) > 0, r
    files = sorted(p.name for p in out.iterdir())
    assert files == ["concurrency.json", "device.log", "device.txt", "phases.jsonl", "replay_check.json",
                     "reports.tar.gz", "step_cost.json"]
    assert all((out / f).is_file() and (out / f).stat().st_size < 16 * 2**20 for f in files)
    with tarfile.open(out / "reports.tar.gz") as tf:
        names = tf.getnames()
    for suite in ("bn", "optimizer"):
        assert f"./{suite}-smoke-cifar10-jpeg/report.json" in names
    assert not any(n.endswith(".pt") or "checkpoints" in n for n in names)
    for f in ("replay_check.json", "step_cost.json", "concurrency.json"):
        assert json.loads((out / f).read_text())["complete"] is True, f
    assert json.loads((out / "replay_check.json").read_text())["ok"]
    conc = json.loads((out / "concurrency.json").read_text())["levels"]
    assert sorted(conc) == ["1", "2"] and all(v["bitwise_equal_to_1"] for v in conc.values())
    assert "== done in" in (out / "device.log").read_text() and "exit 0" in (out / "device.log").read_text()


def test_device_script_cuts_a_phase_at_its_limit_and_goes_on(tmp_path):
    """A phase that outruns its limit is stopped (SIGINT, then SIGKILL), recorded as cut, and the
    script goes on to its end with exit 1."""
    res, out, _, phases = _device_run(tmp_path, "concurrency", T_CONC="3", T_PREFLIGHT="200",
                                         GPCHECK_DRY_SCALE="1")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    c = phases["concurrency"]
    assert c["cut"] is True and c["rc"] in (124, 130, 137) and c["limit_here_s"] == 3 and c["ran_s"] <= 3 + 1
    assert "== concurrency was cut at its limit" in (out / "device.log").read_text()


@pytest.mark.skipif(not default_jpeg_archive().exists(), reason="no shared CIFAR-10 JPEG archive")
def test_replay_check_writes_its_json_after_every_run(tmp_path, monkeypatch, graphs_on_the_cpu):
    from test_graphs import FakeBackend

    rc_mod = load("replay_check")
    real, calls = rc_mod.measured, []

    def cut_third(*a, **k):
        calls.append(a[0].optimizer)
        if len(calls) == 3:  # the replay run, sgd with graphs, then cut
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(rc_mod, "measured", cut_third)
    out = tmp_path / "rc.json"
    with pytest.raises(KeyboardInterrupt):
        rc_mod.main(REPLAY_ARGS[:-2] + ["--epochs", "1", "--cuda-graphs", "on", "--out", str(out)],
                    graphs_backend=graphs_on_the_cpu(FakeBackend))
    res = json.loads(out.read_text())
    assert res["replay"]["ok"] and list(res["graphs"]) == ["sgd"] and "with_graphs" in res["graphs"]["sgd"]
    assert res["complete"] is False and res["ok"] is False
