"""The exactly measured run: two passes over one deterministic training.

``theta*`` (the last iterate) is known only at the end, and storing every iterate of a ResNet
run is terabytes. So:

* **pass 1** (:mod:`deep.pass1`) trains deterministically from a seeded initialization
  (``theta_0`` saved), keeps a checkpoint (model, optimizer and sampler state) every
  ``checkpoint_every`` epochs (default ``max(1, epochs // 10)``, so at most ~11 on disk) and at
  the end, saves ``theta*`` and evaluates it on the whole training set (is it a global minimizer,
  as Fact 1 needs?); with ``star_extend`` it then trains on for a theta* trained longer;
* **pass 2** (:mod:`deep.pass2`) replays the identical steps from ``theta_0`` and records every
  column of the trace with :class:`gamma_theory.PathRecorder`, against every theta* of
  :mod:`deep.stars`, with ``loss_star`` from a forward pass of each theta* on the same batch in
  training mode (BatchNorm uses the batch statistics; its running statistics are not touched at
  all). At each checkpoint pass 2's parameters must equal pass 1's bit for bit, and at the end its
  last iterate must be ``theta*``; otherwise :class:`ReplayMismatch` names the epoch and the
  largest deviation. The finished trace must satisfy the recording identity and have one row per
  step of pass 1, or it is never saved.

Every pass runs the one training step of :mod:`deep.step`. The run's folder, its files and what a
crash at any moment leaves are :class:`deep.folder.RunFolder`'s (its docstring is the contract);
pass 2 deletes each checkpoint once it has verified a later one and saved its trace up to there
(unless ``keep_checkpoints``), and a diverged run is measured up to where it broke
(:mod:`deep.pass1`). When even that trace is not finite, the run is reported as diverged with no
trace.

Layout and memory: both passes keep the parameters and their gradients in flat buffers
(:func:`deep.step.flat_model`, :mod:`gamma_theory.flat`); the training bits are those of the plain
layout. Pass 2 holds, besides what training holds (parameters, gradients, optimizer state), one
float32 copy per ``theta*`` (the models that give ``loss_star`` live in the rows of the matrix the
recorder reads) and one of ``theta_k``; its float64 work is done a chunk at a time. Pass 1 holds
the model states at the start of this and of the previous epoch (to fall back on when a run
diverges). Checkpoints stream to disk and are mapped, not read, when pass 2 compares with them.
``bench/memory.py`` measures it (README, "Performance").

Steps: on a CUDA device both passes run their steps as CUDA graph replays where they can
(:mod:`deep.graphs`: one graph per batch size, and in pass 2 per number of theta* still judged;
eagerly where a capture fails, which the metadata says), with the bits of the eager step.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch.nn.functional as F

from .context import NO_EXTRAS, ExternalStar, Extras, ModelFn, OptimizerFn, RunContext, SchedulerFn
from .fingerprint import fingerprint
from .env import deterministic
from .errors import EnvironmentMismatch, RecordingError, RemeasureWarning, ReplayMismatch, RunMismatch, StarRefused
from .folder import IDENTITY_RTOL, MeasuredRun, RunFolder, load_companions
from .losses import as_loss
from .pass1 import evaluate, extend, pass1
from .pass2 import finish, pass2
from .stars import verify_external_stars
from .state import StateDamaged
from .step import Recipe, batch_stats_only, flat_model, train_epoch, use_capturable
from .tensordata import as_data

#: devices whose steps can be captured in graphs (a stand-in ``graphs_backend`` allows any)
CAPTURE_DEVICES = ("cuda",)


def measure(
    model_fn: ModelFn,
    optimizer_fn: OptimizerFn,
    data,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    workdir: str | os.PathLike,
    seed: int = 0,
    data_seed: int = 0,
    loss_fn=F.cross_entropy,
    scheduler_fn: SchedulerFn | None = None,
    grad_clip: float | None = None,
    accumulate: int = 1,
    autocast: str | None = None,
    channels_last: bool = False,
    allow_tf32: bool = False,
    checkpoint_every: int | None = None,
    keep_checkpoints: bool = False,
    meta: dict | None = None,
    progress: bool = True,
    desc: str = "run",
    extras: Extras = Extras(),
    cuda_graphs: bool | None = None,
    graphs_backend: Callable[[], object] | None = None,
) -> MeasuredRun:
    """Train with ``optimizer_fn(model_fn().parameters())`` and measure the path exactly.

    ``data``: any data of the protocol of :mod:`deep.tensordata` (``device``, ``len``,
    ``batch(idx)``, ``eval_batches``): :class:`~deep.data.DeviceData` images,
    :class:`~deep.tensordata.TensorData` tokens or any tensors, or a map-style dataset (stacked
    and moved to the device once). ``loss_fn(model, batch) -> scalar`` (:mod:`deep.losses`;
    torch's own losses of ``(outputs, targets)``, the default cross-entropy among them, are
    adapted; ``deep.losses.outputs(fn)`` adapts one's own).

    ``lr``: the optimizer's base learning rate (the paper's eta). Without ``scheduler_fn`` it is
    every step's rate, and the optimizer must have it. ``scheduler_fn(optimizer)``: a learning-rate
    schedule, stepped after every step (warm-up plus cosine over the steps, say); each step's
    eta_k is then read from the optimizer and recorded (the trace's ``eta`` column), ``U_k =
    (theta_k - theta_{k+1}) / eta_k``, and Definition 1 and Theorem 1 are read with eta_k
    (docs/schedules.md). ``grad_clip``, ``accumulate``, ``autocast``: :class:`deep.step.Recipe`.

    ``model_fn`` is called after ``torch.manual_seed(seed)``; ``data_seed`` seeds the sampler.
    A step may draw random numbers from torch's generators (dropout): they are saved in every
    checkpoint and replayed, and each theta*'s loss is taken with the masks of the step at
    theta_k. Everything is written under ``workdir``; the finished trace is
    ``workdir/trace.npz`` (+ ``trace.json``). ``workdir/setup.json`` records every setting and a
    fingerprint of what decides the path (model structure and theta_0, optimizer and its
    hyper-parameters, schedule, loss, data): calling again with the same arguments resumes or,
    when finished, just loads the result; a folder that holds another run is refused
    (:class:`RunMismatch`, one line naming what differs). The caller's determinism settings are
    restored on return.

    ``cuda_graphs``: run the steps of both passes as CUDA graph replays (:mod:`deep.graphs`;
    default: on a CUDA device, for a plain step at a constant rate). It is part of the run's
    settings, since with it an optimizer that has a ``capturable`` mode (Adam) uses that mode,
    whose bits differ. ``graphs_backend``: a factory of a stand-in for the CUDA graph backend
    (the tests emulate capture and replay on the CPU with one); with it, ``cuda_graphs=True`` is
    allowed on any device.
    """
    data = as_data(data)
    loss = as_loss(loss_fn)
    recipe = Recipe(grad_clip, accumulate, autocast)
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    capture = CAPTURE_DEVICES if graphs_backend is None else (data.device.type,)
    plain = scheduler_fn is None and recipe.plain
    graphs = data.device.type in capture and plain if cuda_graphs is None else bool(cuda_graphs)
    if graphs and data.device.type not in capture:
        raise ValueError(f"CUDA graphs need a CUDA device; the data is on {data.device} (use cuda_graphs=False)")
    if graphs and not plain:
        raise ValueError("CUDA graphs take a plain step at a constant learning rate (a schedule's rate would be "
                         "baked into the graph); use cuda_graphs=False with scheduler_fn, grad_clip, accumulate "
                         "or autocast")
    folder = RunFolder.open(workdir)
    checkpoint_every = checkpoint_every or max(1, epochs // 10)
    setup = dict(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, data_seed=data_seed,
                 channels_last=channels_last, allow_tf32=allow_tf32, checkpoint_every=checkpoint_every,
                 n_train=len(data), extras=extras.to_dict(), **recipe.to_setup())
    if graphs:  # only then: the folders of eager runs keep the settings they were measured with
        setup["cuda_graphs"] = True
    if meta and "run" in meta:  # the suite runner's run spec (network, knobs, width, ...)
        setup["run"] = meta["run"]
    setup["fingerprint"] = fingerprint(model_fn, optimizer_fn, scheduler_fn, loss, data, seed, lr, epochs, batch_size)
    folder.claim(setup)
    done = folder.finished()
    if done is not None:
        if not keep_checkpoints:
            folder.drop_progress()  # what a crash during the last clean-up left behind
        return done
    ctx = RunContext(model_fn, optimizer_fn, data, loss, setup, folder, extras, keep_checkpoints, meta, progress,
                     desc, graphs_backend, scheduler_fn, recipe)
    verify_external_stars(extras, model_fn)  # refused before anything is trained
    with deterministic(allow_tf32):
        try:
            return measure_passes(ctx)
        except StateDamaged as exc:
            warnings.warn(f"{exc}; measuring {folder.path} again from the start (the result is the same "
                          "bit for bit)", RemeasureWarning, stacklevel=2)
            folder.wipe()
            return measure_passes(ctx)


def _check_positive(name: str, v) -> None:
    if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")


def measure_passes(ctx: RunContext) -> MeasuredRun:
    """The passes of one run, in order: pass 1, the star extension, pass 2, then the checks and
    the save (``bench/memory.py`` measures pass 1 alone by replacing this module's ``pass2``
    with one that returns None)."""
    p1 = pass1(ctx)
    p1b = extend(ctx, p1)
    return finish(ctx, p1, pass2(ctx, p1, p1b))


# -- the names other modules imported from here before the split (to be removed after the merge) --
_CAPTURE_DEVICES = CAPTURE_DEVICES


def _capturable(opt, setup: dict) -> None:
    use_capturable(opt, bool(setup.get("cuda_graphs")))


def _claim(workdir, setup: dict) -> None:
    RunFolder(workdir).claim(setup)


def _finished(workdir) -> MeasuredRun | None:
    return RunFolder(workdir).finished()


def _wipe(workdir) -> None:
    RunFolder(workdir).wipe()


def _random_star(*args, **kw):
    from .stars import random_star

    return random_star(*args, **kw)


__all__ = ["CAPTURE_DEVICES", "IDENTITY_RTOL", "NO_EXTRAS", "EnvironmentMismatch", "ExternalStar", "Extras",
           "MeasuredRun", "RecordingError", "RemeasureWarning", "ReplayMismatch", "RunContext", "RunFolder",
           "RunMismatch", "StarRefused", "batch_stats_only", "evaluate", "flat_model", "load_companions", "measure",
           "measure_passes", "train_epoch"]
