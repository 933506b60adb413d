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


# -- issue 25, item 7: every JSON file gpcheck reads, fuzzed ---------------------------------------
# Each kind is read by its own reader, as `deep`, `report` and `picture` read it. The outcome is
# always the value accepted, or the reader's own one-message error naming the file; never any
# other exception (a KeyError, a TypeError, a RecursionError: a traceback on the command line).
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=12)


def _fuzzed(base: dict, keys, draw_value) -> dict:
    """``base`` with a few of ``keys`` replaced by drawn values or removed."""
    out = json.loads(json.dumps(base))
    for key, value in draw_value:
        where, _, sub = key.partition(".")
        if value == "<drop>":
            (out.get(where) if sub and isinstance(out.get(where), dict) else out).pop(sub or where, None)
        elif sub and isinstance(out.get(where), dict):
            out[where][sub] = value
        else:
            out[where] = value
    return out


def _edits(keys):
    return st.lists(st.tuples(st.sampled_from(keys), JSON_VALUES | st.just("<drop>")), min_size=1, max_size=3)


def _text_or_nested(obj) -> st.SearchStrategy:
    return st.sampled_from([json.dumps(obj), "[" * 5000 + "]" * 5000, "{" * 100 + "}" * 100, "{", "", "\xff"])


_TRACE_KEYS = ["status", "diverged", "npz_sha256", "companions", "companions.random", "epochs_measured", "env",
               "env.num_threads", "env.device", "run", "run.network", "run.optimizer", "run.lr", "setup",
               "setup.batch_size", "setup.epochs", "setup.n_train", "theta_star_eval", "pass1"]


def _sample_trace_json() -> dict:
    return {"status": "ok", "diverged": None, "npz_sha256": "0" * 64, "epochs_measured": 2,
            "companions": {"random": {"file": "companions/random.npz", "npz_sha256": "1" * 64}},
            "env": {"device": "cpu", "num_threads": 1}, "setup": {"batch_size": 64, "epochs": 2, "n_train": 256,
                                                                  "data_seed": 0},
            "run": {"network": "resnet18", "optimizer": "sgd", "lr": 0.05, "activation": "relu", "bn": "all",
                    "skip": "all", "width": 0.125, "seed": 0}}


@FUZZ
@given(edits=_edits(_TRACE_KEYS), raw=st.booleans(), text=_text_or_nested(_sample_trace_json()))
def test_fuzzed_trace_json_and_picture_inputs(tmp_path_factory, edits, raw, text):
    """trace.json as deep/measure.py, `report` and `picture` read it (with a bound on the replay)."""
    from pathlib import Path

    from deep.measure import load_companions
    from deep.verify import consistent_status, picture_inputs, read_trace_json
    from gamma_theory import TraceError
    from gamma_theory.files import BadFile

    d = Path(tmp_path_factory.mktemp("tj"))
    path = d / "trace.json"
    path.write_text(text if raw else json.dumps(_fuzzed(_sample_trace_json(), _TRACE_KEYS, edits)))
    try:
        info = read_trace_json(path)
        consistent_status(info, path)
    except BadFile as exc:
        assert str(path) in str(exc)
        return
    try:
        load_companions(d, info)
    except TraceError:
        pass
    try:
        picture_inputs(info, path, 2, 8)
    except BadFile as exc:
        assert str(path) in str(exc)
        return
    assert 1 <= info["epochs_measured"] <= 2  # the replay it would start is the trace's own


@FUZZ
@given(edits=_edits(["runs", "runs.resnet18-first", "runs.x"]), raw=st.booleans(),
       text=_text_or_nested({"runs": {"resnet18-first": {"status": "ok", "trace_sha256": "0" * 64}}}))
def test_fuzzed_manifest(tmp_path_factory, edits, raw, text):
    from pathlib import Path

    from deep.runner import read_manifest
    from deep.verify import manifest_problem
    from gamma_theory.files import BadFile

    d = Path(tmp_path_factory.mktemp("mf"))
    base = {"runs": {"resnet18-first": {"status": "ok", "trace_sha256": "0" * 64}}}
    (d / "manifest.json").write_text(text if raw else json.dumps(_fuzzed(base, [], edits)))
    try:
        m = read_manifest(d)
    except BadFile as exc:
        assert "manifest.json" in str(exc)
        return
    for entry in m["runs"].values():
        manifest_problem({"npz_sha256": "0" * 64, "status": "ok"}, entry)  # never raises


_SUITE_KEYS = ["suite", "preset", "num_classes", "seeds", "labels", "wall_s", "extras", "extras.star_extend", "runs",
               "n_train", "started_utc"]


@FUZZ
@given(edits=_edits(_SUITE_KEYS), raw=st.booleans(),
       text=_text_or_nested({"suite": "skip", "preset": "smoke", "num_classes": 10}))
def test_fuzzed_suite_json(tmp_path_factory, edits, raw, text):
    """suite.json as `report` (and `picture`) and the runner read it."""
    from pathlib import Path

    from deep.runner import write_suite_info
    from validation.deep_report import ReportError, suite_info

    d = Path(tmp_path_factory.mktemp("sj"))
    base = {"suite": "skip", "preset": "smoke", "num_classes": 10, "seeds": 1, "wall_s": 1.0}
    (d / "suite.json").write_text(text if raw else json.dumps(_fuzzed(base, _SUITE_KEYS, edits)))
    try:
        info = suite_info(d)
        assert info.get("num_classes") is None or isinstance(info["num_classes"], int)  # what the report takes
    except ReportError as exc:
        assert "suite.json" in str(exc)
    write_suite_info(d, {"started_utc": "now", "suite": "skip", "preset": "smoke"}, 1.0)  # rewritten, never raises
    assert json.loads((d / "suite.json").read_text())["wall_s"] >= 1.0


_SETUP_KEYS = ["lr", "epochs", "batch_size", "seed", "data_seed", "checkpoint_every", "n_train", "extras", "run"]


@FUZZ
@given(edits=_edits(_SETUP_KEYS), raw=st.booleans(), text=_text_or_nested({"lr": 0.1}))
def test_fuzzed_setup_json(tmp_path_factory, edits, raw, text):
    """setup.json of a run folder, as RunFolder.claim claims the folder: a damaged one is measured
    again (a warning), one of other settings refused with RunMismatch; nothing else."""
    import warnings
    from pathlib import Path

    from deep.folder import RunFolder
    from deep.measure import RunMismatch

    d = Path(tmp_path_factory.mktemp("su")) / "run"
    d.mkdir()
    base = {"lr": 0.1, "epochs": 3, "batch_size": 8, "seed": 0, "data_seed": 0, "checkpoint_every": 1, "n_train": 24}
    (d / "setup.json").write_text(text if raw else json.dumps(_fuzzed(base, _SETUP_KEYS, edits)))
    (d / "keep.txt").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            RunFolder(d).claim(base)
        except RunMismatch as exc:
            assert str(d) in str(exc)
            return
    assert json.loads((d / "setup.json").read_text()) == base


@FUZZ
@given(entry=JSON_VALUES, name=st.text(max_size=6))
def test_fuzzed_companions(tmp_path_factory, entry, name):
    """A companion entry of any shape: the trace's own TraceError naming the file, or a companion
    read from inside the run folder."""
    from pathlib import Path

    from deep.measure import load_companions
    from gamma_theory import TraceError

    d = Path(tmp_path_factory.mktemp("cp"))
    try:
        out = load_companions(d, {"companions": {name: entry}})
    except TraceError:
        return
    assert all(d in p.parents for p in [d / "companions" / "x"]) and out is not None
