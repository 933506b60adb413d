"""The transformer suite's GPU presets and its --plan (deep/transformer_plan.py): where each run's
ms/step comes from (finished runs of this device, else a timing here, else no estimate)."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from deep.algorithmic import modular_addition
from deep.transformer_plan import _device_name, plan, render
from deep.transformer_suite import PRESETS, Config, model_fn
from validation import cli


def _finished(root, preset, run, spec, ms1, ms2, device_name):
    d = root / f"transformer-{preset}" / "runs" / run
    d.mkdir(parents=True)
    (d / "trace.json").write_text(json.dumps({"run": {"suite": "transformer", "seed": 0, **spec},
                                              "pass1": {"ms_per_step": ms1}, "pass2": {"ms_per_step": ms2},
                                              "env": {"device_name": device_name}}))


def test_layers_enter_a_run_spec_only_when_not_one_and_build_that_many_blocks():
    assert "layers" not in Config().spec()  # the committed cpu runs' setup.json stays theirs
    lite = PRESETS["lite"].base
    assert lite.spec()["layers"] == 2 and PRESETS["lite"].sized_for == "gpu" and lite.train_fraction == 0.4
    task = modular_addition(p=lite.p, train_fraction=lite.train_fraction, seed=0)
    assert len(model_fn(lite, task, 0)().blocks) == 2 and len(model_fn(Config(), task, 0)().blocks) == 1


def test_the_plan_takes_finished_runs_then_a_timing_here(tmp_path):
    here = _device_name("cpu")
    base = PRESETS["cpu"].base
    _finished(tmp_path, "cpu", "base-s0", base.spec(), 10.0, 20.0, here)  # done in the output folder
    _finished(tmp_path / "other", "cpu", "base-s9", base.spec(), 11.0, 21.0, here)  # a committed run
    _finished(tmp_path / "other", "cpu", "base-s8", base.spec(), 1e6, 1e6, "another CPU")  # not this device
    calls = []

    def timer(c, device):
        calls.append((c, device))
        return 1.0, 2.0

    planned, name, note = plan("cpu", 1, tmp_path, "cpu", committed=tmp_path / "other", timer=timer)
    by = {p.name: p for p in planned}
    assert name == here and note == ""
    assert by["base-s0"].done and by["base-s0"].hours == 0.0
    n_train = len(modular_addition(p=base.p, train_fraction=base.train_fraction, seed=0).y_train)
    assert by["base-s0"].steps == base.epochs * -(-n_train // base.batch_size)
    # the base's shape and variant: the median of the two finished runs on this device (30, 32)
    assert by["base-s0"].ms_per_step == 31.0 and "2 finished run(s) of this variant" in by["base-s0"].source
    # another variant of the same shape: the runs of this shape
    assert by["gelu-s0"].ms_per_step == 31.0 and "this shape" in by["gelu-s0"].source
    # the lite preset's shape (2 layers) was never measured: timed here, once per variant
    planned, _, _ = plan("lite", 1, tmp_path, "cpu", committed=tmp_path / "other", timer=timer)
    assert {p.ms_per_step for p in planned} == {3.0} and len(calls) == len(PRESETS["lite"].variants)
    assert all(c.layers == 2 for c, _ in calls)
    text = render("lite", planned, name, "", "gpu")
    assert "sized for one GPU" in text and "Total:" in text and f"{planned[0].steps:,}" in text


def test_time_steps_times_a_real_step_here():
    from deep.transformer_plan import time_steps

    c = replace(PRESETS["smoke"].base)
    p1, p2 = time_steps(c, "cpu", steps=1)
    assert 0 < p1 < p2  # pass 2 adds the forwards at theta* and the recorder's row


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_here_gets_no_estimate_and_says_so(tmp_path):
    planned, name, note = plan("paper", 1, tmp_path, "cuda", committed=None, timer=lambda c, d: (1.0, 2.0))
    assert all(p.ms_per_step is None for p in planned) and name == "cuda"
    assert "no estimate" in note and "this machine's CPU" in note
    assert "unknown for 9 of the 9 runs" in render("paper", planned, name, note, "gpu")
    bad = CliRunner().invoke(cli.main, ["deep", "--suite", "transformer", "--preset", "lite", "--device", "cuda",
                                        "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "no CUDA device" in bad.output and "Traceback" not in bad.output


def test_the_cli_plans_the_gpu_presets_and_refuses_a_bad_device(tmp_path):
    ok = CliRunner().invoke(cli.main, ["deep", "--suite", "transformer", "--preset", "smoke", "--plan", "--out",
                                       str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert "Total:" in ok.output and "base-s0" in ok.output
    bad = CliRunner().invoke(cli.main, ["deep", "--suite", "transformer", "--preset", "smoke", "--device", "tpu",
                                        "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--device tpu" in bad.output and "Traceback" not in bad.output
