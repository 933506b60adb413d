"""Issue 25, the second fault and attack campaign: nothing outside --out through links, every
file that decides a verdict verified, one validating JSON reader, no orphaned workers, safe
temporaries on a shared file system, exit codes. Each test is one case of the issue (its number
in the test's docstring); each failed on the code before the fix.

Most cases work on copies of one smoke suite measured once for the module (S below), so a test
costs a report or a rerun that verifies, not a suite."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from validation.cli import main

from smoke_util import SMOKE, gpcheck, needs_archive

ONE = ["--threads", "1"]
SUITE = "skip-smoke-cifar10-jpeg"
R = "resnet18-first"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    home = tmp_path_factory.mktemp("measured")
    res = gpcheck([*SMOKE, *ONE, "--out", str(home)])
    assert res.returncode == 0, res.stderr[-3000:]
    return home


@pytest.fixture
def suite(measured, tmp_path):
    """A fresh copy of the measured --out folder: ``(out, suite folder)``."""
    out = tmp_path / "x"
    shutil.copytree(measured, out, symlinks=True)
    return out, out / SUITE


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("gpcheck: warning:")]
    assert len(lines) == 1 and lines[0].startswith("gpcheck: error: "), stderr[-2000:]
    assert "Traceback" not in stderr
    return lines[0]


def report_rows(s: Path) -> dict:
    return {r["name"]: r for r in json.loads((s / "report.json").read_text())["runs"]}


def report(s: Path):
    return CliRunner().invoke(main, ["report", str(s)])


# -- 1, 2: nothing outside --out through links ----------------------------------------------------
@needs_archive
def test_1_a_run_folder_that_is_a_link_is_refused_and_nothing_is_deleted(suite, tmp_path):
    """1: the run folder a link to a folder of the user's: before, `deep` wiped it (keep and
    photos/ deleted) and wrote the run there; now one line, exit 2, the folder untouched."""
    out, s = suite
    v = tmp_path / "v"
    (v / "photos").mkdir(parents=True)
    (v / "keep").write_text("x\n")
    (v / "setup.json").write_text("{\n")
    shutil.rmtree(s / "runs" / R)
    os.symlink(v, s / "runs" / R)
    res = gpcheck([*SMOKE, *ONE, "--out", str(out)])
    assert res.returncode == 2, res.stderr[-2000:]
    line = one_line(res.stderr)
    assert str(s / "runs" / R) in line and "link" in line
    assert sorted(p.name for p in v.iterdir()) == ["keep", "photos", "setup.json"]
    assert (v / "keep").read_text() == "x\n" and (v / "setup.json").read_text() == "{\n"


def test_1_measure_never_wipes_through_a_link(tmp_path):
    """1, at the level of deep.measure: a run folder that is a link is refused before anything is
    read or wiped."""
    from deep.measure import measure

    v = tmp_path / "v"
    v.mkdir()
    (v / "keep").write_text("x")
    (v / "setup.json").write_text("{")
    os.symlink(v, tmp_path / "run")
    with pytest.raises(ValueError, match="is a link"):  # PathEscape
        measure(None, None, _tiny_data(), lr=0.1, epochs=1, batch_size=8, workdir=tmp_path / "run", progress=False)
    assert sorted(p.name for p in v.iterdir()) == ["keep", "setup.json"]


def test_2_report_does_not_write_through_a_folder_link(suite, tmp_path):
    """2: figures/ a link to a folder elsewhere: `report` replaced the user's skip.png there; now
    it refuses in one line and writes nothing there."""
    _, s = suite
    o = tmp_path / "o"
    o.mkdir()
    (o / "skip.png").write_bytes(b"mine")
    shutil.rmtree(s / "figures")
    os.symlink(o, s / "figures")
    res = report(s)
    assert res.exit_code == 2, res.output
    assert "link" in one_line(res.output) and str(s / "figures") in res.output
    assert sorted(p.name for p in o.iterdir()) == ["skip.png"] and (o / "skip.png").read_bytes() == b"mine"


# -- 3: pickled CIFAR runs no code --------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_3_a_pickle_payload_under_data_root_does_not_run(tmp_path):
    """3: a `__reduce__` payload as batches.meta ran (pickle.load); now it is refused, unrun."""
    from cifar_files import _write_cifar10

    from deep.data import DataError, load_split

    _write_cifar10(tmp_path, np.random.default_rng(0), False)
    marker = tmp_path / "ran"
    payload = _Payload()
    payload.marker = marker
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="refused before anything ran"):
        load_split("cifar10", "train", root=tmp_path)
    assert not marker.exists()


def test_3_cifar_as_python_2_pickled_it_still_loads(tmp_path):
    """3: the real files are protocol-2 pickles with bytes keys and numpy arrays: still read."""
    from deep.data import load_split

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 1, 2],
               b"batch_label": b"x", b"filenames": [b"a.png", b"b.png", b"c.png"]}
        (d / name).write_bytes(pickle.dumps(obj, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    split = load_split("cifar10", "train", root=tmp_path)
    assert len(split) == 15 and split.classes[0] == "c0"


def test_3_help_says_the_pickles_are_trusted_input():
    res = CliRunner().invoke(main, ["deep", "--help"])
    assert "trusted input" in " ".join(res.output.split())


# -- 4: trace.json is verified ----------------------------------------------------------------------
def _edit(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d, indent=2, sort_keys=True))


def _accuracy(d):
    d["theta_star_eval"]["eval"]["accuracy"] = 0.96


def test_4_an_edited_trace_json_is_an_error_row(suite):
    """4: one edit of theta*'s accuracy went into the report unnoticed; now its content digest in
    the manifest differs, and the run is an ERROR row."""
    _, s = suite
    _edit(s / "runs" / R / "trace.json", _accuracy)
    res = report(s)
    assert res.exit_code == 0, res.output
    row = report_rows(s)[R]
    assert row["status"] == "error" and "was changed after the run finished" in row["error"]


def test_4_status_diverged_edited_in_is_no_traceback(suite):
    """4: "status": "diverged" in a trace.json gave a traceback in `report`; now an ERROR row
    (its status says diverged, with no place where)."""
    _, s = suite
    _edit(s / "runs" / R / "trace.json", lambda d: d.update(status="diverged"))
    res = report(s)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert report_rows(s)[R]["status"] == "error"


@needs_archive
def test_4_deep_measures_an_edited_trace_json_again(suite):
    """4: a `deep` rerun neither noticed the edited accuracy nor the edited status (and wrote
    "diverged" into the manifest); now both runs are measured again, to the same trace."""
    out, s = suite
    before = json.loads((s / "runs" / R / "trace.json").read_text())
    other = "resnet18-all"
    _edit(s / "runs" / R / "trace.json", _accuracy)
    _edit(s / "runs" / other / "trace.json", lambda d: d.update(status="diverged"))
    res = gpcheck([*SMOKE, *ONE, "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "was changed after the run finished" in res.stderr and "Traceback" not in res.stderr
    after = json.loads((s / "runs" / R / "trace.json").read_text())
    assert after["theta_star_eval"] == before["theta_star_eval"] and after["npz_sha256"] == before["npz_sha256"]
    m = json.loads((s / "manifest.json").read_text())["runs"]
    assert m[R]["status"] == "ok" and m[other]["status"] == "ok"
    assert json.loads((s / "runs" / other / "trace.json").read_text())["status"] == "ok"


def test_4_an_old_manifest_without_the_trace_json_digest_is_accepted(suite):
    """4: manifests written before the digest (the committed reports') are read as before."""
    _, s = suite
    want = {k: r.get("verdict") for k, r in report_rows(s).items()}
    _edit(s / "manifest.json", lambda d: [e.pop("trace_json_sha256", None) for e in d["runs"].values()])
    assert report(s).exit_code == 0
    assert {k: r.get("verdict") for k, r in report_rows(s).items()} == want


# -- 5: a stray run folder is no evidence ---------------------------------------------------------
def test_5_a_run_folder_the_suite_did_not_measure_is_an_error_row(suite):
    """5: a copied run folder counted as evidence ("all 6 runs"); now an ERROR row."""
    _, s = suite
    shutil.copytree(s / "runs" / R, s / "runs" / "zzz-copy")
    res = report(s)
    assert res.exit_code == 0, res.output
    rows = report_rows(s)
    assert rows["zzz-copy"]["status"] == "error" and "not measured by this suite" in rows["zzz-copy"]["error"]
    assert "all 6 runs" not in (s / "report.md").read_text()


def test_5_a_run_the_manifest_does_not_know_is_an_error_row(suite):
    _, s = suite
    _edit(s / "manifest.json", lambda d: d["runs"].pop(R))
    assert report(s).exit_code == 0
    row = report_rows(s)[R]
    assert row["status"] == "error" and "no entry in manifest.json" in row["error"]


def test_11_a_deleted_manifest_warns_and_is_rebuilt_from_verified_runs(suite):
    """11: a deleted manifest.json raised no warning; now `report` warns and rebuilds it from the
    runs that verify (a run whose trace was altered is left out)."""
    _, s = suite
    want = json.loads((s / "manifest.json").read_text())
    (s / "manifest.json").unlink()
    npz = s / "runs" / "resnet34-all" / "trace.npz"
    npz.write_bytes(npz.read_bytes()[:-10])
    res = report(s)
    assert res.exit_code == 0, res.output
    assert "gpcheck: warning:" in res.output and "manifest.json is missing" in res.output
    got = json.loads((s / "manifest.json").read_text())
    assert set(got["runs"]) == set(want["runs"]) - {"resnet34-all"}
    assert all(got["runs"][k] == want["runs"][k] for k in got["runs"])


# -- 6: companions stay in their run folder -------------------------------------------------------
def test_6_a_companion_path_out_of_its_run_folder_is_refused(suite):
    """6: "../resnet18-all/companions/random.npz" with that file's digest served as this run's
    baseline; now it is an ERROR row (the manifest's trace.json digest removed, as in an old
    manifest, so that the confinement itself is what refuses it)."""
    _, s = suite
    other = s / "runs" / "resnet18-all" / "companions" / "random.npz"
    from gamma_theory.files import sha256_file

    def point_out(d):
        d["companions"]["random"]["file"] = "../resnet18-all/companions/random.npz"
        d["companions"]["random"]["npz_sha256"] = sha256_file(other)

    _edit(s / "runs" / R / "trace.json", point_out)
    _edit(s / "manifest.json", lambda d: d["runs"][R].pop("trace_json_sha256", None))
    res = report(s)
    assert res.exit_code == 0, res.output
    row = report_rows(s)[R]
    assert row["status"] == "error" and "companion" in row["error"], row


# -- 7: JSON of the right syntax and the wrong shape ----------------------------------------------
DEEP = "[" * 200_000 + "]" * 200_000


@pytest.mark.parametrize("where", ["manifest.json", "suite.json"])
def test_7_deep_nesting_in_a_suite_file_is_one_line(suite, where):
    _, s = suite
    (s / where).write_text(DEEP)
    res = report(s)
    assert res.exit_code == 2, res.output
    assert "nests deeper than" in one_line(res.output) and where in res.output


def test_7_deep_nesting_in_trace_json_is_an_error_row_then_measured_again(suite, tmp_path):
    """7: 200k-deep nesting in trace.json: a RecursionError, and an ERROR row for ever (deep never
    measured it again); now an ERROR row in the report, and a run measure() measures again."""
    _, s = suite
    (s / "runs" / R / "trace.json").write_text(DEEP)
    res = report(s)
    assert res.exit_code == 0, res.output
    assert report_rows(s)[R]["status"] == "error" and "nests deeper" in report_rows(s)[R]["error"]
    from deep.measure import RemeasureWarning

    run, first = _tiny_run(tmp_path / "run")
    (tmp_path / "run" / "trace.json").write_text(DEEP)
    with pytest.warns(RemeasureWarning, match="nests deeper"):
        again, _ = _tiny_run(tmp_path / "run")
    assert again.status == "ok" and _columns(again) == first


@pytest.mark.parametrize("edit, says", [
    (lambda s: _edit(s / "manifest.json", lambda d: d["runs"].update({R: "ok"})), "manifest.json"),
    (lambda s: _edit(s / "suite.json", lambda d: d.update(num_classes="ten")), "num_classes"),
])
def test_7_wrong_shapes_of_suite_files_are_one_line(suite, edit, says):
    _, s = suite
    edit(s)
    res = report(s)
    assert res.exit_code == 2, res.output
    assert says in one_line(res.output)


@pytest.mark.parametrize("bad", [5, None])
def test_7_a_companion_without_a_usable_file_is_an_error_row(suite, bad):
    _, s = suite

    def hurt(d):
        if bad is None:
            d["companions"]["random"].pop("file")
        else:
            d["companions"]["random"]["file"] = bad

    _edit(s / "runs" / R / "trace.json", hurt)
    _edit(s / "manifest.json", lambda d: d["runs"][R].pop("trace_json_sha256", None))
    res = report(s)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert report_rows(s)[R]["status"] == "error"


# -- 8: gpcheck picture on crafted runs ----------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("env.num_threads", "many"), ("env.num_threads", -4), ("env.device", "foo"), ("run.network", "../../etc"),
    ("run.optimizer", None), ("epochs_measured", "two"), ("epochs_measured", 10**7),
])
def test_8_picture_of_a_crafted_run_is_one_line(suite, field, value):
    """8: six tracebacks, and a replay of 10**7 epochs that never ends; now one line each, before
    any data is loaded or any replay starts."""
    _, s = suite
    key, _, sub = field.partition(".")

    def craft(d):
        if not sub:
            d[key] = value
        elif value is None:
            d[key].pop(sub)
        else:
            d[key][sub] = value

    _edit(s / "runs" / R / "trace.json", craft)
    _edit(s / "manifest.json", lambda d: d["runs"][R].pop("trace_json_sha256", None))
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["picture", str(s / "runs" / R), "--quiet"])
    assert res.exit_code == 2, res.output
    assert sub or key in one_line(res.output)
    assert (sub or key) in res.output and time.monotonic() - t0 < 30


# -- 10: exit codes and accepted nonsense ---------------------------------------------------------
def test_10_star_extend_nan_is_refused(tmp_path):
    res = CliRunner().invoke(main, ["deep", "--suite", "skip", "--star-extend", "nan", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--star-extend" in one_line(res.output)
    assert not (tmp_path / "o").exists()


def test_10_an_empty_out_is_refused(tmp_path):
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = CliRunner().invoke(main, ["deep", "--suite", "skip", "--out", ""])
    finally:
        os.chdir(here)
    assert res.exit_code == 2 and "--out is empty" in one_line(res.output)
    assert list(tmp_path.iterdir()) == []


def test_10_a_non_utf8_out_is_refused(tmp_path):
    """10: every run became an ERROR "StateDamaged ... (UnicodeEncodeError)" and then a traceback."""
    bad = os.fsdecode(bytes(tmp_path) + b"/\xff\xfe")
    res = gpcheck([*SMOKE, *ONE, "--out", bad])
    assert res.returncode == 2, res.stderr[-2000:]
    assert "not valid UTF-8" in one_line(res.stderr)
    assert list(tmp_path.iterdir()) == []


def test_10_sigterm_while_starting_is_130_with_a_line(tmp_path):
    """10: SIGTERM while the command imports torch ended it with 143 and no word."""
    p = subprocess.Popen([sys.executable, "-m", "validation.cli", *SMOKE, "--out", str(tmp_path / "o")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.7)  # importing torch takes longer; the handler is set before that
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert err.strip().splitlines()[-1].startswith("gpcheck: interrupted") and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# -- 12: temporaries on a shared file system ------------------------------------------------------
def test_12_another_hosts_temporary_is_left_alone(tmp_path):
    """12: a temporary was judged stale when its pid was not alive on this host: on NFS, one node
    could delete another's temporary while it was written. Now the host is in the name: another
    host's temporary (its pid dead here, or never seen) is kept until it has not changed for a day."""
    from gamma_theory.files import FOREIGN_TMP_AGE_S, clean_stale_tmp, host_tag, tmp_path as tmp_name

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    assert host_tag() in tmp_name(tmp_path / "x.json").name
    other = tmp_path / f".manifest.json.{dead}@node-b-{host_tag()}.0123abcd.tmp"
    other.write_text("being written on node b")
    mine = tmp_path / f".report.json.{dead}@{host_tag()}.0123abcd.tmp"
    mine.write_text("half")
    assert clean_stale_tmp(tmp_path) == [mine]
    assert other.exists()
    old = time.time() - FOREIGN_TMP_AGE_S - 60
    os.utime(other, (old, old))
    assert clean_stale_tmp(tmp_path) == [other]


def test_12_a_temporary_of_an_older_gpcheck_is_judged_by_age(tmp_path):
    """12: the name every gpcheck wrote before, ``.NAME.<pid>.<random>.tmp``, is what another
    node still running an older version writes: its pid means nothing here, so it is judged by age."""
    from gamma_theory import files

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    legacy = tmp_path / f".trace.npz.{dead}.0123abcd.tmp"  # no host: it may be another machine's
    legacy.write_text("x")
    assert files.clean_stale_tmp(tmp_path) == [] and legacy.exists()
    assert files.clean_stale_tmp(tmp_path, now=time.time() + files.FOREIGN_TMP_AGE_S + 60) == [legacy]


# -- 9: workers die with their parent; no queue files outside --out ------------------------------
def _children(pid: int) -> list[int]:
    res = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in res.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@needs_archive
def test_9_workers_die_with_their_parent_and_leave_no_queue_file(tmp_path):
    """9: after a SIGKILL of the --jobs 2 parent both workers ran on (7 of 7 trials), and
    gpcheck-queue-*.json files stayed in the system's temporary folder."""
    before = set(Path(tempfile.gettempdir()).glob("gpcheck-queue-*"))
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "validation.cli", *SMOKE, *ONE, "--jobs", "2", "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, kids = time.monotonic() + 120, []
    try:
        while time.monotonic() < deadline and len(kids) < 2:
            time.sleep(0.2)
            kids = _children(p.pid)
        assert len(kids) == 2, "the workers did not start"
        queue_files = set(Path(tempfile.gettempdir()).glob("gpcheck-queue-*")) - before
        time.sleep(1.0)
        p.send_signal(signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.2)
        orphans = [k for k in kids if _alive(k)]
    finally:  # whatever failed, leave nothing of this test running
        for pid in [p.pid, *kids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not orphans, "a worker runs on without its parent"
    assert not queue_files, "queue files in the system's temporary folder"
    assert all(p.name == "out" for p in tmp_path.iterdir())  # nothing beside --out


# -- helpers: a tiny measured run in this process ------------------------------------------------
def _tiny_data():
    import torch

    from deep.data import DeviceData

    g = torch.Generator().manual_seed(0)
    return DeviceData(torch.randint(0, 256, (24, 3, 4, 4), dtype=torch.uint8, generator=g),
                      torch.randint(0, 3, (24,), generator=g))


def _tiny_run(workdir: Path, **kw):
    import torch

    from deep.measure import NO_EXTRAS, measure
    from gamma_theory.optimizers import make_optimizer

    def net():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))

    run = measure(net, lambda p: make_optimizer("sgd", p, 0.1), _tiny_data(), lr=0.1, epochs=3, batch_size=8,
                  workdir=workdir, seed=1, checkpoint_every=1, progress=False, extras=NO_EXTRAS, **kw)
    return run, _columns(run)


def _columns(run):
    return {c: getattr(run.trace, c).tobytes() for c in ("loss", "loss_star", "inner", "update_sq", "dist_sq")}


# -- 11: smaller --------------------------------------------------------------------------------
DRIVER = Path(__file__).resolve().parent / "crash_driver.py"


def _drive(workdir: Path, kill_at: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "GPCHECK_KILL_AT"}
    if kill_at:
        env["GPCHECK_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(DRIVER), str(workdir)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_11_a_resumed_run_counts_the_steps_and_time_of_every_invocation(tmp_path):
    """11: after a resume, step_path counted the resumed invocation's steps only (6 of 9), and
    nothing said how the wall time behind ms_per_step was split. Now both passes list each
    invocation's kept steps and time; they add up to the pass's steps and wall_s."""
    run = tmp_path / "run"
    assert _drive(run, "after:epoch0002.pt").returncode == -signal.SIGKILL  # pass 1, 2 of 3 epochs
    assert _drive(run, "after:pass2_partial.npz").returncode == -signal.SIGKILL  # pass 2, 1 epoch
    assert _drive(run).returncode == 0
    meta = json.loads((run / "trace.json").read_text())
    for p in ("pass1", "pass2"):
        inv = meta[p]["invocations"]
        assert len(inv) >= 2, (p, inv)
        assert sum(i["steps"] for i in inv) == 9 == meta[p]["step_path"]["eager_steps"], (p, inv)
        assert sum(i["wall_s"] for i in inv) == pytest.approx(meta[p]["wall_s"], rel=1e-9, abs=1e-9)
        assert meta[p]["ms_per_step"] == pytest.approx(1e3 * meta[p]["wall_s"] / 9)


def test_11_a_bit_flipped_theta_star_of_a_finished_run_is_found(tmp_path):
    """11: a bit-flipped theta_star.pt in a finished run was never detected; now a rerun says so
    and measures the run again (theta* restored, the same trace)."""
    run = tmp_path / "run"
    first = _drive(run)
    assert first.returncode == 0
    star = run / "theta_star.pt"
    good = star.read_bytes()
    b = bytearray(good)
    b[len(b) // 2] ^= 0x10
    star.write_bytes(bytes(b))
    again = _drive(run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "theta_star.pt is altered" in again.stderr
    assert again.stdout.split()[-1] == first.stdout.split()[-1] and star.read_bytes() == good


def test_11_check_of_an_extreme_learning_rate_is_a_verdict_not_a_traceback(tmp_path):
    """11: `gpcheck check` of a trace with lr 1e300: an OverflowError traceback (lr**2)."""
    n = 4
    np.savez(tmp_path / "t.npz", loss=np.full(n, 2.0), loss_star=np.zeros(n), inner=np.ones(n), update_sq=np.ones(n),
             dist_sq=np.linspace(4, 1, n), lr=np.float64(1e300), dist0_sq=np.float64(4.0))
    res = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "validation.cli", "check",
                          str(tmp_path / "t.npz")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "verdict: FAIL" in res.stdout and "Traceback" not in res.stderr and "warning" not in res.stderr
