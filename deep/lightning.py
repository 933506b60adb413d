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

Resuming: at the end of every epoch (``checkpoint_every``; not after the last) the callback writes
its own checkpoint with ``trainer.save_checkpoint`` (to a temporary name, then ``os.replace``):
``RUN/checkpoints/run1-last.ckpt`` in run 1, ``run2-last.ckpt`` in run 2, only the latest, removed
when the run finishes. Lightning saves the weights, optimizer, schedulers and loop progress; the
callback's part (:meth:`MeasurePath.state_dict`, only in its own checkpoints) holds what Lightning
does not restore: torch's CPU generator (and the device's on CUDA), numpy's and Python's
``random`` states, the :class:`CyclicBatchSampler`'s generator and epoch count, the callback's
counters (step, run 1's digests, run 2's ``random_step``), the mode, the parameters' sha256 at
that epoch end and, in run 2, the trace's rows so far. After a crash, run the same script with
``trainer.fit(module, loader, ckpt_path=cb.resume_path())`` (None when there is nothing to resume:
a fresh start). The checkpoint is verified before training continues: written by this callback
for this folder's run (theta_0's digest, run 1's theta*'s) and mode, the same setup (one line
naming the difference), Lightning resuming at the next epoch with the global step saved, and the
parameters Lightning restored having exactly the recorded digest; then the random states,
sampler, counters and partial trace are put back. A resumed run 2 still checks every later epoch
against run 1's digests. The random states are put back in ``on_load_checkpoint``, before
Lightning makes the epoch's ``DataLoader`` iterator (which draws its base seed from torch's
generator when the loader has none of its own), as in the uninterrupted fit.

Refused with a message: a checkpoint that is not MeasurePath's (``fit(ckpt_path=...)`` with a
``ModelCheckpoint``'s file: Lightning's resume does not reproduce the weights bitwise, its issue
17543), a resume whose train loader's batch sampler is not a :class:`CyclicBatchSampler` or that
uses worker processes (their seeds are drawn before the callback can restore the loader's
generator), manual optimization, several optimizers, ``accumulate_grad_batches`` other than 1, a
scheduler that does not step every step, deterministic algorithms off, and an unfinished run 1
started again without ``ckpt_path`` (resume it or delete the folder).
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
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
from gamma_theory.files import fsync_dir, read_json, tmp_path, write_json
from gamma_theory.flat import FlatParams, sq_dist
from gamma_theory.recorder import lr_of, trace_from_rows

from .data import CyclicSampler
from .env import environment
from .errors import RecordingError, ReplayMismatch, RunMismatch
from .fingerprint import plain_value, qualname, sha_text, differences
from .folder import IDENTITY_RTOL
from .losses import Loss, as_loss, outputs
from .state import load_state, save_state
from .step import batch_stats_only, flat_model, rng_state, set_rng_state

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


#: what MeasurePath's part of a Lightning checkpoint is marked with, and its layout's version
WRITTEN_BY, CHECKPOINT_FORMAT = "deep.lightning.MeasurePath", 2  # 2: torch's states as deep.step.rng_state writes them


def _rng_states(device: torch.device) -> dict:
    """torch's generators (:func:`deep.step.rng_state`: the CPU's, and ``device``'s on CUDA), and
    numpy's and Python's ``random`` states (Lightning's ``seed_everything`` seeds them too), in types
    ``torch.load(weights_only=True)`` reads back (Lightning loads checkpoints so)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {"torch": rng_state(device),
            "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": int(version), "state": [int(x) for x in state], "gauss": gauss}}


def _set_rng_states(states: dict, device: torch.device) -> None:
    set_rng_state(states["torch"], device)
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


class MeasurePath(Callback):
    """Measure a Lightning training exactly, in two runs of the same script (module docstring).

    ``run_dir``: the run's folder. ``loss_fn(module, batch) -> scalar``: the loss theta* is judged
    with, the one ``training_step`` returns (default ``outputs(F.cross_entropy)`` for batches
    ``(x, y)``; checked at the first step of run 2: from the step's random state it must give
    ``training_step``'s loss at theta_0 bit for bit). ``record_grad``: also the gradient columns.
    ``snapshots``: run 1 keeps every epoch's parameters (for the largest deviation of a mismatch;
    without them the message names the step only). ``checkpoint_every``: write the callback's
    checkpoint every this many epochs (0: never; only with a :class:`CyclicBatchSampler` loader);
    resume with ``trainer.fit(..., ckpt_path=cb.resume_path())``. After run 2, ``self.trace`` is
    the trace."""

    def __init__(self, run_dir, loss_fn=None, record_grad: bool = True, snapshots: bool = True,
                 checkpoint_every: int = 1):
        self.dir = Path(run_dir)
        self.loss_fn: Loss = as_loss(loss_fn) if loss_fn is not None else DEFAULT_LOSS
        self.record_grad = bool(record_grad)
        self.snapshots = bool(snapshots)
        if int(checkpoint_every) < 0:
            raise ValueError(f"checkpoint_every must be 0 (no checkpoints) or a number of epochs, got {checkpoint_every}")
        self.checkpoint_every = int(checkpoint_every)
        self.mode: str | None = None  # "record" (run 1) or "replay" (run 2)
        self.trace = None
        self._saving: dict | None = None  # the callback's part of the checkpoint being written
        self._resume: dict | None = None  # the callback's part of the checkpoint the fit resumes from
        self._prior = None  # run 2 resumed: the rows recorded before the checkpoint

    @property
    def where(self) -> str:
        return f"MeasurePath({self.dir})"

    @property
    def run1_json(self) -> Path:
        return self.dir / "run1.json"

    def _epoch_file(self, epoch: int) -> Path:
        return self.dir / "epochs" / f"epoch{epoch:04d}.pt"

    def checkpoint_path(self, mode: str) -> Path:
        """Where the callback keeps its latest checkpoint of run 1 (``mode="record"``) or run 2."""
        return self.dir / "checkpoints" / ("run1-last.ckpt" if mode == "record" else "run2-last.ckpt")

    def _folder_mode(self) -> str:
        return "replay" if self.run1_json.exists() else "record"

    def resume_path(self) -> str | None:
        """The checkpoint to resume this folder's unfinished run from (run 2's when run 1 is
        finished, else run 1's), for ``trainer.fit(..., ckpt_path=cb.resume_path())``; None when
        there is none (a fresh start). It was written at an epoch end that had passed the run's
        checks, atomically; loading it verifies it (setup, folder, parameters' digest)."""
        path = self.checkpoint_path(self._folder_mode())
        return str(path) if path.exists() else None

    def _setup(self, trainer, module) -> dict:
        """What run 2 must share with run 1 (compared key by key)."""
        opt = trainer.optimizers[0]
        scheds = [{"class": qualname(c.scheduler), "interval": c.interval, "frequency": c.frequency}
                  for c in trainer.lr_scheduler_configs]
        params = [(n, tuple(p.shape), str(p.dtype)) for n, p in module.named_parameters()]
        return {
            "lightning": lightning.__version__,
            "torch": str(torch.__version__),
            "module": {"class": qualname(module), "structure_sha256": sha_text(repr(module)),
                       "parameters_sha256": sha_text(repr(params)),
                       "num_params": int(sum(p.numel() for p in module.parameters()))},
            "optimizer": {"class": qualname(opt), "param_groups": self._groups},
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

    # -- checkpoints -----------------------------------------------------------------------------
    def _refuse_foreign(self, ckpt) -> None:
        raise RuntimeError(f"{self.where}: ckpt_path={ckpt} is not a checkpoint of MeasurePath (a ModelCheckpoint's "
                           "or another one): Lightning's own resume does not reproduce the weights bit for bit (its "
                           "issue 17543); resume with trainer.fit(..., ckpt_path=cb.resume_path()) (the callback's "
                           f"own checkpoints, {self.dir / 'checkpoints'}), or run the fit from the start")

    def state_dict(self) -> dict:
        """The callback's part of its own checkpoints (empty in any other: a ``ModelCheckpoint``'s
        file does not carry it, so it cannot be resumed from)."""
        return dict(self._saving) if self._saving is not None else {}

    def on_load_checkpoint(self, trainer, module, checkpoint) -> None:
        """Lightning restored the module's weights (not yet the optimizer): take the callback's
        part, check whose it is, and put the random states back now, before Lightning makes the
        first epoch's ``DataLoader`` iterator (it may draw from torch's generator)."""
        if trainer.state.fn != "fit":
            return
        ckpt = trainer.ckpt_path
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if not isinstance(state, dict) or state.get("written_by") != WRITTEN_BY:
            self._refuse_foreign(ckpt)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RuntimeError(f"{self.where}: {ckpt} is a MeasurePath checkpoint of format {state.get('format')}, "
                               f"this version reads {CHECKPOINT_FORMAT}; run the fit from the start")
        mode, want = state["mode"], self._folder_mode()
        if mode != want:
            why = ("run 1 is finished (run1.json)" if want == "replay" else "the folder holds no finished run 1")
            raise RuntimeError(f"{self.where}: {ckpt} is a checkpoint of run {1 if mode == 'record' else 2} but "
                               f"{why}; resume with ckpt_path=cb.resume_path() (None: start the fit without ckpt_path)")
        if mode == "replay":
            run1 = read_json(self.run1_json)
            ours = (run1["theta0_sha256"], run1["epochs"][-1]["sha256"])
            theirs = (state["theta0_sha256"], state["theta_star_sha256"])
        else:
            theta0 = self.dir / "theta0.pt"
            saved = load_state(theta0) if theta0.exists() else None
            ours = (params_digest(saved[n] for n, _ in module.named_parameters()) if saved else None,)
            theirs = (state["theta0_sha256"],)
        if ours != theirs:
            raise RuntimeError(f"{self.where}: {ckpt} was written for another run than this folder's (its theta_0 "
                               "or theta* digest differs); resume with ckpt_path=cb.resume_path() or run the fit "
                               "from the start")
        _set_rng_states(state["rng"], trainer.strategy.root_device)
        self._resume = state

    def _check_resume(self, trainer, module, state: dict, setup: dict) -> None:
        """Before the resumed fit's first step: the same setup, Lightning at the next epoch with
        the saved step count, and the parameters it restored bit for bit those the checkpoint
        recorded."""
        ckpt = trainer.ckpt_path
        if trainer.max_steps != -1:  # Lightning then restarts inside the saved epoch (FitLoop.restarting)
            raise RuntimeError(f"{self.where}: a fit with Trainer(max_steps={trainer.max_steps}) does not resume at the "
                               "next epoch (Lightning restarts it inside the saved one, replaying a batch and "
                               "miscounting epochs); resume with max_steps=-1 (max_epochs only) or run the fit from "
                               "the start")
        why = differences(state["setup"], setup)
        if why:
            raise RunMismatch(f"{self.where}: {ckpt} is a checkpoint of another training: " + "; ".join(why[:3])
                              + "; resume with the same script and Trainer, or run the fit from the start")
        epoch, steps = int(state["epoch"]), int(state["steps"])
        if trainer.current_epoch != epoch + 1 or trainer.global_step != steps:
            raise RuntimeError(f"{self.where}: Lightning resumed {ckpt} at epoch {trainer.current_epoch}, global step "
                               f"{trainer.global_step}, but it was written after epoch {epoch}, step {steps}: the fit "
                               "would replay or skip steps; run the fit from the start")
        digest = params_digest(module.parameters())
        if digest != state["sha256"]:
            raise RuntimeError(f"{self.where}: the parameters restored from {ckpt} have sha256 {digest[:12]}..., "
                               f"the checkpoint recorded {state['sha256'][:12]}... after epoch {epoch}: the digest "
                               "does not match (the file was changed); delete it and run the fit from the start")
        if self.sampler is None:
            raise RuntimeError(f"{self.where}: a resumed fit needs the train loader's batch sampler to be a "
                               "deep.lightning.CyclicBatchSampler (its data order is saved in the checkpoint); use "
                               "cyclic_loader(...) or run the fit from the start")
        if self._loader.num_workers:
            raise RuntimeError(f"{self.where}: a resumed fit needs a train loader without worker processes "
                               f"(num_workers={self._loader.num_workers}: their seeds are drawn before the callback "
                               "can restore the loader's generator); use num_workers=0 or run the fit from the start")
        if self.sampler.cyclic.epoch != 0:
            raise RuntimeError(f"{self.where}: the train loader drew {self.sampler.cyclic.epoch} epochs of batches "
                               "before the resumed fit's first step; its state cannot be restored")

    def _write_checkpoint(self, trainer, epoch: int, digest: str) -> None:
        """The callback's checkpoint after ``epoch`` (every ``checkpoint_every`` epochs, not after
        the last: the run finishes there), atomically, replacing the previous one."""
        every = self.checkpoint_every
        if not every or self.sampler is None or self._loader.num_workers or (epoch + 1) % every:
            return
        if trainer.max_epochs is not None and trainer.max_epochs >= 0 and epoch + 1 >= trainer.max_epochs:
            return
        state = {"written_by": WRITTEN_BY, "format": CHECKPOINT_FORMAT, "mode": self.mode, "epoch": int(epoch),
                 "steps": int(self.step), "sha256": digest, "setup": self.setup, "theta0_sha256": self.theta0_sha,
                 "rng": _rng_states(self.device), "sampler": self.sampler.cyclic.state_dict(),
                 "resumed_after_epochs": list(self.resumed)}
        if self.mode == "record":
            state["digests"] = self.digests
        else:
            rows, _, epochs, eta = self._all_rows()
            state.update({"theta_star_sha256": self.run1["epochs"][-1]["sha256"], "random_step": self.random_step,
                          "dist0_sq": list(self.rec.dist0_sq), "env": self.env, "rows": torch.from_numpy(rows),
                          "row_epochs": torch.from_numpy(epochs), "etas": torch.from_numpy(eta)})
        path = self.checkpoint_path(self.mode)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_path(path)
        self._saving = state
        try:
            trainer.save_checkpoint(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            self._saving = None
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def _find_sampler(self, trainer) -> None:
        """The train loader and its :class:`CyclicBatchSampler` (None: another loader)."""
        from lightning.pytorch.utilities import CombinedLoader

        loaders = CombinedLoader(trainer.train_dataloader).flattened
        self._loader = loaders[0] if len(loaders) == 1 else None
        sampler = getattr(self._loader, "batch_sampler", None)
        self.sampler = sampler if isinstance(sampler, CyclicBatchSampler) else None

    def on_fit_start(self, trainer, module) -> None:
        where = self.where
        if trainer.ckpt_path is None:
            self._resume = None  # a state left by a fit that failed before its first step
        elif self._resume is None:
            raise RuntimeError(f"{where}: ckpt_path={trainer.ckpt_path} restored no MeasurePath state (a checkpoint "
                               "without callback states, or a strategy that restores after setup): Lightning's own "
                               "resume does not reproduce the weights bit for bit (its issue 17543); resume with "
                               "ckpt_path=cb.resume_path() on one device, or run the fit from the start")
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
        # the optimizer as configure_optimizers made it: a resumed fit restores its state (and the
        # scheduled rate) only after this hook
        opt = trainer.optimizers[0]
        self._groups = [{k: plain_value(v) for k, v in sorted(g.items()) if k != "params"}
                        | {"num_params": len(g["params"])} for g in opt.param_groups]
        group = opt.param_groups[0]
        self.lr = float(group.get("initial_lr", group["lr"]))  # the base rate (a scheduler keeps it there)

    def on_train_start(self, trainer, module) -> None:
        opt = trainer.optimizers[0]
        resume, self._resume = self._resume, None
        if resume is None and any(opt.state.get(p) for p in module.parameters()):
            raise RuntimeError(f"{self.where}: the optimizer already has a state; measure a fit from the start (or "
                               "resume one with ckpt_path=cb.resume_path())")
        self.device = next(module.parameters()).device
        setup = self._setup(trainer, module)
        self.names = [n for n, _ in module.named_parameters()]
        self._find_sampler(trainer)
        if resume is not None:
            self._check_resume(trainer, module, resume, setup)
        params = list(module.parameters())
        self.flat = flat_model(module)  # parameters and gradients in flat buffers, as measure() trains
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        if any(a is not b for a, b in zip(params, self.flat.params)) or any(id(p) not in held for p in params):
            raise RuntimeError(f"{self.where}: the optimizer does not hold the module's parameters (its state would "
                               "not follow them into the flat buffers)")
        self._grad_views = [self.flat.layout.view(self.flat.grad, s) for s in self.flat.layout.slots]
        self.epoch_losses: list[torch.Tensor] = []
        self.step = 0
        self.scheduled = bool(trainer.lr_scheduler_configs)
        self.setup = setup
        self.resumed: list[int] = []
        self._prior = None
        if resume is not None:
            self.step = int(resume["steps"])
            self.resumed = [int(e) for e in resume["resumed_after_epochs"]] + [int(resume["epoch"])]
            self.theta0_sha = resume["theta0_sha256"]
            self.sampler.cyclic.load_state_dict(resume["sampler"])
        if self.run1_json.exists():
            self.mode = "replay"
            self.run1 = read_json(self.run1_json)
            why = differences(self.run1["setup"], setup)
            if why:
                raise RunMismatch(f"{self.dir} holds run 1 of another training: " + "; ".join(why[:3]))
            if resume is not None:  # theta_0 and the loss were checked when this run 2 started
                self._prior = (resume["rows"].numpy(), resume["row_epochs"].numpy(), resume["etas"].numpy())
                self._start_replay(module, dist0_sq=resume["dist0_sq"], first_step=len(self._prior[0]))
                self.random_step, self.env = bool(resume["random_step"]), resume["env"]  # step 0 is not replayed
                return
            self.theta0_sha = self.run1["theta0_sha256"]
            if params_digest(module.parameters()) != self.run1["theta0_sha256"]:
                dev = _largest_deviation(list(module.parameters()), load_state(self.dir / "theta0.pt"), self.names)
                raise ReplayMismatch(f"{self.dir}: run 2 left run 1 before epoch 0 step 0: theta_0 differs (largest "
                                     f"parameter deviation {dev:.3e}); run 2 must be the same script with the same "
                                     "seed_everything")
            self._start_replay(module)
        else:
            if resume is not None:
                self.mode, self.digests = "record", list(resume["digests"])
                return
            if (self.dir / "theta0.pt").exists():
                ckpt = self.resume_path()
                how = (f"resume it with trainer.fit(..., ckpt_path=cb.resume_path()) (its last checkpoint, {ckpt}) or "
                       "delete the folder to start over" if ckpt else
                       "it left no checkpoint to resume from (MeasurePath writes one every checkpoint_every "
                       "epochs with a CyclicBatchSampler loader without workers): delete the folder and run again")
                raise RuntimeError(f"{self.dir} holds an unfinished run 1 (no run1.json): {how}")
            self.mode = "record"
            self.dir.mkdir(parents=True, exist_ok=True)
            save_state({n: p.detach().cpu().clone() for n, p in module.named_parameters()}, self.dir / "theta0.pt")
            self.digests: list[dict] = []
            self.theta0_sha = params_digest(module.parameters())

    def _start_replay(self, module, dist0_sq: list[float] | None = None, first_step: int = 0) -> None:
        """theta*'s copy of the module and the recorder; when the replay resumes, ``dist0_sq``
        (``||theta_0 - theta*||^2``: the module holds a later iterate) and the first step to record."""
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
        if dist0_sq is None:
            theta0 = fp.layout.fill(fp.layout.empty(dtype=rows.dtype, device=rows.device),
                                    {n: p.detach() for n, p in module.named_parameters()})
            dist0_sq = [float(v) for v in sq_dist(theta0, rows)]  # as deep.stars.load_stars computes it
        star.train()
        self.star, self._star_ctx = star, batch_stats_only(star)
        self._star_ctx.__enter__()
        self.rec = PathRecorder(self.flat, rows, self.lr, dist0_sq=dist0_sq, first_step=first_step,
                                record_grad=self.record_grad)
        self.env = environment(self.device)
        self.random_step = False

    def _all_rows(self):
        """``(rows, step, epoch, eta)`` of every step of run 2 so far, a resumed run's earlier rows
        first (as deep/pass2.py joins a resumed pass 2)."""
        rows, step, epoch = self.rec.rows()
        eta = self.rec.etas(always=True)
        if self._prior is None:
            return rows, step, epoch, eta
        prows, pepoch, peta = self._prior
        return (np.concatenate([prows, rows]), np.arange(len(prows) + len(rows)), np.concatenate([pepoch, epoch]),
                np.concatenate([peta, eta]))

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
            self._write_checkpoint(trainer, epoch, digest)
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
        self._write_checkpoint(trainer, epoch, digest)  # after the epoch's check: a checkpoint on run 1's path

    def on_train_end(self, trainer, module) -> None:
        if self.mode == "record":
            save_state({n: p.detach().cpu().clone() for n, p in zip(self.names, self.flat.params)},
                       self.dir / "theta_star.pt")
            run1 = {"setup": self.setup, "theta0_sha256": self.theta0_sha, "epochs": self.digests,
                    "steps": int(self.step), "env": environment(self.device)}
            if self.resumed:
                run1["resumed_after_epochs"] = self.resumed
            write_json(self.run1_json, run1)
            self.checkpoint_path("record").unlink(missing_ok=True)  # run 1 is finished: nothing to resume
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
        if self.resumed:
            meta["resumed_after_epochs"] = self.resumed  # from the callback's checkpoints, verified
        rows, step, epoch, eta = self._all_rows()
        trace = trace_from_rows(rows, step, epoch, 0, self.rec.lr, self.rec.dist0_sq[0], None, self.record_grad, meta,
                                eta=eta)
        trace.validate(str(self.dir))
        ident = recording_identity(trace, IDENTITY_RTOL)
        if not ident.holds:
            raise RecordingError(f"{self.dir}: the recorded trace breaks the recording identity (relative residual "
                                 f"{ident.max_rel_residual:.3g} at step {ident.worst_step}); it is not saved")
        trace.save(self.dir / "trace")
        self.checkpoint_path("replay").unlink(missing_ok=True)  # run 2 is finished
        self.trace = trace


__all__ = ["CyclicBatchSampler", "DataBatches", "MeasurePath", "cyclic_loader", "params_digest"]
