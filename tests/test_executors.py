"""Executors: whichever engine measures a suite (this process, --jobs workers, submitit's local
executor, a local Ray cluster), the traces are the bits of one undisturbed sequential run; a
worker killed mid-run leaves a folder that a rerun finishes to the same bits; the queue of
``--suite all --dataset both`` holds every run once."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from deep.runner import RunTask, suite_dirs, suite_tasks
from deep.suites import SUITES, get_suite
from validation.cli import main

from smoke_util import SMOKE, _same_as_reference, gpcheck, needs_archive, traces_of

ONE = ["--threads", "1"]


def _task(suite: str, name: str, root) -> RunTask:
    """The resolved task of run ``name`` of the smoke ``suite``, one thread."""
    return next(t for t in suite_tasks(suite, "smoke", None, root, threads=1) if t.name == name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One undisturbed sequential `gpcheck deep` of the smoke skip suite, one thread."""
    home = tmp_path_factory.mktemp("sequential")
    res = gpcheck([*SMOKE, *ONE, "--out", str(home)])
    assert res.returncode == 0, res.stderr[-3000:]
    return home


# -- the queue -----------------------------------------------------------------------------------
def test_suite_all_and_both_data_sets_make_one_queue_with_every_run_once(tmp_path):
    tasks = suite_tasks(list(SUITES), "paper", "both", tmp_path, seeds=2)
    want = [(s, ds, r.name) for s in SUITES for ds in ("cifar10", "cifar100") for r in get_suite(s, "paper", 2).runs]
    assert [(t.suite, t.dataset, t.name) for t in tasks] == want
    assert len(set(tasks)) == len(tasks) == len(want)
    assert suite_dirs(tasks) == [tmp_path / f"{s}-paper-{ds}" for s in SUITES for ds in ("cifar10", "cifar100")]
    assert all(t.out == tmp_path / f"{t.suite}-paper-{t.dataset}" and t.workdir.parent == t.out / "runs"
               for t in tasks)


def test_a_task_is_a_plain_picklable_value(tmp_path):
    import pickle

    t = _task("bn", "resnet18-none", tmp_path)
    assert pickle.loads(pickle.dumps(t)) == t and not t.finished()
    assert RunTask.from_dict(json.loads(json.dumps(t.to_dict()))) == t  # the --jobs workers' queue
    assert t.spec.network == "resnet18" and t.spec.bn == "none" and t.config.suite == "bn"  # resolved
    (t.workdir).mkdir(parents=True)
    (t.workdir / "error.json").write_text("{}")
    assert t.finished()


# -- usage errors: one line, no work -------------------------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["--executor", "kubernetes"], "unknown executor 'kubernetes'"),
    (["--executor", "slurm", "--slurm-cluster", "mars"], "unknown slurm cluster 'mars'"),
    (["--executor", "slurm", "--slurm-arg", "noequals"], "--slurm-arg 'noequals': give KEY=VALUE"),
    (["--suite", "everything"], "unknown suite 'everything'"),
])
def test_bad_executor_options_are_one_line(tmp_path, argv, says):
    args = ["deep", "--suite", "skip", "--out", str(tmp_path / "o"), *argv]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [f"gpcheck: error: {res.output.split('error: ', 1)[1].strip()}"]
    assert says in res.output and not (tmp_path / "o").exists()


def test_slurm_without_slurm_says_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    res = CliRunner().invoke(main, ["deep", "--suite", "skip", "--executor", "slurm", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output  # bad input (issue 25, item 10), as a missing engine
    assert "no Slurm here" in res.output and "--slurm-cluster local" in res.output
    assert "Traceback" not in res.output


def test_missing_engine_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_engines(name, *a, **k):
        if name in ("ray", "submitit"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_engines)
    for engine, extra in (("ray", "gpcheck[ray]"), ("slurm", "gpcheck[slurm]")):
        res = CliRunner().invoke(main, ["deep", "--suite", "skip", "--executor", engine, "--out", str(tmp_path)])
        # issue 25, item 10: a missing extra is bad input, exit 2 (it was 1, as if runs had failed)
        assert res.exit_code == 2 and extra in res.output and "Traceback" not in res.output, res.output


# -- the same bits from every engine -------------------------------------------------------------
@pytest.mark.slow  # run on purpose by .ci/run (see there)
@needs_archive
def test_submitit_local_executor_gives_the_reference_bits(tmp_path, reference):
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    res = gpcheck([*SMOKE, *ONE, "--executor", "slurm", "--slurm-cluster", "local", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    _same_as_reference(out, reference, "submitit local")
    info = json.loads((out / "skip-smoke-cifar10-jpeg" / "suite.json").read_text())
    assert info["executor"] == {"executor": "slurm", "jobs": 1, "cluster": "local"}
    assert list((out / ".slurm").glob("*/*_log.out")), "submitit keeps each task's log under OUT/.slurm/"


@pytest.mark.slow  # run on purpose by .ci/run (see there)
@needs_archive
def test_ray_local_cluster_gives_the_reference_bits(tmp_path, reference):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    res = gpcheck([*SMOKE, *ONE, "--executor", "ray", "--jobs", "2", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    _same_as_reference(out, reference, "ray")
    info = json.loads((out / "skip-smoke-cifar10-jpeg" / "suite.json").read_text())
    assert info["executor"] == {"executor": "ray", "jobs": 2}


def _children(pid: int) -> list[int]:
    res = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in res.stdout.split()]


@needs_archive
def test_a_worker_killed_mid_run_then_a_rerun_gives_the_reference_bits(tmp_path, reference):
    """--jobs 2: SIGKILL one worker once some run has a checkpoint (it is inside a run); the
    command says which worker died and how to go on, and the rerun finishes to the same bits."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "validation.cli", *SMOKE, *ONE, "--jobs", "2", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    victim = None
    while time.monotonic() < deadline and p.poll() is None:
        if list(out.glob("*/runs/*/checkpoints/*.pt")):
            kids = _children(p.pid)
            if len(kids) == 2:
                victim = kids[0]
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.05)
    _, err = p.communicate(timeout=600)
    if victim is None:
        pytest.skip("the suite finished before a worker could be caught inside a run")
    assert p.returncode == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("gpcheck: error: 1 of 2 workers failed: worker 1 was killed by signal 9 (SIGKILL)"), last
    assert "rerun the same command" in last and "Traceback" not in err
    # issue 25, item 9: the other worker finished every run (the killed one's too, once its lock
    # was free), so the report is built, although the command exits 1 naming the killed worker
    assert "the reports of the runs that finished are built" in last
    rep = json.loads((out / "skip-smoke-cifar10-jpeg" / "report.json").read_text())
    assert {r["name"] for r in rep["runs"]} == set(traces_of(reference / "skip-smoke-cifar10-jpeg"))
    again = gpcheck([*SMOKE, *ONE, "--jobs", "2", "--out", str(out)])
    assert again.returncode == 0, again.stderr[-3000:]
    _same_as_reference(out, reference, "a worker killed")
    assert traces_of(out / "skip-smoke-cifar10-jpeg").keys() == traces_of(reference / "skip-smoke-cifar10-jpeg").keys()


def test_a_preempted_slurm_task_requeues_itself_unchanged(tmp_path):
    """submitit calls checkpoint() on preemption or timeout and submits what it returns: the same
    task, which then resumes its run from the checkpoints in its folder."""
    pytest.importorskip("submitit")
    from deep._slurm import SlurmTask, make_executor

    task = _task("skip", "resnet18-first", tmp_path)
    again = SlurmTask().checkpoint(task)
    assert isinstance(again.function, SlurmTask) and again.args == (task,) and not again.kwargs
    ex = make_executor(tmp_path / ".slurm", "local", time_min=5, partition=None, gpus=0, cpus=1, parallelism=None,
                       extra={})
    assert ex.cluster == "local"


@needs_archive
def test_sigterm_stops_the_workers_and_counts_the_time(tmp_path):
    """`kill` of a `--jobs 2` command started as a background job (SIGINT ignored, which its
    workers inherit): the workers are stopped, not orphaned, the command exits 130 with its
    one-line note, and the time spent counts towards the suite's wall time."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "validation.cli", *SMOKE, *ONE, "--jobs", "2", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 300
    kids = []
    while time.monotonic() < deadline and p.poll() is None:
        if list(out.glob("*/runs/*/checkpoints/*.pt")):
            kids = _children(p.pid)
            if len(kids) == 2:
                p.send_signal(signal.SIGTERM)
                break
        time.sleep(0.05)
    _, err = p.communicate(timeout=120)
    if len(kids) != 2:
        pytest.skip("the suite finished before the workers could be caught inside a run")
    assert p.returncode == 130, err[-2000:]
    assert "interrupted: finished runs and checkpoints are kept" in err and "Traceback" not in err
    for pid in kids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    info = json.loads((out / "skip-smoke-cifar10-jpeg" / "suite.json").read_text())
    assert info["wall_s"] > 0 and info["executor"] == {"executor": "local", "jobs": 2}
