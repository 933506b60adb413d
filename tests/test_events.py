"""Memorization and grokking events found in pass 1, the iterate at each judged on the path before
it, and Definition 1 phase by phase (deep/events.py, gamma_theory/phases.py; issue 23)."""

import json

import numpy as np
import pytest
import torch

from deep.algorithmic import modular_addition
from deep.context import Extras
from deep.measure import measure
from deep.models.transformer import build_transformer
from deep.tensordata import TensorData
from gamma_theory import Trace, definition_1
from gamma_theory.phases import definition_1_by_phase, sub_trace

TASK = modular_addition(p=7, train_fraction=0.6, seed=0)


def model():
    return build_transformer(vocab_size=TASK.vocab_size, num_classes=TASK.num_classes, seq_len=TASK.seq_len,
                             d_model=16, n_heads=2, seed=0)


def run(tmp, held_out, events=True, epochs=40):
    return measure(model, lambda p: torch.optim.AdamW(p, lr=3e-2, weight_decay=0.1),
                   TensorData(TASK.x_train, TASK.y_train), lr=3e-2, epochs=epochs, batch_size=16, workdir=tmp,
                   progress=False, held_out=held_out,
                   extras=Extras(events=events, sensitivity=(0.5,)))


def test_events_are_found_as_they_happen_and_judged_against_the_iterate_at_them(tmp_path):
    train = TensorData(TASK.x_train, TASK.y_train)
    res = run(tmp_path / "r", held_out=train)  # held-out = the training data: grokking is memorization
    meta = res.trace.meta
    ev, rows = meta["events"], meta["epoch_eval"]
    assert len(rows) == 41 and rows[0]["epoch"] == 0
    first = next(r["epoch"] for r in rows if r["train"]["accuracy"] == 1.0)  # by hand from the curves
    grok = next(r["epoch"] for r in rows if r["epoch"] and r["held_out"]["accuracy"] >= 0.95)
    assert ev["memorization"]["epoch"] == first and ev["grokking"]["epoch"] == grok <= first
    assert all(r["held_out"] == r["train"] for r in rows)  # the same data, the same numbers
    spe = meta["steps_per_epoch"]
    assert ev["memorization"]["step"] == first * spe
    comp = meta["companions"]
    assert {"memorization", "grokking"} <= set(comp)
    assert comp["memorization"]["steps"] == first * spe
    # the iterate at memorization classifies every training sample, the one before it does not
    assert rows[first]["train"]["accuracy"] == 1.0 and rows[first - 1]["train"]["accuracy"] < 1.0
    # events change nothing of the training: the same main trace as a run without them
    plain = run(tmp_path / "p", held_out=None, events=False)
    assert np.array_equal(plain.trace.inner, res.trace.inner) and np.array_equal(plain.trace.loss, res.trace.loss)
    for col in ("loss_star", "update_sq", "dist_sq", "grad_inner", "grad_sq"):
        assert np.array_equal(getattr(plain.trace, col), getattr(res.trace, col)), col
    # dist0_sq comes from one float64 Gram matrix over every theta* judged: two more theta* may move
    # its last bits (a reduction of another shape), never more
    assert np.isclose(plain.trace.dist0_sq, res.trace.dist0_sq, rtol=1e-13, atol=0)


def test_a_real_held_out_split_and_phases(tmp_path):
    held = TensorData(TASK.x_test, TASK.y_test)
    res = run(tmp_path / "r", held_out=held)
    rows, ev = res.trace.meta["epoch_eval"], res.trace.meta["events"]
    grok = [r["epoch"] for r in rows if r["epoch"] > 0 and r["held_out"]["accuracy"] >= 0.95]
    assert (ev["grokking"] or {}).get("epoch") == (grok[0] if grok else None)
    cuts = {k: (v or {}).get("step") for k, v in ev.items()}
    by = definition_1_by_phase(res.trace, cuts)
    assert by["feasible_sets_meet"] == definition_1(res.trace).holds
    assert sum(p["n_steps"] for p in by["phases"]) == len(res.trace)


def test_held_out_without_events_is_refused(tmp_path):
    with pytest.raises(ValueError, match="events"):
        measure(model, lambda p: torch.optim.SGD(p, lr=0.1), TensorData(TASK.x_train, TASK.y_train), lr=0.1,
                epochs=1, batch_size=16, workdir=tmp_path / "r", progress=False,
                held_out=TensorData(TASK.x_test, TASK.y_test))


def random_trace(rng, n=60):
    inner = rng.normal(1.0, 1.0, n)
    return Trace(loss=rng.uniform(0.5, 2, n), loss_star=rng.uniform(0, 1.5, n), inner=inner,
                 update_sq=rng.uniform(0, 1, n), dist_sq=rng.uniform(1, 2, n), lr=0.1, dist0_sq=2.0)


@pytest.mark.parametrize("seed", range(40))
def test_phases_meet_exactly_when_the_whole_path_obeys_definition_1(seed):
    rng = np.random.default_rng(seed)
    tr = random_trace(rng)
    cuts = {"a": int(rng.integers(1, 30)), "b": int(rng.integers(30, 59))}
    by = definition_1_by_phase(tr, cuts)
    whole = definition_1(tr)
    assert by["feasible_sets_meet"] == whole.holds
    assert [p["steps"] for p in by["phases"]] == [[0, cuts["a"]], [cuts["a"], cuts["b"]], [cuts["b"], 60]]
    for p in by["phases"]:  # a phase alone allows at least the gammas the whole path allows
        lo, hi = p["steps"]
        d = definition_1(sub_trace(tr, lo, hi))
        assert d.gamma_high >= whole.gamma_high and d.n_steps == hi - lo
