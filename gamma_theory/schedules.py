r"""Learning-rate schedules on the ladder's problems: ``theta_{k+1} = theta_k - eta_k U_k``.

A schedule here is an array ``eta[0..K-1]`` of positive learning rates, one per step; the step
uses ``eta_k`` (set into the optimizer's ``param_groups`` before it), and the trace records it
as its ``eta`` column, so ``U_k = (theta_k - theta_{k+1}) / eta_k`` whatever the optimizer
(docs/schedules.md has the math). Three common shapes are given (:func:`step_decay`,
:func:`cosine`, with an optional linear warm-up), and :func:`run_scheduled_path`, the scheduled
twin of :func:`gamma_theory.problems.run_path`: every iterate kept, the float64 brute-force trace.

For SGD on over-parameterized least squares, with ``theta*`` the solution nearest the path,
the per-step gamma keeps its closed form with the step's own rate,

.. math::
    \gamma_k = \Bigl(2 - \frac{\eta_k\,\|U_k\|^2}{2\,\ell_k}\Bigr) / \|\theta_0-\theta^*\|^2
    \;\ge\; (2 - \eta_k L_{B_k}) / \|\theta_0-\theta^*\|^2,

so the path obeys Definition 1 whenever every ``eta_k < 2 / L_{B_k}``
(:func:`ls_closed_form_gamma_scheduled`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .optimizers import make_optimizer
from .problems import PathResult, Problem, cyclic_batches
from .recorder import trace_from_iterates


def constant(lr: float, steps: int) -> np.ndarray:
    """``eta_k = lr`` for every step."""
    return np.full(int(steps), float(lr))


def _warmup(eta: np.ndarray, lr: float, warmup: int) -> np.ndarray:
    """A linear warm-up over the first ``warmup`` steps, ``eta_k = lr (k+1) / (warmup+1)``: positive
    from the first step (a step with ``eta_k = 0`` has no ``U_k``)."""
    w = min(int(warmup), len(eta))
    eta[:w] = lr * (np.arange(w) + 1.0) / (w + 1.0)
    return eta


def step_decay(lr: float, steps: int, every: int, factor: float = 0.1, warmup: int = 0) -> np.ndarray:
    """``eta_k = lr * factor ** (k // every)`` (torch's ``StepLR`` counted in steps), after an
    optional linear warm-up."""
    k = np.arange(int(steps))
    eta = float(lr) * float(factor) ** (k // int(every))
    return _warmup(eta, lr, warmup)


def cosine(lr: float, steps: int, floor: float = 0.0, warmup: int = 0) -> np.ndarray:
    """Cosine decay from ``lr`` towards ``floor`` over the steps after the warm-up,
    ``eta_k = floor + (lr - floor) (1 + cos(pi (k - w) / (K - w))) / 2``: the last step's rate is
    still positive (the curve reaches ``floor`` only at step K, which is not taken)."""
    steps, w = int(steps), min(int(warmup), int(steps))
    k = np.arange(steps, dtype=np.float64)
    span = max(steps - w, 1)
    eta = floor + (lr - floor) * 0.5 * (1.0 + np.cos(math.pi * (k - w) / span))
    return _warmup(eta, lr, w)


def run_scheduled_path(problem: Problem, optimizer: str, eta: np.ndarray, seed: int = 0,
                       lr: float | None = None) -> PathResult:
    """Train ``problem`` with ``optimizer`` under the schedule ``eta`` (one rate per step: the
    problem's ``epochs`` times its batches per epoch), keep every iterate, return the exact trace
    (with its ``eta`` column). ``lr``: the base rate the trace records (default ``eta[0]``)."""
    batches = cyclic_batches(problem.n, problem.batch_size, problem.epochs, seed)
    eta = np.asarray(eta, dtype=np.float64).reshape(-1)
    if len(eta) != len(batches):
        raise ValueError(f"the schedule has {len(eta)} rates for {len(batches)} steps")
    if not (np.isfinite(eta).all() and (eta > 0).all()):
        raise ValueError("every eta_k must be a positive number")
    base = float(eta[0]) if lr is None else float(lr)
    theta = torch.nn.Parameter(torch.tensor(problem.theta0, dtype=torch.float64))
    opt = make_optimizer(optimizer, [theta], base)
    thetas = np.empty((len(batches) + 1, theta.numel()))
    thetas[0] = problem.theta0
    grads = np.empty((len(batches), theta.numel()))
    for k, (_, idx) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = float(eta[k])
        opt.zero_grad(set_to_none=True)
        problem.sample_loss(theta, torch.from_numpy(idx)).mean().backward()
        grads[k] = theta.grad.detach().numpy()
        opt.step()
        thetas[k + 1] = theta.detach().numpy()
    if not np.isfinite(thetas[-1]).all():
        raise FloatingPointError(f"{problem.name}/{optimizer}: the path diverged under the schedule")
    star = thetas[-1] if problem.nearest_minimizer is None else problem.nearest_minimizer(thetas[-1])
    with torch.no_grad():
        star_t = torch.from_numpy(star)
        per_k = [problem.sample_loss(torch.from_numpy(thetas[k]), torch.from_numpy(idx))
                 for k, (_, idx) in enumerate(batches)]
        per_star = [problem.sample_loss(star_t, torch.from_numpy(idx)) for _, idx in batches]
    loss = np.array([v.mean().item() for v in per_k])
    loss_star = np.array([v.mean().item() for v in per_star])
    epoch = np.array([e for e, _ in batches])
    sample_gap = np.array([(a - b).max().item() for a, b in zip(per_k, per_star)])
    sample_gap_max = np.array([sample_gap[epoch == e].max() for e in range(problem.epochs)])
    trace = trace_from_iterates(
        thetas, loss, loss_star, base, epoch=epoch, theta_star=star, sample_gap_max=sample_gap_max, grads=grads,
        eta=eta,
        meta={"problem": problem.name, "optimizer": optimizer, "lr": base, "schedule": "per-step eta column",
              "batch_size": problem.batch_size, "epochs": problem.epochs, "n": problem.n, "seed": seed,
              "theta_star": problem.theta_star_rule},
    )
    return PathResult(trace=trace, thetas=thetas, batches=batches, theta_star=star)


def ls_closed_form_gamma_scheduled(X: np.ndarray, y: np.ndarray, thetas: np.ndarray, batches,
                                   eta: np.ndarray, dist0_sq: float) -> np.ndarray:
    """The closed-form per-step gamma of scheduled SGD on least squares, from the iterates alone:
    ``gamma_k = (2 - eta_k ||g_k||^2 / (2 loss_k)) / dist0_sq`` (module docstring)."""
    out = np.empty(len(batches))
    for k, (_, idx) in enumerate(batches):
        r = X[idx] @ thetas[k] - y[idx]
        b = len(idx)
        loss = 0.5 * np.dot(r, r) / b
        grad = X[idx].T @ r / b
        out[k] = (2.0 - eta[k] * np.dot(grad, grad) / (2.0 * loss)) / dist0_sq
    return out
