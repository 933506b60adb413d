"""Any data for a measured run: the protocol :func:`deep.measure.measure` reads, and
:class:`TensorData` for images, tokens or any tensors.

The protocol (:class:`Data`) is four members:

* ``device``: where batches are made (the run trains there);
* ``len(data)``: the number of samples N; the run's seeded :class:`~deep.data.CyclicSampler`
  draws a fresh permutation of ``range(N)`` every epoch and cuts it into batches, as the paper
  samples (``batch_size`` per step, the last batch of an epoch smaller when N is not a multiple);
* ``batch(idx)``: the batch of the samples ``idx`` (an int64 tensor on ``device``), as the loss
  takes it (``loss_fn(model, batch)``, :mod:`deep.losses`): a tuple ``(x, y)`` for the
  classification adapter, anything for a loss of one's own;
* ``eval_batches(batch_size)``: every sample once, in order (theta*'s loss and accuracy on the
  whole training data).

:class:`~deep.data.DeviceData` (CIFAR images kept as uint8, normalized on the device) is one;
:class:`TensorData` holds any tensors with a first dimension of N (token ids and labels, a
regression's inputs and targets, several views) on the device and gathers rows. :func:`as_data`
takes either, or a map-style dataset (``len`` and ``ds[i]`` giving a tuple of tensors or
numbers: a ``torch.utils.data.Dataset``, a list of pairs), which it stacks once and moves to the
device once: no DataLoader, no worker processes, no per-step host work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Data(Protocol):
    """What a measured run needs of its data (see the module docstring)."""

    device: torch.device

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor) -> Any: ...

    def eval_batches(self, batch_size: int) -> Iterator[Any]: ...


class TensorData:
    """Tensors with a common first dimension N, kept on ``device``; ``batch(idx)`` gathers their
    rows: a tuple of one batch per tensor (``(tokens, labels)``, say)."""

    def __init__(self, *tensors: torch.Tensor, device: torch.device | str | None = None):
        if not tensors:
            raise ValueError("TensorData needs at least one tensor, e.g. TensorData(inputs, targets)")
        bad = [i for i, t in enumerate(tensors) if not isinstance(t, torch.Tensor)]
        if bad:
            raise TypeError(f"TensorData takes tensors; argument {bad[0]} is {type(tensors[bad[0]]).__name__} "
                            "(use torch.as_tensor, or as_data for a dataset)")
        n = {t.shape[0] if t.dim() else None for t in tensors}
        if len(n) != 1 or None in n:
            raise ValueError("TensorData's tensors need one common first dimension (the samples); got shapes "
                             + ", ".join(str(tuple(t.shape)) for t in tensors))
        if n.pop() == 0:
            raise ValueError("TensorData has no samples")
        self.device = torch.device(device) if device is not None else tensors[0].device
        self.tensors = tuple(t.to(self.device).contiguous() for t in tensors)

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx = idx.to(self.device, non_blocking=True)
        return tuple(t.index_select(0, idx) for t in self.tensors)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self)
        for i in range(0, n, batch_size):
            yield self.batch(torch.arange(i, min(i + batch_size, n), device=self.device))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in self.tensors)
        return f"TensorData({shapes}, device={self.device})"


def as_data(data, device: torch.device | str | None = None) -> Data:
    """``data`` as the run reads it: a :class:`Data` as it is (``device`` must then agree), a
    tensor or tuple of tensors as :class:`TensorData`, or a map-style dataset stacked once
    into one (every item a tuple of tensors or numbers of one shape each)."""
    if _is_data(data):
        if device is not None and torch.device(device) != data.device:
            raise ValueError(f"the data is on {data.device}, not {device}: make it there")
        return data
    if isinstance(data, torch.Tensor):
        return TensorData(data, device=device)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data) \
            and len({t.shape[0] for t in data}) == 1 and not _looks_like_items(data):
        return TensorData(*data, device=device)
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return _stack(data, device)
    raise TypeError(f"data: got {type(data).__name__}; give a deep.tensordata.TensorData, a deep.data.DeviceData, "
                    "an object with device, __len__, batch(idx) and eval_batches(batch_size), or a map-style "
                    "dataset (len(ds) and ds[i])")


def _is_data(obj) -> bool:
    return all(hasattr(obj, a) for a in ("device", "__len__", "batch", "eval_batches"))


def _looks_like_items(seq: Sequence) -> bool:
    """A list of samples (each a 0-d or small tensor) rather than a tuple of columns: columns are
    few; a list of many tensors is a dataset."""
    return isinstance(seq, list) and len(seq) > 8


def _stack(ds, device) -> TensorData:
    n = len(ds)
    if n == 0:
        raise ValueError("the dataset is empty")
    first = ds[0]
    single = not isinstance(first, (tuple, list))
    k = 1 if single else len(first)
    cols: list[list] = [[] for _ in range(k)]
    for i in range(n):
        item = ds[i]
        item = (item,) if single else item
        if len(item) != k:
            raise ValueError(f"dataset item {i} has {len(item)} fields, item 0 has {k}")
        for c, v in zip(cols, item):
            c.append(torch.as_tensor(v))
    try:
        tensors = [torch.stack(c) for c in cols]
    except RuntimeError as exc:
        raise ValueError(f"the dataset's items cannot be stacked into tensors ({exc}); give TensorData or your "
                         "own Data object (device, __len__, batch, eval_batches)") from None
    return TensorData(*tensors, device=device)


def data_digest(data) -> str:
    """sha256 of what the data holds (for the run's fingerprint): its tensors' bytes, shapes and
    dtypes in order (``tensors``, or DeviceData's images, labels, mean and std), or, for another
    kind of data, its class name and length. Kept on the object: computed once per data set."""
    cached = getattr(data, "_gpcheck_digest", None)
    if cached is not None:
        return cached
    if isinstance(data, TensorData):
        tensors = data.tensors
    elif all(hasattr(data, a) for a in ("images", "labels", "mean", "std")):
        tensors = (data.images, data.labels, data.mean, data.std)
    else:
        tensors = ()
    h = hashlib.sha256(f"{type(data).__name__}:{len(data)}".encode())
    for t in tensors:
        h.update(f"|{str(t.dtype)}{tuple(t.shape)}|".encode())
        h.update(_bytes(t))
    digest = h.hexdigest() if tensors else f"unhashed:{type(data).__name__}:{len(data)}"
    try:
        data._gpcheck_digest = digest
    except AttributeError:
        pass
    return digest


def _bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy().view(np.uint8).reshape(-1))


__all__ = ["Data", "TensorData", "as_data", "data_digest"]
