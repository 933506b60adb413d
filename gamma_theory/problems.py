r"""The ladder: over-parameterized problems from closed forms up to small nets.

Each problem is a flat parameter vector ``theta`` (float64) and a per-sample loss; every rung is
trained by SGD, SGD with momentum and Adam through the same capture of
``U_k = (theta_k - theta_{k+1}) / eta`` (the optimizers are torch's own), with cyclic sampling
and a reshuffle each epoch, then judged by the same checkers as a deep run.

* least squares, ``l_i = (x_i^T theta - y_i)^2 / 2`` with ``d > n`` and ``y = X x_true``: the
  solution set is an affine subspace; ``theta*`` is the exact projection of the last iterate
  onto it. For SGD the per-step gamma has the closed form
  ``gamma_k = (2 - eta * update_sq_k / (2 * loss_k)) / dist0_sq`` and the whole path obeys
  Definition 1 with ``gamma >= (2 - eta * L) / dist0_sq``, ``L = max_B lambda_max(X_B X_B^T)/b``;
* phase retrieval, ``l_i = ((a_i^T theta)^2 - y_i)^2 / 4`` with ``y_i = (a_i^T x)^2``: the
  minimizers are ``+x`` and ``-x``; ``theta*`` is the one nearer the last iterate;
* small wide MLPs (ReLU, tanh), squared loss on random targets, trained to interpolation:
  ``theta*`` is the last iterate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .optimizers import REGISTRY, make_optimizer, optimizer_names  # noqa: F401  (optimizer_names: for the ladder)
from .recorder import trace_from_iterates
from .trace import Trace


#: per-sample loss: (theta (d,), indices (b,)) -> losses (b,)
SampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Problem:
    name: str
    description: str
    theta0: np.ndarray
    n: int
    batch_size: int
    epochs: int
    #: the problem's two learning rates, by the kind an optimizer takes (gamma_theory.optimizers.RATES)
    rates: dict[str, float]
    sample_loss: SampleLoss
    #: the exact global minimizer nearest a point, or None (then theta* = last iterate)
    nearest_minimizer: Callable[[np.ndarray], np.ndarray] | None = None
    data: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def lr(self) -> dict[str, float]:
        """The learning rate of every registered optimizer on this problem."""
        return {name: self.rates[o.rate] for name, o in REGISTRY.items()}

    @property
    def theta_star_rule(self) -> str:
        return "nearest exact minimizer to the last iterate" if self.nearest_minimizer else "last iterate"


def cyclic_batches(n: int, batch_size: int, epochs: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """(epoch, indices) for every step: each sample once per epoch, reshuffled each epoch."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(epochs):
        perm = rng.permutation(n)
        out += [(e, perm[i : i + batch_size]) for i in range(0, n, batch_size)]
    return out


@dataclass
class PathResult:
    trace: Trace
    thetas: np.ndarray  #: all iterates, (K+1, d)
    batches: list[tuple[int, np.ndarray]]
    theta_star: np.ndarray


def run_path(problem: Problem, optimizer: str, seed: int = 0, lr: float | None = None,
             eta: np.ndarray | None = None) -> PathResult:
    """Train ``problem`` with ``optimizer``, keep every iterate, return the exact trace.

    ``eta``: a learning-rate schedule, one rate per step (the trace gets its ``eta`` column;
    ``lr`` is then the base rate the trace records, default ``eta[0]``)."""
    batches = cyclic_batches(problem.n, problem.batch_size, problem.epochs, seed)
    if eta is not None:
        eta = np.asarray(eta, dtype=np.float64).reshape(-1)
        if len(eta) != len(batches):
            raise ValueError(f"the schedule has {len(eta)} rates for {len(batches)} steps")
        if not (np.isfinite(eta).all() and (eta > 0).all()):
            raise ValueError("every eta_k must be a positive number")
    lr = (problem.lr[optimizer] if eta is None else float(eta[0])) if lr is None else float(lr)
    theta = torch.nn.Parameter(torch.tensor(problem.theta0, dtype=torch.float64))
    opt = make_optimizer(optimizer, [theta], lr)
    thetas = np.empty((len(batches) + 1, theta.numel()))
    thetas[0] = problem.theta0
    grads = np.empty((len(batches), theta.numel()))  # g_k, after backward and before the step
    for k, (_, idx) in enumerate(batches):
        if eta is not None:
            for group in opt.param_groups:
                group["lr"] = float(eta[k])
        opt.zero_grad(set_to_none=True)
        problem.sample_loss(theta, torch.from_numpy(idx)).mean().backward()
        grads[k] = theta.grad.detach().numpy()
        opt.step()
        thetas[k + 1] = theta.detach().numpy()
    if not np.isfinite(thetas[-1]).all():
        raise FloatingPointError(f"{problem.name}/{optimizer}: the path diverged "
                                 + (f"(lr={lr})" if eta is None else "under the schedule"))
    star = thetas[-1] if problem.nearest_minimizer is None else problem.nearest_minimizer(thetas[-1])

    # Losses at theta_k and theta* on each step's batch, evaluated once afterwards (float64).
    with torch.no_grad():
        star_t = torch.from_numpy(star)
        per_k = [problem.sample_loss(torch.from_numpy(thetas[k]), torch.from_numpy(idx)) for k, (_, idx) in enumerate(batches)]
        per_star = [problem.sample_loss(star_t, torch.from_numpy(idx)) for _, idx in batches]
    loss = np.array([v.mean().item() for v in per_k])
    loss_star = np.array([v.mean().item() for v in per_star])
    epoch = np.array([e for e, _ in batches])
    sample_gap = np.array([(a - b).max().item() for a, b in zip(per_k, per_star)])
    sample_gap_max = np.array([sample_gap[epoch == e].max() for e in range(problem.epochs)])
    trace = trace_from_iterates(
        thetas, loss, loss_star, lr, epoch=epoch, theta_star=star, sample_gap_max=sample_gap_max, grads=grads,
        eta=eta,
        meta={
            "problem": problem.name,
            "description": problem.description,
            "optimizer": optimizer,
            "lr": lr,
            "batch_size": problem.batch_size,
            "epochs": problem.epochs,
            "n": problem.n,
            "d": int(theta.numel()),
            "seed": seed,
            "theta_star": problem.theta_star_rule,
            "steps_per_epoch": int(np.ceil(problem.n / problem.batch_size)),
            **({"schedule": "per-step eta column"} if eta is not None else {}),
        },
    )
    return PathResult(trace=trace, thetas=thetas, batches=batches, theta_star=star)


# -- least squares -----------------------------------------------------------------------------
def least_squares(n: int = 40, d: int = 120, batch_size: int = 4, epochs: int = 60, seed: int = 0,
                  lr_scale: float = 1.0) -> Problem:
    """Over-parameterized least squares; SGD and momentum at ``eta = lr_scale / L``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) / np.sqrt(d)
    y = X @ rng.standard_normal(d)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    L = ls_smoothness_bound(X, batch_size)
    pinv = np.linalg.pinv(X)

    def sample_loss(theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return 0.5 * (Xt[idx] @ theta - yt[idx]) ** 2

    def nearest(theta: np.ndarray) -> np.ndarray:
        return theta - pinv @ (X @ theta - y)

    return Problem(
        name="least_squares",
        description=f"least squares, n={n} samples, d={d} parameters, batch {batch_size}",
        theta0=rng.standard_normal(d),
        n=n,
        batch_size=batch_size,
        epochs=epochs,
        rates={"gradient": lr_scale / L, "adaptive": 0.01},
        sample_loss=sample_loss,
        nearest_minimizer=nearest,
        data={"X": X, "y": y, "L": np.float64(L)},
    )


def ls_smoothness_bound(X: np.ndarray, batch_size: int) -> float:
    """An upper bound on ``max_B lambda_max(X_B X_B^T) / b`` over every batch of size ``b``:
    the sum of the ``b`` largest squared row norms, over ``b`` (Gershgorin on the Gram matrix
    is looser; this one is tight for ``b = 1``)."""
    sq = np.sort(np.einsum("ij,ij->i", X, X))[::-1]
    return float(sq[:batch_size].sum() / batch_size)


def ls_batch_smoothness(X: np.ndarray, batches: list[tuple[int, np.ndarray]]) -> float:
    """``L = max_B lambda_max(X_B X_B^T) / |B|`` over the batches a path actually used."""
    return max(float(np.linalg.eigvalsh(X[idx] @ X[idx].T)[-1]) / len(idx) for _, idx in batches)


def ls_closed_form_gamma(X: np.ndarray, y: np.ndarray, thetas: np.ndarray, batches, lr: float | np.ndarray,
                         dist0_sq: float) -> np.ndarray:
    """The closed-form per-step gamma of SGD on least squares, from the iterates alone; ``lr``: the
    constant rate, or one rate per step (a schedule)."""
    rates = np.broadcast_to(np.asarray(lr, dtype=np.float64), (len(batches),))
    out = np.empty(len(batches))
    for k, (_, idx) in enumerate(batches):
        r = X[idx] @ thetas[k] - y[idx]
        b = len(idx)
        loss = 0.5 * np.dot(r, r) / b
        grad = X[idx].T @ r / b
        out[k] = (2.0 - rates[k] * np.dot(grad, grad) / (2.0 * loss)) / dist0_sq
    return out


# -- phase retrieval ---------------------------------------------------------------------------
def phase_retrieval(n: int = 120, d: int = 16, batch_size: int = 8, epochs: int = 60, seed: int = 0,
                    init_dist: float = 0.3) -> Problem:
    """Real phase retrieval started at relative distance ``init_dist`` from the signal."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    x = rng.standard_normal(d)
    x /= np.linalg.norm(x)
    y = (A @ x) ** 2
    At, yt = torch.from_numpy(A), torch.from_numpy(y)
    pert = rng.standard_normal(d)
    theta0 = x + init_dist * pert / np.linalg.norm(pert)

    def sample_loss(theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return 0.25 * ((At[idx] @ theta) ** 2 - yt[idx]) ** 2

    def nearest(theta: np.ndarray) -> np.ndarray:
        return x if np.linalg.norm(theta - x) <= np.linalg.norm(theta + x) else -x

    lr = 0.2 / d**2 * 4
    return Problem(
        name="phase_retrieval",
        description=f"phase retrieval, n={n} measurements, d={d}, batch {batch_size}, minimizers +/-x",
        theta0=theta0,
        n=n,
        batch_size=batch_size,
        epochs=epochs,
        rates={"gradient": lr, "adaptive": 0.01},
        sample_loss=sample_loss,
        nearest_minimizer=nearest,
        data={"A": A, "x": x, "y": y},
    )


# -- small wide MLPs ---------------------------------------------------------------------------
def mlp(activation: str = "relu", n: int = 16, d_in: int = 8, width: int = 128, batch_size: int = 4,
        epochs: int = 150, seed: int = 0) -> Problem:
    """One-hidden-layer MLP, ``f(x) = w2^T act(W1 x + b1) + b2``, squared loss on random targets."""
    acts = {"relu": torch.relu, "tanh": torch.tanh}
    if activation not in acts:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(acts)}")
    act = acts[activation]
    rng = np.random.default_rng(seed)
    X = torch.from_numpy(rng.standard_normal((n, d_in)))
    y = torch.from_numpy(rng.standard_normal(n))
    shapes = [(width, d_in), (width,), (width,), ()]
    sizes = [int(np.prod(s)) for s in shapes]
    theta0 = np.concatenate([
        rng.standard_normal(sizes[0]) * np.sqrt(2.0 / d_in),
        np.zeros(width),
        rng.standard_normal(width) / np.sqrt(width),
        np.zeros(1),
    ])

    def sample_loss(theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        W1, b1, w2, b2 = (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))
        out = act(X[idx] @ W1.T + b1) @ w2 + b2
        return 0.5 * (out - y[idx]) ** 2

    return Problem(
        name=f"mlp_{activation}",
        description=f"MLP 1x{width} {activation}, n={n} random targets, d={theta0.size}, batch {batch_size}",
        theta0=theta0,
        n=n,
        batch_size=batch_size,
        epochs=epochs,
        rates={"gradient": 0.05, "adaptive": 0.002},
        sample_loss=sample_loss,
    )


def ladder(seed: int = 0) -> list[Problem]:
    """The rungs of ``gpcheck ladder``, from closed form to small nets."""
    return [least_squares(seed=seed), phase_retrieval(seed=seed), mlp("relu", seed=seed), mlp("tanh", seed=seed)]
