"""`gpcheck deep --plan`: steps and time per run from measured ms/step, running nothing."""

import json

from click.testing import CliRunner

from deep.plan import plan_suite, render_plan
from deep.runner import extras_for
from deep.suites import get_suite
from validation.cli import main


def _fake_run(root, suite_folder, name, network, ms1, ms2, device="Dev X", width=0.25, extras=None):
    d = root / suite_folder / "runs" / name
    d.mkdir(parents=True)
    (d / "trace.json").write_text(json.dumps({
        "run": {"network": network, "width": width}, "env": {"device_name": device},
        "setup": {"batch_size": 128, "extras": extras if extras is not None else extras_for("cpu").to_dict()},
        "pass1": {"ms_per_step": ms1}, "pass2": {"ms_per_step": ms2}}))


def test_plan_times_are_steps_times_measured_ms(tmp_path):
    _fake_run(tmp_path, "other-cpu-cifar10-jpeg", "resnet18-a", "resnet18", 100.0, 200.0)
    _fake_run(tmp_path, "other-cpu-cifar10-jpeg", "resnet18-b", "resnet18", 100.0, 400.0)
    _fake_run(tmp_path, "other-cpu-cifar10-jpeg", "resnet18-c", "resnet18", 1.0, 1.0, extras={"other": True})
    _fake_run(tmp_path, "other-cpu-cifar10-jpeg", "resnet18-d", "resnet18", 1.0, 1.0, device="Dev Y")
    # a finished run of this very suite: done, costs nothing
    _fake_run(tmp_path, "skip-cpu-cifar10-jpeg", "resnet18-all", "resnet18", 100.0, 300.0)
    planned = {r.name: r for r in plan_suite("skip", "cpu", "cifar10-jpeg", "Dev X", tmp_path, seeds=1,
                                             bench_results=tmp_path / "none")}
    assert list(planned) == [r.name for r in get_suite("skip", "cpu", 1).runs]
    r = planned["resnet18-first"]
    assert r.steps == 40 * 4  # 512 images, batch 128
    assert r.ms_per_step == 400.0  # median of 300, 400, 500 (same device, same extras)
    assert r.hours == 160 * 400.0 / 3.6e6
    assert planned["resnet18-all"].done and planned["resnet18-all"].hours == 0.0
    assert planned["resnet34-first"].hours is None and planned["resnet34-first"].source == "not measured on this device"
    text = render_plan(list(planned.values()), "Plan", "Dev X", gpu=True)
    assert "GPU-hours" in text and "unknown for 3 (resnet34)" in text and "bench/step_cost.py" in text


def test_plan_falls_back_on_bench_results(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "step_cost_h200.json").write_text(json.dumps({
        "env": {"device_name": "NVIDIA H200"}, "args": {"width": 1.0, "batch_size": 128},
        "ms_per_step": {"resnet18": {"runner_pass1": 5.0, "runner_pass2": 7.0}}}))
    planned = plan_suite("bn", "paper", "cifar10", "NVIDIA H200", tmp_path, bench_results=res)
    r18 = [r for r in planned if r.network == "resnet18"]
    assert r18 and all(r.ms_per_step == 12.0 and r.steps == 150 * 391 for r in r18)
    assert all(r.hours is None for r in planned if r.network != "resnet18")


def test_plan_option_runs_nothing(tmp_path):
    res = CliRunner().invoke(main, ["deep", "--suite", "skip", "--preset", "cpu", "--plan", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "Plan: `skip` suite, `cpu` preset" in res.output and "resnet34-all-s2" in res.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_plan_of_the_whole_protocol_lists_every_suite_and_data_set_and_totals_the_queue(tmp_path):
    import math

    from deep.suites import SUITES, get_suite

    res = CliRunner().invoke(main, ["deep", "--suite", "all", "--preset", "paper", "--dataset", "both", "--plan",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for s in SUITES:
        for ds in ("cifar10", "cifar100"):
            assert f"Plan: `{s}` suite, `paper` preset, {ds}" in res.output
    runs = [r for s in SUITES for r in get_suite(s, "paper").runs] * 2
    steps = sum(r.epochs * math.ceil(50_000 / r.batch_size) for r in runs)
    last = res.output.splitlines()[-1]
    assert last.startswith("All of the queue: ") and f" of {len(runs)} runs ({steps:,} steps per pass)" in last
    assert not any(tmp_path.iterdir())


def _concurrency(path, device, levels):
    path.write_text(json.dumps({"env": {"device_name": device}, "levels": {
        str(k): {"runs": k, "steps_per_s": sps, "speedup_over_1": sps / levels[0][1], "bitwise_equal_to_1": eq}
        for k, sps, eq in levels}}))


def test_the_plan_advises_the_jobs_that_won_on_this_gpu(tmp_path):
    from deep.plan import best_concurrency, concurrency_advice

    res = tmp_path / "results"
    res.mkdir()
    assert best_concurrency("NVIDIA H200", res) is None
    assert "not measured on NVIDIA H200" in concurrency_advice("NVIDIA H200", 1, res)
    # 4 at once is fastest but its traces differed: it does not count; 2 wins
    _concurrency(res / "concurrency_h200.json", "NVIDIA H200", [(1, 100.0, True), (2, 180.0, True), (4, 250.0, False)])
    _concurrency(res / "concurrency_other.json", "NVIDIA H100", [(1, 100.0, True), (4, 300.0, True)])
    c = best_concurrency("NVIDIA H200", res)
    assert (c.runs, c.speedup) == (2, 1.8) and c.where.endswith("concurrency_h200.json")
    text = concurrency_advice("NVIDIA H200", 8, res)
    assert "`--jobs 16` on 8 GPU(s)" in text and "1.80x one run" in text
    _concurrency(res / "concurrency_h200.json", "NVIDIA H200", [(1, 100.0, True), (2, 90.0, True)])
    assert "1 was fastest" in concurrency_advice("NVIDIA H200", 2, res) and "`--jobs 2`" in concurrency_advice(
        "NVIDIA H200", 2, res)
