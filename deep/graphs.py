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
  One graph is captured per key, each in its own memory pool, so no graph's memory is another's
  whatever order they replay in (PyTorch calls a shared pool safe only when the graphs replay in
  capture order, and ours interleave); a new graph whose outputs share memory with another's is
  refused (eager fallback) rather than trusted;
* the first :data:`WARMUP_STEPS` steps with a new key run eagerly on a side stream (the warm-up a
  capture needs: the lazy initialization of cuBLAS/cuDNN, optimizer state that the first step
  creates, momentum's first-step ``clone`` path before its ``mul_`` path; PyTorch's documentation
  warms up 3 times). They are real steps, with the eager bits a replay also gives, so the count
  changes no result. The next step is captured (a capture runs no kernel) and replayed, and every
  later one is a replay: its ``idx`` is copied into the graph's static input first. A replay's
  outputs are the graph's static tensors, overwritten by the next replay of that graph: the caller
  copies what it keeps;
* a capture that fails (an op that cannot be captured) switches the graphs off for the rest of
  the pass: that step and all later ones run eagerly, and the reason is kept (:meth:`info`, the
  trace's metadata), with a warning. The reason is the root cause (the step's own error), not the
  follow-on error that ending a broken capture raises; the failed graph's memory pool is released
  before the pass goes on;
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

#: eager steps per key before its capture (PyTorch's documentation and the prototype use 3)
WARMUP_STEPS = 3


class GraphFallbackWarning(UserWarning):
    """A step could not be captured in a CUDA graph; the pass goes on eagerly."""


class CaptureFailed(RuntimeError):
    """A capture failed: ``cause`` is the step's own error (or the capture's end, where the step
    raised nothing), ``follow_on`` what ending the broken capture raised after it, if anything."""

    def __init__(self, cause: BaseException, follow_on: BaseException | None = None):
        self.cause, self.follow_on = cause, follow_on
        super().__init__(_first_line(cause))


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def root_cause(exc: BaseException) -> BaseException:
    """The first error of a chain: a :class:`CaptureFailed`'s cause, else the innermost
    ``__cause__``/``__context__`` (an error raised while handling another is its follow-on)."""
    if isinstance(exc, CaptureFailed):
        return exc.cause
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def _storages(tensors) -> set[int]:
    """The storages of the tensors among ``tensors`` (None: a backend that makes its outputs at
    the first replay, as the tests' stand-ins do, has none yet)."""
    return {t.untyped_storage().data_ptr() for t in tensors or () if isinstance(t, torch.Tensor) and t.numel()}


class _Captured:
    def __init__(self, graph, static_idx: torch.Tensor, outputs: tuple, pool=None):
        self.graph, self.static_idx, self.outputs, self.pool = graph, static_idx, outputs, pool

    def replay(self, idx: torch.Tensor) -> tuple:
        self.static_idx.copy_(idx)
        self.graph.replay()
        return self.outputs


class CudaBackend:
    """Warm-up, capture and replay with ``torch.cuda``: one side stream, one memory pool per graph."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def warmup(self, fn: StepFn, idx: torch.Tensor) -> tuple:
        """Run ``fn`` eagerly on the side stream (a real step: its effects stay)."""
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            out = fn(idx)
        main.wait_stream(self.stream)
        return out

    def capture(self, fn: StepFn, idx: torch.Tensor) -> _Captured:
        """Capture ``fn`` on a static copy of ``idx`` (nothing runs), in a pool of its own. A
        failure raises :class:`CaptureFailed` with the step's own error as its cause, after the
        capture was ended and its pool released."""
        static_idx = idx.clone()
        pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        main = torch.cuda.current_stream(self.device)
        torch.cuda.synchronize(self.device)  # as torch.cuda.graph: nothing of the eager steps in flight
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            graph.capture_begin(pool=pool)
            try:
                out = tuple(fn(static_idx))
            except BaseException as exc:  # ended and released below, then re-raised
                follow = self._end_failed(graph, pool)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise CaptureFailed(exc, follow) from exc
            try:
                graph.capture_end()
            except Exception as exc:  # an op broke the capture without raising itself
                self._release(pool)
                raise CaptureFailed(exc) from exc
        main.wait_stream(self.stream)
        return _Captured(graph, static_idx, out, pool)

    def _end_failed(self, graph, pool) -> BaseException | None:
        """End a capture whose step raised (the allocator must stop routing into the pool) and
        release its pool; returns what ending it raised (the follow-on error), if anything."""
        try:
            graph.capture_end()
        except Exception as exc:  # noqa: BLE001 - the follow-on error of a broken capture
            # capture_end stops the allocator's routing before ending the stream capture, and a
            # graph whose capture did not end never releases its pool: release it here
            self._release(pool)
            return exc
        return None  # ended: the graph releases its pool when it is freed

    def _release(self, pool) -> None:
        try:
            torch._C._cuda_releasePool(self.device.index if self.device.index is not None
                                       else torch.cuda.current_device(), pool)
        except Exception:  # noqa: BLE001, S110 - released already, or an API this torch lacks: nothing to free
            pass
        try:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001, S110 - the eager step that follows says what is wrong, if anything
            pass


class StepGraphs:
    """Run the steps of one pass as CUDA graph replays where it can, eagerly where it cannot.

    ``enabled``: use graphs (needs a CUDA device unless a ``backend`` is given: tests give ones
    that emulate capture and replay on the CPU). ``warmup``: eager steps per key before its capture."""

    def __init__(self, device: torch.device | str, enabled: bool, backend=None, warmup: int = WARMUP_STEPS):
        self.device = torch.device(device)
        self.requested = bool(enabled)
        if self.requested and backend is None:
            if self.device.type != "cuda":
                raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
            backend = CudaBackend(self.device)
        if warmup < 1:
            raise ValueError("a capture needs at least one eager warm-up step per key")
        self.backend = backend
        self.warmup_steps = int(warmup)
        self.enabled = self.requested
        self.fallback: str | None = None  #: why graphs were switched off, if they were
        self._graphs: dict[Hashable, _Captured] = {}
        self._warm: dict[Hashable, int] = {}
        self.counts = {"eager": 0, "replayed": 0}

    def run(self, key: Hashable, fn: StepFn, idx: torch.Tensor) -> tuple:
        """One step: ``fn(idx)``, eagerly or as a replay of the graph of ``key`` (copy what you
        keep of the outputs before the next step)."""
        if not self.enabled:
            self.counts["eager"] += 1
            return tuple(fn(idx))
        g = self._graphs.get(key)
        if g is None:
            if self._warm.get(key, 0) < self.warmup_steps:
                self._warm[key] = self._warm.get(key, 0) + 1
                self.counts["eager"] += 1
                return tuple(self.backend.warmup(fn, idx))
            try:
                g = self.backend.capture(fn, idx)
                self._check_no_aliasing(key, g)
            except Exception as exc:  # noqa: BLE001 - any capture failure: go on eagerly, say why
                self._fall_back(key, exc)
                self.counts["eager"] += 1
                return tuple(fn(idx))
            self._graphs[key] = g
        self.counts["replayed"] += 1
        return g.replay(idx)

    def _check_no_aliasing(self, key, g) -> None:
        mine = _storages(g.outputs)
        for other_key, other in self._graphs.items():
            shared = mine & _storages((*(other.outputs or ()), other.static_idx))
            if shared:
                raise RuntimeError(f"the outputs of the graph of {key!r} share memory with those of {other_key!r}: "
                                   "a replay of one would overwrite the other's")

    def _fall_back(self, key, exc: BaseException) -> None:
        self.enabled = False
        self._graphs.clear()  # their pools are released with them
        cause = root_cause(exc)
        follow = exc.follow_on if isinstance(exc, CaptureFailed) else (exc if cause is not exc else None)
        self.fallback = f"capture of step {key!r} failed ({_first_line(cause)})" + (
            f"; ending the capture then raised {_first_line(follow)}" if follow is not None else "")
        warnings.warn(f"{self.fallback}; the pass goes on without CUDA graphs (same bits, slower)",
                      GraphFallbackWarning, stacklevel=3)

    def info(self) -> dict:
        """What ran, for the trace's metadata: ``path`` is ``cuda-graphs``, ``eager`` (not asked
        for, or no graph ever replayed) or ``cuda-graphs, then eager`` (a capture failed)."""
        if not self.requested or not self.counts["replayed"]:
            path = "eager" if self.fallback is None else "eager (capture failed)"
        else:
            path = "cuda-graphs" if self.fallback is None else "cuda-graphs, then eager"
        return {"path": path, "graphs": len(self._graphs), "replayed_steps": self.counts["replayed"],
                "eager_steps": self.counts["eager"], "fallback": self.fallback}


def invocation(steps: int, wall_s: float, graphs: StepGraphs) -> dict:
    """What one invocation of a pass ran: its steps, their wall time, and how they ran."""
    return {"steps": steps, "wall_s": wall_s, "step_path": graphs.info()}


def merged_step_path(runs: list[dict]) -> dict:
    """How the steps of a pass ran over all its invocations (:func:`invocation`; a resumed pass
    ran in several): the counts summed, the paths in order where they differ (``eager, then
    cuda-graphs``)."""
    infos = [r["step_path"] for r in runs if r.get("step_path") and r.get("steps")] or \
        [r["step_path"] for r in runs[-1:] if r.get("step_path")]
    if not infos:
        return {}
    paths = list(dict.fromkeys(i.get("path") for i in infos))
    return {"path": ", then ".join(str(p) for p in paths), "graphs": max(i.get("graphs") or 0 for i in infos),
            "replayed_steps": sum(i.get("replayed_steps") or 0 for i in infos),
            "eager_steps": sum(i.get("eager_steps") or 0 for i in infos),
            "fallback": next((i["fallback"] for i in infos if i.get("fallback") is not None), None),
            "invocations": len(runs)}
