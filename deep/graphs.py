"""CUDA graphs for the steps of a measured run, with the eager fallback.

Why: a batch-128 CIFAR step on a big GPU is bound by kernel launches, not arithmetic. Captured
whole in one CUDA graph, its hundreds of kernels go out with one launch. The prototype in
``shared/design/gpu-prototype`` measured it on an H200 (ResNet-18, fp32, deterministic): a
training step 8.4 -> 5.2 ms, the replay step of pass 2 (forward at theta*, training step, inner
products over flat buffers) 14.5 -> 7.3 ms, the graph replays bitwise equal to eager.

How a step runs (:class:`StepGraphs`):

* a step is a function ``fn(idx) -> outputs`` (a tuple of tensors) that does all of one step's
  work on the device: no host sync, and no Python state that changes from step to step (the
  per-step bookkeeping, such as the recorder's :meth:`~gamma_theory.PathRecorder.push`, stays
  outside it). ``idx`` (the batch's indices, on the device) is its only input;
* ``key`` names what the captured kernels depend on besides the contents of tensors: the batch
  size (the last batch of an epoch is smaller) and, in pass 2, how many theta* are still judged.
  One graph is captured per key, all in one memory pool (they are replayed one at a time, and
  every output they return stays referenced, so none overwrites another's);
* the first step with a new key runs eagerly on a side stream (the warm-up a capture needs: the
  lazy initialization of cuBLAS/cuDNN, and optimizer state that the first step creates); the
  next one is captured (a capture runs no kernel) and replayed, and every later one is a replay:
  its ``idx`` is copied into the graph's static input first. A replay's outputs are the graph's
  static tensors, overwritten by the next replay of that graph: the caller copies what it keeps;
* a capture that fails (an op that cannot be captured) switches the graphs off for the rest of
  the pass: that step and all later ones run eagerly, and the reason is kept (:meth:`info`, the
  trace's metadata), with a warning;
* on the CPU there are no graphs: every step is eager.

Bits: a replay runs the kernels of the eager step, so it gives the eager bits (measured on an
H200 by the prototype, and by ``bench/replay_check.py``, which measures one run with graphs and
one without and compares their traces bit for bit). A run records whether it used graphs
(``setup.json``), so it is only ever resumed the way it began; and pass 2 compares its
parameters with pass 1's at every checkpoint either way, so a graph that changed the bits could
not go unnoticed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable

import torch

StepFn = Callable[[torch.Tensor], tuple]


class GraphFallbackWarning(UserWarning):
    """A step could not be captured in a CUDA graph; the pass goes on eagerly."""


class _Captured:
    def __init__(self, graph, static_idx: torch.Tensor, outputs: tuple):
        self.graph, self.static_idx, self.outputs = graph, static_idx, outputs

    def replay(self, idx: torch.Tensor) -> tuple:
        self.static_idx.copy_(idx)
        self.graph.replay()
        return self.outputs


class CudaBackend:
    """Warm-up, capture and replay with ``torch.cuda`` (one side stream and one memory pool)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()

    def warmup(self, fn: StepFn, idx: torch.Tensor) -> tuple:
        """Run ``fn`` eagerly on the side stream (a real step: its effects stay)."""
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            out = fn(idx)
        main.wait_stream(self.stream)
        return out

    def capture(self, fn: StepFn, idx: torch.Tensor) -> _Captured:
        """Capture ``fn`` on a static copy of ``idx`` (nothing runs)."""
        static_idx = idx.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            out = fn(static_idx)
        return _Captured(graph, static_idx, tuple(out))


class StepGraphs:
    """Run the steps of one pass as CUDA graph replays where it can, eagerly where it cannot.

    ``enabled``: use graphs (needs a CUDA device unless a ``backend`` is given: tests give one that
    emulates capture and replay on the CPU)."""

    def __init__(self, device: torch.device | str, enabled: bool, backend=None):
        self.device = torch.device(device)
        self.requested = bool(enabled)
        if self.requested and backend is None:
            if self.device.type != "cuda":
                raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
            backend = CudaBackend(self.device)
        self.backend = backend
        self.enabled = self.requested
        self.fallback: str | None = None  #: why graphs were switched off, if they were
        self._graphs: dict[Hashable, _Captured] = {}
        self._warm: set = set()
        self.counts = {"eager": 0, "replayed": 0}

    def run(self, key: Hashable, fn: StepFn, idx: torch.Tensor) -> tuple:
        """One step: ``fn(idx)``, eagerly or as a replay of the graph of ``key`` (copy what you
        keep of the outputs before the next step)."""
        if not self.enabled:
            self.counts["eager"] += 1
            return tuple(fn(idx))
        g = self._graphs.get(key)
        if g is None:
            if key not in self._warm:
                self._warm.add(key)
                self.counts["eager"] += 1
                return tuple(self.backend.warmup(fn, idx))
            try:
                g = self._graphs[key] = self.backend.capture(fn, idx)
            except Exception as exc:  # noqa: BLE001 - any capture failure: go on eagerly, say why
                self.enabled = False
                self._graphs.clear()
                first = (str(exc).strip().splitlines() or [""])[0]
                self.fallback = f"capture of step {key!r} failed ({type(exc).__name__}: {first})"
                warnings.warn(f"{self.fallback}; the pass goes on without CUDA graphs (same bits, slower)",
                              GraphFallbackWarning, stacklevel=2)
                self.counts["eager"] += 1
                return tuple(fn(idx))
        self.counts["replayed"] += 1
        return g.replay(idx)

    def info(self) -> dict:
        """What ran, for the trace's metadata: ``path`` is ``cuda-graphs``, ``eager`` (not asked
        for, or no graph ever replayed) or ``cuda-graphs, then eager`` (a capture failed)."""
        if not self.requested or not self.counts["replayed"]:
            path = "eager" if self.fallback is None else "eager (capture failed)"
        else:
            path = "cuda-graphs" if self.fallback is None else "cuda-graphs, then eager"
        return {"path": path, "graphs": len(self._graphs), "replayed_steps": self.counts["replayed"],
                "eager_steps": self.counts["eager"], "fallback": self.fallback}
