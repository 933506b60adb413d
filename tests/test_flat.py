"""Flat parameter buffers and the chunked float64 Gram matrix, against plain layouts and a float64
brute force."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from deep.env import deterministic
from deep.models import build_model
from gamma_theory import PathRecorder, flatten_params, trace_from_iterates
from gamma_theory.flat import ALIGN, FlatLayout, FlatParams, gram, sq_dist


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 3))


def test_flat_params_keep_values_and_live_in_one_aligned_buffer():
    model = tiny_cnn()
    before = [p.detach().clone() for p in model.parameters()]
    fp = FlatParams(model)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())
    for p, s in zip(model.parameters(), fp.layout.slots):
        assert p.untyped_storage().data_ptr() == fp.flat.untyped_storage().data_ptr()
        assert s.offset % ALIGN == 0
    # the buffer is the parameters, in order, with zeros between them
    assert torch.equal(fp.layout.pack(fp.flat), flatten_params(list(model.parameters())))
    assert fp.flat.abs().sum() == flatten_params(list(model.parameters())).abs().sum()
    assert fp.layout.numel == sum(p.numel() for p in model.parameters())
    # in-place updates (load_state_dict, an optimizer step) stay in the buffer
    model.load_state_dict(tiny_cnn(1).state_dict())
    assert torch.equal(fp.layout.pack(fp.flat), flatten_params(list(tiny_cnn(1).parameters())))
    fp.check()


def test_channels_last_weights_stay_channels_last():
    model = tiny_cnn().to(memory_format=torch.channels_last)
    fp = FlatParams(model)
    w = model[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert torch.equal(fp.layout.pack(fp.flat), flatten_params(list(tiny_cnn().parameters())))


def test_flat_grads_and_check():
    model = tiny_cnn()
    fp = FlatParams(model)
    g = fp.flat_grads()
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    assert torch.equal(fp.layout.pack(g), flatten_params([p.grad for p in model.parameters()]))
    fp.zero_grad()
    assert not g.any()
    fp.check()
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="flat gradient buffer"):
        fp.check()
    model[0].weight.data = torch.zeros_like(model[0].weight)
    with pytest.raises(RuntimeError, match="left the flat buffer"):
        fp.check()


def test_like_puts_models_into_rows():
    models = [tiny_cnn(i) for i in range(3)]
    flats, rows = FlatParams.like(models)
    assert rows.shape == (3, flats[0].layout.size)
    for i, m in enumerate(models):
        assert torch.equal(flats[i].layout.pack(rows[i]), flatten_params(list(tiny_cnn(i).parameters())))
        assert m[0].weight.data_ptr() == flats[i].layout.view(rows[i], flats[i].layout.slots[0]).data_ptr()


def test_fill_unpack_pack_round_trip():
    model = tiny_cnn()
    layout = FlatLayout(list(model.named_parameters()))
    buf = layout.fill(layout.empty(), model.state_dict())
    vec = layout.pack(buf)
    assert torch.equal(vec, flatten_params(list(model.parameters())))
    assert torch.equal(layout.unpack(vec, layout.empty()), buf)


@pytest.mark.parametrize("network", ["resnet18", "alexnet", "vgg11"])
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_training_bits_do_not_depend_on_the_layout(network, optimizer):
    """Both passes train in the flat layout; the bits equal the plain layout's, so runs measured
    before flat buffers existed replay (gpcheck picture) and compare with new ones."""
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)

    def train(flat: bool):
        torch.manual_seed(0)
        m = build_model(network, 10, width=0.125)
        fp = FlatParams(m) if flat else None
        if fp:
            fp.flat_grads()
        opt = (torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) if optimizer == "momentum"
               else torch.optim.Adam(m.parameters(), lr=1e-3))
        for i in range(4):
            x, y = X[i % 2 * 16:][:16], Y[i % 2 * 16:][:16]
            loss = F.cross_entropy(m(x), y)
            fp.zero_grad() if fp else opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return flatten_params(list(m.parameters()))

    with deterministic():
        assert torch.equal(train(False), train(True))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), rows=st.integers(1, 4), chunk=st.integers(1, 64), seed=st.integers(0, 2**31 - 1))
def test_gram_is_the_float64_brute_force(n, rows, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g)
    b = torch.randn(rows, n, generator=g)
    c = torch.randn(n, generator=g)
    G = gram([(a, c), b, (a, b)], chunk=chunk)
    an, bn, cn = (x.double().numpy() for x in (a, b, c))
    M = np.vstack([an - cn, bn, an - bn])
    np.testing.assert_allclose(G.numpy(), M @ M.T, rtol=1e-12, atol=1e-12 * n)
    np.testing.assert_allclose(sq_dist(a, b, chunk).numpy(), ((an - bn) ** 2).sum(1), rtol=1e-12)


def test_gram_reuses_a_workspace_and_fixes_the_order():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, generator=g), torch.randn(3, 1000, generator=g)
    ws = torch.empty(4, 128, dtype=torch.float64)
    assert torch.equal(gram([(a, b), a], 128, ws), gram([(a, b), a], 128))  # same chunks, same bits


def test_flat_recorder_is_the_brute_force():
    """A recorder reading a flat buffer (and its gradient buffer in place) gives the columns of a
    float64 brute force from stored iterates, over SGD with momentum."""
    g = torch.Generator().manual_seed(2)
    X, Y = torch.randn(40, 3, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    batches = [(X[i:i + 8], Y[i:i + 8]) for i in range(0, 40, 8)] * 2

    def run(record):
        model = tiny_cnn(3)
        fp = FlatParams(model)
        fp.flat_grads()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        thetas, grads, losses = [fp.layout.pack(fp.flat).double()], [], []
        rec = record(fp) if record else None
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            fp.zero_grad()
            loss.backward()
            grads.append(fp.layout.pack(fp.grad).double())
            if rec is not None:
                rec.capture_grad()
            opt.step()
            losses.append(float(loss.detach()))
            thetas.append(fp.layout.pack(fp.flat).double())
            if rec is not None:
                rec.record(loss, [0.0] * rec.n_active())
        return thetas, grads, losses, fp, rec

    thetas, grads, losses, fp, _ = run(None)
    star_rows = torch.stack([fp.flat.clone(), fp.layout.unpack(thetas[3].float(), fp.layout.empty())])
    _, _, _, _, rec = run(lambda fp: PathRecorder(fp, star_rows, 0.1, until=[None, 3], record_grad=True, chunk=7))
    for j, star in enumerate([thetas[-1], thetas[3]]):
        steps = len(batches) if j == 0 else 3
        ref = trace_from_iterates(torch.stack(thetas[:steps + 1]).numpy(), np.array(losses[:steps]),
                                  np.zeros(steps), 0.1, theta_star=star.numpy(),
                                  grads=torch.stack(grads[:steps]).numpy())
        tr = rec.trace(j)
        for col in ("loss", "inner", "update_sq", "dist_sq", "grad_inner", "grad_sq"):
            np.testing.assert_allclose(getattr(tr, col), getattr(ref, col), rtol=1e-11, atol=1e-13, err_msg=col)
        assert tr.dist0_sq == pytest.approx(ref.dist0_sq, rel=1e-13)
