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

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from gamma_theory.flat import FlatParams

from .data import CyclicSampler
from .graphs import StepFn, StepGraphs
from .losses import CROSS_ENTROPY, Loss, as_loss

LossFn = Loss  #: ``loss_fn(model, batch) -> scalar`` (:mod:`deep.losses`)


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


def rng_state(device: torch.device) -> dict:
    """The random state a step draws from (dropout masks, noise): torch's default CPU generator
    and, on a CUDA device, that device's. Saved in every checkpoint, so that a resumed pass and
    the replay draw what the uninterrupted pass drew."""
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict | None, device: torch.device) -> None:
    """Restore :func:`rng_state` (a checkpoint written before it was saved has none: nothing to do)."""
    if not state:
        return
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def same_rng(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def copy_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class Recipe:
    """How a step is taken, beyond forward, backward and the optimizer's step (each default is
    the plain step, whose bits are those of every run measured before recipes existed).

    * ``grad_clip``: clip the gradient to this global L2 norm before the optimizer's step
      (``torch.nn.utils.clip_grad_norm_``); the recorded ``g_k`` is then the clipped gradient,
      the one the optimizer is handed.
    * ``accumulate``: the step's batch in this many micro-batches (``torch.tensor_split`` of its
      indices), their losses weighted by their share of the batch and their gradients summed:
      the loss and its gradient on the whole batch, in less memory. ``loss`` and ``loss_star``
      are the same weighted sums.
    * ``autocast``: ``"bf16"``: every forward and loss (at theta_k and at each theta*) under
      ``torch.autocast(device, torch.bfloat16)``; parameters, gradients and optimizer state
      stay float32.
    """

    grad_clip: float | None = None
    accumulate: int = 1
    autocast: str | None = None

    def __post_init__(self):
        if self.grad_clip is not None and not (float(self.grad_clip) > 0 and np.isfinite(float(self.grad_clip))):
            raise ValueError(f"grad_clip must be a positive number (a gradient norm), got {self.grad_clip}")
        if int(self.accumulate) != self.accumulate or self.accumulate < 1:
            raise ValueError(f"accumulate must be a whole number of micro-batches >= 1, got {self.accumulate}")
        if self.autocast not in (None, "bf16"):
            raise ValueError(f"autocast must be None or 'bf16', got {self.autocast!r}")

    @property
    def plain(self) -> bool:
        return self == PLAIN

    def to_setup(self) -> dict:
        """The settings that differ from the plain step (none for a plain step: its setup.json
        keeps the keys it always had)."""
        return {k: v for k, v in (("grad_clip", self.grad_clip), ("accumulate", self.accumulate),
                                  ("autocast", self.autocast)) if v != getattr(PLAIN, k)}

    @classmethod
    def from_setup(cls, setup: dict) -> "Recipe":
        return cls(setup.get("grad_clip"), int(setup.get("accumulate", 1)), setup.get("autocast"))

    def autocasting(self, device: torch.device):
        if self.autocast == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


PLAIN = Recipe()


class Recording(Protocol):
    """What a replay adds around the step (pass 2: :class:`deep.pass2.StarRecording`)."""

    def before_forward(self) -> None:
        """Before each training forward (to keep the random state the forward starts from)."""

    def at_forward(self, batch) -> list:
        """After a training forward, before its backward: the losses at theta* on ``batch``."""

    def at_gradient(self) -> None:
        """After backward (and clipping), before the optimizer step."""

    def output(self, loss: torch.Tensor, seen) -> torch.Tensor:
        """The step's output (after the optimizer step), in place of the detached loss."""


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, data, loss_fn=CROSS_ENTROPY,
              flat: FlatParams | None = None, recording: Recording | None = None, recipe: Recipe = PLAIN) -> StepFn:
    """The training step: gradient zeroed in place (in ``flat``'s buffer when given, else
    ``zero_grad(set_to_none=False)``: accumulating onto zeros gives the same bits), forward and
    loss (``loss_fn(model, batch)``, :mod:`deep.losses`), backward, optimizer step; with a
    ``recipe``, micro-batches, clipping and autocast (:class:`Recipe`). Its output is ``(loss,)``
    (detached, on the device: no host sync), or with a ``recording``
    ``(recording.output(loss, ...),)``. Device work only, so it can be captured."""
    loss_fn = as_loss(loss_fn)
    device = data.device

    def forward(batch):
        if recording is not None:
            recording.before_forward()
        with recipe.autocasting(device):
            loss = loss_fn(model, batch)
            seen = recording.at_forward(batch) if recording is not None else None
        return loss, seen

    def step(idx: torch.Tensor) -> tuple:
        if flat is not None:
            flat.zero_grad()
        else:
            opt.zero_grad(set_to_none=False)
        if recipe.accumulate == 1:
            loss, seen = forward(data.batch(idx))
            loss.backward()
        else:
            loss, seen = None, None
            for part in torch.tensor_split(idx, recipe.accumulate):
                if not len(part):
                    continue
                w = len(part) / len(idx)
                part_loss, part_seen = forward(data.batch(part))
                (part_loss * w).backward()
                loss = part_loss.detach() * w if loss is None else loss + part_loss.detach() * w
                if part_seen is not None:
                    part_seen = [s * w for s in part_seen]
                    seen = part_seen if seen is None else [a + b for a, b in zip(seen, part_seen)]
        if recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        if recording is not None:
            recording.at_gradient()
        opt.step()
        return (loss.detach(),) if recording is None else (recording.output(loss, seen),)
    return step


def train_epoch(model, opt, sampler: CyclicSampler, data, loss_fn=CROSS_ENTROPY,
                flat: FlatParams | None = None, graphs: StepGraphs | None = None, sched=None,
                recipe: Recipe = PLAIN) -> torch.Tensor:
    """One epoch of :func:`make_step`, as pass 1 runs it: the loss of every step, on the device
    (no host sync). With ``graphs``, the steps are CUDA graph replays where they can be. With a
    learning-rate scheduler ``sched``, ``sched.step()`` after every step (a per-step schedule)."""
    batches = sampler.next_epoch(data.device)
    losses = torch.empty(len(batches), device=data.device)
    model.train()
    step = make_step(model, opt, data, loss_fn, flat, recipe=recipe)
    for i, idx in enumerate(batches):
        (losses[i],) = step(idx) if graphs is None else graphs.run(("train", len(idx)), step, idx)
        if sched is not None:
            sched.step()
    return losses


@dataclass
class Training:
    """What a pass trains: the model (its parameters in ``flat``'s buffers), its optimizer and sampler."""

    model: torch.nn.Module
    flat: FlatParams
    opt: torch.optim.Optimizer
    sampler: CyclicSampler
    sched: object | None = None  #: the learning-rate scheduler, stepped after every step
    recipe: Recipe = PLAIN

    def epoch(self, data, loss_fn, graphs: StepGraphs | None) -> torch.Tensor:
        return train_epoch(self.model, self.opt, self.sampler, data, loss_fn, self.flat, graphs, self.sched,
                           self.recipe)


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


def run_epochs(training: Training, data, loss_fn: LossFn, graphs: StepGraphs | None,
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


__all__ = ["PLAIN", "Epoch", "Recipe", "Recording", "Training", "batch_stats_only", "copy_state", "divergence", "flat_model",
           "make_step", "rng_state", "run_epochs", "same_rng", "set_rng_state", "train_epoch", "use_capturable"]
