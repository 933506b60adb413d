"""The two passes of a measured run inside one's own ``lightning.Trainer``: :class:`MeasurePath`.

Run the same script twice (``seed_everything(seed)``, ``Trainer(deterministic=True)``) with
``callbacks=[MeasurePath("runs/mine")]`` (docs/lightning.md):

* **run 1** (the folder holds no finished run 1) trains and saves ``theta0.pt``, at every epoch
  end the sha256 of the parameters' bytes (in parameter order, no gaps), the epoch's per-step
  training losses and the parameters themselves (``epochs/epochNNNN.pt``, to name the largest
  deviation when run 2 leaves the path), and at the end ``theta_star.pt`` (the last iterate);
  ``run1.json`` is written last and marks run 1 finished.
* **run 2** (run 1 is finished) replays the same training and records every column of the trace
  against theta* with :class:`gamma_theory.PathRecorder`: ``loss`` is what ``training_step``
  returned, ``loss_star`` is ``loss_fn(star, batch)`` on the same batch with the random state the
  step at theta_k starts from (taken in ``on_train_batch_start`` under Lightning's ``isolate_rng``,
  so the training's generator is not touched), in ``no_grad``, under the precision plugin's
  context (autocast for ``bf16-mixed``); ``eta_k`` is read from the optimizer before the step
  (a per-step schedule), and the gradient columns read the gradient after Lightning's clipping
  (``g_k`` of :class:`deep.step.Recipe`). theta_0 is checked against run 1's before the first step
  and every epoch end against run 1's digest; the first mismatch raises :class:`ReplayMismatch`
  with the epoch, the first step whose loss differs and the largest parameter deviation. A run 2
  that reproduced run 1 to theta* saves ``trace.npz`` (+ ``trace.json``) with
  :meth:`gamma_theory.Trace.save`, which ``gpcheck check RUN/trace.npz`` reads.

theta*'s forward runs in a deep copy of the module holding theta* (its parameters a row of the
matrix the recorder reads, BatchNorm on batch statistics with its running statistics untouched),
not by copying theta* into the training module and back: that would cost two parameter copies a
step and touch the training module (its buffers, hooks, autograd version counters) in the middle
of its step; the copy costs one more set of parameters, as :func:`deep.measure.measure` holds.

The training module's parameters and gradients are re-homed into flat buffers
(:func:`deep.step.flat_model`) at the start of training, as ``measure()`` trains (same bits as the
plain layout; the recorder reads theta_k and g_k in place). Lightning sets the gradients to None
before every backward (``zero_grad(set_to_none=True)``); the callback gives them back their views
of the zeroed flat buffer in ``on_before_backward``, so backward accumulates onto zeros, as
``measure()``'s step does (the same values).

Batches: :func:`cyclic_loader` is a ``DataLoader`` whose batch sampler (:class:`CyclicBatchSampler`)
yields exactly :class:`deep.data.CyclicSampler`'s batches, with a generator of its own (a
``DataLoader`` otherwise draws a seed from torch's global generator every epoch, which moves the
dropout masks). With it, the model, data, loss, optimizer and schedule of a ``measure()`` run give
the same trace, bit for bit (``tests/test_lightning.py``).

Refused with a message: resuming a fit (``fit(ckpt_path=...)``: Lightning's resume does not
reproduce the weights bitwise, its issue 17543; the callback does not resume either: run the fit
again from the start), manual optimization, several optimizers, ``accumulate_grad_batches`` other
than 1, a scheduler that does not step every step, deterministic algorithms off, and an
unfinished run 1 (delete the folder).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import lightning
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities.seed import isolate_rng
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("deep.lightning needs Lightning: pip install 'gpcheck[lightning]'") from exc

from gamma_theory import PathRecorder, recording_identity
from gamma_theory.files import read_json, write_json
from gamma_theory.flat import FlatParams, sq_dist
from gamma_theory.recorder import lr_of

from .data import CyclicSampler
from .env import environment
from .errors import RecordingError, ReplayMismatch, RunMismatch
from .fingerprint import plain_value, qualname, sha_text, differences
from .folder import IDENTITY_RTOL
from .losses import Loss, as_loss, outputs
from .state import load_state, save_state
from .step import batch_stats_only, flat_model

DEFAULT_LOSS = outputs(F.cross_entropy, "F.cross_entropy")


# -- batches -----------------------------------------------------------------------------------
class CyclicBatchSampler(torch.utils.data.Sampler):
    """A batch sampler yielding :class:`deep.data.CyclicSampler`'s batches (lists of indices):
    every ``iter()`` is the next epoch, a fresh seeded permutation of ``range(n)`` cut into
    batches of ``batch_size`` (the last one smaller), exactly the batches ``measure()`` takes."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        self.cyclic = CyclicSampler(n, batch_size, seed)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return self.cyclic.batches_per_epoch

    def __iter__(self):
        for idx in self.cyclic.next_epoch():
            yield idx.tolist()


class DataBatches(torch.utils.data.Dataset):
    """A :mod:`deep.tensordata` data object as a map-style dataset that gathers whole batches
    (``__getitems__``: ``data.batch(idx)``, the batch ``measure()`` gives the loss)."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return self.data.batch(torch.tensor([int(i)]))

    def __getitems__(self, idx):
        return self.data.batch(torch.as_tensor(idx, dtype=torch.int64))


def _as_is(batch):
    return batch


def cyclic_loader(data, batch_size: int, seed: int = 0) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``data`` (a :mod:`deep.tensordata` data object, e.g. ``TensorData``)
    with ``measure()``'s batches (``data_seed=seed``), in the main process, and a generator of its
    own, so that making its iterator every epoch does not draw from torch's global generator."""
    from .tensordata import as_data

    data = as_data(data)
    return torch.utils.data.DataLoader(DataBatches(data), batch_sampler=CyclicBatchSampler(len(data), batch_size, seed),
                                       collate_fn=_as_is, num_workers=0,
                                       generator=torch.Generator().manual_seed(int(seed)))


# -- helpers -----------------------------------------------------------------------------------
def params_digest(params) -> str:
    """sha256 of the parameters' bytes in order, no gaps (as float32 on the host)."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().to("cpu").contiguous().reshape(-1).numpy().tobytes())
    return h.hexdigest()


def _largest_deviation(params, ref: dict, names) -> float:
    return max(float((p.detach().double().cpu() - ref[n].double()).abs().max()) if p.numel() else 0.0
               for n, p in zip(names, params))


class MeasurePath(Callback):
    """Measure a Lightning training exactly, in two runs of the same script (module docstring).

    ``run_dir``: the run's folder. ``loss_fn(module, batch) -> scalar``: the loss theta* is judged
    with, the one ``training_step`` returns (default ``outputs(F.cross_entropy)`` for batches
    ``(x, y)``; checked at the first step of run 2: from the step's random state it must give
    ``training_step``'s loss at theta_0 bit for bit). ``record_grad``: also the gradient columns.
    ``snapshots``: run 1 keeps every epoch's parameters (for the largest deviation of a mismatch;
    without them the message names the step only). After run 2, ``self.trace`` is the trace."""

    def __init__(self, run_dir, loss_fn=None, record_grad: bool = True, snapshots: bool = True):
        self.dir = Path(run_dir)
        self.loss_fn: Loss = as_loss(loss_fn) if loss_fn is not None else DEFAULT_LOSS
        self.record_grad = bool(record_grad)
        self.snapshots = bool(snapshots)
        self.mode: str | None = None  # "record" (run 1) or "replay" (run 2)
        self.trace = None

    @property
    def run1_json(self) -> Path:
        return self.dir / "run1.json"

    def _epoch_file(self, epoch: int) -> Path:
        return self.dir / "epochs" / f"epoch{epoch:04d}.pt"

    def _setup(self, trainer, module) -> dict:
        """What run 2 must share with run 1 (compared key by key)."""
        opt = trainer.optimizers[0]
        groups = [{k: plain_value(v) for k, v in sorted(g.items()) if k != "params"} | {"num_params": len(g["params"])}
                  for g in opt.param_groups]
        scheds = [{"class": qualname(c.scheduler), "interval": c.interval, "frequency": c.frequency}
                  for c in trainer.lr_scheduler_configs]
        params = [(n, tuple(p.shape), str(p.dtype)) for n, p in module.named_parameters()]
        return {
            "lightning": lightning.__version__,
            "torch": str(torch.__version__),
            "module": {"class": qualname(module), "structure_sha256": sha_text(repr(module)),
                       "parameters_sha256": sha_text(repr(params)),
                       "num_params": int(sum(p.numel() for p in module.parameters()))},
            "optimizer": {"class": qualname(opt), "param_groups": groups},
            "schedulers": scheds,
            "loss": self.loss_fn.name,
            "max_epochs": trainer.max_epochs,
            "steps_per_epoch": int(trainer.num_training_batches),
            "precision": str(trainer.precision),
            "gradient_clip_val": trainer.gradient_clip_val,
            "gradient_clip_algorithm": str(trainer.gradient_clip_algorithm) if trainer.gradient_clip_val else None,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "num_threads": torch.get_num_threads(),
        }

    def _refuse_resume(self, ckpt) -> None:
        raise RuntimeError(f"MeasurePath({self.dir}): a resumed fit (ckpt_path={ckpt}) cannot be measured: "
                           "Lightning's resume does not reproduce the weights bit for bit (its issue 17543) and "
                           "this callback does not resume; run the fit again from the start")

    def on_load_checkpoint(self, trainer, module, checkpoint) -> None:
        self._refuse_resume(trainer.ckpt_path)  # Lightning restores before on_fit_start

    def on_fit_start(self, trainer, module) -> None:
        where = f"MeasurePath({self.dir})"
        if trainer.ckpt_path is not None:
            self._refuse_resume(trainer.ckpt_path)
        if not module.automatic_optimization:
            raise RuntimeError(f"{where}: manual optimization is not supported (the callback reads the step "
                               "through Lightning's automatic optimization hooks)")
        if len(trainer.optimizers) != 1:
            raise RuntimeError(f"{where}: one optimizer, got {len(trainer.optimizers)}")
        if trainer.accumulate_grad_batches != 1:
            raise RuntimeError(f"{where}: accumulate_grad_batches={trainer.accumulate_grad_batches}: one optimizer "
                               "step per batch is supported (the trace has one row per step)")
        if any(c.interval != "step" or c.frequency != 1 for c in trainer.lr_scheduler_configs):
            raise RuntimeError(f"{where}: a learning-rate scheduler must step every step (lr_scheduler interval "
                               "'step', frequency 1)")
        if not torch.are_deterministic_algorithms_enabled():
            raise RuntimeError(f"{where}: the training must be deterministic: Trainer(deterministic=True)")

    def on_train_start(self, trainer, module) -> None:
        opt = trainer.optimizers[0]
        if any(opt.state.get(p) for p in module.parameters()):
            raise RuntimeError(f"MeasurePath({self.dir}): the optimizer already has a state; measure a fit from "
                               "the start")
        self.device = next(module.parameters()).device
        setup = self._setup(trainer, module)
        self.names = [n for n, _ in module.named_parameters()]
        self.flat = flat_model(module)  # parameters and gradients in flat buffers, as measure() trains
        self._grad_views = [self.flat.layout.view(self.flat.grad, s) for s in self.flat.layout.slots]
        self.epoch_losses: list[torch.Tensor] = []
        self.step = 0
        group = opt.param_groups[0]
        self.lr = float(group.get("initial_lr", group["lr"]))  # the base rate (a scheduler keeps it there)
        self.scheduled = bool(trainer.lr_scheduler_configs)
        self.setup = setup
        if self.run1_json.exists():
            self.mode = "replay"
            self.run1 = read_json(self.run1_json)
            why = differences(self.run1["setup"], setup)
            if why:
                raise RunMismatch(f"{self.dir} holds run 1 of another training: " + "; ".join(why[:3]))
            if params_digest(module.parameters()) != self.run1["theta0_sha256"]:
                dev = _largest_deviation(list(module.parameters()), load_state(self.dir / "theta0.pt"), self.names)
                raise ReplayMismatch(f"{self.dir}: run 2 left run 1 before epoch 0 step 0: theta_0 differs (largest "
                                     f"parameter deviation {dev:.3e}); run 2 must be the same script with the same "
                                     "seed_everything")
            self._start_replay(module)
        else:
            if (self.dir / "theta0.pt").exists():
                raise RuntimeError(f"{self.dir} holds an unfinished run 1 (no run1.json): the callback does not "
                                   "resume; delete the folder and run again")
            self.mode = "record"
            self.dir.mkdir(parents=True, exist_ok=True)
            save_state({n: p.detach().cpu().clone() for n, p in module.named_parameters()}, self.dir / "theta0.pt")
            self.digests: list[dict] = []
            self.theta0_sha = params_digest(module.parameters())

    def _start_replay(self, module) -> None:
        star_state = load_state(self.dir / "theta_star.pt", self.device)
        saved, module._trainer = module._trainer, None  # the copy holds no trainer
        try:
            star = copy.deepcopy(module)
        finally:
            module._trainer = saved
        for p in star.parameters():
            p.requires_grad_(False)
            p.grad = None
        [fp], rows = FlatParams.like([star])
        fp.layout.fill(rows[0], star_state)
        theta0 = fp.layout.fill(fp.layout.empty(dtype=rows.dtype, device=rows.device),
                                {n: p.detach() for n, p in module.named_parameters()})
        dist0_sq = [float(v) for v in sq_dist(theta0, rows)]  # as deep.stars.load_stars computes it
        star.train()
        self.star, self._star_ctx = star, batch_stats_only(star)
        self._star_ctx.__enter__()
        self.rec = PathRecorder(self.flat, rows, self.lr, dist0_sq=dist0_sq, record_grad=self.record_grad)
        self.env = environment(self.device)
        self.random_step = False

    # -- every step --
    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.mode != "replay":
            return
        cuda = self.device.type == "cuda"
        self._rng_before = torch.get_rng_state()
        with torch.no_grad(), trainer.precision_plugin.train_step_context():
            with isolate_rng(include_cuda=cuda):  # the step's random state, put back after
                self._star_loss = self.loss_fn(self.star, batch)
            if self.step == 0:  # loss_fn must be the loss training_step returns, from the same state
                with isolate_rng(include_cuda=cuda):
                    self._check_loss = self.loss_fn(module, batch)
        self._eta = lr_of(trainer.optimizers[0]) if self.scheduled else None  # eta_k, before the step

    def on_before_backward(self, trainer, module, loss) -> None:
        self.flat.grad.zero_()  # Lightning set the gradients to None: accumulate onto zeros, as measure() does
        for p, v in zip(self.flat.params, self._grad_views):
            p.grad = v

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if self.mode == "replay" and self.record_grad:
            self.rec.capture_grad()  # the flat buffer, read after the step: the clipped gradient

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        self.epoch_losses.append(loss)
        if self.mode == "replay":
            if self.step == 0:
                if not torch.equal(self._check_loss.to(loss.dtype), loss):
                    raise ValueError(f"MeasurePath({self.dir}): loss_fn {self.loss_fn.name}(module, batch) gives "
                                     f"{float(self._check_loss)!r} at theta_0 but training_step returned "
                                     f"{float(loss)!r}: give MeasurePath(loss_fn=...) the loss training_step computes")
                self.random_step = not torch.equal(self._rng_before, torch.get_rng_state())
            self.rec.push(self.rec.row(loss, self._star_loss, self._eta), trainer.current_epoch, self._eta)
        self.step += 1

    # -- every epoch --
    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch
        losses = torch.stack(self.epoch_losses).double().cpu().numpy() if self.epoch_losses else np.zeros(0)
        self.epoch_losses = []
        self.flat.check()
        digest = params_digest(self.flat.params)
        if self.mode == "record":
            if self.snapshots:
                save_state({n: p.detach().cpu().clone() for n, p in zip(self.names, self.flat.params)},
                           self._epoch_file(epoch + 1))
            self.digests.append({"epoch": epoch, "steps": int(self.step), "sha256": digest,
                                 "losses": [float(x) for x in losses]})
            return
        self.rec.flush()
        want = self.run1["epochs"][epoch] if epoch < len(self.run1["epochs"]) else None
        if want is None or digest != want["sha256"]:
            ref = np.asarray(want["losses"] if want else [])
            first = self.step - len(losses)
            off = [i for i in range(len(losses)) if i >= len(ref) or losses[i] != ref[i]]
            where = (f"step {first + off[0]} (its loss {losses[off[0]]!r} vs run 1's "
                     f"{ref[off[0]] if off[0] < len(ref) else 'none'})" if off else
                     f"after step {self.step - 1} (every loss of the epoch agreed)")
            snap = self._epoch_file(epoch + 1)
            dev = (f"largest parameter deviation {_largest_deviation(self.flat.params, load_state(snap), self.names):.3e}"
                   if snap.exists() else "run 1 kept no parameters of this epoch")
            raise ReplayMismatch(f"{self.dir}: run 2 left run 1 in epoch {epoch}, first at {where}; {dev}. The "
                                 "training is not reproducible here (another seed, data order, an op without a "
                                 "deterministic kernel, another device or library)")

    def on_train_end(self, trainer, module) -> None:
        if self.mode == "record":
            save_state({n: p.detach().cpu().clone() for n, p in zip(self.names, self.flat.params)},
                       self.dir / "theta_star.pt")
            write_json(self.run1_json, {"setup": self.setup, "theta0_sha256": self.theta0_sha, "epochs": self.digests,
                                        "steps": int(self.step), "env": environment(self.device)})
            return
        if self.mode != "replay":
            return
        self._star_ctx.__exit__(None, None, None)
        if self.step != self.run1["steps"] or params_digest(self.flat.params) != self.run1["epochs"][-1]["sha256"]:
            raise ReplayMismatch(f"{self.dir}: run 2 took {self.step} steps, run 1 {self.run1['steps']}, or did not "
                                 "end at theta*; the trace is not saved")
        meta = {
            "status": "ok", "diverged": None, "recorded_by": "deep.lightning.MeasurePath",
            "lightning": lightning.__version__, "setup": self.setup, "env": self.env,
            "steps_per_epoch": self.setup["steps_per_epoch"], "epochs_measured": len(self.run1["epochs"]),
            "replay_verified": {"theta0": "bitwise equal", "epochs": "digests bitwise equal at every epoch end",
                                "final": "bitwise equal to theta*"},
            "loss_star": "loss_fn(theta*, batch) in no_grad with the random state of the step at theta_k "
                         "(isolate_rng), under the precision plugin's context",
            "num_params": self.setup["module"]["num_params"],
        }
        if self.random_step:
            meta["random_step"] = {
                "replayed": "bitwise (checked by the epoch digests)",
                "theta_star": "each theta*'s loss on step k is taken with the random state of the step at theta_k (the "
                              "same dropout masks: the sample z_k includes them); it does not advance the training's "
                              "generator"}
        trace = self.rec.trace(0, meta)
        trace.validate(str(self.dir))
        ident = recording_identity(trace, IDENTITY_RTOL)
        if not ident.holds:
            raise RecordingError(f"{self.dir}: the recorded trace breaks the recording identity (relative residual "
                                 f"{ident.max_rel_residual:.3g} at step {ident.worst_step}); it is not saved")
        trace.save(self.dir / "trace")
        self.trace = trace


__all__ = ["CyclicBatchSampler", "DataBatches", "MeasurePath", "cyclic_loader", "params_digest"]
