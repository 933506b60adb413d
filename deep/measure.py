"""The exactly measured run: two passes over one deterministic training.

``theta*`` (the last iterate) is known only at the end, and storing every iterate of a ResNet
run is terabytes. So:

* **pass 1** trains deterministically from a seeded initialization (``theta_0`` saved), keeps a
  checkpoint (model, optimizer and sampler state) every ``checkpoint_every`` epochs and at the
  end, and saves ``theta*``;
* **pass 2** replays the identical steps from ``theta_0`` and records every column of the trace
  with :class:`gamma_theory.PathRecorder`, with ``loss_star`` from a forward pass of ``theta*``
  on the same batch in training mode (BatchNorm uses the batch statistics; its running
  statistics are left untouched: momentum 0). At each checkpoint pass 2's parameters must equal
  pass 1's bit for bit, and at the end its last iterate must be ``theta*``; otherwise
  :class:`ReplayMismatch` names the epoch and the largest deviation.

Memory is O(d): three flat float64 buffers in the recorder, one model at ``theta*``, and the
model states at the start of this and of the previous epoch (to fall back on when a run
diverges; each checkpoint carries the latter, so a resumed run falls back identically).

Checkpoint policy: pass 1 writes a checkpoint at epoch 0, every ``checkpoint_every`` epochs
(default ``max(1, epochs // 10)``, so at most ~11 on disk) and at its last epoch. Pass 2 deletes
each checkpoint once it has verified a later one and saved its trace up to there (unless
``keep_checkpoints``), so the newest verified checkpoint is always there to resume from.

Interrupted? Run the same call again: pass 1 resumes from its newest checkpoint, pass 2 from its
newest verified one, and the result is bit-identical to an uninterrupted run.

A run whose loss or parameters stop being finite, or whose parameters stop changing for a whole
epoch (vanishing gradient), is *diverged*: pass 1 stops in epoch ``e``, ``theta*`` is the iterate
that started epoch ``e - 1`` (the last whose whole epoch of losses was finite), and the trace
covers epochs ``0 .. e-2`` (as the paper plots such runs up to where they broke). When even that
trace is not finite, the run is reported as diverged with no trace.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gamma_theory import PathRecorder, Trace, flatten_params, load_trace

from .data import CyclicSampler, DeviceData, _atomic_save
from .env import environment, same_environment, set_deterministic

ModelFn = Callable[[], torch.nn.Module]
OptimizerFn = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


class ReplayMismatch(RuntimeError):
    """Pass 2 did not reproduce pass 1 bit for bit."""


class RunMismatch(ValueError):
    """The work folder holds a run with other settings than the ones asked for."""


class EnvironmentMismatch(RuntimeError):
    """Pass 2 was asked to replay a pass 1 that ran on other hardware or libraries."""


@dataclass
class MeasuredRun:
    trace: Trace | None  #: None when the run diverged in its first epoch
    status: str  #: "ok" or "diverged"
    diverged: dict | None  #: {"epoch", "step", "reason"} when diverged
    workdir: Path

    @property
    def meta(self) -> dict:
        return self.trace.meta if self.trace is not None else json.loads((self.workdir / "trace.json").read_text())


# -- small file helpers --------------------------------------------------------------------------
def _atomic_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _ckpt_path(workdir: Path, epoch: int) -> Path:
    return workdir / "checkpoints" / f"epoch{epoch:04d}.pt"


def _ckpt_epochs(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.stem[5:]) for p in d.glob("epoch*.pt")) if d.exists() else []


def _load(path: Path, device: torch.device):
    return torch.load(path, map_location=device, weights_only=False)


def _state(model, opt, sampler, epoch: int, losses: list[np.ndarray]) -> dict:
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "sampler": sampler.state_dict(),
        "losses": losses,
    }


def _max_deviation(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> float:
    return max(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b))


def _params_equal(model: torch.nn.Module, state: dict) -> tuple[bool, float]:
    names = [n for n, _ in model.named_parameters()]
    mine = [p.detach() for _, p in model.named_parameters()]
    theirs = [state[n].to(mine[0].device) for n in names]
    if all(torch.equal(x, y) for x, y in zip(mine, theirs)):
        return True, 0.0
    return False, _max_deviation(mine, theirs)


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
) -> MeasuredRun:
    """Train with ``optimizer_fn(model_fn().parameters())`` and measure the path exactly.

    ``lr`` is the optimizer's constant base learning rate (the paper's eta). ``model_fn`` is
    called after ``torch.manual_seed(seed)``; ``data_seed`` seeds the sampler. Everything is
    written under ``workdir``; the finished trace is ``workdir/trace.npz`` (+ ``trace.json``).
    Calling again with the same arguments resumes or, when finished, just loads the result.
    """
    workdir = Path(workdir)
    done = workdir / "trace.json"
    workdir.mkdir(parents=True, exist_ok=True)
    device = data.device
    checkpoint_every = checkpoint_every or max(1, epochs // 10)
    setup = dict(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, data_seed=data_seed,
                 channels_last=channels_last, allow_tf32=allow_tf32, checkpoint_every=checkpoint_every,
                 n_train=len(data))
    if meta and "run" in meta:  # the suite runner's run spec (network, knobs, width, ...)
        setup["run"] = meta["run"]
    setup_path = workdir / "setup.json"
    if setup_path.exists():  # resuming: the folder must hold this very run
        before = json.loads(setup_path.read_text())
        differ = {k: (before.get(k), v) for k, v in setup.items() if before.get(k) != v}
        if differ:
            detail = ", ".join(f"{k}: {a} there vs {b} now" for k, (a, b) in differ.items())
            raise RunMismatch(f"{workdir} holds a run with other settings ({detail}); "
                              "use another output folder, or delete this one to start over")
    else:
        _atomic_json(setup, setup_path)
    if done.exists():
        return _finished(workdir)
    (workdir / "checkpoints").mkdir(exist_ok=True)
    set_deterministic(allow_tf32)

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(seed)
        m = model_fn().to(device)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    p1 = _pass1(fresh_model, optimizer_fn, data, loss_fn, setup, workdir, progress, desc)
    trace = _pass2(fresh_model, optimizer_fn, data, loss_fn, setup, workdir, p1, keep_checkpoints, progress, desc)
    if trace is None:
        info = {"complete": True, "status": "diverged", "diverged": p1["diverged"], "setup": setup,
                "pass1": p1, **(meta or {})}
        _atomic_json(info, done)
        return MeasuredRun(None, "diverged", p1["diverged"], workdir)
    trace.meta.update(meta or {})
    try:
        trace.validate(str(workdir))
    except ValueError as exc:  # e.g. an infinite loss at theta* on some batch
        reason = f"the measured path cannot be judged: {exc}"
        diverged = p1["diverged"] or {"epoch": int(trace.epoch[-1]), "step": len(trace) - 1}
        diverged = {**diverged, "reason": f"{diverged.get('reason', '')}; {reason}".lstrip("; ")}
        _atomic_json({"complete": True, "status": "diverged", "diverged": diverged, "setup": setup,
                      "pass1": p1, **(meta or {})}, done)
        return MeasuredRun(None, "diverged", diverged, workdir)
    trace.save(workdir / "trace")
    return _finished(workdir)


def _finished(workdir: Path) -> MeasuredRun:
    info = json.loads((workdir / "trace.json").read_text())
    if not (workdir / "trace.npz").exists():
        return MeasuredRun(None, info.get("status", "diverged"), info.get("diverged"), workdir)
    trace = load_trace(workdir / "trace.npz")
    return MeasuredRun(trace, trace.meta.get("status", "ok"), trace.meta.get("diverged"), workdir)


def _pass1(fresh_model, optimizer_fn, data, loss_fn, setup, workdir: Path, progress, desc) -> dict:
    """Train, checkpoint, save theta*; returns the pass-1 summary (also in pass1.json)."""
    summary_path = workdir / "pass1.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    device = data.device
    model = fresh_model()
    opt = optimizer_fn(model.parameters())
    sampler = CyclicSampler(len(data), setup["batch_size"], setup["data_seed"])
    env = environment(device)
    epochs, every = setup["epochs"], setup["checkpoint_every"]
    have = _ckpt_epochs(workdir)
    losses: list[np.ndarray] = []
    start = 0
    wall_before = 0.0
    if have:  # resume from the newest checkpoint
        st = _load(_ckpt_path(workdir, have[-1]), device)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sampler.load_state_dict(st["sampler"])
        losses, start, wall_before = list(st["losses"]), int(st["epoch"]), float(st.get("wall_s", 0.0))
        state_prev = st.get("model_prev")
    else:
        state_prev = None  # model state at the start of the previous epoch
        _atomic_save({k: v.detach().clone() for k, v in model.state_dict().items()}, workdir / "theta0.pt")
        _atomic_save({**_state(model, opt, sampler, 0, []), "wall_s": 0.0, "env": env}, _ckpt_path(workdir, 0))

    diverged = None
    t0 = time.perf_counter()
    bar = _bar(range(start, epochs), progress, f"{desc} pass 1", start, epochs)
    for epoch in bar:
        state_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        batches = sampler.next_epoch(device)
        ep_loss = torch.empty(len(batches), device=device)
        model.train()
        for i, idx in enumerate(batches):
            x, y = data.batch(idx)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ep_loss[i] = loss.detach()
        host = ep_loss.cpu().numpy().astype(np.float64)  # the one sync of the epoch
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
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{host.mean():.4g}")
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            # model_prev (the start of this epoch) lets a resumed run fall back exactly as an
            # uninterrupted one would if the next epoch diverges
            _atomic_save({**_state(model, opt, sampler, epoch + 1, losses), "model_prev": state_prev,
                                "wall_s": wall_before + time.perf_counter() - t0, "env": env},
                               _ckpt_path(workdir, epoch + 1))
    wall = wall_before + time.perf_counter() - t0
    measured_epochs = len(losses)
    _atomic_save({k: v.detach().clone() for k, v in model.state_dict().items()}, workdir / "theta_star.pt")
    steps = int(sum(map(len, losses)))
    summary = {
        "epochs": measured_epochs,
        "steps": steps,
        "wall_s": wall,
        "ms_per_step": 1e3 * wall / steps if steps else None,
        "env": env,
        "diverged": diverged,
        "epoch_mean_loss": [float(l.mean()) for l in losses],
    }
    _atomic_json(summary, summary_path)
    return summary


def _divergence(host_losses, model, state_before: dict, epoch, steps_before) -> dict | None:
    bad = np.flatnonzero(~np.isfinite(host_losses))
    if bad.size:
        return {"epoch": epoch, "step": steps_before + int(bad[0]), "reason": "loss is not finite"}
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return {"epoch": epoch, "step": steps_before + len(host_losses) - 1, "reason": "parameters are not finite"}
    if all(torch.equal(p, state_before[n]) for n, p in model.named_parameters()):
        return {"epoch": epoch, "step": steps_before, "reason": "vanishing gradient: no parameter changed in a whole epoch"}
    return None


def _pass2(fresh_model, optimizer_fn, data, loss_fn, setup, workdir: Path, p1: dict, keep, progress, desc):
    """Replay and record; returns the full trace (None if there is nothing to measure)."""
    epochs = p1["epochs"]
    if epochs == 0:
        return None
    device = data.device
    env = environment(device)
    differ = same_environment(p1["env"], env)
    if differ:
        detail = ", ".join(f"{k}: {p1['env'].get(k)} vs {env.get(k)}" for k in differ)
        raise EnvironmentMismatch(
            f"{workdir}: pass 1 ran elsewhere ({detail}); bitwise replay is only promised on the same "
            "device model, driver and libraries. Rerun on that machine, or delete the folder to start over."
        )
    star_state = _load(workdir / "theta_star.pt", device)
    model_star = fresh_model()
    model_star.load_state_dict(star_state)
    for m in model_star.modules():  # batch statistics in the forward pass, running stats untouched
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    model_star.train()
    theta_star = flatten_params(list(model_star.parameters()), torch.float64)
    theta0 = _load(workdir / "theta0.pt", device)
    names = [n for n, _ in model_star.named_parameters()]
    t0_flat = torch.cat([theta0[n].reshape(-1).double() for n in names])
    dist0_sq = float(torch.dot(t0_flat - theta_star, t0_flat - theta_star))

    progress_path, partial_path = workdir / "pass2.json", workdir / "pass2_partial"
    start, prior, wall_before = 0, None, 0.0
    if progress_path.exists():
        pr = json.loads(progress_path.read_text())
        start, wall_before = int(pr["verified_epoch"]), float(pr["wall_s"])
        prior = load_trace(partial_path.with_suffix(".npz"))
    st = _load(_ckpt_path(workdir, start), device)
    model = fresh_model()
    model.load_state_dict(st["model"])
    opt = optimizer_fn(model.parameters())
    opt.load_state_dict(st["optimizer"])
    sampler = CyclicSampler(len(data), setup["batch_size"], setup["data_seed"])
    sampler.load_state_dict(st["sampler"])
    del st
    first_step = len(prior) if prior is not None else 0
    rec = PathRecorder(model.parameters(), theta_star, setup["lr"], dist0_sq=dist0_sq, first_step=first_step)

    t0 = time.perf_counter()
    last_verified = start
    for epoch in _bar(range(start, epochs), progress, f"{desc} pass 2", start, epochs):
        model.train()
        for idx in sampler.next_epoch(device):
            x, y = data.batch(idx)
            loss = loss_fn(model(x), y)
            with torch.no_grad():
                loss_star = loss_fn(model_star(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.record(loss, loss_star, epoch)
        rec.flush()
        ck = _ckpt_path(workdir, epoch + 1)
        if ck.exists():
            ref = _load(ck, device)
            ok, dev = _params_equal(model, ref["model"])
            if not ok:
                raise ReplayMismatch(
                    f"{workdir}: pass 2 left pass 1 at epoch {epoch + 1}: largest parameter deviation "
                    f"{dev:.3e}. The training is not deterministic here (an op without a deterministic "
                    "kernel, or a different device/library); delete the folder to start over."
                )
            del ref
            sofar = _concat(prior, rec.trace())
            sofar.save(partial_path)
            _atomic_json({"verified_epoch": epoch + 1, "wall_s": wall_before + time.perf_counter() - t0}, progress_path)
            if not keep and last_verified != epoch + 1:
                _ckpt_path(workdir, last_verified).unlink(missing_ok=True)
            last_verified = epoch + 1
    ok, dev = _params_equal(model, star_state)
    if not ok:
        raise ReplayMismatch(f"{workdir}: pass 2 ended {dev:.3e} away from theta* (largest parameter deviation)")
    wall = wall_before + time.perf_counter() - t0
    trace = _concat(prior, rec.trace())
    steps = len(trace)
    trace.meta.update({
        "status": "diverged" if p1["diverged"] else "ok",
        "diverged": p1["diverged"],
        "setup": setup,
        "steps_per_epoch": math.ceil(setup["n_train"] / setup["batch_size"]),
        "epochs_measured": epochs,
        "theta_star": "last iterate" + (" before divergence" if p1["diverged"] else ""),
        "replay_verified": {"checkpoints": "bitwise equal", "final": "bitwise equal to theta*"},
        "env": env,
        "pass1": {k: p1[k] for k in ("wall_s", "ms_per_step", "steps")},
        "pass2": {"wall_s": wall, "ms_per_step": 1e3 * wall / steps},
        "num_params": int(theta_star.numel()),
    })
    if not keep:
        for e in _ckpt_epochs(workdir):
            _ckpt_path(workdir, e).unlink(missing_ok=True)
    for p in (progress_path, partial_path.with_suffix(".npz"), partial_path.with_suffix(".json")):
        p.unlink(missing_ok=True)
    return trace


def _concat(prior: Trace | None, new: Trace) -> Trace:
    if prior is None:
        return new
    cols = {c: np.concatenate([getattr(prior, c), getattr(new, c)])
            for c in ("loss", "loss_star", "inner", "update_sq", "dist_sq", "step", "epoch")}
    return Trace(**cols, lr=new.lr, dist0_sq=new.dist0_sq, meta=dict(prior.meta))


def _bar(it, progress: bool, desc: str, start: int, total: int):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, initial=start, total=total, unit="epoch", leave=False, dynamic_ncols=True)
