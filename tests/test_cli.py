"""The `gpcheck` command: `check` on good and bad traces, errors as one line with exit status 2."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gamma_theory import Trace, check_trace, load_trace
from gamma_theory import problems as P
from validation import cli
from validation.util import jsonable

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def good_trace(tmp_path_factory):
    """A small least-squares SGD path (closed-form PASS), saved as a trace file."""
    prob = P.least_squares(n=8, d=20, batch_size=2, epochs=30, seed=1)
    res = P.run_path(prob, "sgd", seed=1)
    return res.trace.save(tmp_path_factory.mktemp("good") / "ls-sgd")


def _cols(n=6, **override):
    cols = dict(loss=np.linspace(1, 0.1, n), loss_star=np.zeros(n), inner=np.ones(n),
                update_sq=np.ones(n) * 0.1, dist_sq=np.linspace(2, 1, n), lr=0.1, dist0_sq=2.0)
    cols.update(override)
    return {k: v for k, v in cols.items() if v is not None}


def _bad_files(tmp_path, good_trace):
    """name -> path of a trace file that cannot be judged."""
    out = {"missing": tmp_path / "does-not-exist.npz"}
    data = Path(good_trace).read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    out["truncated"] = tmp_path / "truncated.npz"
    np.savez(tmp_path / "nocol.npz", **_cols(inner=None))
    out["missing column"] = tmp_path / "nocol.npz"
    loss = np.linspace(1, 0.1, 6)
    loss[3] = np.nan
    np.savez(tmp_path / "nan.npz", **_cols(loss=loss))
    out["NaN column"] = tmp_path / "nan.npz"
    (tmp_path / "text.npz").write_text("not a zip\nat all\n")
    out["not npz"] = tmp_path / "text.npz"
    (tmp_path / "folder.npz").mkdir()
    out["folder"] = tmp_path / "folder.npz"
    return out


def _stderr(result):
    return result.stderr if hasattr(result, "stderr") else result.output


def test_share_positive_of_no_step_is_not_a_percentage(tmp_path):
    """Every loss below theta*'s (all gaps negative): no per-step upper bound exists, and the
    summary says so instead of '100% of 0 steps'."""
    n = 6
    np.savez(tmp_path / "neg.npz", **_cols(loss=np.full(n, 0.5), loss_star=np.ones(n)))
    r = CliRunner().invoke(cli.main, ["check", str(tmp_path / "neg.npz")])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "share positive" in ln)
    assert "of 0 steps" not in line and "n/a: no step has gap > 0" in line and "(6 with gap < 0, 0 with gap = 0)" in line


@pytest.mark.parametrize("command", [["ladder"], ["deep", "--suite", "bn", "--quiet"]])
def test_out_that_cannot_be_created_is_one_line_naming_it(command):
    r = subprocess.run([sys.executable, "-m", "validation.cli", *command, "--out", "/proc/x/gpcheck"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.startswith("gpcheck: error: --out /proc/x/gpcheck: cannot create this folder (") and \
        r.stderr.rstrip().endswith("pass --out a folder you can write (it is created if missing)") and \
        r.stderr.count("\n") == 1, r.stderr


def test_an_error_after_the_progress_bar_starts_on_a_line_of_its_own(tmp_path):
    """The runs bar is drawn, then the data cannot be loaded: the bar is closed first."""
    r = subprocess.run([sys.executable, "-m", "validation.cli", "deep", "--suite", "bn", "--out", str(tmp_path / "o"),
                        "--data-root", str(tmp_path / "none.tar.gz")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.split("\n")
    err = [ln for ln in lines if "gpcheck: error:" in ln]
    assert len(err) == 1 and err[0].startswith("gpcheck: error: ") and "0/12" in r.stderr, repr(r.stderr)


def test_check_json_equals_check_trace(good_trace):
    result = CliRunner().invoke(cli.main, ["check", str(good_trace), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    want = jsonable(check_trace(load_trace(good_trace)).to_dict())
    assert got == want
    assert got["holds"] is True
    assert got["definition_1"]["holds"] is True
    assert got["definition_1"]["gamma_max"] > 0
    assert got["definition_1"]["violating_steps"] == []
    tr = load_trace(good_trace)
    assert got["definition_1"]["gamma_max_x_dist0_sq"] == got["definition_1"]["gamma_max"] * tr.dist0_sq
    assert got["theorem_1"]["distance_monotone"]["holds"] is True
    assert got["theorem_1"]["rate_bound"]["holds"] is True


def test_check_summary_is_readable(good_trace):
    result = CliRunner().invoke(cli.main, ["check", str(good_trace)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("verdict: PASS", "Definition 1", "feasible gamma:   (0, ", "largest gamma:",
                 "share positive:   100%", "violating steps:  0", "item 1", "item 2", "item 3",
                 "recording identity"):
        assert text in out, text
    assert "Traceback" not in result.output


def test_check_fail_is_a_finding_not_an_error(tmp_path):
    # step 2's update points away from theta*: inequality (2) breaks there
    inner = np.ones(6)
    inner[2] = -1.0
    Trace(**_cols(inner=inner), epoch=np.arange(6) // 2).save(tmp_path / "bad")
    result = CliRunner().invoke(cli.main, ["check", str(tmp_path / "bad.npz")])
    assert result.exit_code == 0, result.output
    assert "verdict: FAIL" in result.stdout
    assert "holds:            no" in result.stdout
    assert "feasible gamma:   empty" in result.stdout
    assert "first: 2" in result.stdout
    d = json.loads(CliRunner().invoke(cli.main, ["check", str(tmp_path / "bad.npz"), "--json"]).stdout)
    assert d["definition_1"]["holds"] is False and d["definition_1"]["violating_steps"] == [2]


@pytest.mark.parametrize("kind", ["missing", "truncated", "missing column", "NaN column", "not npz", "folder"])
def test_bad_input_one_line_exit_2(tmp_path, good_trace, kind):
    path = _bad_files(tmp_path, good_trace)[kind]
    for args in (["check", str(path)], ["check", str(path), "--json"]):
        result = CliRunner().invoke(cli.main, args)
        assert result.exit_code == 2, (kind, result.output)
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
        err = _stderr(result)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("gpcheck: error: ")
        assert str(path) in lines[0]
        assert "Traceback" not in result.output
        assert result.stdout == ""


def test_bad_input_messages_say_what_is_wrong(tmp_path, good_trace):
    files = _bad_files(tmp_path, good_trace)
    expect = {"missing": "no such file", "truncated": "not a readable", "missing column": "missing 'inner'",
              "NaN column": "'loss' is not finite", "folder": "folder"}
    for kind, text in expect.items():
        result = CliRunner().invoke(cli.main, ["check", str(files[kind])])
        assert text in _stderr(result), (kind, _stderr(result))


def _script():
    script = shutil.which("gpcheck") or str(Path(sys.executable).with_name("gpcheck"))
    return script if Path(script).exists() else None


def _one_line_error(proc, path):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpcheck: error: ") and str(path) in lines[0]


def test_real_process_no_traceback(tmp_path, good_trace):
    """`python -m validation.cli` as a user runs it: bad file -> one line, good file -> JSON."""
    bad = _bad_files(tmp_path, good_trace)["truncated"]
    cmd = [sys.executable, "-m", "validation.cli"]
    proc = subprocess.run(cmd + ["check", str(bad)], capture_output=True, text=True, cwd=REPO, timeout=120)
    _one_line_error(proc, bad)
    proc = subprocess.run(cmd + ["check", str(good_trace), "--json"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["holds"] is True


@pytest.mark.skipif(_script() is None, reason="console script gpcheck not installed")
def test_console_script_no_traceback(tmp_path):
    missing = tmp_path / "nope.npz"
    proc = subprocess.run([_script(), "check", str(missing)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    _one_line_error(proc, missing)


def test_fail_helper_prints_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.fail("bad.npz: first line\nsecond line")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "gpcheck: error: bad.npz: first line second line\n"


def test_version_and_help():
    r = CliRunner().invoke(cli.main, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("gpcheck, version ")
    r = CliRunner().invoke(cli.main, ["--help"])
    assert r.exit_code == 0 and "ladder" in r.output and "check" in r.output


def test_ladder_command_prints_summary(monkeypatch, tmp_path):
    import validation.ladder as L

    fake = {
        "figure": "figures/ladder.png", "n_pass": 1, "n_runs": 2, "wall_s": 1.25,
        "runs": [
            {"rung": "least_squares", "optimizer": "sgd", "verdict": "PASS",
             "check": {"definition_1": {"holds": True, "gamma_max": 0.0239, "n_violating": 0}}},
            {"rung": "mlp_relu", "optimizer": "sgd", "verdict": "FAIL",
             "check": {"definition_1": {"holds": False, "gamma_max": None, "n_violating": 80}}},
        ],
    }
    seen = {}

    def run_ladder(out_dir, seed, progress):
        seen.update(out_dir=out_dir, seed=seed)
        return fake

    monkeypatch.setattr(L, "run_ladder", run_ladder)
    r = CliRunner().invoke(cli.main, ["ladder", "--out", str(tmp_path), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert seen == {"out_dir": str(tmp_path), "seed": 3}
    assert f"{tmp_path}/report.md" in r.stdout
    assert "least_squares/sgd  PASS  gamma_max 2.39e-02" in r.stdout
    assert "mlp_relu/sgd       FAIL  gamma_max n/a (80 violating steps)" in r.stdout
    assert "1 of 2 PASS" in r.stdout


def _deep_tasks(monkeypatch, tmp_path, args, env_threads=None, load=0.1, cores=2):
    """Run `gpcheck deep` with the queue replaced: the tasks it would measure, and its output."""
    import os

    import deep.runner as R

    seen = {}

    def run_queue(tasks, **kw):
        seen["tasks"] = tasks
        return []

    monkeypatch.setattr(R, "run_queue", run_queue)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    if env_threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env_threads)
    import torch

    before = torch.get_num_threads()
    try:
        r = CliRunner().invoke(cli.main, ["deep", "--suite", "bn", "--device", "cpu", "--out", str(tmp_path), *args])
    finally:
        torch.set_num_threads(before)  # the command sets this process's threads
    return seen.get("tasks"), r


def test_threads_default_to_one_per_run_on_the_cpu(monkeypatch, tmp_path):
    tasks, r = _deep_tasks(monkeypatch, tmp_path, [])
    assert r.exit_code == 0, r.output
    assert {t.threads for t in tasks} == {1}
    tasks, r = _deep_tasks(monkeypatch, tmp_path, [], env_threads="2")  # OMP_NUM_THREADS is respected
    assert {t.threads for t in tasks} == {None}
    tasks, r = _deep_tasks(monkeypatch, tmp_path, ["--threads", "2"])
    assert {t.threads for t in tasks} == {2}


def test_threads_beyond_the_cores_are_refused(monkeypatch, tmp_path):
    tasks, r = _deep_tasks(monkeypatch, tmp_path, ["--threads", "1000"])
    assert r.exit_code == 2 and tasks is None
    assert r.output == ("gpcheck: error: --threads 1000: this machine has 2 CPU core(s); give at most 2 (1, the "
                        "default, is fastest per core on a shared machine; --jobs runs several runs at once)\n")


def test_a_busy_machine_warns_about_several_threads_per_run(monkeypatch, tmp_path):
    _, r = _deep_tasks(monkeypatch, tmp_path, ["--threads", "2"], load=6.3)
    assert r.exit_code == 0 and "gpcheck: warning: the machine is busy (load average 6.3 on 2 cores)" in r.output
    assert "pass --threads 1" in r.output
    for args, load in ((["--threads", "1"], 6.3), (["--threads", "2"], 0.0), ([], 6.3)):
        _, r = _deep_tasks(monkeypatch, tmp_path, args, load=load)
        assert r.exit_code == 0 and "busy" not in r.output, (args, load, r.output)


def test_deep_networks_names_the_choices_on_a_bad_network(tmp_path):
    r = CliRunner().invoke(cli.main, ["deep", "--suite", "skip", "--networks", "resnet99", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no network 'resnet99'" in r.output and "resnet18, resnet34" in r.output
    r = CliRunner().invoke(cli.main, ["deep", "--suite", "all", "--networks", "resnet18", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "one suite" in r.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_deep_plan_with_networks_lists_only_them(tmp_path):
    r = CliRunner().invoke(cli.main, ["deep", "--suite", "skip", "--preset", "smoke", "--networks", "resnet18",
                                      "--plan", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "resnet18-all" in r.output and "resnet34" not in r.output


def test_check_prints_the_dimensionless_gamma(good_trace, tmp_path):
    """`gpcheck check` gives gamma_max x ||theta_0 - theta*||^2 beside gamma_max, n/a where no gamma fits."""
    trace = load_trace(good_trace)
    d1 = check_trace(trace).definition_1
    assert d1.holds
    out = CliRunner().invoke(cli.main, ["check", str(good_trace)]).stdout
    assert f"  x dist0_sq:       {cli.fmt3(d1.gamma_max * trace.dist0_sq)}  (largest gamma x" in out
    inner = np.ones(6)
    inner[2] = -1.0
    Trace(**_cols(inner=inner), epoch=np.arange(6) // 2).save(tmp_path / "bad")
    out = CliRunner().invoke(cli.main, ["check", str(tmp_path / "bad.npz")]).stdout
    assert "  x dist0_sq:       n/a (no gamma > 0 fits every step)" in out


def test_check_on_a_run_folder_names_its_trace_and_the_report(tmp_path):
    run = tmp_path / "run"
    Trace(**_cols(), epoch=np.arange(6) // 2, meta={"status": "ok"}).save(run / "trace")
    r = CliRunner().invoke(cli.main, ["check", str(run)])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"`gpcheck check {run / 'trace.npz'}`" in r.output and f"`gpcheck report {run}`" in r.output
