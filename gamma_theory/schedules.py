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

from .problems import PathResult, Problem, ls_closed_form_gamma, run_path


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
    return run_path(problem, optimizer, seed, lr, eta=eta)


def ls_closed_form_gamma_scheduled(X: np.ndarray, y: np.ndarray, thetas: np.ndarray, batches,
                                   eta: np.ndarray, dist0_sq: float) -> np.ndarray:
    """The closed-form per-step gamma of scheduled SGD on least squares, from the iterates alone:
    ``gamma_k = (2 - eta_k ||g_k||^2 / (2 loss_k)) / dist0_sq`` (module docstring)."""
    return ls_closed_form_gamma(X, y, thetas, batches, np.asarray(eta, dtype=np.float64), dist0_sq)
