"""The one training step of a measured run, and the epoch loop around it.

:func:`make_step` is the step: pass 1, the star extension, pass 2's replay, ``gpcheck picture``
and the benchmarks all run it, so their bits are the same by construction, not only by the
bitwise checks after the fact. Pass 2 adds its recording *around* the step (a
:class:`Recording`: the forwards at theta* after the training forward, the gradient's capture
between backward and the optimizer step, the recorder's row as the step's output), never in a
copy of it. A step is a function ``fn(idx) -> outputs`` that :class:`deep.graphs.StepGraphs` runs
eagerly or as a CUDA graph replay.

:func:`run_epochs` is the epoch loop with the divergence policy (a loss or a parameter that is not
finite, or no parameter changed in a whole epoch), used by pass 1 and by the star extension.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from gamma_theory.flat import FlatParams

from .data import CyclicSampler, DeviceData
from .graphs import StepFn, StepGraphs

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def flat_model(model: torch.nn.Module) -> FlatParams:
    """Put ``model``'s parameters and their gradients into flat buffers (see
    :mod:`gamma_theory.flat`); both passes train so, and pass 2 reads ``theta_k`` and ``g_k``
    from the buffers without a copy. Training bits are those of the plain layout (checked on the
    CPU for every network of the suites), and pass 2 checks them against pass 1 anyway."""
    fp = FlatParams(model)
    fp.flat_grads()
    return fp


@contextmanager
def batch_stats_only(model: torch.nn.Module):
    """In training mode, BatchNorm normalizes with the batch statistics and leaves its running
    statistics (and ``num_batches_tracked``) untouched: the forward pass that gives ``loss_star``.
    The same output as momentum 0, without the kernels that would update the buffers."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    before = [m.track_running_stats for m in bns]
    for m in bns:
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m, t in zip(bns, before):
            m.track_running_stats = t


def use_capturable(opt: torch.optim.Optimizer, graphs: bool) -> torch.optim.Optimizer:
    """With CUDA graphs (``graphs``), an optimizer with a ``capturable`` mode (Adam) uses it (its
    step count lives on the device, so a replayed step counts too), in both passes, after every
    resume and in the picture's replay. Returns ``opt``."""
    if graphs:
        for group in opt.param_groups:
            if "capturable" in group:
                group["capturable"] = True
    return opt


def copy_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recording(Protocol):
    """What a replay adds around the step (pass 2: :class:`deep.pass2.StarRecording`)."""

    def at_forward(self, x: torch.Tensor, y: torch.Tensor):
        """After the training forward, before the gradient is zeroed: returns what :meth:`output` needs."""

    def at_gradient(self) -> None:
        """After backward, before the optimizer step."""

    def output(self, loss: torch.Tensor, seen) -> torch.Tensor:
        """The step's output (after the optimizer step), in place of the detached loss."""


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, data: DeviceData, loss_fn: LossFn = F.cross_entropy,
              flat: FlatParams | None = None, recording: Recording | None = None) -> StepFn:
    """The training step: forward, loss, gradient zeroed in place (in ``flat``'s buffer when given,
    else ``zero_grad(set_to_none=False)``: accumulating onto zeros gives the same bits), backward,
    optimizer step. Its output is ``(loss,)`` (detached, on the device: no host sync), or with a
    ``recording`` ``(recording.output(loss, ...),)``. Device work only, so it can be captured."""

    def step(idx: torch.Tensor) -> tuple:
        x, y = data.batch(idx)
        loss = loss_fn(model(x), y)
        seen = recording.at_forward(x, y) if recording is not None else None
        if flat is not None:
            flat.zero_grad()
        else:
            opt.zero_grad(set_to_none=False)
        loss.backward()
        if recording is not None:
            recording.at_gradient()
        opt.step()
        return (loss.detach(),) if recording is None else (recording.output(loss, seen),)
    return step


def train_epoch(model, opt, sampler: CyclicSampler, data: DeviceData, loss_fn: LossFn = F.cross_entropy,
                flat: FlatParams | None = None, graphs: StepGraphs | None = None) -> torch.Tensor:
    """One epoch of :func:`make_step`, as pass 1 runs it: the loss of every step, on the device
    (no host sync). With ``graphs``, the steps are CUDA graph replays where they can be."""
    batches = sampler.next_epoch(data.device)
    losses = torch.empty(len(batches), device=data.device)
    model.train()
    step = make_step(model, opt, data, loss_fn, flat)
    for i, idx in enumerate(batches):
        (losses[i],) = step(idx) if graphs is None else graphs.run(("train", len(idx)), step, idx)
    return losses


@dataclass
class Training:
    """What a pass trains: the model (its parameters in ``flat``'s buffers), its optimizer and sampler."""

    model: torch.nn.Module
    flat: FlatParams
    opt: torch.optim.Optimizer
    sampler: CyclicSampler

    def epoch(self, data: DeviceData, loss_fn: LossFn, graphs: StepGraphs | None) -> torch.Tensor:
        return train_epoch(self.model, self.opt, self.sampler, data, loss_fn, self.flat, graphs)


def divergence(host_losses: np.ndarray, model: torch.nn.Module, state_before: dict, epoch: int,
               steps_before: int) -> dict | None:
    """Why the epoch ``epoch`` (its losses ``host_losses``; the model state at its start
    ``state_before``; ``steps_before`` steps before it) diverged, or None."""
    bad = np.flatnonzero(~np.isfinite(host_losses))
    if bad.size:
        return {"epoch": epoch, "step": steps_before + int(bad[0]), "reason": "loss is not finite"}
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return {"epoch": epoch, "step": steps_before + len(host_losses) - 1, "reason": "parameters are not finite"}
    if all(torch.equal(p, state_before[n]) for n, p in model.named_parameters()):
        return {"epoch": epoch, "step": steps_before, "reason": "vanishing gradient: no parameter changed in a whole epoch"}
    return None


@dataclass
class Epoch:
    """One epoch that :func:`run_epochs` trained: its losses (float64, on the host), the model
    state at its start, and why it diverged (None: it did not)."""

    epoch: int
    losses: np.ndarray
    state_before: dict
    diverged: dict | None


def run_epochs(training: Training, data: DeviceData, loss_fn: LossFn, graphs: StepGraphs | None,
               epochs: Iterable[int], steps_before: int = 0) -> Iterator[Epoch]:
    """Train the ``epochs`` one by one (one host sync each, for the losses), yielding each; the
    last one yielded is the first that diverged, if one did."""
    for epoch in epochs:
        state_before = copy_state(training.model)
        host = training.epoch(data, loss_fn, graphs).cpu().numpy().astype(np.float64)  # the epoch's sync
        why = divergence(host, training.model, state_before, epoch, steps_before)
        yield Epoch(epoch, host, state_before, why)
        if why:
            return
        steps_before += len(host)


__all__ = ["Epoch", "Recording", "Training", "batch_stats_only", "copy_state", "divergence", "flat_model",
           "make_step", "run_epochs", "train_epoch", "use_capturable"]
