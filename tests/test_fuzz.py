"""Fuzzing: malformed traces and malformed command lines. The outcome is always one of two: exit 2
with one line that starts ``gpcheck: error:``, or a verdict, the one the checkers give for the
same columns. Never a traceback.

CI runs a derandomized few (tests/conftest.py); outside CI, ``GPCHECK_FUZZ_EXAMPLES=1000`` runs many.
"""

import json
import os
import string

import numpy as np
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gamma_theory import Trace, check_trace
from validation.cli import main

EXAMPLES = int(os.environ.get("GPCHECK_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
KEYS = ("loss", "loss_star", "inner", "update_sq", "dist_sq", "step", "epoch", "lr", "dist0_sq", "sample_gap_max")
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
NICE = st.floats(min_value=-10, max_value=10, allow_nan=False)


def one_line_error(res) -> bool:
    lines = res.output.strip().splitlines()
    return res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("gpcheck: error: ")


@st.composite
def arrays(draw, n):
    kind = draw(st.sampled_from(["float", "nice", "int", "bool", "str", "complex", "2d", "scalar", "empty", "short"]))
    if kind == "float":
        return np.array(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype=np.float64)
    if kind == "nice":
        return np.array(draw(st.lists(NICE, min_size=n, max_size=n)), dtype=np.float64)
    if kind == "int":
        return np.array(draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)), dtype=np.int64)
    if kind == "bool":
        return np.ones(n, dtype=bool)
    if kind == "str":
        return np.array([draw(st.text(max_size=3)) for _ in range(n)])
    if kind == "complex":
        return np.ones(n) * 1j
    if kind == "2d":
        return np.ones((n, 2))
    if kind == "scalar":
        return np.float64(draw(FLOATS))
    if kind == "empty":
        return np.zeros(0)
    return np.ones(max(n - 1, 0))


@st.composite
def trace_files(draw):
    """The arrays of an npz: sometimes a valid trace, mostly one with something wrong."""
    n = draw(st.integers(1, 12))
    valid = {
        "loss": np.array(draw(st.lists(st.floats(0, 5), min_size=n, max_size=n))),
        "loss_star": np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))),
        "inner": np.array(draw(st.lists(NICE, min_size=n, max_size=n))),
        "update_sq": np.array(draw(st.lists(st.floats(0, 10), min_size=n, max_size=n))),
        "dist_sq": np.array(draw(st.lists(st.floats(0, 10), min_size=n, max_size=n))),
        "lr": np.float64(draw(st.floats(1e-4, 1.0))),
        "dist0_sq": np.float64(draw(st.floats(1e-3, 10.0))),
    }
    broken = draw(st.lists(st.sampled_from(KEYS), max_size=3, unique=True))
    for k in broken:
        if draw(st.booleans()):
            valid.pop(k, None)
        else:
            valid[k] = draw(arrays(n))
    return valid


SIDECARS = st.one_of(st.none(), st.just("{not json"), st.just("[]"), st.just('{"npz_sha256": "00"}'),
                     st.dictionaries(st.text(max_size=5), st.integers(), max_size=3).map(json.dumps))


@FUZZ
@given(arrs=trace_files(), sidecar=SIDECARS)
def test_gpcheck_check_on_malformed_traces(tmp_path_factory, arrs, sidecar):
    d = tmp_path_factory.mktemp("fuzz")
    path = d / "t.npz"
    with open(path, "wb") as fh:
        np.savez(fh, **arrs)
    if sidecar is not None:
        (d / "t.json").write_text(sidecar)
    res = CliRunner().invoke(main, ["check", str(path), "--json"])
    assert "Traceback" not in res.output and not isinstance(res.exception, Exception) or \
        isinstance(res.exception, SystemExit), res.output
    if res.exit_code == 0:  # a verdict: the one the checkers give for these very columns
        want = check_trace(Trace(**{k: arrs[k] for k in ("loss", "loss_star", "inner", "update_sq", "dist_sq")},
                                 lr=float(np.ravel(arrs["lr"])[0]), dist0_sq=float(np.ravel(arrs["dist0_sq"])[0]),
                                 step=arrs.get("step"), epoch=arrs.get("epoch"),
                                 sample_gap_max=arrs.get("sample_gap_max")))
        assert json.loads(res.stdout)["holds"] == want.holds
    else:
        assert one_line_error(res), res.output


WORDS = ["ladder", "check", "deep", "report", "index", "--suite", "bn", "dropout", "--preset", "paper", "huge",
         "smoke", "--dataset", "mnist", "both", "--device", "quantum", "cuda:9", "--threads", "0", "-3", "x",
         "--seed", "-5", "1e3", "--out", "/dev/null/x", "--json", "--quiet", "--data-root", "/nonexistent",
         "--bogus", "", "\x00", "reports", "/etc/passwd", "--download", "--help-me"]


class WouldRun(Exception):
    """A valid command line that would start real work (a ladder, a suite): not run here."""


def _would_run(*a, **k):
    raise WouldRun


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(WORDS), st.text(string.printable, max_size=6)), min_size=1, max_size=5))
def test_malformed_command_lines(tmp_path_factory, argv):
    """Any command line exits 2 with one line, 3 with one line naming a path, or is valid (then
    the work it would start is replaced by a stand-in); never a traceback."""
    from unittest import mock

    runner = CliRunner()
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # whatever a command line writes lands in a fresh folder
    try:
        with mock.patch("validation.ladder.run_ladder", _would_run), mock.patch("deep.runner.run_suite", _would_run):
            res = runner.invoke(main, argv)
    finally:
        os.chdir(here)
    if isinstance(res.exception, WouldRun):
        return
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), (argv, res.exception)
    if res.exit_code == 3:
        assert res.output.startswith("gpcheck: error: ") and len(res.output.strip().splitlines()) == 1
    elif res.exit_code != 0:
        assert one_line_error(res), (argv, res.output)
