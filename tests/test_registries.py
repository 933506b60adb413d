"""A new optimizer and a new network family each take one registry entry (issue 21); the related
conditions' registry has its own test (tests/test_related.py, a condition added as one entry)."""

import numpy as np
import pytest
import torch

import gamma_theory.problems as P
from deep.data import DeviceData
from deep.measure import measure
from deep.models import NETWORKS, MODEL_NAMES, Network, build_model, model_for_run
from deep.suites import RunSpec, family
from gamma_theory import check_trace, recording_identity
from gamma_theory.optimizers import REGISTRY, Optimizer, make_optimizer, optimizer_names


@pytest.fixture
def nesterov(monkeypatch):
    entry = Optimizer("nesterov", lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5, nesterov=True), "gradient",
                      "SGD with Nesterov momentum 0.5")
    monkeypatch.setitem(REGISTRY, "nesterov", entry)  # the one new entry
    return entry


def test_a_new_optimizer_is_one_entry_and_the_ladder_trains_with_it(nesterov):
    problem = P.least_squares(epochs=5)
    assert optimizer_names()[-1] == "nesterov" and problem.lr["nesterov"] == problem.rates["gradient"]
    assert ("least_squares", "nesterov") in [(p.name, o) for p in [problem] for o in P.optimizer_names()]
    path = P.run_path(problem, "nesterov")
    # the path is really Nesterov's: the same first two steps by hand
    theta = torch.nn.Parameter(torch.tensor(problem.theta0))
    opt = torch.optim.SGD([theta], lr=problem.lr["nesterov"], momentum=0.5, nesterov=True)
    for _, idx in path.batches[:2]:
        opt.zero_grad()
        problem.sample_loss(theta, torch.as_tensor(idx)).mean().backward()
        opt.step()
    assert np.array_equal(path.thetas[2], theta.detach().numpy())
    assert recording_identity(path.trace).holds
    assert check_trace(path.trace).definition_1 is not None


def test_an_unknown_optimizer_names_the_registered_ones(nesterov):
    with pytest.raises(ValueError, match="choose one of sgd, momentum, adam, nesterov"):
        make_optimizer("lion", [torch.zeros(1, requires_grad=True)], 0.1)
    with pytest.raises(ValueError, match="rate must be one of"):
        Optimizer("x", lambda p, lr: None, "fast", "")


class _MLP(torch.nn.Module):
    def __init__(self, num_classes, activation, width):
        super().__init__()
        h = max(1, int(64 * width))
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, h),
                                        torch.nn.ReLU() if activation == "relu" else torch.nn.Tanh(),
                                        torch.nn.Linear(h, num_classes))

    def forward(self, x):
        return self.body(x)

    def describe(self):
        return {"bn_layers": 0, "skips": 0}


def test_a_new_network_family_is_one_entry_and_is_measured(monkeypatch, tmp_path):
    entry = Network("mlp2", "mlp", lambda name, n, act, bn, skip, width: _MLP(n, act, width), ("activation",),
                    {"lite": 10, "cpu": 20, "long": 60, "rate": 50})
    monkeypatch.setitem(NETWORKS, "mlp2", entry)  # the one new entry
    assert "mlp2" in MODEL_NAMES and family("mlp2") == "mlp"
    spec = RunSpec("mlp2", "relu", width=0.25)
    a, b = model_for_run(spec, 10), build_model("mlp2", 10, width=0.25)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="mlp2 has no bn knob|bn"):
        build_model("mlp2", 10, bn="none")
    g = torch.Generator().manual_seed(0)
    data = DeviceData(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (64,), generator=g), device="cpu")
    run = measure(lambda: build_model("mlp2", 10, width=0.25), lambda p: make_optimizer("sgd", p, 0.05), data,
                  lr=0.05, epochs=2, batch_size=32, workdir=tmp_path / "run", progress=False)
    assert len(run.trace) == 4 and recording_identity(run.trace).holds
