"""PathRecorder under torch's learning-rate schedulers, against a float64 brute force from stored
iterates; and a constant schedule records every byte the constant-lr recorder records."""

import dataclasses

import numpy as np
import pytest
import torch

from gamma_theory import PathRecorder, check_trace, flatten_params, load_trace, trace_from_iterates
from gamma_theory.flat import FlatParams
from gamma_theory.problems import make_optimizer
from gamma_theory.recorder import lr_of

from test_recorder import batches, small_mlp

SCHEDULERS = {
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5),
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=15, eta_min=1e-3),
    "warmup": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 5)),
    "constant": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0),
}


def train(opt_name, lr, sched, data, record=None, star_model=None, how="optimizer", flat=False):
    """One pass: store every iterate and eta_k (pass 1), or record against theta* (pass 2)."""
    model = small_mlp(1)
    fp = FlatParams(model) if flat else None
    opt = make_optimizer(opt_name, list(model.parameters()), lr)
    scheduler = SCHEDULERS[sched](opt) if sched else None
    loss_fn = torch.nn.functional.cross_entropy
    thetas, losses, etas = [flatten_params(list(model.parameters()), torch.float64)], [], []
    rec = None
    if record is not None:
        star = fp.layout.unpack(record, fp.layout.empty(dtype=record.dtype)) if flat else record
        rec = PathRecorder(fp if flat else model.parameters(), star, lr)
    for e, x, y in data:
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        eta_k = opt.param_groups[0]["lr"]
        if rec is not None:
            with torch.no_grad():
                ls = loss_fn(star_model(x), y)
            if how == "optimizer":
                rec.record(loss, ls, e, lr=opt)
            elif how == "number":
                rec.record(loss, ls, e, lr=eta_k)
            elif how == "tensor":
                rec.push(rec.row(loss, ls, torch.tensor(eta_k, dtype=torch.float64)).clone(), e, eta_k)
            else:
                rec.record(loss, ls, e)
        losses.append(loss.item())
        etas.append(eta_k)
        thetas.append(flatten_params(list(model.parameters()), torch.float64))
        if scheduler is not None:
            scheduler.step()  # after record: the optimizer still held eta_k
    return model, torch.stack(thetas), np.array(losses), np.array(etas), rec


@pytest.mark.parametrize("opt_name,lr", [("sgd", 0.3), ("momentum", 0.2), ("adam", 0.01)])
@pytest.mark.parametrize("sched", ["step", "cosine", "warmup"])
def test_recorder_with_a_scheduler_matches_brute_force(opt_name, lr, sched):
    data = batches(0)
    _, thetas, losses, etas, _ = train(opt_name, lr, sched, data)
    assert len(set(etas.tolist())) > 1
    theta_star = thetas[-1].clone()
    star_model = small_mlp(1)
    torch.nn.utils.vector_to_parameters(theta_star.float(), star_model.parameters())
    with torch.no_grad():
        loss_star = np.array([torch.nn.functional.cross_entropy(star_model(x), y).item() for _, x, y in data])
    epoch = np.array([e for e, _, _ in data])
    ref = trace_from_iterates(thetas.numpy(), losses, loss_star, lr, epoch=epoch, eta=etas)
    assert ref.eta is not None
    model, _, _, _, rec = train(opt_name, lr, sched, data, record=theta_star.float(), star_model=star_model)
    tr = rec.trace()
    assert torch.equal(flatten_params(list(model.parameters()), torch.float64), theta_star)
    np.testing.assert_array_equal(tr.eta, etas)
    assert tr.lr == lr
    for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq"):
        np.testing.assert_allclose(getattr(tr, col), getattr(ref, col), rtol=1e-12, atol=1e-14, err_msg=col)
    rep = check_trace(tr)
    assert rep.identity.holds and rep.identity.max_rel_residual < 1e-12
    assert rep.rate.eta_weighted
    # ignoring the eta column breaks the recording identity
    assert not check_trace(dataclasses.replace(tr, eta=None)).identity.holds


@pytest.mark.parametrize("how", ["optimizer", "number", "tensor"])
def test_eta_given_three_ways_records_the_same(how):
    data = batches(1, epochs=2)
    _, thetas, _, etas, _ = train("sgd", 0.3, "cosine", data)
    star = thetas[-1].float()
    star_model = small_mlp(1)
    torch.nn.utils.vector_to_parameters(star, star_model.parameters())
    ref = train("sgd", 0.3, "cosine", data, record=star, star_model=star_model, how="optimizer")[-1].trace()
    got = train("sgd", 0.3, "cosine", data, record=star, star_model=star_model, how=how, flat=True)[-1].trace()
    for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq", "eta"):
        np.testing.assert_allclose(getattr(got, col), getattr(ref, col), rtol=1e-13, atol=1e-15, err_msg=col)


@pytest.mark.parametrize("how", ["optimizer", "number", "tensor", "default"])
def test_a_constant_schedule_records_every_byte_the_constant_lr_recorder_does(tmp_path, how):
    data = batches(2, epochs=2)
    _, thetas, _, _, _ = train("momentum", 0.2, None, data)
    star = thetas[-1].float()
    star_model = small_mlp(1)
    torch.nn.utils.vector_to_parameters(star, star_model.parameters())
    plain = train("momentum", 0.2, None, data, record=star, star_model=star_model, how="default")[-1]
    sched = train("momentum", 0.2, "constant", data, record=star, star_model=star_model, how=how)[-1]
    r0, s0, e0 = plain.rows()
    r1, s1, e1 = sched.rows()
    assert r0.tobytes() == r1.tobytes() and s0.tobytes() == s1.tobytes() and e0.tobytes() == e1.tobytes()
    assert sched.etas() is None and sched.trace().eta is None
    a, b = plain.trace().save(tmp_path / "a"), sched.trace().save(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert load_trace(b).eta is None


def test_lr_of_reads_one_rate_and_refuses_several():
    p = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = torch.optim.SGD([{"params": [p[0]]}, {"params": [p[1]]}], lr=0.1)
    assert lr_of(opt) == 0.1 and lr_of(torch.tensor(0.25)) == 0.25 and lr_of(3) == 3.0
    opt.param_groups[1]["lr"] = 0.2
    with pytest.raises(ValueError, match="2 learning rates"):
        lr_of(opt)


def test_recorder_refuses_a_step_without_a_learning_rate():
    model = small_mlp(0)
    rec = PathRecorder(model.parameters(), flatten_params(list(model.parameters())) + 1, 0.1)
    with pytest.raises(ValueError, match="eta_k = 0"):
        rec.record(1.0, 0.0, 0, lr=0.0)
    with pytest.raises(ValueError, match="positive"):
        rec.push(torch.zeros(7, dtype=torch.float64), 0, lr=-1.0)
    assert len(rec) == 0


def test_segments_join_with_their_etas():
    """A resumed pass: two recorders, rows and eta_k joined, give the one-recorder trace."""
    data = batches(4, epochs=2)
    _, thetas, _, _, _ = train("sgd", 0.3, "step", data)
    star = thetas[-1].float()
    star_model = small_mlp(1)
    torch.nn.utils.vector_to_parameters(star, star_model.parameters())
    whole = train("sgd", 0.3, "step", data, record=star, star_model=star_model)[-1]
    rows, step, epoch = whole.rows()
    eta = whole.etas(always=True)
    assert np.array_equal(eta, whole.trace().eta)
    half = len(rows) // 2
    from gamma_theory.recorder import trace_from_rows
    joined = trace_from_rows(np.concatenate([rows[:half], rows[half:]]), step, epoch, 0, 0.3, whole.dist0_sq[0],
                             eta=np.concatenate([eta[:half], eta[half:]]))
    ref = whole.trace()
    for col in ("loss", "inner", "update_sq", "dist_sq", "eta"):
        assert getattr(joined, col).tobytes() == getattr(ref, col).tobytes()
    # the first steps of a StepLR all ran at the base lr: cut there, the trace has no column
    assert trace_from_rows(rows, step, epoch, 0, 0.3, whole.dist0_sq[0], until=4, eta=eta).eta is None
