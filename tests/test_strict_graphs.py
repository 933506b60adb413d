"""The strict CPU stand-in for CUDA graphs (tests/strict_graphs.py) and the op audit.

With it a measured run's graphed steps must still give the eager trace bit for bit: the steps of
deep/step.py and deep/pass2.py read no Python state that changes between steps and make no host sync. Two tests
fail on purpose (``xfail(strict=True)``): a step that reads a Python scalar, and one that syncs
with the host. They show the stand-in catches both; were it ever to stop catching them, they would
pass, and a strict xfail that passes fails the suite.
"""

import copy
import importlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deep.graphs import GraphFallbackWarning, StepGraphs
from deep.measure import measure
from deep.step import batch_stats_only, flat_model
from deep.models import MODEL_NAMES, build_model
from deep.models.common import ACTIVATIONS
from gamma_theory import PathRecorder
from gamma_theory.flat import FlatParams
from gamma_theory.optimizers import make_optimizer
from strict_graphs import OpLog, StrictBackend, flagged
from test_graphs import FakeBackend, StandIn, _assert_same_trace
from test_measure import TinyCNN, run, tiny_data



@pytest.fixture
def strict_graphs(monkeypatch):
    """A ``graphs_backend`` for measure(cuda_graphs=True) on the CPU: the strict stand-in, one per
    pass that asks for graphs (kept in ``.made``), and Adam's capturable mode allowed on the CPU,
    as torch allows it on CUDA."""
    adam = importlib.import_module("torch.optim.adam")
    supported = adam._get_capturable_supported_devices
    monkeypatch.setattr(adam, "_get_capturable_supported_devices", lambda *a, **k: [*supported(*a, **k), "cpu"])
    return StandIn(StrictBackend)


# -- the stand-in's own semantics ------------------------------------------------------------------
def _lr_step(state, w):
    def step(idx):
        w.add_(idx.double().mean() * state["lr"])  # the lr read in Python: frozen in a graph
        return (w.clone(),)
    return step


def _run_lr_steps(backend):
    g = StepGraphs("cpu", True, backend=backend, warmup=1)
    state, w = {"lr": 1.0}, torch.zeros(3, dtype=torch.float64)
    step, out = _lr_step(state, w), []
    for i in range(4):
        state["lr"] = 10.0 ** i
        out.append(float(g.run("k", step, torch.tensor([1, 1]))[0][0]))
    return out, g


def test_the_strict_stand_in_freezes_a_python_scalar_at_capture():
    out, g = _run_lr_steps(StrictBackend())
    # step 1 eager (lr 1), captured at step 2 with lr 10 and replayed with it: 1, 11, 21, 31
    assert out == [1.0, 11.0, 21.0, 31.0] and g.info()["path"] == "cuda-graphs"
    # the old stand-in reran the Python, so it never saw the difference (eager: 1, 11, 111, 1111)
    assert _run_lr_steps(FakeBackend())[0] == [1.0, 11.0, 111.0, 1111.0]


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="on purpose: a step that reads a Python scalar gives other values as a graph")
def test_on_purpose_a_step_reading_a_python_scalar_is_not_graph_safe():
    assert _run_lr_steps(StrictBackend())[0] == [1.0, 11.0, 111.0, 1111.0]


def _sync_step(idx):
    s = idx.sum()
    return ((s * 2 if float(s) > 0 else s),)  # float(t): a host sync


def _run_sync_steps(backend):
    g = StepGraphs("cpu", True, backend=backend, warmup=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GraphFallbackWarning)
        out = [int(g.run("k", _sync_step, torch.tensor([1, 2]))[0]) for _ in range(3)]
    return out, g


def test_the_strict_stand_in_refuses_a_host_sync_at_capture():
    out, g = _run_sync_steps(StrictBackend())
    assert out == [6, 6, 6]  # every step ran, eagerly
    info = g.info()
    assert info["path"] == "eager (capture failed)" and "HostSync" in info["fallback"]
    assert "_local_scalar_dense" in info["fallback"]
    assert _run_sync_steps(FakeBackend())[1].info()["path"] == "cuda-graphs"  # the old stand-in let it pass


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="on purpose: a step with a host sync cannot be captured")
def test_on_purpose_a_step_with_a_host_sync_runs_as_graphs():
    assert _run_sync_steps(StrictBackend())[1].info()["path"] == "cuda-graphs"


def test_a_strict_capture_runs_nothing_and_replays_without_python():
    w = torch.zeros(2)
    calls = []

    def step(idx):
        calls.append(1)
        w.add_(idx.float())
        return (w * 1,)

    b = StrictBackend()
    g = b.capture(step, torch.tensor([1, 2]))
    assert torch.equal(w, torch.zeros(2)) and calls == [1]  # the capture's write undone
    assert g.replay(torch.tensor([1, 2]))[0].tolist() == [1.0, 2.0]
    assert g.replay(torch.tensor([3, 4]))[0].tolist() == [4.0, 6.0]
    assert calls == [1] and w.tolist() == [4.0, 6.0]


# -- measured runs through it ------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["sgd", "momentum"])
def test_a_run_with_strict_graphs_gives_the_eager_trace_bit_for_bit(tmp_path, strict_graphs, opt):
    eager = run(tmp_path / "eager", opt=opt, epochs=6, cuda_graphs=False)
    graphed = run(tmp_path / "graphs", opt=opt, epochs=6, cuda_graphs=True, graphs_backend=strict_graphs)
    _assert_same_trace(eager, graphed)
    for p in ("pass1", "pass2"):
        sp = graphed.trace.meta[p]["step_path"]
        assert sp["path"] == "cuda-graphs" and sp["replayed_steps"] > 0 and sp["fallback"] is None, (p, sp)
    assert len(strict_graphs.made) == 2


def _capturable_adam(p, lr):
    o = make_optimizer("adam", p, lr)
    for group in o.param_groups:
        group["capturable"] = True
    return o


def test_capturable_adam_with_strict_graphs_equals_capturable_adam_without(tmp_path, strict_graphs):
    kw = {"lr": 0.01, "epochs": 6, "batch_size": 16, "seed": 3, "data_seed": 5, "progress": False}
    eager = measure(TinyCNN, lambda p: _capturable_adam(p, 0.01), tiny_data(), workdir=tmp_path / "e",
                    cuda_graphs=False, **kw)
    graphed = measure(TinyCNN, lambda p: make_optimizer("adam", p, 0.01), tiny_data(), workdir=tmp_path / "g",
                      cuda_graphs=True, graphs_backend=strict_graphs, **kw)
    _assert_same_trace(eager, graphed)
    assert graphed.trace.meta["pass2"]["step_path"]["path"] == "cuda-graphs"


def test_plain_adam_cannot_be_captured_its_step_count_syncs_the_host():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 1)
    opt = make_optimizer("adam", m.parameters(), 0.01)
    x = torch.randn(4, 3)

    def step(idx):
        loss = m(x).square().mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return (loss.detach(),)

    g = StepGraphs("cpu", True, backend=StrictBackend(), warmup=1)
    with pytest.warns(GraphFallbackWarning, match="HostSync"):
        for i in range(3):
            g.run("k", step, torch.tensor([i]))
    assert g.info()["path"] == "eager (capture failed)"


# -- op audit ------------------------------------------------------------------------------------------
def _step_ops(model: torch.nn.Module, optimizer: str, star: bool = True) -> set[str]:
    """The aten ops of one pass-2 step of ``model``: forward and backward in training mode, the
    optimizer step, a forward at theta* (batch statistics) and the recorder's row."""
    torch.manual_seed(0)
    fp = flat_model(model)
    opt = make_optimizer(optimizer, model.parameters(), 0.01)
    star_model = copy.deepcopy(model)  # theta*: a copy
    _, rows = FlatParams.like([star_model])
    rec = PathRecorder(fp, rows, 0.01, record_grad=True)
    x = torch.randn(4, 3, 32, 32)
    y = torch.arange(4) % 10
    model.train()
    log = OpLog()
    with log:
        loss = F.cross_entropy(model(x), y)
        with torch.no_grad(), batch_stats_only(star_model):
            ls = F.cross_entropy(star_model(x), y) if star else None
        fp.zero_grad()
        loss.backward()
        rec.capture_grad()
        opt.step()
        rec.row(loss, [ls])
    return log.names


VARIANTS = [(n, {"activation": a}) for n in MODEL_NAMES for a in ACTIVATIONS] + [
    (n, {"bn": b}) for n in ("resnet18", "resnet34", "vgg11", "vgg16") for b in ("first", "none")] + [
    (n, {"skip": s}) for n in ("resnet18", "resnet34") for s in ("first", "first2")]


@pytest.mark.parametrize("name,knobs", [(n, k) for n, k in VARIANTS if k.get("activation") in (None, "relu")]
                         + [("alexnet", {"activation": "tanh"}), ("vgg11", {"activation": "sigmoid"})])
def test_every_network_family_runs_only_ops_with_deterministic_cuda_kernels(name, knobs):
    ops = set()
    for opt in ("sgd", "momentum", "adam"):
        ops |= _step_ops(build_model(name, 10, width=0.125, **knobs), opt)
    assert "convolution_backward" in ops or "mm" in ops  # the log saw the backward pass
    assert flagged(ops) == {}, (name, knobs)


def test_the_audit_flags_torch_s_local_response_norm_and_adaptive_pooling():
    lrn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.LocalResponseNorm(5), torch.nn.Flatten(),
                              torch.nn.LazyLinear(10))
    lrn(torch.randn(1, 3, 32, 32))
    got = flagged(_step_ops(lrn, "sgd"))
    assert "avg_pool3d_backward" in got and "LocalResponseNorm" in got["avg_pool3d_backward"]
    pool = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(3), torch.nn.Flatten(),
                               torch.nn.Linear(72, 10))
    assert "_adaptive_avg_pool2d_backward" in flagged(_step_ops(pool, "sgd"))
    ok = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                             torch.nn.Linear(8, 10))
    assert flagged(_step_ops(ok, "sgd")) == {}  # to 1x1 it is a mean (the prototype: fine on CUDA)


def test_the_project_s_lrn_equals_torch_s_without_its_op():
    from deep.models import LocalResponseNorm

    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    ours, theirs = LocalResponseNorm(9, 0.001, 0.75, 1.0), torch.nn.LocalResponseNorm(9, 0.001, 0.75, 1.0)
    assert torch.allclose(ours(x), theirs(x), rtol=1e-12, atol=0)
    log = OpLog()
    with log:
        ours(x).sum().backward()
    assert flagged(log.names) == {} and "avg_pool2d_backward" in log.names
    assert np.isfinite(x.grad.numpy()).all()
