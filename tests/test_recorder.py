"""The recorder against a float64 brute force from stored iterates, on a small MLP."""

import numpy as np
import torch

from gamma_theory import PathRecorder, check_trace, flatten_params, trace_from_iterates
from gamma_theory.problems import make_optimizer


def small_mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def batches(seed, n=24, b=5, epochs=3):
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    out = []
    for e in range(epochs):
        perm = torch.randperm(n, generator=g)
        out += [(e, X[perm[i:i + b]], y[perm[i:i + b]]) for i in range(0, n, b)]
    return out


def test_recorder_matches_brute_force_for_every_optimizer():
    data = batches(0)
    loss_fn = torch.nn.functional.cross_entropy
    for opt_name, lr in [("sgd", 0.3), ("momentum", 0.2), ("adam", 0.01)]:
        # pass 1: train, store every iterate (the brute force can, on a small net)
        model = small_mlp(1)
        opt = make_optimizer(opt_name, list(model.parameters()), lr)
        thetas, losses = [flatten_params(list(model.parameters()), torch.float64)], []
        for _, x, y in data:
            loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            losses.append(loss.item())
            thetas.append(flatten_params(list(model.parameters()), torch.float64))
        theta_star = thetas[-1].clone()
        star_model = small_mlp(1)
        torch.nn.utils.vector_to_parameters(theta_star.float(), star_model.parameters())
        with torch.no_grad():
            loss_star = [loss_fn(star_model(x), y).item() for _, x, y in data]
        ref = trace_from_iterates(torch.stack(thetas).numpy(), np.array(losses), np.array(loss_star), lr,
                                  epoch=np.array([e for e, _, _ in data]))

        # pass 2: replay the same steps with the recorder
        model = small_mlp(1)
        opt = make_optimizer(opt_name, list(model.parameters()), lr)
        rec = PathRecorder(model.parameters(), theta_star, lr)
        for e, x, y in data:
            loss = loss_fn(model(x), y)
            with torch.no_grad():
                ls = loss_fn(star_model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            rec.record(loss, ls, e)
        tr = rec.trace()
        assert len(tr) == len(data)
        # the replay reproduced pass 1 bit for bit, so the last iterate is theta*
        assert torch.equal(flatten_params(list(model.parameters()), torch.float64), theta_star)
        for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq"):
            np.testing.assert_allclose(getattr(tr, col), getattr(ref, col), rtol=1e-12, atol=1e-14,
                                       err_msg=f"{opt_name}: {col}")
        assert np.isclose(tr.dist0_sq, ref.dist0_sq, rtol=1e-13, atol=0)
        np.testing.assert_array_equal(tr.epoch, ref.epoch)
        ident = check_trace(tr).identity
        assert ident.holds and ident.max_rel_residual < 1e-12


def test_recorder_flushes_and_segments():
    data = batches(3, epochs=2)
    model = small_mlp(2)
    star = flatten_params(list(model.parameters())).clone() + 0.1
    rec = PathRecorder(model.parameters(), star, 0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for e, x, y in data:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        rec.record(loss, 0.0, e)
        if e == 0:
            rec.flush()
    tr = rec.trace()
    assert len(tr) == len(data) and tr.step.tolist() == list(range(len(data)))
    assert np.isclose(tr.dist0_sq, 0.01 * star.numel())


def test_recorder_rejects_mismatched_theta_star():
    model = small_mlp(0)
    try:
        PathRecorder(model.parameters(), torch.zeros(3), 0.1)
    except ValueError as exc:
        assert "theta_star has 3 entries" in str(exc)
    else:
        raise AssertionError("no error")
