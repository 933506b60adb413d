"""A strict CPU stand-in for CUDA graphs, and an audit of the aten ops a step runs.

Why: the stand-in of ``tests/test_graphs.py`` (``FakeBackend``) reruns the step's Python at every
replay, so a value read in Python at capture time (a count, the lr, a flag) is never frozen as a
real graph freezes it, and a host sync inside a step passes. :class:`StrictBackend` behaves as a
CUDA graph does in these two respects (after the sketch in ``shared/design/graph-stand-in``):

* **capture** runs the step once under a ``TorchDispatchMode`` that logs every aten op with its
  arguments and outputs, raises :class:`HostSync` on an op that would make the host wait for the
  device (``.item()``, ``float(t)``, ``bool(t)``, ``torch.equal``, ``nonzero``, ...: on a GPU they
  are what breaks a capture), and undoes every write the step made to memory that existed before
  it (a capture runs no kernel: parameters, optimizer state and buffers are as they were);
* **replay** copies the batch indices into the static input and re-executes the *logged ops* on
  the logged tensors, without running the step's Python: Python state read at capture stays
  frozen, scalars passed to ops stay the captured ones, and the outputs are the same static
  tensors every time.

What it does not model: memory shared between graphs (each graph here keeps its own tensors, as
deep/graphs.py's one pool per graph does on a GPU), and syncs that never reach the dispatcher on a
CPU tensor (``.cpu()``, ``.numpy()``, ``.tolist()`` of a CPU tensor are no-ops or direct reads here,
while on a GPU they sync).

:class:`OpLog` is the same dispatch mode without the undo, for the op audit: which aten ops a
network's forward, backward and optimizer step run, against :data:`NONDETERMINISTIC_CUDA`.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

#: ops that make the host wait for the device: a CUDA graph capture fails on them
HOST_SYNC = {aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default, aten.nonzero.default,
             aten.masked_select.default, aten._unique2.default, aten.unique_consecutive.default,
             aten.unique_dim.default, aten.repeat_interleave.Tensor, aten.allclose.default}

#: aten ops that have no deterministic CUDA kernel (torch.use_deterministic_algorithms(True) makes
#: them raise on CUDA; the list in its documentation, torch 2.14), by overload packet name, with the
#: module or function the documentation names. ``nll_loss2d`` is NLLLoss on image-shaped input: the
#: 1-D-target ``nll_loss_forward`` that cross_entropy on logits runs is deterministic on CUDA (the
#: prototype trained ResNet-18 deterministically with it on an H200).
NONDETERMINISTIC_CUDA = {
    "avg_pool3d_backward": "AvgPool3d backward (also nn.LocalResponseNorm on 4-D input)",
    "_adaptive_avg_pool2d_backward": "AdaptiveAvgPool2d backward (output larger than 1x1)",
    "_adaptive_avg_pool3d_backward": "AdaptiveAvgPool3d backward",
    "adaptive_max_pool2d_backward": "AdaptiveMaxPool2d backward",
    "fractional_max_pool2d_backward": "FractionalMaxPool2d backward",
    "fractional_max_pool3d_backward": "FractionalMaxPool3d backward",
    "max_unpool2d": "MaxUnpool1d/2d",
    "max_unpool3d": "MaxUnpool3d",
    "upsample_linear1d_backward": "interpolate(linear) backward",
    "upsample_bilinear2d_backward": "interpolate(bilinear) backward",
    "_upsample_bilinear2d_aa_backward": "interpolate(bilinear, antialias) backward",
    "upsample_bicubic2d_backward": "interpolate(bicubic) backward",
    "_upsample_bicubic2d_aa_backward": "interpolate(bicubic, antialias) backward",
    "upsample_trilinear3d_backward": "interpolate(trilinear) backward",
    "reflection_pad1d_backward": "ReflectionPad1d backward",
    "reflection_pad2d_backward": "ReflectionPad2d backward",
    "reflection_pad3d_backward": "ReflectionPad3d backward",
    "nll_loss2d_forward": "NLLLoss on 2-D targets",
    "nll_loss2d_backward": "NLLLoss on 2-D targets, backward",
    "_ctc_loss_backward": "CTCLoss backward",
    "_embedding_bag_backward": "EmbeddingBag backward (mode='max')",
    "put_": "Tensor.put_",
    "put": "Tensor.put",
    "histc": "torch.histc",
    "bincount": "torch.bincount (with weights)",
    "median": "torch.median with indices",
    "grid_sampler_2d_backward": "grid_sample backward",
    "grid_sampler_3d_backward": "grid_sample backward",
    "scatter_reduce": "Tensor.scatter_reduce (reduce='prod')",
    "scatter_reduce_": "Tensor.scatter_reduce_ (reduce='prod')",
}


class HostSync(RuntimeError):
    """An op inside a captured step would make the host wait for the device."""


def _tensors(x) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


def _written(func, args, kwargs) -> list[torch.Tensor]:
    """The tensor arguments an op writes to (in-place and out= arguments, by its schema)."""
    out = []
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            v = args[i] if i < len(args) else kwargs.get(a.name)
            out += _tensors(v)
    return out


class OpLog(TorchDispatchMode):
    """Logs every aten op (``(func, args, kwargs, out)``) dispatched inside it; with
    ``strict``, raises :class:`HostSync` on a host sync and keeps a copy of every storage
    that existed before and that an op writes to (``saved``), so that the writes can be undone."""

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = strict
        self.log: list = []
        self.names: set[str] = set()
        self.made: set[int] = set()  # storages created inside the mode
        self.saved: dict[int, tuple] = {}  # storage -> (storage, its bytes before the first write)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.strict and func in HOST_SYNC:
            raise HostSync(f"{func} makes the host wait for the device: a CUDA graph cannot capture it")
        if self.strict:
            for t in _written(func, args, kwargs):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key not in self.made and key not in self.saved:
                    self.saved[key] = (st, st.clone())
        ins = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        out = func(*args, **kwargs)
        for t in _tensors(out):
            key = t.untyped_storage().data_ptr()
            if key not in ins:
                self.made.add(key)
        self.log.append((func, args, kwargs, out))
        self.names.add(func.overloadpacket.__name__)
        return out


class StrictGraph:
    """A captured step: its logged ops, replayed on the logged tensors."""

    def __init__(self, fn, static_idx: torch.Tensor):
        self.static_idx = static_idx
        mode = OpLog(strict=True)
        try:
            with mode:
                self.outputs = tuple(fn(static_idx))
        finally:  # a capture runs no kernel: every write to memory that existed before is undone
            with torch.no_grad():
                for st, before in mode.saved.values():
                    st.copy_(before)
        self.log = mode.log

    def replay(self, idx: torch.Tensor) -> tuple:
        self.static_idx.copy_(idx)
        with torch.no_grad():
            for func, args, kwargs, out in self.log:
                new = func(*args, **kwargs)
                for o, n in zip(_tensors(out), _tensors(new)):
                    if o is not n and o.data_ptr() != n.data_ptr():  # a fresh result: into the logged tensor
                        o.copy_(n)
        return self.outputs


class StrictBackend:
    """deep/graphs.py's backend interface: eager warm-up, strict capture, op-log replay."""

    def __init__(self):
        self.graphs: list[StrictGraph] = []

    def warmup(self, fn, idx):
        return fn(idx)

    def capture(self, fn, idx):
        g = StrictGraph(fn, idx.clone())
        self.graphs.append(g)
        return g


def flagged(names) -> dict[str, str]:
    """The ops among ``names`` that have no deterministic CUDA kernel, with what they are."""
    return {n: NONDETERMINISTIC_CUDA[n] for n in sorted(names) if n in NONDETERMINISTIC_CUDA}
