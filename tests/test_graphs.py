"""CUDA-graph steps (deep/graphs.py) on the CPU, with a backend that behaves as CUDA graphs do.

A capture runs nothing; a replay runs the captured step on the graph's static input (the batch
indices copied into it) and writes into the same static output tensors every time, so a caller
that kept an output without copying it would see it overwritten. With it, a measured run with
graphs must give the eager run's trace bit for bit, through changes of batch size (the last
batch of an epoch) and of the number of theta* still judged, a failed capture and a resume.
The stand-in reruns the Python step at every replay, so these tests check the plumbing around
the graphs (keys, warm-ups, copies of the outputs, fallback, resume, settings), not that a real
capture is faithful: the real backend is exercised on a GPU by bench/replay_check.py
(bench/device_run.sh), and tests/test_strict_graphs.py's stand-in replays without Python.
"""

import contextlib
import importlib
import json

import numpy as np
import pytest
import torch

from deep.graphs import WARMUP_STEPS, CaptureFailed, GraphFallbackWarning, StepGraphs, root_cause
from deep.measure import RunMismatch, load_companions
from deep.step import use_capturable
from gamma_theory.optimizers import make_optimizer
from test_measure import TinyCNN, run



class FakeGraph:
    def __init__(self, fn, static_idx):
        self.fn, self.static_idx, self.outputs = fn, static_idx, None

    def replay(self, idx):
        self.static_idx.copy_(idx)
        out = self.fn(self.static_idx)
        if self.outputs is None:
            self.outputs = tuple(o.detach().clone() for o in out)
        else:
            for static, o in zip(self.outputs, out):
                static.copy_(o)
        return self.outputs


class FakeBackend:
    """CUDA graphs' contract on the CPU."""

    def warmup(self, fn, idx):
        return fn(idx)

    def capture(self, fn, idx):
        return FakeGraph(fn, idx.clone())


class FailingBackend(FakeBackend):
    """Every capture raises, as one of a step with an op that cannot be captured does."""

    def capture(self, fn, idx):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


class StandIn:
    """A ``graphs_backend`` for measure(): makes one ``backend_cls`` per pass that asks for graphs
    (kept in ``made``)."""

    def __init__(self, backend_cls):
        self.backend_cls, self.made = backend_cls, []

    def __call__(self):
        self.made.append(self.backend_cls())
        return self.made[-1]


def test_steps_are_warmed_up_then_captured_then_replayed_per_key():
    calls = []

    def fn(idx):
        calls.append(int(idx[0]))
        return (idx.double() * 2,)

    g = StepGraphs("cpu", True, backend=FakeBackend())
    assert g.warmup_steps == WARMUP_STEPS == 3
    batches = [[1, 2], [3, 4], [5], [6, 7], [8], [9, 10], [11], [12, 13], [14, 15], [16]]
    outs = [g.run(("s", len(i)), fn, torch.tensor(i))[0].clone() for i in batches]
    assert [o.tolist() for o in outs] == [[2 * v for v in b] for b in batches]
    # key (s, 2): 3 eager warm-up steps ([1, 2], [3, 4], [6, 7]), then captured at [9, 10] and
    # replayed there and at [12, 13], [14, 15]; key (s, 1): 3 warm-up steps, then replayed at [16]
    assert g.info() == {"path": "cuda-graphs", "graphs": 2, "replayed_steps": 4, "eager_steps": 6, "fallback": None}
    assert calls == [b[0] for b in batches]  # every step ran once: a capture runs nothing


def test_the_warm_up_count_is_a_setting_and_at_least_one():
    g = StepGraphs("cpu", True, backend=FakeBackend(), warmup=1)
    for i in range(3):
        g.run("k", lambda t: (t + 1,), torch.tensor([i]))
    assert g.info()["eager_steps"] == 1 and g.info()["replayed_steps"] == 2
    with pytest.raises(ValueError, match="at least one"):
        StepGraphs("cpu", True, backend=FakeBackend(), warmup=0)


def test_eager_when_not_asked_and_refused_without_a_gpu():
    g = StepGraphs("cpu", False)
    assert g.run("k", lambda i: (i + 1,), torch.tensor([1]))[0].item() == 2
    assert g.info()["path"] == "eager" and g.info()["eager_steps"] == 1
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        StepGraphs("cpu", True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        run(None, cuda_graphs=True)


def _columns(r):
    t = r.trace
    cols = {k: getattr(t, k) for k in ("loss", "loss_star", "inner", "update_sq", "dist_sq", "grad_inner",
                                       "grad_sq", "step", "epoch")}
    for name, c in load_companions(r.workdir, t.meta).items():
        cols.update({f"{name}.{k}": getattr(c, k) for k in ("loss_star", "inner", "dist_sq", "grad_inner")})
    return cols


def _assert_same_trace(a, b):
    ca, cb = _columns(a), _columns(b)
    assert ca.keys() == cb.keys() and len(ca) > 9  # the companions are there
    for k in ca:
        assert np.array_equal(ca[k], cb[k], equal_nan=True), k


@pytest.mark.parametrize("opt", ["sgd", "momentum"])
def test_graph_plumbing_keys_warmups_and_copies_give_the_eager_trace_with_a_python_rerunning_stand_in(tmp_path, opt):
    eager = run(tmp_path / "eager", opt=opt, epochs=8)
    stand_in = StandIn(FakeBackend)
    graphed = run(tmp_path / "graphs", opt=opt, epochs=8, cuda_graphs=True, graphs_backend=stand_in)
    _assert_same_trace(eager, graphed)
    p1, p2 = graphed.trace.meta["pass1"]["step_path"], graphed.trace.meta["pass2"]["step_path"]
    # 40 images in batches of 16: keys (16) and (8) in pass 1, 3 eager warm-up steps each
    assert p1["path"] == "cuda-graphs" and p1["graphs"] == 2 and p1["replayed_steps"] == 24 - 2 * 3
    # pass 2 keys also hold the number of theta* still judged (epochs 4, 6, 7 as earlier theta*: 5 for
    # epochs 0-3, 4 for 4-5, 3 for 6, 2 for 7); a key with at least 4 steps is replayed: (16, 5) 5
    # times, (8, 5) and (16, 4) once
    assert p2["path"] == "cuda-graphs" and p2["graphs"] == 3 and p2["replayed_steps"] == 5 + 1 + 1
    assert p1["eager_steps"] + p1["replayed_steps"] == 24 == p2["eager_steps"] + p2["replayed_steps"]
    assert len(stand_in.made) == 2  # one per pass
    assert json.loads((graphed.workdir / "setup.json").read_text())["cuda_graphs"] is True
    assert "cuda_graphs" not in json.loads((eager.workdir / "setup.json").read_text())
    assert eager.trace.meta["pass2"]["step_path"]["path"] == "eager"


def test_a_failed_capture_falls_back_to_eager_and_says_so(tmp_path):
    eager = run(tmp_path / "eager", epochs=3)
    with pytest.warns(GraphFallbackWarning, match="operation not permitted"):
        graphed = run(tmp_path / "graphs", epochs=3, cuda_graphs=True, graphs_backend=StandIn(FailingBackend))
    _assert_same_trace(eager, graphed)
    sp = graphed.trace.meta["pass2"]["step_path"]
    assert sp["path"] == "eager (capture failed)" and sp["replayed_steps"] == 0
    assert "RuntimeError: operation not permitted when stream is capturing" in sp["fallback"]


def test_an_interrupted_run_asking_for_graphs_resumes_to_the_same_trace_with_a_stand_in(tmp_path):
    eager = run(tmp_path / "eager", epochs=3)
    TinyCNN.calls, TinyCNN.interrupt_at = 0, 14  # in pass 2, after a graph was captured
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "graphs", epochs=3, checkpoint_every=1, cuda_graphs=True, graphs_backend=StandIn(FakeBackend))
    TinyCNN.interrupt_at = None
    graphed = run(tmp_path / "graphs", epochs=3, checkpoint_every=1, cuda_graphs=True,
                  graphs_backend=StandIn(FakeBackend))
    _assert_same_trace(eager, graphed)


def test_a_run_is_resumed_only_the_way_it_began(tmp_path):
    TinyCNN.calls, TinyCNN.interrupt_at = 0, 4
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "r", epochs=3, cuda_graphs=True, graphs_backend=StandIn(FakeBackend))
    TinyCNN.interrupt_at = None
    with pytest.raises(RunMismatch, match="cuda_graphs"):
        run(tmp_path / "r", epochs=3, cuda_graphs=False)


def test_with_graphs_an_optimizer_with_a_capturable_mode_uses_it():
    p = [torch.nn.Parameter(torch.zeros(2))]
    for name, has in [("adam", True), ("sgd", False), ("momentum", False)]:
        for graphs in (False, True):
            opt = make_optimizer(name, p, 0.1)
            use_capturable(opt, graphs)
            assert opt.param_groups[0].get("capturable", False) is (graphs and has)


def test_the_cli_refuses_cuda_graphs_without_a_gpu(tmp_path):
    from click.testing import CliRunner

    from validation import cli

    r = CliRunner().invoke(cli.main, ["deep", "--suite", "bn", "--device", "cpu", "--cuda-graphs",
                                      "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "CUDA graphs need a GPU" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_the_device_check_compares_graph_and_eager_traces_column_by_column(tmp_path):
    """bench/replay_check.py's comparison (run on a GPU): equal runs pass, one changed column fails."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "replay_check.py"
    spec = importlib.util.spec_from_file_location("replay_check", path)
    rc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rc)
    a, b = run(tmp_path / "a", epochs=2), run(tmp_path / "b", epochs=2)
    same = rc.compare(a, b)
    assert same["bitwise_equal"] is True and same["columns_compared"] == 7 * 3  # theta*, random, epoch 1
    b.trace.inner[3] = np.nextafter(b.trace.inner[3], np.inf)
    assert rc.compare(a, b) == {**same, "bitwise_equal": False, "differ": ["theta*.inner"]}
    assert rc.compare(a, None)["bitwise_equal"] is None


class _MockCuda:
    """Enough of torch.cuda for CudaBackend on the CPU: records what the backend asks of it."""

    def __init__(self, monkeypatch, end_raises=None):
        self.released, self.pools, self.ended = [], [], 0
        mock = self

        class Graph:
            def capture_begin(self, pool=None):
                self.pool = pool

            def capture_end(self):
                mock.ended += 1
                if end_raises is not None:
                    raise end_raises

            def replay(self):
                pass

        def pool_handle():
            mock.pools.append((0, len(mock.pools) + 1))
            return mock.pools[-1]

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", pool_handle)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
        monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda dev, pool: mock.released.append(pool),
                            raising=False)


def test_a_failed_capture_logs_its_root_cause_and_releases_its_pool(monkeypatch):
    """CudaBackend's bookkeeping with torch.cuda mocked: the step's own error is the reason (not the
    follow-on error of ending the broken capture), the capture is ended, and its pool released."""
    from deep.graphs import CudaBackend

    follow_on = RuntimeError("CUDA error: operation failed due to a previous error during capture")
    mock = _MockCuda(monkeypatch, end_raises=follow_on)
    backend = CudaBackend(torch.device("cuda", 0))

    def sync_step(idx):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\ndetail")

    with pytest.raises(CaptureFailed) as info:
        backend.capture(sync_step, torch.tensor([1]))
    assert "operation not permitted when stream is capturing" in str(info.value.cause)
    assert info.value.follow_on is follow_on and root_cause(info.value) is info.value.cause
    assert mock.ended == 1 and mock.released == mock.pools == [(0, 1)]

    g = StepGraphs("cuda", True, backend=backend, warmup=1)
    with pytest.warns(GraphFallbackWarning) as w:
        for i in range(3):
            g.run("k", lambda t: (t + 1,), torch.tensor([i]))
    fb = g.info()["fallback"]
    assert fb.startswith("capture of step 'k' failed (RuntimeError: CUDA error: operation failed due")  # end raised
    assert g.info()["path"] == "eager (capture failed)" and g.info()["eager_steps"] == 3 and len(w) == 1


def test_a_capture_whose_end_succeeds_leaves_the_pool_to_its_graph_and_each_key_has_its_own(monkeypatch):
    from deep.graphs import CudaBackend

    mock = _MockCuda(monkeypatch)
    backend = CudaBackend(torch.device("cuda", 0))
    with pytest.raises(CaptureFailed) as info:
        backend.capture(lambda t: (t.item(),), torch.tensor([1, 2]))  # a Python error, the end succeeds
    assert isinstance(info.value.cause, RuntimeError) and info.value.follow_on is None
    assert mock.released == []  # an ended graph releases its pool when it is freed
    a = backend.capture(lambda t: (t * 2,), torch.tensor([1]))
    b = backend.capture(lambda t: (t * 3,), torch.tensor([1]))
    assert a.pool != b.pool and len(set(mock.pools)) == 3  # one pool per graph


def test_the_root_cause_of_a_chain_is_its_first_error():
    try:
        try:
            raise ValueError("the step's own error")
        except ValueError:
            raise RuntimeError("the follow-on error")
    except RuntimeError as exc:
        assert str(root_cause(exc)) == "the step's own error"


def test_a_graph_whose_outputs_share_memory_with_another_s_is_refused():
    shared = torch.zeros(2)

    class Aliasing(FakeBackend):
        def capture(self, fn, idx):
            return _Static(idx.clone(), (shared,))

    class _Static:
        def __init__(self, static_idx, outputs):
            self.static_idx, self.outputs = static_idx, outputs

        def replay(self, idx):
            return self.outputs

    g = StepGraphs("cpu", True, backend=Aliasing(), warmup=1)
    for k in ("a", "a", "b"):
        g.run(k, lambda t: (t.float(),), torch.tensor([1.0, 2.0]))
    with pytest.warns(GraphFallbackWarning, match="share memory"):
        g.run("b", lambda t: (t.float(),), torch.tensor([1.0, 2.0]))
    assert g.info()["path"] == "cuda-graphs, then eager" and "'b'" in g.info()["fallback"]
