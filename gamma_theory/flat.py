"""A model's parameters as views into one flat buffer, and exact float64 reductions over such buffers.

Why: an exact recording needs ``theta_k`` as one vector at every step. Concatenating the
parameters each step costs a parameter-sized copy (and, in float64, two); with the parameters
living in one flat buffer, ``theta_k`` *is* that buffer. The same holds for the gradients
(:meth:`FlatParams.flat_grads`) and for the models that hold each ``theta*`` (rows of one
matrix, :meth:`FlatParams.like`).

Layout: every parameter gets a slice of the buffer that starts on a 64-byte boundary (16
entries) on the CPU and on a 256-byte boundary on CUDA (64 float32 entries: cuBLASLt picks its
kernels by the alignment of its operands up to 256 bytes, so a parameter in the buffer gets the
kernels a parameter of its own would get), in its own memory format (a channels-last weight
stays channels-last, so the kernels that train it are the ones they were), in the order of ``module.parameters()``. The
entries between slices are zero in every buffer of the layout, so they add exactly nothing to
an inner product or a distance. :meth:`FlatLayout.pack` / :meth:`FlatLayout.unpack` convert
between the layout and the plain concatenation (``flatten_params`` order), as a brute-force
reference that knows nothing of the layout needs (the tests' float64 references).

:func:`gram` and :func:`sq_dist` compute in float64 over chunks of a fixed number of entries: the
difference of two float32 numbers is exact in float64, and the chunks bound the float64
temporaries (a chunk, not a parameter-sized copy per vector), while the chunk size fixes the
summation order, so the result is the same on every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

#: entries of float32 per 64 bytes: on the CPU every parameter's slice starts on such a boundary
#: (whatever the dtype: the layout every CPU run was measured with)
ALIGN = 16
#: bytes to which every parameter's slice is aligned on CUDA (the caching allocator's blocks start
#: on 512-byte boundaries, so the slices are as aligned as separately allocated tensors)
CUDA_ALIGN_BYTES = 256
#: float64 entries per chunk of :func:`gram`: on the CPU 2 MiB per row of a chunk (a few
#: rows stay in cache, and the temporaries a small fraction of a parameter-sized copy); on a GPU
#: 128 MiB, so that a ResNet-18 takes one reduction (a kernel launch costs more than memory there)
CHUNK = {"cpu": 1 << 18, "cuda": 1 << 24}


def default_chunk(device: torch.device | str) -> int:
    return CHUNK.get(torch.device(device).type, CHUNK["cpu"])


def default_align(device: torch.device | str, dtype: torch.dtype = torch.float32) -> int:
    """Entries between slice starts: :data:`ALIGN` on the CPU, :data:`CUDA_ALIGN_BYTES` worth on CUDA."""
    if torch.device(device).type == "cuda":
        return max(1, CUDA_ALIGN_BYTES // dtype.itemsize)
    return ALIGN


@dataclass(frozen=True)
class Slot:
    name: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    numel: int


def _dense_stride(p: torch.Tensor) -> tuple[int, ...]:
    """``p``'s strides when they describe a dense, non-overlapping layout (contiguous or
    channels-last), else the contiguous ones."""
    if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
        return tuple(p.stride())
    return tuple(torch.empty(p.shape, device="meta").stride())


class FlatLayout:
    """Where each parameter of a module lives in a flat buffer. ``align``: entries between slice
    starts (default: :func:`default_align` for the parameters' device and dtype)."""

    def __init__(self, named: Sequence[tuple[str, torch.Tensor]], align: int | None = None):
        if align is None:
            align = default_align(named[0][1].device, named[0][1].dtype) if named else ALIGN
        self.align = align
        slots, off = [], 0
        for name, p in named:
            off = -(-off // align) * align
            slots.append(Slot(name, off, tuple(p.shape), _dense_stride(p), p.numel()))
            off += p.numel()
        self.slots: list[Slot] = slots
        self.size = -(-off // align) * align if slots else 0
        self.numel = sum(s.numel for s in slots)  #: the parameters' entries (without the gaps)

    def view(self, buf: torch.Tensor, slot: Slot) -> torch.Tensor:
        return buf.as_strided(slot.size, slot.stride, buf.storage_offset() + slot.offset)

    def empty(self, *rows: int, dtype=torch.float32, device=None) -> torch.Tensor:
        """A zeroed buffer (or ``rows`` of them) in this layout."""
        return torch.zeros(*rows, self.size, dtype=dtype, device=device)

    @torch.no_grad()
    def fill(self, buf: torch.Tensor, tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """Copy named tensors (a state dict) or tensors in parameter order into ``buf``."""
        for i, s in enumerate(self.slots):
            src = tensors[s.name] if isinstance(tensors, Mapping) else tensors[i]
            self.view(buf, s).copy_(src)
        return buf

    @torch.no_grad()
    def pack(self, buf: torch.Tensor) -> torch.Tensor:
        """The parameters in ``buf`` as one plain vector, in parameter order (no gaps)."""
        return torch.cat([self.view(buf, s).reshape(-1) for s in self.slots])

    @torch.no_grad()
    def unpack(self, vec: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write a plain vector in parameter order (as :meth:`pack` gives) into ``out``."""
        lo = 0
        for s in self.slots:
            self.view(out, s).copy_(vec[lo:lo + s.numel].reshape(s.size))
            lo += s.numel
        return out


class FlatParams:
    """Re-home ``module``'s parameters into one flat buffer (``self.flat``), keeping their values.

    Call it right after building the module (on its device, in its memory format) and before
    making an optimizer; later in-place updates (optimizer steps, ``load_state_dict``) keep the
    parameters in the buffer. ``buffer``: an existing zeroed buffer of this layout to use, such
    as a row of a matrix that holds several models (:meth:`like`)."""

    def __init__(self, module: torch.nn.Module, buffer: torch.Tensor | None = None, align: int | None = None):
        named = list(module.named_parameters())
        if not named:
            raise ValueError("the module has no parameters")
        dtypes = {p.dtype for _, p in named}
        devices = {p.device for _, p in named}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"parameters of several dtypes or devices ({dtypes}, {devices}) cannot share a buffer")
        self.module = module
        self.params = [p for _, p in named]
        self.layout = FlatLayout(named, align)
        dtype, device = named[0][1].dtype, named[0][1].device
        if buffer is None:
            buffer = self.layout.empty(dtype=dtype, device=device)
        elif buffer.shape != (self.layout.size,) or buffer.dtype != dtype or buffer.device != device:
            raise ValueError(f"buffer is {tuple(buffer.shape)} {buffer.dtype} on {buffer.device}; "
                             f"this layout needs ({self.layout.size},) {dtype} on {device}")
        self.flat = buffer
        with torch.no_grad():
            for p, s in zip(self.params, self.layout.slots):
                v = self.layout.view(buffer, s)
                v.copy_(p)
                p.data = v
        self.grad: torch.Tensor | None = None

    def flat_grads(self) -> torch.Tensor:
        """Give every parameter a gradient that is a view into one zeroed flat buffer (returned).
        Backward then accumulates into it; clear it with ``zero_grad(set_to_none=False)`` or
        :meth:`zero_grad`, never by setting the gradients to None."""
        if self.grad is None:
            self.grad = torch.zeros_like(self.flat)
            for p, s in zip(self.params, self.layout.slots):
                p.grad = self.layout.view(self.grad, s)
        return self.grad

    def zero_grad(self) -> None:
        if self.grad is not None:
            self.grad.zero_()

    def check(self) -> None:
        """Raise if a parameter (or gradient) no longer lives in the buffer (something replaced
        its ``.data``), since the recording would then read stale values."""
        for p, s in zip(self.params, self.layout.slots):
            if p.data_ptr() != self.layout.view(self.flat, s).data_ptr():
                raise RuntimeError(f"parameter {s.name} left the flat buffer (its .data was replaced)")
            if self.grad is not None and (p.grad is None or p.grad.data_ptr() != self.layout.view(self.grad, s).data_ptr()):
                raise RuntimeError(f"the gradient of {s.name} left the flat gradient buffer "
                                   "(set to None by zero_grad(set_to_none=True)?)")

    @staticmethod
    def like(models: Iterable[torch.nn.Module], align: int | None = None) -> tuple[list["FlatParams"], torch.Tensor]:
        """Flatten several models of one architecture into the rows of one ``(m, size)`` matrix."""
        models = list(models)
        first = next(iter(models[0].parameters()))
        layout = FlatLayout(list(models[0].named_parameters()), align)
        rows = layout.empty(len(models), dtype=first.dtype, device=first.device)
        return [FlatParams(m, rows[i], layout.align) for i, m in enumerate(models)], rows


def _chunks(n: int, chunk: int):
    for lo in range(0, n, chunk):
        yield lo, min(n, lo + chunk)


@torch.no_grad()
def gram(vectors: Sequence[torch.Tensor | tuple[torch.Tensor, torch.Tensor]], chunk: int | None = None,
         workspace: torch.Tensor | None = None) -> torch.Tensor:
    """The float64 Gram matrix of vectors of one length, each given as a tensor ``v`` or a
    difference ``(a, b)`` (= ``a - b``, formed in float64). A 2-D tensor, or a pair whose ``b``
    is 2-D (rows), stands for its rows. One float64 reduction per chunk of ``chunk`` entries
    (default: :func:`default_chunk`): the chunk's rows are written into a float64 ``workspace``
    (rows x chunk; made when not given or too small) and multiplied once; nothing leaves the
    device."""
    parts = [v if isinstance(v, tuple) else (v, None) for v in vectors]
    rows = sum(_nrows(a, b) for a, b in parts)
    first = parts[0][0]
    n, dev = first.shape[-1], first.device
    chunk = min(chunk or default_chunk(dev), n)
    if workspace is None or workspace.shape[0] < rows or workspace.shape[1] < chunk or workspace.device != dev:
        workspace = torch.empty(rows, chunk, dtype=torch.float64, device=dev)
    G = torch.zeros(rows, rows, dtype=torch.float64, device=dev)
    for lo, hi in _chunks(n, chunk):
        M = workspace[:rows, :hi - lo]
        r = 0
        for a, b in parts:
            k = _nrows(a, b)
            dst = M[r:r + k]
            dst.copy_(a[..., lo:hi].expand(k, hi - lo) if a.dim() == 1 else a[:, lo:hi])  # exact: float32 -> 64
            if b is not None:
                dst.sub_(b[..., lo:hi])  # computed in float64: exact for float32 inputs
            r += k
        G.addmm_(M, M.T)
    return G


def _nrows(a: torch.Tensor, b: torch.Tensor | None) -> int:
    return max(a.shape[0] if a.dim() == 2 else 1, b.shape[0] if b is not None and b.dim() == 2 else 1)


@torch.no_grad()
def sq_dist(a: torch.Tensor, b: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``||a - b_j||^2`` in float64 for a vector ``a`` and a vector or the rows of ``b``, chunked."""
    G = gram([(a, b)], chunk)
    return torch.diagonal(G).clone()
