"""Fault trials: crashes at exact points and at random moments, damaged files, a full disk, a
read-only folder, and user files outside --out. After each, a rerun gives bit-identical traces,
or the command stops with one line that names the path; nothing half-written is trusted."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from validation.cli import main

from smoke_util import SMOKE, _same_as_reference, gpcheck, needs_archive, stable, traces_of  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "crash_driver.py"


def drive(workdir, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != "GPCHECK_KILL_AT"}
    if kill_at:
        env["GPCHECK_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(DRIVER), str(workdir)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The digest of an undisturbed run."""
    res = drive(tmp_path_factory.mktemp("ref") / "run")
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[-1]


def leftovers(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".pt" and
                  p.parent.name == "checkpoints")


# -- crashes at exact points ---------------------------------------------------------------------
@pytest.mark.parametrize("point", [
    "after:theta0.pt",  # the very first file
    "after:epoch0002.pt",  # pass 1, a checkpoint
    "pass1.theta_star",  # theta* saved, pass1.json not yet
    "after:pass2_partial.npz",  # pass 2's verified part saved (once the partial trace and pass2.json)
    "after:pass2_partial.npz#2",
    "after:trace.npz",  # the trace saved, its sidecar (the 'finished' mark) not yet
    "cleanup",  # finished, while the checkpoints are deleted
])
def test_killed_at_an_exact_point_resumes_to_the_identical_trace(tmp_path, point, reference):
    run = tmp_path / "run"
    killed = drive(run, point)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    again = drive(run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.split()[-1] == reference
    assert leftovers(run) == []
    assert (run / "trace.json").exists() and not (run / "pass2_partial.npz").exists()


def _interrupted_in_pass2(run: Path) -> None:
    killed = drive(run, "after:pass2_partial.npz")
    assert killed.returncode == -signal.SIGKILL
    assert (run / "pass2_partial.npz").exists() and (run / "pass1.json").exists()


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 2)])


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x10
    p.write_bytes(bytes(b))


def _flip_rows(p: Path) -> None:
    """A flipped bit inside the recorded rows of the partial trace (a byte in the middle of the
    file may fall in a zip header field nothing reads, such as a member's time stamp: harmless)."""
    import io
    import zipfile

    info = zipfile.ZipFile(io.BytesIO(p.read_bytes())).getinfo("rows.npy")
    b = bytearray(p.read_bytes())
    b[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2] ^= 0x10
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", [
    ("pass2_partial.npz", _truncate), ("pass2_partial.npz", _flip_rows), ("pass1.json", _truncate),
    ("theta_star.pt", _truncate), ("theta_star.pt", _flip), ("setup.json", _truncate),
    ("checkpoints/epoch0001.pt", _flip), ("theta0.pt.sha256", lambda p: p.unlink()),
    ("stars/epoch0002.pt", _truncate),
])
def test_damaged_state_of_an_interrupted_run_is_remeasured(tmp_path, damage, reference):
    run = tmp_path / "run"
    _interrupted_in_pass2(run)
    name, hurt = damage
    hurt(run / name)
    again = drive(run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.split()[-1] == reference
    assert "again from the start" in again.stderr or "earlier checkpoint" in again.stderr


@pytest.mark.parametrize("damage", ["delete trace.json", "truncate trace.npz", "flip trace.npz", "delete trace.npz",
                                    "foreign trace.npz", "truncate trace.json"])
def test_damaged_finished_run_is_measured_again(tmp_path, damage, reference):
    """Stuck-for-good cases of the past (no checkpoint left to resume from) and a trace from
    elsewhere: the run is measured again, to the same bits."""
    run = tmp_path / "run"
    assert drive(run).returncode == 0
    what, name = damage.split()
    if what == "delete":
        (run / name).unlink()
    elif what == "truncate":
        _truncate(run / name)
    elif what == "flip":
        _flip(run / name)
    else:  # another run's trace under this one's name
        other = tmp_path / "other"
        shutil.copytree(run, other)
        from gamma_theory import load_trace
        t = load_trace(other / "trace.npz")
        t.loss = t.loss * 1.5
        t.save(other / "trace")
        shutil.copy(other / "trace.npz", run / "trace.npz")
    again = drive(run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.split()[-1] == reference
    assert "measuring the run again" in again.stderr or "again from the start" in again.stderr


# -- a real `gpcheck deep`, killed at random moments ---------------------------------------------
@pytest.fixture(scope="module")
def smoke_reference(tmp_path_factory):
    """An undisturbed `gpcheck deep --out .` in a folder that holds the user's own README.md."""
    home = tmp_path_factory.mktemp("user-project")
    (home / "README.md").write_text("my project\n")
    res = gpcheck([*SMOKE, "--out", "."], cwd=home)
    assert res.returncode == 0, res.stderr[-3000:]
    return home


@needs_archive
def test_deep_writes_nothing_outside_out_and_keeps_a_users_readme(smoke_reference):
    home = smoke_reference
    assert (home / "README.md").read_text() == "my project\n"
    assert sorted(p.name for p in home.iterdir()) == ["README.md", "skip-smoke-cifar10-jpeg"]
    assert not list(home.rglob(".*.tmp"))


def _kill_randomly_then_finish(out: Path, rng: random.Random, kills: int) -> list[float]:
    """Start `gpcheck deep` ``kills`` times, each SIGKILLed at a random moment unless it ended
    first, then once to the end; returns the moments of the kills that happened, after checking
    that at least one did (a command that ends, or fails, before its moment injects no fault)."""
    moments = []
    for _ in range(kills):
        p = subprocess.Popen([sys.executable, "-m", "validation.cli", *SMOKE, "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = rng.uniform(1.0, 18.0)
        try:
            rc = p.wait(timeout=t)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            rc = p.wait()
            assert rc == -signal.SIGKILL, rc  # it was still running when the signal came: a real kill
            moments.append(round(t, 2))
        else:
            assert rc == 0, f"the command ended with {rc} before its kill at {t:.2f} s"
    assert moments, f"none of the {kills} commands was killed: no fault was injected"
    res = gpcheck([*SMOKE, "--out", str(out)])
    assert res.returncode == 0, (moments, res.stderr[-3000:])
    return moments


@needs_archive
def test_random_sigkill_of_gpcheck_deep_resumes_identically(tmp_path, smoke_reference):
    rng = random.Random(int(os.environ.get("GPCHECK_FAULT_SEED", "0")))
    moments = _kill_randomly_then_finish(tmp_path / "out", rng, kills=2)
    _same_as_reference(tmp_path / "out", smoke_reference, moments)


@needs_archive
@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_many_random_sigkills(tmp_path, smoke_reference, trial):
    rng = random.Random(1000 + trial + int(os.environ.get("GPCHECK_FAULT_SEED", "0")))
    moments = _kill_randomly_then_finish(tmp_path / "out", rng, kills=rng.randint(1, 3))
    _same_as_reference(tmp_path / "out", smoke_reference, moments)


# -- a full disk, a read-only folder -------------------------------------------------------------
def _mount_tmpfs(where: Path, opts: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True).returncode == 0


@needs_archive
def test_full_disk_is_one_line_and_a_rerun_recovers(tmp_path, smoke_reference):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=3m"):
        pytest.skip("cannot mount a tmpfs here (not root); test_full_disk_injected covers it")
    try:
        res = gpcheck([*SMOKE, "--out", str(disk / "out")])
        assert res.returncode == 3, res.stderr[-2000:]
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("gpcheck: error: ") and "No space left on device" in last and str(disk) in last
        assert "Traceback" not in res.stderr
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        again = gpcheck([*SMOKE, "--out", str(disk / "out")])
        assert again.returncode == 0, again.stderr[-2000:]
        _same_as_reference(disk / "out", smoke_reference, "full disk")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_full_disk_injected(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: every write fails with ENOSPC after a few succeed."""
    import errno

    import gamma_theory.files as files

    real, calls = os.write, [0]

    def write(fd, data):
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(files.os, "write", write)
    res = CliRunner().invoke(main, ["ladder", "--out", str(tmp_path / "lad")])
    assert res.exit_code == 3, res.output
    assert res.output.strip().splitlines()[-1].startswith("gpcheck: error: " + str(tmp_path / "lad"))
    assert "No space left on device" in res.output
    assert not list((tmp_path / "lad").rglob(".*.tmp"))


def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "size=1m,ro"):
        pytest.skip("cannot mount a read-only tmpfs here (not root)")
    try:
        res = gpcheck(["ladder", "--out", str(ro / "ladder")])
        assert res.returncode == 3 and "Traceback" not in res.stderr
        assert res.stderr.strip() == (f"gpcheck: error: --out {ro / 'ladder'}: cannot create this folder (Read-only "
                                      "file system); pass --out a folder you can write (it is created if missing)")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


# -- writing only inside --out -------------------------------------------------------------------
def test_ladder_writes_only_inside_out(tmp_path):
    (tmp_path / "README.md").write_text("mine\n")
    res = CliRunner().invoke(main, ["ladder", "--out", str(tmp_path / "myladder")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "README.md").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "myladder"]


def test_index_never_overwrites_a_readme_it_did_not_write(tmp_path):
    from validation.index import MARKER, write_index

    (tmp_path / "README.md").write_text("mine\n")
    assert write_index(tmp_path) is None and (tmp_path / "README.md").read_text() == "mine\n"
    res = CliRunner().invoke(main, ["index", str(tmp_path)])
    assert res.exit_code == 2 and "left alone" in res.output
    (tmp_path / "README.md").unlink()
    assert write_index(tmp_path).read_text().startswith(MARKER)
    assert write_index(tmp_path) is not None  # its own index it rebuilds


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    from gamma_theory.files import clean_stale_tmp, host_tag, write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".report.json.{pid}@{host_tag()}.0123abcd.tmp"  # this host's (tests/test_confinement.py: others')
    stale.write_text("half")
    mine = tmp_path / f".x.{os.getpid()}@{host_tag()}.0123abcd.tmp"
    mine.write_text("in flight")
    write_text(tmp_path / "a.json", "{}")
    assert clean_stale_tmp(tmp_path) == [stale]
    assert mine.exists() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "a.json"]


@pytest.mark.slow  # run on purpose by .ci/run (see there)
@needs_archive
def test_two_identical_commands_at_once(tmp_path, smoke_reference):
    """Started together on one folder, both finish; each run is locked while it is measured, so
    the second waits for it and then finds it done. (Before: one died on figures/skip.png.tmp.)"""
    cmd = [sys.executable, "-m", "validation.cli", *SMOKE, "--out", str(tmp_path / "out")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    _same_as_reference(tmp_path / "out", smoke_reference, "two at once")


@needs_archive
def test_jobs_two_workers_give_the_reference_bits(tmp_path, smoke_reference):
    """--jobs 2: two worker processes share the suite (each takes the runs the other does not
    hold); the traces and the report equal one undisturbed sequential run's."""
    out = tmp_path / "out"
    res = gpcheck([*SMOKE, "--jobs", "2", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    _same_as_reference(out, smoke_reference, "jobs 2")
    info = json.loads((out / "skip-smoke-cifar10-jpeg" / "suite.json").read_text())
    assert info["jobs"] == 2 and info["command"].endswith("--jobs 2 --out " + str(out))
    # a second --jobs invocation on the finished folder measures nothing, says so, and changes no byte
    files = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = gpcheck([*SMOKE, "--jobs", "2", "--out", str(out)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "5 of 5 runs were already finished; nothing measured" in again.stdout
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == files


# -- Ctrl-C for a command started in the background ----------------------------------------------
def _interrupt_when(cmd, ready, timeout=300):
    """Start ``cmd`` as a script's background job starts it (SIGINT ignored, which Python keeps),
    send SIGINT once ``ready()``, and return (returncode, stderr, whether it was sent)."""
    import time

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline, sent = time.monotonic() + timeout, False
    while time.monotonic() < deadline and p.poll() is None:
        if ready():
            p.send_signal(signal.SIGINT)
            sent = True
            break
        time.sleep(0.05)
    _, err = p.communicate(timeout=120)
    return p.returncode, err, sent


def test_sigint_stops_a_ladder_started_in_the_background(tmp_path):
    out = tmp_path / "lad"
    code, err, sent = _interrupt_when([sys.executable, "-m", "validation.cli", "ladder", "--out", str(out)],
                                      lambda: any((out / "traces").glob("*.npz")))
    if not sent:
        pytest.skip("the ladder finished before it could be interrupted")
    assert code == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err


@needs_archive
def test_sigint_stops_deep_started_in_the_background(tmp_path):
    """README: Ctrl-C or kill works "also for a command started in the background"."""
    out = tmp_path / "out"
    code, err, sent = _interrupt_when([sys.executable, "-m", "validation.cli", *SMOKE, "--out", str(out)],
                                      lambda: bool(list(out.glob("*/runs/*/checkpoints/*.pt"))))
    if not sent:
        pytest.skip("the suite finished before it could be interrupted")
    assert code == 130, err[-2000:]
    assert "interrupted: finished runs and checkpoints are kept" in err and "Traceback" not in err
    assert "not finished" in err  # what the invocation did, read from the run folders
