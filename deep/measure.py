"""The exactly measured run: two passes over one deterministic training.

``theta*`` (the last iterate) is known only at the end, and storing every iterate of a ResNet
run is terabytes. So:

* **pass 1** trains deterministically from a seeded initialization (``theta_0`` saved), keeps a
  checkpoint (model, optimizer and sampler state) every ``checkpoint_every`` epochs and at the
  end, saves ``theta*`` and evaluates it on the whole training set (is it a global minimizer,
  as Fact 1 needs?);
* **pass 2** replays the identical steps from ``theta_0`` and records every column of the trace
  with :class:`gamma_theory.PathRecorder`, with ``loss_star`` from a forward pass of ``theta*``
  on the same batch in training mode (BatchNorm uses the batch statistics; its running
  statistics are not touched at all). At each checkpoint pass 2's parameters must equal pass 1's
  bit for bit, and at the end its last iterate must be ``theta*``; otherwise
  :class:`ReplayMismatch` names the epoch and the largest deviation. The finished trace must
  satisfy the recording identity and have one row per step of pass 1, or it is never saved.

Files in the work folder, and what a crash at any moment leaves
---------------------------------------------------------------
``setup.json`` (the settings; a rerun with others is refused), ``theta0.pt``,
``checkpoints/epochNNNN.pt``, ``theta_star.pt`` (each with a ``.sha256`` written after it),
``pass1.json``, ``pass2_partial.npz`` (the verified part of pass 2: its columns and the epoch they
reach, one file, so one fact), ``trace.npz`` and last ``trace.json`` (the sidecar, with the npz's
sha256: its presence means "finished"). Every file is written atomically under a unique
temporary name. Checkpoints are deleted only after the trace is saved.

So a rerun after a crash anywhere resumes: pass 1 from its newest intact checkpoint, pass 2 from
its verified part. A file found damaged (truncated, altered, missing, or a partial trace that
disagrees with itself) is never trusted: the run falls back to an earlier intact checkpoint, or,
where none can serve, is measured again from the start, which gives the identical trace. A
finished run whose ``trace.npz`` no longer matches ``trace.json`` is measured again too.

Checkpoint policy: pass 1 writes a checkpoint at epoch 0, every ``checkpoint_every`` epochs
(default ``max(1, epochs // 10)``, so at most ~11 on disk) and at its last epoch. Pass 2 deletes
each checkpoint once it has verified a later one and saved its trace up to there (unless
``keep_checkpoints``), so the newest verified checkpoint is always there to resume from.

A run whose loss or parameters stop being finite, or whose parameters stop changing for a whole
epoch (vanishing gradient), is *diverged*: pass 1 stops in epoch ``e``, ``theta*`` is the iterate
that started epoch ``e - 1`` (the last whose whole epoch of losses was finite), and the trace
covers epochs ``0 .. e-2`` (as the paper plots such runs up to where they broke). When even that
trace is not finite, the run is reported as diverged with no trace.

Layout and memory: both passes keep the parameters and their gradients in flat buffers
(:func:`flat_model`, :mod:`gamma_theory.flat`); the training bits are those of the plain layout.
Pass 2 holds, besides what training holds (parameters, gradients, optimizer state), one float32
copy per ``theta*`` (the models that give ``loss_star`` live in the rows of the matrix the
recorder reads) and one of ``theta_k``; its float64 work is done a chunk at a time. Pass 1 holds
the model states at the start of this and of the previous epoch (to fall back on when a run
diverges). Checkpoints stream to disk and are mapped, not read, when pass 2 compares with them.
``bench/memory.py`` measures it (README, "Performance").

Steps: on a CUDA device both passes run their steps as CUDA graph replays where they can
(:mod:`deep.graphs`: one graph per batch size, and in pass 2 per number of theta* still judged;
eagerly where a capture fails, which the metadata says), with the bits of the eager step.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gamma_theory import PathRecorder, Trace, TraceError, load_trace, recording_identity
from gamma_theory.flat import FlatLayout, FlatParams, sq_dist
from gamma_theory.files import (BadFile, PathEscape, check_links, clean_stale_tmp, fault_point, not_a_link, read_json,
                                sha256_file, write_bytes, write_json)
from gamma_theory.recorder import BASE, PER_STAR, trace_from_rows

from .data import CyclicSampler, DeviceData
from .env import deterministic, differ_advice, environment, same_environment
from .graphs import StepGraphs
from .state import StateDamaged, load_state, remove_state, save_state, verify_state
from .verify import SETUP_JSON, companion_path, consistent_status, read_trace_json

ModelFn = Callable[[], torch.nn.Module]
OptimizerFn = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]

#: devices whose steps can be captured in graphs (tests add the CPU, with a backend that emulates them)
_CAPTURE_DEVICES = ("cuda",)

#: relative tolerance of the recording identity a finished trace must meet (as gpcheck check)
IDENTITY_RTOL = 1e-9


class ReplayMismatch(RuntimeError):
    """Pass 2 did not reproduce pass 1 bit for bit."""


class RecordingError(RuntimeError):
    """A finished trace failed its own consistency checks; it is not saved."""


class RunMismatch(ValueError):
    """The work folder holds a run with other settings than the ones asked for."""


class EnvironmentMismatch(RuntimeError):
    """Pass 2 was asked to replay a pass 1 that ran on other hardware or libraries."""


class RemeasureWarning(UserWarning):
    """Damaged run state was found; the run falls back or is measured again."""


@dataclass(frozen=True)
class Extras:
    """What pass 2 records besides the path against theta*, all from the same replay.

    * ``random_baseline``: the same path judged against a meaningless theta*: a point at the same
      distance from theta_0 as the real theta*, in a random direction (seeded by
      ``baseline_seed + seed``). The principle should fail there.
    * ``sensitivity``: fractions of the epochs at whose end the iterate serves as theta*, judged on
      the steps before it (the iterate at 50% on the first half of the path, ...).
    * ``star_extend``: also judge the path against a theta* trained this fraction of the epochs
      longer (0: not).
    * ``record_grad``: record the stochastic gradient's columns ``<g_k, theta_k - theta*>`` and
      ``||g_k||^2`` (for the related path conditions).

    Each theta* costs one forward pass per step it is judged on; the gradient columns one copy.
    """

    random_baseline: bool = True
    sensitivity: tuple[float, ...] = (0.5, 0.75, 0.9)
    star_extend: float = 0.0
    record_grad: bool = True
    baseline_seed: int = 24_681_357

    def candidate_epochs(self, epochs: int) -> list[int]:
        """The epochs whose first iterate serves as an earlier theta*: strictly inside the run."""
        return sorted({e for e in (round(f * epochs) for f in self.sensitivity) if 0 < e < epochs})

    def extend_epochs(self, epochs: int) -> int:
        return max(1, round(self.star_extend * epochs)) if self.star_extend > 0 else 0

    def to_dict(self) -> dict:
        return {"random_baseline": self.random_baseline, "sensitivity": list(self.sensitivity),
                "star_extend": self.star_extend, "record_grad": self.record_grad,
                "baseline_seed": self.baseline_seed}


NO_EXTRAS = Extras(random_baseline=False, sensitivity=(), star_extend=0.0, record_grad=False)


@dataclass
class MeasuredRun:
    trace: Trace | None  #: None when the run diverged in its first epoch
    status: str  #: "ok" or "diverged"
    diverged: dict | None  #: {"epoch", "step", "reason"} when diverged
    workdir: Path

    @property
    def meta(self) -> dict:
        return self.trace.meta if self.trace is not None else json.loads((self.workdir / "trace.json").read_text())


# -- small helpers -------------------------------------------------------------------------------
def _ckpt_path(workdir: Path, epoch: int) -> Path:
    return workdir / "checkpoints" / f"epoch{epoch:04d}.pt"


def _ckpt_epochs(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.stem[5:]) for p in d.glob("epoch[0-9][0-9][0-9][0-9].pt")) if d.exists() else []


def _copy_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_deviation(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> float:
    return max(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b))


def _params_equal(model: torch.nn.Module, ref: dict | torch.nn.Module) -> tuple[bool, float]:
    names = [n for n, _ in model.named_parameters()]
    mine = [p.detach() for _, p in model.named_parameters()]
    if isinstance(ref, torch.nn.Module):
        theirs = [p.detach() for p in ref.parameters()]
    else:
        theirs = [ref[n].to(mine[0].device) for n in names]
    if all(torch.equal(x, y) for x, y in zip(mine, theirs)):
        return True, 0.0
    return False, _max_deviation(mine, theirs)


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


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DeviceData, loss_fn, batch_size: int) -> dict:
    """The whole data set at the model's parameters, in order, in batches of ``batch_size``: the
    mean loss, the accuracy and the largest per-sample cross-entropy, in evaluation mode (BN
    running statistics) and in training mode (batch statistics, running statistics untouched, as
    ``loss_star`` is taken). The model is left in the mode it was in."""
    was_training = model.training
    out = {"n": len(data), "batch_size": batch_size}
    for mode in ("eval", "train"):
        model.train(mode == "train")
        total, correct, worst = 0.0, 0, 0.0
        with batch_stats_only(model):
            for x, y in data.eval_batches(batch_size):
                logits = model(x)
                total += float(loss_fn(logits, y)) * len(y)
                if logits.dim() == 2 and logits.shape[0] == len(y):
                    correct += int((logits.argmax(1) == y).sum())
                    worst = max(worst, float(F.cross_entropy(logits.float(), y, reduction="none").max()))
        out[mode] = {"loss": total / len(data), "accuracy": correct / len(data), "max_sample_cross_entropy": worst}
    model.train(was_training)
    return out


# -- the measured run ----------------------------------------------------------------------------
def measure(
    model_fn: ModelFn,
    optimizer_fn: OptimizerFn,
    data: DeviceData,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    workdir: str | os.PathLike,
    seed: int = 0,
    data_seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    channels_last: bool = False,
    allow_tf32: bool = False,
    checkpoint_every: int | None = None,
    keep_checkpoints: bool = False,
    meta: dict | None = None,
    progress: bool = True,
    desc: str = "run",
    extras: Extras = Extras(),
    cuda_graphs: bool | None = None,
) -> MeasuredRun:
    """Train with ``optimizer_fn(model_fn().parameters())`` and measure the path exactly.

    ``lr`` is the optimizer's constant base learning rate (the paper's eta). ``model_fn`` is
    called after ``torch.manual_seed(seed)``; ``data_seed`` seeds the sampler. Everything is
    written under ``workdir``; the finished trace is ``workdir/trace.npz`` (+ ``trace.json``).
    Calling again with the same arguments resumes or, when finished, just loads the result.
    The caller's determinism settings are restored on return.

    ``cuda_graphs``: run the steps of both passes as CUDA graph replays (:mod:`deep.graphs`;
    default: on a CUDA device, yes). It is part of the run's settings, since with it an optimizer
    that has a ``capturable`` mode (Adam) uses that mode, whose bits differ.
    """
    graphs = data.device.type in _CAPTURE_DEVICES if cuda_graphs is None else bool(cuda_graphs)
    if graphs and data.device.type not in _CAPTURE_DEVICES:
        raise ValueError(f"CUDA graphs need a CUDA device; the data is on {data.device} (use cuda_graphs=False)")
    workdir = not_a_link(workdir, "a run folder")  # it may be wiped: never through a link
    workdir.mkdir(parents=True, exist_ok=True)
    check_links(workdir)  # nor written through a link to a folder elsewhere
    checkpoint_every = checkpoint_every or max(1, epochs // 10)
    setup = dict(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, data_seed=data_seed,
                 channels_last=channels_last, allow_tf32=allow_tf32, checkpoint_every=checkpoint_every,
                 n_train=len(data), extras=extras.to_dict())
    if graphs:  # only then: the folders of eager runs keep the settings they were measured with
        setup["cuda_graphs"] = True
    if meta and "run" in meta:  # the suite runner's run spec (network, knobs, width, ...)
        setup["run"] = meta["run"]
    _claim(workdir, setup)
    clean_stale_tmp(workdir)
    done = _finished(workdir)
    if done is not None:
        if not keep_checkpoints:
            _drop_progress(workdir)  # what a crash during the last clean-up left behind
        return done

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(seed)
        m = model_fn().to(data.device)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    args = (fresh_model, optimizer_fn, data, loss_fn, setup, workdir, extras)
    with deterministic(allow_tf32):
        try:
            return _measure(*args, keep_checkpoints, meta, progress, desc)
        except StateDamaged as exc:
            warnings.warn(f"{exc}; measuring {workdir} again from the start (the result is the same "
                          "bit for bit)", RemeasureWarning, stacklevel=2)
            _wipe(workdir)
            return _measure(*args, keep_checkpoints, meta, progress, desc)


def _claim(workdir: Path, setup: dict) -> None:
    """Write ``setup.json``, or check that the folder holds this very run."""
    path = workdir / "setup.json"
    if path.exists():
        try:
            before = read_json(path, SETUP_JSON, "a run's setup.json")
        except BadFile as exc:
            warnings.warn(f"{exc}; measuring {workdir} again from the start", RemeasureWarning, stacklevel=3)
            _wipe(workdir)
        else:
            differ = {k: (before.get(k), setup.get(k)) for k in dict.fromkeys([*before, *setup])
                      if before.get(k) != setup.get(k)}  # a key only one of them has differs too
            if differ:
                detail = ", ".join(f"{k}: {a} there vs {b} now" for k, (a, b) in differ.items())
                raise RunMismatch(f"{workdir} holds a run with other settings ({detail}); "
                                  "use another output folder, or delete this one to start over")
            return
    write_json(path, setup, sort_keys=True, default=str)


def _wipe(workdir: Path) -> None:
    """Delete every file of the run but ``setup.json`` (the run is measured again). Never
    through a link: the run folder must not be one, and a link inside it is removed, not followed."""
    not_a_link(workdir, "a run folder")
    for p in workdir.iterdir():
        if p.name == "setup.json":
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)  # rmtree does not follow the links inside
        else:
            p.unlink(missing_ok=True)


def _finished(workdir: Path) -> MeasuredRun | None:
    """The finished run, or None. A result that does not verify is removed (measured again)."""
    done = workdir / "trace.json"
    if not done.exists():
        return None
    try:
        info = read_trace_json(done)
        consistent_status(info, done)
        if info.get("status") == "diverged" and "npz_sha256" not in info:  # diverged, nothing measured
            return MeasuredRun(None, "diverged", info.get("diverged"), workdir)
        trace = load_trace(workdir / "trace.npz")
        load_companions(workdir, trace.meta)
        for kept in ("theta_star.pt", "theta0.pt"):  # the run's products, where they are kept: intact
            if (workdir / kept).exists():
                verify_state(workdir / kept)
    except (BadFile, TraceError, StateDamaged) as exc:
        warnings.warn(f"{workdir}: the finished trace does not verify ({exc}); measuring the run again",
                      RemeasureWarning, stacklevel=3)
        done.unlink(missing_ok=True)
        return None
    return MeasuredRun(trace, trace.meta.get("status", "ok"), trace.meta.get("diverged"), workdir)


def load_companions(workdir: Path, meta: dict) -> dict[str, Trace]:
    """The traces recorded beside the main one (random baseline, earlier and later theta*), each
    checked against the digest the main trace recorded; :class:`TraceError` if one does not match."""
    out = {}
    companions = meta.get("companions") or {}
    if not isinstance(companions, dict):
        raise TraceError(f"{Path(workdir) / 'trace.json'}: 'companions' must be an object, not {type(companions).__name__}")
    for name, c in companions.items():
        try:  # the entry as gpcheck writes it, naming a file of this run's own folder
            path = companion_path(Path(workdir), name, c)
        except (BadFile, PathEscape) as exc:
            raise TraceError(str(exc)) from None
        tr = load_trace(path)
        if sha256_file(path) != c["npz_sha256"]:
            raise TraceError(f"{path}: is not the companion trace the run recorded (sha256 differs)")
        out[name] = tr
    return out


def _drop_progress(workdir: Path) -> None:
    """After the trace is saved: the checkpoints and the partial trace are no longer needed."""
    for e in _ckpt_epochs(workdir):
        remove_state(_ckpt_path(workdir, e))
        fault_point("cleanup")
    (workdir / "pass2_partial.npz").unlink(missing_ok=True)
    shutil.rmtree(workdir / "stars", ignore_errors=True)
    try:
        (workdir / "checkpoints").rmdir()
    except OSError:  # absent, or holds something that is not ours
        pass


def _measure(fresh_model, optimizer_fn, data, loss_fn, setup, workdir: Path, extras: Extras, keep, meta, progress,
             desc):
    p1 = _pass1(fresh_model, optimizer_fn, data, loss_fn, setup, workdir, extras, progress, desc)
    p1b = _extend(fresh_model, optimizer_fn, data, loss_fn, setup, workdir, extras, p1, progress, desc)
    traces = _pass2(fresh_model, optimizer_fn, data, loss_fn, setup, workdir, extras, p1, p1b, keep, progress, desc)
    if traces is None:
        info = {"complete": True, "status": "diverged", "diverged": p1["diverged"], "setup": setup,
                "pass1": p1, **(meta or {})}
        write_json(workdir / "trace.json", info, sort_keys=True, default=str)
        return MeasuredRun(None, "diverged", p1["diverged"], workdir)
    trace = traces.pop("theta*")
    trace.meta.update(meta or {})
    try:
        trace.validate(str(workdir))
    except ValueError as exc:  # e.g. an infinite loss at theta* on some batch
        reason = f"the measured path cannot be judged: {exc}"
        diverged = p1["diverged"] or {"epoch": int(trace.epoch[-1]), "step": len(trace) - 1}
        diverged = {**diverged, "reason": f"{diverged.get('reason', '')}; {reason}".lstrip("; ")}
        write_json(workdir / "trace.json", {"complete": True, "status": "diverged", "diverged": diverged,
                                            "setup": setup, "pass1": p1, **(meta or {})}, sort_keys=True, default=str)
        return MeasuredRun(None, "diverged", diverged, workdir)
    _check_complete(trace, p1["epoch_steps"], workdir)
    companions = {}
    for name, tr in traces.items():  # written before the main trace, whose sidecar lists their digests
        try:
            tr.validate(f"{workdir}: {name}")
        except TraceError as exc:  # e.g. an infinite loss at a random theta*: said, not judged
            companions[name] = {"theta_star": tr.meta["theta_star"], "unjudged": str(exc)}
            continue
        _check_complete(tr, p1["epoch_steps"][:len(np.unique(tr.epoch))], workdir)
        rel = f"companions/{name}"
        npz = tr.save(workdir / rel)
        companions[name] = {"file": f"{rel}.npz", "npz_sha256": sha256_file(npz), "theta_star": tr.meta["theta_star"],
                            "steps": len(tr), "dist0_sq": tr.dist0_sq}
    trace.meta["companions"] = {k: v for k, v in companions.items() if "file" in v}
    trace.meta["companions_unjudged"] = {k: v for k, v in companions.items() if "file" not in v}
    trace.save(workdir / "trace")  # npz, then the sidecar that marks the run finished
    if not keep:
        _drop_progress(workdir)
    return MeasuredRun(trace, trace.meta["status"], trace.meta["diverged"], workdir)


def _check_complete(trace: Trace, lengths: list[int], workdir: Path) -> None:
    """One row per step of pass 1 (epochs of ``lengths`` steps), in order, and the recording
    identity: or no trace is saved."""
    want_epoch = np.repeat(np.arange(len(lengths)), lengths)
    if len(trace) != int(sum(lengths)) or not np.array_equal(trace.epoch, want_epoch) \
            or not np.array_equal(trace.step, np.arange(len(trace))):
        raise RecordingError(f"{workdir}: the recorded trace has {len(trace)} rows, not the {sum(lengths)} steps "
                             "of pass 1 in order; delete the folder and run again")
    ident = recording_identity(trace, IDENTITY_RTOL)
    if not ident.holds:
        raise RecordingError(f"{workdir}: the recorded trace breaks the recording identity (relative residual "
                             f"{ident.max_rel_residual:.3g} at step {ident.worst_step}); it is not saved")


def _newest_checkpoint(workdir: Path, device, env: dict) -> dict | None:
    """The newest intact checkpoint (damaged ones are removed, with a warning), or None."""
    for e in reversed(_ckpt_epochs(workdir)):
        try:
            st = load_state(_ckpt_path(workdir, e), device)
        except StateDamaged as exc:
            warnings.warn(f"{exc}; pass 1 resumes from an earlier checkpoint", RemeasureWarning, stacklevel=4)
            remove_state(_ckpt_path(workdir, e))
            continue
        differ = same_environment(st["env"], env)
        if differ:
            raise EnvironmentMismatch(f"{workdir}: pass 1 started with other settings: "
                                      f"{differ_advice(differ, st['env'], env)}")
        return st
    return None


def _star_path(workdir: Path, epoch: int) -> Path:
    """The iterate that starts ``epoch``: an earlier theta* of the sensitivity check."""
    return workdir / "stars" / f"epoch{epoch:04d}.pt"


def _read_summary(path: Path) -> dict:
    """A pass's summary file (pass1.json, pass1b.json); damaged: :class:`StateDamaged`."""
    try:
        return read_json(path)
    except BadFile as exc:
        raise StateDamaged.from_bad_file(exc) from None


def _from_checkpoint(fresh_model, optimizer_fn, data: DeviceData, setup: dict, path: Path):
    """``(model, flat, optimizer, sampler)`` exactly as pass 1 left them at the checkpoint
    ``path`` (mapped, not read: what is not used, the previous epoch's model, takes no memory)."""
    st = load_state(path, "cpu", mmap=True)
    model = fresh_model()
    flat = flat_model(model)
    model.load_state_dict(st["model"])
    opt = _optimizer(optimizer_fn, model, setup)
    opt.load_state_dict(_copied(st["optimizer"]))  # the optimizer puts its state where pass 1 had it
    _capturable(opt, setup)
    sampler = CyclicSampler(len(data), setup["batch_size"], setup["data_seed"])
    sampler.load_state_dict(st["sampler"])
    del st
    return model, flat, opt, sampler


def _copied(obj):
    """The tensors of ``obj`` (an optimizer state) copied, so that nothing keeps the mapped file alive."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _copied(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copied(v) for v in obj)
    return obj


def _optimizer(optimizer_fn, model: torch.nn.Module, setup: dict) -> torch.optim.Optimizer:
    opt = optimizer_fn(model.parameters())
    _capturable(opt, setup)
    return opt


def _capturable(opt: torch.optim.Optimizer, setup: dict) -> None:
    """With CUDA graphs, an optimizer with a ``capturable`` mode (Adam) uses it (its step count
    lives on the device, so a replayed step counts too), in both passes and after every resume."""
    if setup.get("cuda_graphs"):
        for group in opt.param_groups:
            if "capturable" in group:
                group["capturable"] = True


def flat_model(model: torch.nn.Module) -> FlatParams:
    """Put ``model``'s parameters and their gradients into flat buffers (see
    :mod:`gamma_theory.flat`); both passes train so, and pass 2 reads ``theta_k`` and ``g_k``
    from the buffers without a copy. Training bits are those of the plain layout (checked on the
    CPU for every network of the suites), and pass 2 checks them against pass 1 anyway."""
    fp = FlatParams(model)
    fp.flat_grads()
    return fp


def train_epoch(model, opt, sampler: CyclicSampler, data: DeviceData, loss_fn=F.cross_entropy,
                flat: FlatParams | None = None, graphs: StepGraphs | None = None) -> torch.Tensor:
    """One epoch of plain training, as pass 1 runs it (and every replay of it must): the loss of
    every step, on the device (no host sync). The gradients are zeroed in place (in ``flat``'s
    buffer when given), never set to None: accumulating onto zeros gives the same bits. With
    ``graphs``, the steps are CUDA graph replays where they can be (:mod:`deep.graphs`)."""
    batches = sampler.next_epoch(data.device)
    losses = torch.empty(len(batches), device=data.device)
    model.train()

    def step(idx):
        x, y = data.batch(idx)
        loss = loss_fn(model(x), y)
        if flat is not None:
            flat.zero_grad()
        else:
            opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return (loss.detach(),)

    for i, idx in enumerate(batches):
        (losses[i],) = step(idx) if graphs is None else graphs.run(("train", len(idx)), step, idx)
    return losses


def _pass1(fresh_model, optimizer_fn, data, loss_fn, setup, workdir: Path, extras: Extras, progress, desc) -> dict:
    """Train, checkpoint, save theta* and evaluate it; returns the pass-1 summary (pass1.json).
    The iterates the sensitivity check takes as earlier theta* are saved as they pass."""
    summary_path = workdir / "pass1.json"
    if summary_path.exists():
        return _read_summary(summary_path)
    device = data.device
    model = fresh_model()
    flat = flat_model(model)
    opt = _optimizer(optimizer_fn, model, setup)
    sampler = CyclicSampler(len(data), setup["batch_size"], setup["data_seed"])
    env = environment(device)
    graphs = StepGraphs(device, bool(setup.get("cuda_graphs")))
    epochs, every = setup["epochs"], setup["checkpoint_every"]
    candidates = set(extras.candidate_epochs(epochs))
    st = _newest_checkpoint(workdir, device, env)
    if st is not None:  # resume
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        _capturable(opt, setup)
        sampler.load_state_dict(st["sampler"])
        losses = [t.numpy() for t in st["losses"]]
        start, wall_before, state_prev = int(st["epoch"]), float(st["wall_s"]), st["model_prev"]
        before = list(st.get("invocations") or [])
        del st
    else:
        losses, start, wall_before, before = [], 0, 0.0, []
        state_prev = None  # model state at the start of the previous epoch
        save_state(_copy_state(model), workdir / "theta0.pt")
        save_state(_checkpoint(model, opt, sampler, 0, [], None, 0.0, env), _ckpt_path(workdir, 0))

    diverged = None
    t0, ran = time.perf_counter(), 0

    def invocations(elapsed: float) -> list[dict]:  # the earlier invocations' kept parts, and this one's
        return before + [_invocation(ran, elapsed, graphs)]

    bar = _bar(range(start, epochs), progress, f"{desc} pass 1", start, epochs)
    for epoch in bar:
        state_before = _copy_state(model)
        host = train_epoch(model, opt, sampler, data, loss_fn, flat, graphs).cpu().numpy().astype(np.float64)  # the epoch's sync
        ran += len(host)
        diverged = _divergence(host, model, state_before, epoch, sum(map(len, losses)))
        if diverged:
            # The iterate that starts the diverging epoch may already give an infinite loss, so
            # theta* is the one that started the epoch before: every loss in that epoch was finite.
            if state_prev is not None:
                model.load_state_dict(state_prev)
                losses = losses[:-1]
            else:  # diverged in epoch 0: nothing to measure
                model.load_state_dict(state_before)
            break
        state_prev = state_before
        losses.append(host)
        if epoch + 1 in candidates:
            save_state(_copy_state(model), _star_path(workdir, epoch + 1))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{host.mean():.4g}")
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            # model_prev (the start of this epoch) lets a resumed run fall back exactly as an
            # uninterrupted one would if the next epoch diverges
            elapsed = time.perf_counter() - t0
            save_state(_checkpoint(model, opt, sampler, epoch + 1, losses, state_prev, wall_before + elapsed, env,
                                   invocations(elapsed)), _ckpt_path(workdir, epoch + 1))
    elapsed = time.perf_counter() - t0
    wall, runs = wall_before + elapsed, invocations(elapsed)
    save_state(_copy_state(model), workdir / "theta_star.pt")
    fault_point("pass1.theta_star")
    steps = int(sum(map(len, losses)))
    summary = {
        "epochs": len(losses),
        "steps": steps,
        "epoch_steps": [len(x) for x in losses],
        "wall_s": wall,
        "ms_per_step": 1e3 * wall / steps if steps else None,
        "env": env,
        "step_path": _merged_step_path(runs),  # over every invocation that ran a kept step
        "invocations": runs,
        "diverged": diverged,
        "epoch_mean_loss": [float(x.mean()) for x in losses],
        "theta_star_eval": evaluate(model, data, loss_fn, setup["batch_size"]) if steps else None,
    }
    write_json(summary_path, summary, sort_keys=True, default=str)
    return summary


def _invocation(steps: int, wall_s: float, graphs: StepGraphs) -> dict:
    """What one invocation of a pass ran: its steps, their wall time, and how they ran."""
    return {"steps": steps, "wall_s": wall_s, "step_path": graphs.info()}


def _merged_step_path(runs: list[dict]) -> dict:
    """How the steps of a pass ran over all its invocations (a resumed pass ran in several): the
    counts summed, the paths in order where they differ (``eager, then cuda-graphs``)."""
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


def _checkpoint(model, opt, sampler, epoch: int, losses: list[np.ndarray], model_prev, wall_s: float, env,
                invocations: list[dict] | None = None) -> dict:
    """Everything pass 1 needs to go on from ``epoch`` (tensors, dicts, lists and numbers only),
    and what the invocations so far ran (``invocations``, kept up to this checkpoint)."""
    return {
        "invocations": invocations or [],
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "sampler": sampler.state_dict(),
        "losses": [torch.from_numpy(x) for x in losses],
        "model_prev": model_prev,
        "wall_s": wall_s,
        "env": env,
    }


def _divergence(host_losses, model, state_before: dict, epoch, steps_before) -> dict | None:
    bad = np.flatnonzero(~np.isfinite(host_losses))
    if bad.size:
        return {"epoch": epoch, "step": steps_before + int(bad[0]), "reason": "loss is not finite"}
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return {"epoch": epoch, "step": steps_before + len(host_losses) - 1, "reason": "parameters are not finite"}
    if all(torch.equal(p, state_before[n]) for n, p in model.named_parameters()):
        return {"epoch": epoch, "step": steps_before, "reason": "vanishing gradient: no parameter changed in a whole epoch"}
    return None


def _extend(fresh_model, optimizer_fn, data, loss_fn, setup, workdir: Path, extras: Extras, p1: dict, progress,
            desc) -> dict | None:
    """``star_extend``: train on from theta* for a fraction of the epochs more, and keep the end
    point as a later theta* (pass1b.json). A rerun after a crash trains the extension again from
    pass 1's last checkpoint (same bits); None when there is no extension."""
    more = extras.extend_epochs(setup["epochs"])
    if not more or p1["diverged"] or not p1["steps"]:
        return None
    path = workdir / "pass1b.json"
    if path.exists():
        return _read_summary(path)
    model, flat, opt, sampler = _from_checkpoint(fresh_model, optimizer_fn, data, setup,
                                                 _ckpt_path(workdir, setup["epochs"]))
    model.train()
    graphs = StepGraphs(data.device, bool(setup.get("cuda_graphs")))
    t0, done, why = time.perf_counter(), 0, None
    for epoch in _bar(range(setup["epochs"], setup["epochs"] + more), progress, f"{desc} theta* extended",
                      setup["epochs"], setup["epochs"] + more):
        state_before = _copy_state(model)
        ep = train_epoch(model, opt, sampler, data, loss_fn, flat, graphs)
        why = _divergence(ep.cpu().numpy().astype(np.float64), model, state_before, epoch, 0)
        if why:
            break
        done += 1
    if not why:
        save_state(_copy_state(model), workdir / "theta_star_extended.pt")
    summary = {"epochs": done, "planned_epochs": more, "wall_s": time.perf_counter() - t0,
               "diverged": why, "saved": not why}
    write_json(path, summary, sort_keys=True, default=str)
    return summary


# -- pass 2 --------------------------------------------------------------------------------------
def _save_partial(workdir: Path, rows: np.ndarray, step: np.ndarray, epoch: np.ndarray, verified_epoch: int,
                  wall_s: float, invocations: list[dict] | None = None) -> None:
    """The verified part of pass 2 (the recorder's rows for every theta*) and the epoch it
    reaches, in one atomically written file (with what the invocations so far ran, as JSON text)."""
    buf = io.BytesIO()
    np.savez(buf, rows=rows, step=step, epoch=epoch, verified_epoch=verified_epoch, wall_s=wall_s,
             invocations=np.array(json.dumps(invocations or [], default=str)))
    write_bytes(workdir / "pass2_partial.npz", buf.getvalue())


def _load_partial(workdir: Path, p1: dict, width: int, lr: float, dist0_sq: float):
    """``(rows, step, epoch, verified_epoch, wall_s, invocations)`` of the verified part of pass 2,
    or ``(None, None, None, 0, 0.0, [])``. A file that does not agree with itself and with pass 1 (the
    main theta*'s columns must meet the recording identity) raises :class:`StateDamaged`."""
    path = workdir / "pass2_partial.npz"
    if not path.exists():
        return None, None, None, 0, 0.0, []
    try:
        with np.load(path, allow_pickle=False) as z:
            rows, step, epoch = z["rows"], z["step"], z["epoch"]
            verified, wall = int(z["verified_epoch"]), float(z["wall_s"])
            runs = json.loads(str(z["invocations"])) if "invocations" in z.files else []
            if not isinstance(runs, list):
                raise ValueError("invocations is not a list")
        main = trace_from_rows(rows, step, epoch, 0, lr, dist0_sq)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad CRC, missing member, bad shape: damaged
        raise StateDamaged(path, f"is not readable ({type(exc).__name__}: {exc})") from None
    lengths = p1["epoch_steps"][:verified]
    agrees = (
        0 < verified <= p1["epochs"]
        and rows.ndim == 2 and rows.shape[1] == width
        and np.array_equal(epoch, np.repeat(np.arange(verified), lengths))
        and np.array_equal(step, np.arange(sum(lengths)))
        and recording_identity(main, IDENTITY_RTOL).holds
    )
    if not agrees:
        raise StateDamaged(path, f"does not agree with itself or with pass 1 (claims epoch {verified}, "
                                 f"holds {len(rows)} rows)")
    return rows, step, epoch, verified, wall, runs


#: entries per draw of the random direction (part of its definition: the same seed and chunk
#: give the same direction)
_DIRECTION_CHUNK = 1 << 18


def _directions(layout: FlatLayout, seed: int):
    """The random direction's Gaussian entries, drawn in chunks from a CPU generator seeded with
    ``seed``, slot by slot in the layout's storage order: ``(start, stop, values)`` per chunk."""
    g = torch.Generator().manual_seed(seed)
    for slot in layout.slots:
        for lo in range(0, slot.numel, _DIRECTION_CHUNK):
            hi = min(slot.numel, lo + _DIRECTION_CHUNK)
            yield slot.offset + lo, slot.offset + hi, torch.randn(hi - lo, generator=g, dtype=torch.float64)


def _random_star(layout: FlatLayout, theta0: torch.Tensor, star: torch.Tensor, seed: int,
                 out: torch.Tensor) -> torch.Tensor:
    """Write into ``out`` a point at the distance of ``star`` from ``theta0`` (all three in
    ``layout``), in a direction drawn uniformly on the sphere: a normalized Gaussian over the
    parameters' entries (the gaps of the layout stay zero), from a CPU generator seeded with
    ``seed`` (:func:`_directions`). Computed on the CPU in float64, a chunk at a time (the
    direction is drawn twice, for its norm and for the point, rather than held), and rounded to
    the parameters' dtype, as a model holds it."""
    dist = math.sqrt(float(sq_dist(theta0, star)))
    norm = math.sqrt(sum(float(z.square().sum()) for _, _, z in _directions(layout, seed)))
    scale = dist / norm
    with torch.no_grad():
        for lo, hi, z in _directions(layout, seed):
            t0 = theta0[lo:hi].detach().cpu().double()
            out[lo:hi].copy_((t0 + scale * z).to(out.dtype))
    return out


def _stars(fresh_model, workdir: Path, setup: dict, extras: Extras, p1: dict, p1b: dict | None, device):
    """Every theta* pass 2 records against, in order of decreasing reach: ``(name, model,
    description, until)`` with the real theta* first, the ``(m, size)`` matrix whose rows hold
    their parameters (each model's parameters are views into its row; :mod:`gamma_theory.flat`),
    and each one's squared distance from theta_0."""
    ends = np.cumsum(p1["epoch_steps"])
    plan = [("theta*", workdir / "theta_star.pt", "last iterate" + (" before divergence" if p1["diverged"] else ""),
             None)]
    if extras.random_baseline:
        seed = extras.baseline_seed + setup["seed"]
        plan.append(("random", None, f"random: ||theta_0 - theta*|| from theta_0 in a random direction (seed {seed})",
                     None))
    if p1b and p1b.get("saved"):
        plan.append(("extended", workdir / "theta_star_extended.pt", f"theta* trained {p1b['epochs']} epochs longer",
                     None))
    for e in sorted(extras.candidate_epochs(setup["epochs"]), reverse=True):
        if e < p1["epochs"]:  # else the run diverged before this epoch
            plan.append((f"epoch{e:04d}", _star_path(workdir, e), f"the iterate that starts epoch {e} of {p1['epochs']}",
                         int(ends[e - 1])))
    models = [fresh_model() for _ in plan]
    flats, rows = FlatParams.like(models)
    layout = flats[0].layout
    theta0 = layout.fill(layout.empty(dtype=rows.dtype, device=rows.device), load_state(workdir / "theta0.pt"))
    for j, ((name, path, _, _), m) in enumerate(zip(plan, models)):
        if path is not None:
            m.load_state_dict(load_state(path, device))
        elif name == "random":
            m.load_state_dict(models[0].state_dict())  # its buffers (BN statistics) are theta*'s
            _random_star(layout, theta0, rows[0], extras.baseline_seed + setup["seed"], rows[j])
        m.train()
    dist0_sq = [float(v) for v in sq_dist(theta0, rows)]
    return [(name, m, what, until) for (name, _, what, until), m in zip(plan, models)], rows, dist0_sq


def _pass2(fresh_model, optimizer_fn, data, loss_fn, setup, workdir: Path, extras: Extras, p1: dict,
           p1b: dict | None, keep, progress, desc) -> dict[str, Trace] | None:
    """Replay and record; returns the traces against every theta* (None if there is nothing to
    measure), the real theta*'s under the name ``"theta*"``."""
    epochs = p1["epochs"]
    if epochs == 0:
        return None
    device = data.device
    env = environment(device)
    differ = same_environment(p1["env"], env)
    if differ:
        raise EnvironmentMismatch(f"{workdir}: pass 1 ran with other settings: {differ_advice(differ, p1['env'], env)}")
    stars, star_rows, dist0_sq = _stars(fresh_model, workdir, setup, extras, p1, p1b, device)
    models = [m for _, m, _, _ in stars]

    width = BASE + PER_STAR * len(stars)
    prior, prior_step, prior_epoch, start, wall_before, before = _load_partial(workdir, p1, width, setup["lr"],
                                                                               dist0_sq[0])
    model, flat, opt, sampler = _from_checkpoint(fresh_model, optimizer_fn, data, setup, _ckpt_path(workdir, start))
    rec = PathRecorder(flat, star_rows, setup["lr"], dist0_sq=dist0_sq,
                       first_step=len(prior) if prior is not None else 0, until=[u for _, _, _, u in stars],
                       record_grad=extras.record_grad)

    def all_rows():
        rows, step, epoch = rec.rows()
        if prior is None:
            return rows, step, epoch
        return np.concatenate([prior, rows]), np.concatenate([prior_step, step]), np.concatenate([prior_epoch, epoch])

    graphs = StepGraphs(device, bool(setup.get("cuda_graphs")))

    def replay_step(active: int):
        """Pass 1's step, op for op (as train_epoch), with the forwards at the ``active`` theta*
        on the same batch and the recorder's device half: one function, so one CUDA graph."""
        stars_on = models[:active]

        def step(idx):
            x, y = data.batch(idx)
            loss = loss_fn(model(x), y)
            with torch.no_grad():
                loss_star = [loss_fn(m(x), y) for m in stars_on]
            flat.zero_grad()
            loss.backward()
            if extras.record_grad:
                rec.capture_grad()
            opt.step()
            return (rec.row(loss, loss_star),)
        return step

    step_fns: dict[int, Callable] = {}
    t0, ran = time.perf_counter(), [0]

    def invocations(elapsed: float) -> list[dict]:  # the earlier invocations' kept parts, and this one's
        return before + [_invocation(ran[0], elapsed, graphs)]

    last_verified = start
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(batch_stats_only(m))
        for epoch in _bar(range(start, epochs), progress, f"{desc} pass 2", start, epochs):
            model.train()
            for idx in sampler.next_epoch(device):
                active = rec.n_active()
                if active not in step_fns:
                    step_fns[active] = replay_step(active)
                (row,) = graphs.run(("replay", len(idx), active), step_fns[active], idx)
                rec.push(row.clone() if graphs.requested else row, epoch)  # a graph's row is overwritten
                ran[0] += 1
            rec.flush()
            flat.check()  # nothing moved the parameters out of the buffer the recorder reads
            ck = _ckpt_path(workdir, epoch + 1)
            if ck.exists():
                ok, dev = _params_equal(model, load_state(ck, "cpu", mmap=True)["model"])
                if not ok:
                    raise ReplayMismatch(
                        f"{workdir}: pass 2 left pass 1 at epoch {epoch + 1}: largest parameter deviation "
                        f"{dev:.3e}. The training is not deterministic here (an op without a deterministic "
                        "kernel, or a different device/library"
                        + (", or a CUDA graph replay that differs from the eager step: measure with "
                           "--no-cuda-graphs" if graphs.requested else "")
                        + "); delete the folder to start over."
                    )
                elapsed = time.perf_counter() - t0
                _save_partial(workdir, *all_rows(), epoch + 1, wall_before + elapsed, invocations(elapsed))
                if not keep and last_verified != epoch + 1:
                    remove_state(_ckpt_path(workdir, last_verified))
                last_verified = epoch + 1
    ok, dev = _params_equal(model, models[0])
    if not ok:
        raise ReplayMismatch(f"{workdir}: pass 2 ended {dev:.3e} away from theta* (largest parameter deviation)")
    elapsed = time.perf_counter() - t0
    wall, runs = wall_before + elapsed, invocations(elapsed)
    rows, step, epoch = all_rows()
    traces = {}
    for j, (name, _, what, until) in enumerate(stars):
        traces[name] = trace_from_rows(rows, step, epoch, j, setup["lr"], dist0_sq[j], until, extras.record_grad,
                                       {"theta_star": what})
    trace = traces["theta*"]
    trace.meta.update({
        "status": "diverged" if p1["diverged"] else "ok",
        "diverged": p1["diverged"],
        "setup": setup,
        "steps_per_epoch": math.ceil(setup["n_train"] / setup["batch_size"]),
        "epochs_measured": epochs,
        "theta_star_eval": p1.get("theta_star_eval"),
        "theta_star_extended": p1b,
        "replay_verified": {"checkpoints": "bitwise equal", "final": "bitwise equal to theta*"},
        "env": env,
        "pass1": {k: p1.get(k) for k in ("wall_s", "ms_per_step", "steps", "step_path", "invocations")},
        "pass2": {"wall_s": wall, "ms_per_step": 1e3 * wall / len(trace), "theta_stars": len(stars),
                  "record_grad": extras.record_grad, "flat_params": True, "record_chunk": rec.chunk,
                  "step_path": _merged_step_path(runs), "invocations": runs},
        "num_params": sum(p.numel() for p in models[0].parameters()),
    })
    return traces


def _bar(it, progress: bool, desc: str, start: int, total: int):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, initial=start, total=total, unit="epoch", leave=False, dynamic_ncols=True)
