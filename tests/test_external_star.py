"""A run judged against another run's theta* (an external theta*, :class:`deep.measure.ExternalStar`):
its companion's distance from theta_0 and its rows are those of a direct recording against that
theta*, and a file that is not the one given, or not laid out as the run's model, is refused."""

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deep.data import CyclicSampler
from deep.env import deterministic
from deep.measure import NO_EXTRAS, Extras, ExternalStar, StarRefused, load_companions, measure
from deep.pass2 import StarRecording
from deep.state import save_state
from deep.step import batch_stats_only, flat_model, make_step
from gamma_theory import PathRecorder
from gamma_theory.files import sha256_file
from gamma_theory.flat import FlatParams
from gamma_theory.optimizers import make_optimizer
from test_measure import TinyCNN, tiny_data

LR, EPOCHS = 0.1, 3
COLUMNS = ("loss", "loss_star", "inner", "update_sq", "dist_sq", "grad_inner", "grad_sq", "step", "epoch")


def _run(workdir, seed, extras):
    return measure(TinyCNN, lambda p: make_optimizer("momentum", p, LR), tiny_data(), lr=LR, epochs=EPOCHS,
                   batch_size=16, workdir=workdir, seed=seed, data_seed=5, progress=False, extras=extras)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    other = _run(tmp_path_factory.mktemp("seed3"), 3, NO_EXTRAS)
    path = other.workdir / "theta_star.pt"
    star = ExternalStar("star_seed3", str(path), sha256_file(path))
    judged = _run(tmp_path_factory.mktemp("seed4"), 4, Extras(random_baseline=False, sensitivity=(),
                                                               external_stars=(star,)))
    return other, judged, star


def _direct(star_states: list[dict]):
    """Run seed 4's path again outside measure(), recording against the theta* ``star_states``
    (in this order): the traces against each."""
    data = tiny_data()
    with deterministic():
        torch.manual_seed(4)
        model = TinyCNN()
        flat = flat_model(model)
        opt = make_optimizer("momentum", model.parameters(), LR)
        sampler = CyclicSampler(len(data), 16, 5)
        refs = [TinyCNN() for _ in star_states]
        _, rows = FlatParams.like(refs)
        for ref, state in zip(refs, star_states):
            ref.load_state_dict(state)
            ref.train()
        rec = PathRecorder(flat, rows, LR, record_grad=True)
        step = make_step(model, opt, data, F.cross_entropy, flat, StarRecording(rec, refs, F.cross_entropy, True))
        with contextlib.ExitStack() as stack:
            for ref in refs:
                stack.enter_context(batch_stats_only(ref))
            for e in range(EPOCHS):
                model.train()
                for idx in sampler.next_epoch():
                    (row,) = step(idx)
                    rec.push(row, e)
        return [rec.trace(j) for j in range(len(star_states))]


def test_an_external_theta_star_is_a_companion_with_its_source(runs):
    other, judged, star = runs
    entry = judged.trace.meta["companions"]["star_seed3"]
    assert entry["source"] == {"kind": "external", "path": star.path, "sha256": star.sha256}
    assert star.path in entry["theta_star"] and set(judged.trace.meta["companions"]) == {"star_seed3"}
    assert judged.trace.meta["setup"]["extras"]["external_stars"] == [star.to_dict()]


def test_its_dist0_sq_is_the_distance_of_theta_0_to_the_other_run_s_theta_star(runs):
    other, judged, _ = runs
    tr = load_companions(judged.workdir, judged.trace.meta)["star_seed3"]
    theta0 = torch.load(judged.workdir / "theta0.pt", weights_only=True)
    star = torch.load(other.workdir / "theta_star.pt", weights_only=True)
    names = [n for n, _ in TinyCNN().named_parameters()]
    want = sum(float(((theta0[n].double() - star[n].double()) ** 2).sum()) for n in names)
    assert tr.dist0_sq == pytest.approx(want, rel=1e-12)
    assert tr.dist0_sq != pytest.approx(judged.trace.dist0_sq, rel=1e-3)  # not the run's own theta*


def test_its_rows_are_those_of_a_direct_recording_against_it(runs):
    """The recorder computes a step's inner products as one float64 Gram matrix, whose round-off
    depends on how many theta* share it: bitwise, the direct recording holds the same theta* as
    the run (its own, then the external one); against the external one alone, to 1e-12."""
    other, judged, _ = runs
    tr = load_companions(judged.workdir, judged.trace.meta)["star_seed3"]
    states = [torch.load(r.workdir / "theta_star.pt", weights_only=True) for r in (judged, other)]
    own, ref = _direct(states)
    for col in COLUMNS:
        assert np.array_equal(getattr(tr, col), getattr(ref, col)), col
        assert np.array_equal(getattr(judged.trace, col), getattr(own, col)), col
    assert (tr.dist0_sq, judged.trace.dist0_sq) == (ref.dist0_sq, own.dist0_sq)
    (alone,) = _direct(states[1:])
    for col in COLUMNS:
        np.testing.assert_allclose(getattr(tr, col), getattr(alone, col), rtol=1e-12, atol=1e-15, err_msg=col)


def test_a_file_that_is_not_the_one_given_is_refused_before_training(runs, tmp_path):
    other, _, star = runs
    wrong = ExternalStar(star.name, star.path, "0" * 64)
    with pytest.raises(StarRefused, match="sha256 is [0-9a-f]{64}, not 0{64}"):
        _run(tmp_path / "r", 4, Extras(external_stars=(wrong,)))
    assert not (tmp_path / "r" / "theta0.pt").exists()


def test_a_theta_star_of_another_model_is_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    save_state(torch.nn.Linear(3, 2).state_dict(), foreign)
    with pytest.raises(StarRefused, match="does not hold this run's parameters"):
        _run(tmp_path / "r", 4, Extras(external_stars=(("lin", str(foreign), sha256_file(foreign)),)))
    state = {k: v.clone() for k, v in TinyCNN().state_dict().items()}
    state["fc.weight"] = torch.zeros(2, 2)
    save_state(state, foreign)
    with pytest.raises(StarRefused, match="fc.weight is laid out"):
        _run(tmp_path / "r2", 4, Extras(external_stars=(("cnn", str(foreign), sha256_file(foreign)),)))


def test_external_theta_star_names_are_checked():
    with pytest.raises(ValueError, match="none of theta\\*, random"):
        ExternalStar("random", "/x", "0" * 64)
    with pytest.raises(ValueError, match="64 hex digits"):
        ExternalStar("a", "/x", "abc")
    with pytest.raises(ValueError, match="must differ"):
        Extras(external_stars=(("a", "/x", "0" * 64), ("a", "/y", "1" * 64)))
    assert "external_stars" not in Extras().to_dict()  # the folders measured without keep their setup.json
