"""Trace files: round trip, and a clear error for every kind of bad input."""

import json

import numpy as np
import pytest

from gamma_theory import Trace, TraceError, load_trace


def good(n=6):
    rng = np.random.default_rng(0)
    return Trace(loss=rng.random(n) + 1, loss_star=rng.random(n), inner=rng.random(n),
                 update_sq=rng.random(n), dist_sq=rng.random(n), lr=0.1, dist0_sq=2.0,
                 epoch=np.arange(n) // 3, meta={"model": "toy", "seed": 1})


def test_round_trip(tmp_path):
    t = good()
    p = t.save(tmp_path / "run")
    assert p.name == "run.npz" and (tmp_path / "run.json").exists()
    u = load_trace(p)
    for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq", "step", "epoch"):
        np.testing.assert_array_equal(getattr(u, col), getattr(t, col))
    assert u.lr == 0.1 and u.dist0_sq == 2.0 and u.meta == {"model": "toy", "seed": 1}
    assert load_trace(tmp_path / "run").meta["seed"] == 1  # suffix optional


def test_minimal_npz_without_sidecar(tmp_path):
    n = 4
    np.savez(tmp_path / "m.npz", loss=np.ones(n), loss_star=np.zeros(n), inner=np.ones(n),
             update_sq=np.ones(n), dist_sq=np.ones(n), lr=0.1, dist0_sq=1.0)
    t = load_trace(tmp_path / "m.npz")
    assert t.step.tolist() == [0, 1, 2, 3] and t.meta == {}


def write(tmp_path, **cols):
    base = dict(loss=np.ones(4), loss_star=np.zeros(4), inner=np.ones(4), update_sq=np.ones(4),
                dist_sq=np.ones(4), lr=0.1, dist0_sq=1.0)
    base.update(cols)
    base = {k: v for k, v in base.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **base)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("cols, match", [
    (dict(inner=None), r"missing 'inner'"),
    (dict(lr=None), r"missing 'lr'"),
    (dict(dist_sq=np.ones(3)), r"unequal lengths.*dist_sq=3"),
    (dict(loss=np.array([1.0, np.nan, 1.0, 1.0])), r"'loss' is not finite .* row 1"),
    (dict(update_sq=np.array([1.0, 1.0, -1.0, 1.0])), r"'update_sq' is a squared norm but is negative at row 2"),
    (dict(dist0_sq=0.0), r"'dist0_sq' must be positive"),
    (dict(lr=np.array([0.1, 0.2])), r"'lr' must be a scalar"),
    (dict(loss=np.ones((2, 2))), r"'loss' must be 1-D"),
    (dict(lr=np.array("0.1")), r"scalar 'lr' must be a real number"),
    (dict(dist0_sq=np.array(True)), r"scalar 'dist0_sq' must be a real number"),
    (dict(inner=np.ones(4) * 1j), r"column 'inner' must hold real numbers"),
    (dict(step=np.array([0, 1, 1, 2])), r"'step' must increase strictly"),
    (dict(epoch=np.array([0, 1, 0, 1])), r"'epoch' must not decrease"),
    (dict(step=np.array([0.0, 1.5, 2.0, 3.0])), r"'step' must hold whole numbers"),
    (dict(epoch=np.array([0.0, np.nan, 1.0, 1.0])), r"'epoch' must hold whole numbers"),
    (dict(sample_gap_max=np.ones((1, 2))), r"'sample_gap_max' must be 1-D"),
])
def test_schema_errors_name_file_and_problem(tmp_path, cols, match):
    p = write(tmp_path, **cols)
    with pytest.raises(TraceError, match=match) as exc:
        load_trace(p)
    assert str(p) in str(exc.value)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "nope.npz")
    p = good().save(tmp_path / "t")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match="not the file its sidecar t.json describes"):
        load_trace(p)
    (tmp_path / "t.json").unlink()  # without the sidecar's digest, the zip itself is unreadable
    with pytest.raises(TraceError, match="not a readable .npz"):
        load_trace(p)
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(TraceError, match="not a readable"):
        load_trace(tmp_path / "x.npz")


def test_a_file_that_is_not_a_trace_is_named_so_without_numpys_pickle_advice(tmp_path):
    """`gpcheck check README.md`: numpy's ValueError advises allow_pickle=True (which would run
    code from the file); the message says the file is not a trace instead."""
    (tmp_path / "README.md").write_text("# gpcheck\n\nnot a trace\n")
    with pytest.raises(TraceError, match="not an .npz \\(zip\\) archive at all; a trace is the .npz file") as exc:
        load_trace(tmp_path / "README.md")
    assert "pickle" not in str(exc.value)
    np.savez(tmp_path / "obj.npz", loss=np.array([{"a": 1}], dtype=object))  # an npz holding a pickle
    with pytest.raises(TraceError, match="holds pickled Python objects, which a trace never does") as exc:
        load_trace(tmp_path / "obj.npz")
    assert "allow_pickle" not in str(exc.value)


def test_sidecar_digest_catches_an_npz_from_elsewhere(tmp_path):
    a = good().save(tmp_path / "a")
    other = good()
    other.loss = other.loss * 2
    b = other.save(tmp_path / "b")
    b.replace(a)  # another run's npz under a's name, a's sidecar kept
    with pytest.raises(TraceError, match="sha256 differs"):
        load_trace(a)
    assert "npz_sha256" in json.loads((tmp_path / "b.json").read_text())


def test_save_leaves_no_temporary_and_sidecar_last(tmp_path):
    good().save(tmp_path / "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.npz"]


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", ""])
def test_bad_sidecar_is_one_clean_error(tmp_path, text):
    p = good().save(tmp_path / "t")
    (tmp_path / "t.json").write_text(text)
    with pytest.raises(TraceError, match="t.json"):
        load_trace(p)
