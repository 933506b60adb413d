"""`gpcheck deep --plan`: steps and time per run from measured ms/step, running nothing."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from deep.plan import (PARAMS, PROTOTYPE, TRAIN_FLOPS, StepCosts, pass_costs, plan_suite, protocol_table,
                       prototype_costs, render_plan, theta_star_forwards)
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
                                             bench_results=tmp_path / "none", timings=TIMED)}
    assert list(planned) == [r.name for r in get_suite("skip", "cpu", 1).runs]
    r = planned["resnet18-first"]
    assert r.steps == 40 * 4  # 512 images, batch 128
    assert r.ms_per_step == 400.0  # median of 300, 400, 500 (same device, same extras)
    assert r.hours == 160 * 400.0 / 3.6e6
    assert planned["resnet18-all"].done and planned["resnet18-all"].hours == 0.0
    # nothing measured for resnet34 on Dev X: steps timed here (the cache stands in for the timing)
    r34 = planned["resnet34-first"]
    assert r34.source.startswith("timed here") and r34.ms_per_step == pytest.approx(
        sum(pass_costs(TIMED[("resnet34", 0.25, 128)], theta_star_forwards(40, extras_for("cpu").to_dict()))))
    text = render_plan(list(planned.values()), "Plan", "Dev X", gpu=False)
    assert "for the 4 of 4 runs left to measure (1 of 5 already finished)" in text


TIMED = {(n, 0.25, 128): StepCosts(100.0, 30.0, 2.0, "timed here (test)", True) for n in ("resnet34",)}


def _step_cost_json(path, device, graphs=True, fell_back=()):
    loops = {"deterministic": 9.0, "record_only": 10.0, "replay": 14.0}
    r = {**loops, "ratios": {}}
    if graphs:
        r.update({f"graph_{k}": v / 2 for k, v in loops.items()})
        r["fell_back"] = list(fell_back)
    path.write_text(json.dumps({"env": {"device_name": device}, "args": {"width": 1.0, "batch_size": 128},
                                "ms_per_step": {"resnet18": r}}))


def test_plan_uses_the_step_costs_measured_on_this_device_in_bench_results(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    _step_cost_json(res / "step_cost_h200.json", "NVIDIA H200")
    planned = plan_suite("bn", "paper", "cifar10", "NVIDIA H200", tmp_path, bench_results=res, device="cuda",
                         committed=None)
    r18 = [r for r in planned if r.network == "resnet18"]
    # graph loops: train 4.5, forward 7 - 5 = 2, the Gram row (5 - 4.5) / 2 (theta* and the update); paper
    # extras: 4.15 forwards
    f = theta_star_forwards(150, extras_for("paper").to_dict())
    assert f == pytest.approx(2 + (75 + 112 + 135) / 150)
    want = 4.5 + 4.5 + f * 2.0 + (f + 2) * 0.5 / 2
    assert r18 and all(r.ms_per_step == pytest.approx(want) and r.steps == 150 * 391 and r.measured for r in r18)
    assert all("CUDA graphs loops" in r.source for r in r18)
    # the others: the model's estimate, labelled so, with a range
    others = [r for r in planned if r.network != "resnet18"]
    assert others and all(not r.measured and r.ms_range[0] < r.ms_per_step < r.ms_range[1] for r in others)
    text = render_plan(planned, "Plan", "NVIDIA H200", gpu=True)
    assert "(est.)" in text and "an ESTIMATE for 9 of them" in text
    # loops that fell back to eager are read as the eager loops they were
    _step_cost_json(res / "step_cost_h200.json", "NVIDIA H200", fell_back=["graph_replay"])
    r = next(r for r in plan_suite("bn", "paper", "cifar10", "NVIDIA H200", tmp_path, bench_results=res,
                                   device="cuda", committed=None) if r.network == "resnet18")
    assert "eager loops" in r.source and r.ms_per_step == pytest.approx(9 + 9 + f * 4.0 + (f + 2) * 1.0 / 2)


def test_the_estimate_model_for_a_fresh_gpu_folder(tmp_path):
    """A GPU with nothing measured: the model from the prototype's H200 step at strict fp32, with the
    presets' theta* forwards and the float64 Gram, labelled an estimate; its ResNet-18 pass 2 is well
    above the prototype's 7.3 ms (TF32 convolutions, one theta* forward)."""
    planned = plan_suite("bn", "paper", "cifar10", "NVIDIA H200", tmp_path, bench_results=tmp_path / "none",
                         device="cuda", committed=None)
    assert all(not r.measured and "estimate" in r.source for r in planned)
    f = theta_star_forwards(150, extras_for("paper").to_dict())
    lo, mid, hi = (pass_costs(prototype_costs("resnet18", case=c), f) for c in range(3))
    assert lo[1] < mid[1] < hi[1] and mid[1] > 2 * PROTOTYPE["replay_ms"] and mid[0] > PROTOTYPE["train_ms"]
    assert "not on NVIDIA A100" in plan_suite("bn", "paper", "cifar10", "NVIDIA A100", tmp_path,
                                              bench_results=tmp_path / "none", device="cuda",
                                              committed=None)[0].source


def test_the_model_s_flop_and_parameter_tables_are_the_networks(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    from deep.models import MODEL_NAMES, build_model

    assert set(TRAIN_FLOPS) == set(MODEL_NAMES) == set(PARAMS)
    for n in MODEL_NAMES:
        m = build_model(n, 10)
        with FlopCounterMode(display=False) as fc:
            m(torch.randn(2, 3, 32, 32)).sum().backward()
        assert fc.get_total_flops() / 2 == TRAIN_FLOPS[n], n
        assert sum(p.numel() for p in m.parameters()) == PARAMS[n], n


def test_the_readme_gpu_hours_table_is_the_model_s():
    rows = protocol_table()
    total = {k: sum(r[k] for r in rows) for k in ("runs", "steps", "low", "central", "high")}
    assert total["runs"] == 74 and total["steps"] == 4_340_100
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for r in rows:
        line = (f"| {r['network']} | {r['runs']} | {r['steps']:,} | {r['ms']:.1f} | "
                f"{r['low']:.1f} - {r['central']:.1f} - {r['high']:.1f} |")
        assert line in readme, line
    assert f"| all | 74 | 4,340,100 | | {total['low']:.0f} - {total['central']:.0f} - {total['high']:.0f} |" in readme


def test_steps_timed_here_when_nothing_was_measured_on_this_cpu(tmp_path):
    timings = {}
    planned = plan_suite("bn", "smoke", "cifar10-jpeg", "A CPU never seen", tmp_path, bench_results=tmp_path / "x",
                         committed=None, timings=timings)
    assert set(timings) == {(n, 0.125, 64) for n in ("resnet18", "resnet34", "vgg11", "vgg16")}  # once each
    assert all(r.source.startswith("timed here") and r.ms_per_step > 0 and r.measured for r in planned)
    assert all(c.train > 0 and c.forward > 0 and c.record_row > 0 for c in timings.values())


def test_a_folder_whose_runs_are_all_finished_says_so(tmp_path):
    for r in get_suite("skip", "smoke").runs:
        _fake_run(tmp_path, "skip-smoke-cifar10-jpeg", r.name, r.network, 1.0, 2.0, width=0.125)
    planned = plan_suite("skip", "smoke", "cifar10-jpeg", "Dev X", tmp_path, bench_results=tmp_path / "x",
                         committed=None)
    assert all(r.done for r in planned)
    text = render_plan(planned, "Plan", "Dev X", gpu=False)
    assert text.splitlines()[-1].startswith(f"All {len(planned)} runs are finished under the output folder: nothing")
    assert "Total: 0.00" not in text


def test_plan_option_runs_nothing(tmp_path):
    res = CliRunner().invoke(main, ["deep", "--suite", "skip", "--preset", "cpu", "--plan", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "Plan: `skip` suite, `cpu` preset" in res.output and "resnet34-all-s2" in res.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_plan_of_the_whole_protocol_lists_every_suite_and_data_set_and_totals_the_queue(tmp_path, monkeypatch):
    import math

    import deep.plan
    from deep.suites import SUITES, get_suite

    timed = []  # full-width networks on the CPU: the timing stands in (tested on the smoke preset above)
    monkeypatch.setattr(deep.plan, "time_steps", lambda *a, **k: timed.append(a) or StepCosts(
        1000.0, 300.0, 10.0, "timed here (test)", True))
    res = CliRunner().invoke(main, ["deep", "--suite", "all", "--preset", "paper", "--dataset", "both", "--plan",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for s in SUITES:
        for ds in ("cifar10", "cifar100"):
            assert f"Plan: `{s}` suite, `paper` preset, {ds}" in res.output
    runs = [r for s in SUITES for r in get_suite(s, "paper").runs] * 2
    steps = sum(r.epochs * math.ceil(50_000 / r.batch_size) for r in runs)
    last = res.output.splitlines()[-1]
    assert last.startswith(f"All of the queue ({steps:,} steps per pass): Total: ")
    assert f"for the {len(runs)} of {len(runs)} runs left to measure" in last
    assert len(timed) == 5  # each network timed once for the whole queue
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
