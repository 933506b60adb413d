"""The traces pass 2 records beside the real one: a random theta*, earlier iterates and a
longer-trained theta* as minimizers, and the gradient's columns. Each is held to a float64 brute
force from an independent training loop that stores every iterate and gradient."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deep.data import CyclicSampler
from deep.folder import RunFolder
from deep.measure import Extras, measure
from deep.stars import random_star
from gamma_theory import PathRecorder, check_trace, flatten_params, trace_from_iterates
from gamma_theory.flat import FlatLayout
from gamma_theory.optimizers import make_optimizer
from test_measure import TinyCNN, tiny_data

EPOCHS, LR = 4, 0.1
EXTRAS = Extras(random_baseline=True, sensitivity=(0.5, 0.75), star_extend=0.5, record_grad=True)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    return measure(TinyCNN, lambda p: make_optimizer("momentum", p, LR), tiny_data(), lr=LR, epochs=EPOCHS,
                   batch_size=16, workdir=tmp_path_factory.mktemp("run"), seed=3, data_seed=5, progress=False,
                   extras=EXTRAS)


@pytest.fixture(scope="module")
def brute():
    """Train EPOCHS (+ the extension) storing every iterate, gradient and batch."""
    data = tiny_data()
    torch.manual_seed(3)
    model = TinyCNN()
    opt = make_optimizer("momentum", model.parameters(), LR)
    sampler = CyclicSampler(len(data), 16, 5)
    thetas, grads, losses, batches, epoch = [flatten_params(list(model.parameters()), torch.float64)], [], [], [], []
    states = {0: {k: v.clone() for k, v in model.state_dict().items()}}
    for e in range(EPOCHS + EXTRAS.extend_epochs(EPOCHS)):
        for idx in sampler.next_epoch():
            x, y = data.batch(idx)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward()
            if e < EPOCHS:
                grads.append(flatten_params([p.grad for p in model.parameters()], torch.float64))
            opt.step()
            if e < EPOCHS:
                losses.append(loss.item()); batches.append((x, y)); epoch.append(e)
                thetas.append(flatten_params(list(model.parameters()), torch.float64))
        states[e + 1] = {k: v.clone() for k, v in model.state_dict().items()}
    return dict(thetas=torch.stack(thetas), grads=torch.stack(grads), losses=np.array(losses), batches=batches,
                epoch=np.array(epoch), states=states)


def loss_at(state: dict, params: torch.Tensor | None, batches) -> np.ndarray:
    m = TinyCNN()
    m.load_state_dict(state)
    if params is not None:
        torch.nn.utils.vector_to_parameters(params.float(), m.parameters())
    m.bn.momentum = 0.0
    with torch.no_grad():
        return np.array([F.cross_entropy(m(x), y).item() for x, y in batches])


def reference(b, star: torch.Tensor, loss_star: np.ndarray, steps: int):
    return trace_from_iterates(b["thetas"][: steps + 1].numpy(), b["losses"][:steps], loss_star[:steps], LR,
                               epoch=b["epoch"][:steps], theta_star=star.numpy(), grads=b["grads"][:steps].numpy())


def assert_same(tr, ref):
    for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq", "grad_inner", "grad_sq"):
        np.testing.assert_allclose(getattr(tr, col), getattr(ref, col), rtol=1e-11, atol=1e-13, err_msg=col)
    assert tr.dist0_sq == pytest.approx(ref.dist0_sq, rel=1e-13)
    np.testing.assert_array_equal(tr.epoch, ref.epoch)
    assert check_trace(tr).identity.holds


def test_main_trace_and_gradient_columns(measured, brute):
    star = brute["thetas"][-1]
    ref = reference(brute, star, loss_at(brute["states"][EPOCHS], None, brute["batches"]), len(brute["losses"]))
    assert_same(measured.trace, ref)
    # momentum's first step is the gradient itself (to the float32 rounding of theta_1), later ones are not
    assert measured.trace.grad_sq[0] == pytest.approx(measured.trace.update_sq[0], rel=1e-5)
    assert measured.trace.grad_sq[5] != pytest.approx(measured.trace.update_sq[5], rel=1e-2)


def test_random_theta_star_is_exact(measured, brute):
    comps = measured.trace.meta["companions"]
    from deep.measure import load_companions

    tr = load_companions(measured.workdir, measured.trace.meta)["random"]
    seed = EXTRAS.baseline_seed + 3
    layout = FlatLayout(list(TinyCNN().named_parameters()))
    t0, last = (layout.unpack(brute["thetas"][i].float(), layout.empty()) for i in (0, -1))
    star = layout.pack(random_star(layout, t0, last, seed, layout.empty())).double()
    # the same distance from theta_0 as the real theta*, to float32 rounding
    assert tr.dist0_sq == pytest.approx(measured.trace.dist0_sq, rel=1e-6)
    ref = reference(brute, star, loss_at(brute["states"][EPOCHS], star, brute["batches"]), len(brute["losses"]))
    assert_same(tr, ref)
    assert f"seed {seed}" in comps["random"]["theta_star"]


@pytest.mark.parametrize("name, epoch", [("epoch0002", 2), ("epoch0003", 3)])
def test_earlier_iterates_as_theta_star(measured, brute, name, epoch):
    from deep.measure import load_companions

    tr = load_companions(measured.workdir, measured.trace.meta)[name]
    steps = int(np.sum(brute["epoch"] < epoch))
    assert len(tr) == steps and tr.epoch.max() == epoch - 1  # judged on the steps before it
    star = brute["thetas"][steps]
    ref = reference(brute, star, loss_at(brute["states"][epoch], None, brute["batches"]), steps)
    assert_same(tr, ref)


def test_theta_star_trained_longer(measured, brute):
    from deep.measure import load_companions

    more = EXTRAS.extend_epochs(EPOCHS)
    tr = load_companions(measured.workdir, measured.trace.meta)["extended"]
    state = brute["states"][EPOCHS + more]
    star = flatten_params([state[n] for n, _ in TinyCNN().named_parameters()], torch.float64)
    ref = reference(brute, star, loss_at(state, None, brute["batches"]), len(brute["losses"]))
    assert_same(tr, ref)
    assert measured.trace.meta["theta_star_extended"]["epochs"] == more


def test_companions_are_checked_against_their_digest(measured, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(measured.workdir, run)
    t = (run / "companions" / "random.npz")
    b = bytearray(t.read_bytes())
    b[len(b) // 2] ^= 1
    t.write_bytes(bytes(b))
    with pytest.warns(UserWarning, match="does not verify"):
        assert RunFolder(run).finished() is None


def test_multi_star_recorder_needs_decreasing_reach():
    m = torch.nn.Linear(3, 2)
    stars = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="decreasing"):
        PathRecorder(m.parameters(), stars, 0.1, until=[5, None])
    rec = PathRecorder(m.parameters(), stars, 0.1, until=[None, 1])
    assert rec.n_active() == 2
    with pytest.raises(ValueError, match="1 losses at theta\\* for 2 active"):
        rec.record(1.0, [0.0])
