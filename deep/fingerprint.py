"""The fingerprint of a measured run: everything that decides its path, in ``setup.json``.

A run folder is reused only for the very run it holds: lr, epochs and seeds are settings, but the
model, the optimizer, the schedule, the loss and the data decide the path too, and a changed
hidden width or momentum must not load the old run's numbers. :func:`fingerprint` records:

* ``model``: its class, a digest of its structure (``repr``: the modules and their settings) and
  of its parameter names, shapes and dtypes, and ``theta0_sha256``, the digest of the
  initialization ``model_fn()`` gives after ``torch.manual_seed(seed)`` (parameters and buffers);
* ``optimizer``: its class and its ``param_groups`` without the tensors (lr, momentum, betas,
  weight decay, ... and each group's parameter count);
* ``schedule``: none, or the scheduler's class and the digest of every step's learning rate over
  the whole run (the schedule is simulated on a scratch optimizer: a lambda's code is not
  readable, its values are), with the first and last rate;
* ``loss``: the loss's name (:mod:`deep.losses`);
* ``data``: the data's class, length and the digest of its tensors (:func:`deep.tensordata.data_digest`).

:meth:`deep.folder.RunFolder.claim` compares it with the folder's, key by key, and names the
first keys that differ in one line.
"""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np
import torch

from gamma_theory.recorder import lr_of

from .tensordata import _bytes, data_digest


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, (bytes, memoryview)) else str(p).encode())
    return h.hexdigest()


def state_digest(state: dict) -> str:
    """sha256 of a state dict's tensors (names, dtypes, shapes and bytes, in order)."""
    h = hashlib.sha256()
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            h.update(f"|{k}:{v.dtype}{tuple(v.shape)}|".encode())
            h.update(_bytes(v))
    return h.hexdigest()


def _plain(v):
    """A JSON value for a param-group setting (tensors as numbers or digests)."""
    if isinstance(v, torch.Tensor):
        return float(v) if v.numel() == 1 else f"tensor:{state_digest({'t': v})[:16]}"
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return f"{type(v).__name__}"


def _qualname(obj) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def fingerprint(model_fn, optimizer_fn, scheduler_fn, loss, data, seed: int, lr: float, epochs: int,
                batch_size: int) -> dict:
    """What decides the run's path (see the module docstring). Builds the model, optimizer and
    scheduler once more, on the CPU side of the caller's random state (it is restored).
    ValueError when, without a schedule, the optimizer's learning rate is not ``lr``."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a scheduler stepped without optimizer.step(): on purpose here
        torch.manual_seed(seed)
        model = model_fn()
        state = model.state_dict()
        params = [(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()]
        out = {
            "model": {
                "class": _qualname(model),
                "structure_sha256": _sha(repr(model)),
                "parameters_sha256": _sha(repr(params)),
                "num_params": int(sum(p.numel() for p in model.parameters())),
                "theta0_sha256": state_digest(state),
            },
        }
        opt = optimizer_fn(model.parameters())
        groups = [{k: _plain(v) for k, v in sorted(g.items()) if k != "params"} | {"num_params": len(g["params"])}
                  for g in opt.param_groups]
        out["optimizer"] = {"class": _qualname(opt), "param_groups": groups}
        if scheduler_fn is None:
            eta = lr_of(opt)
            if eta != float(lr):
                raise ValueError(f"lr={lr} but the optimizer's learning rate is {eta}: give measure() the rate the "
                                 "optimizer steps with (or a scheduler_fn when it changes)")
            out["schedule"] = None
        else:
            sched = scheduler_fn(opt)
            steps = epochs * math.ceil(len(data) / batch_size)
            rates = np.empty(steps)
            for k in range(steps):
                rates[k] = lr_of(opt)
                sched.step()
            if not (np.isfinite(rates).all() and (rates > 0).all()):
                bad = int(np.flatnonzero(~(np.isfinite(rates) & (rates > 0)))[0])
                raise ValueError(f"the schedule gives step {bad} the learning rate {rates[bad]}; every step needs "
                                 "eta_k > 0 (a step at rate 0 does not move theta and has no U_k): start a warm-up "
                                 "above 0")
            out["schedule"] = {"class": _qualname(sched), "steps": steps, "first": float(rates[0]),
                               "last": float(rates[-1]), "rates_sha256": _sha(rates.tobytes())}
    out["loss"] = loss.name
    out["data"] = {"class": type(data).__name__, "n": len(data), "sha256": data_digest(data)}
    return out


def differences(before, now, prefix: str = "") -> list[str]:
    """The keys (dotted paths) where two nested settings differ, with both values, in order."""
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for k in dict.fromkeys([*before, *now]):
            out += differences(before.get(k), now.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
        out = []
        for i, (a, b) in enumerate(zip(before, now)):
            out += differences(a, b, f"{prefix}[{i}]")
        return out
    if before != now:
        short = lambda v: (str(v)[:12] + "...") if isinstance(v, str) and len(v) == 64 else v  # noqa: E731
        return [f"{prefix}: {short(before)} there vs {short(now)} now"]
    return []


__all__ = ["differences", "fingerprint", "state_digest"]
