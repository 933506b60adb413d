"""The optimizers, one registry entry each, shared by the ladder and the deep runs.

An entry is a name, how to build it from parameters and a learning rate, and which of a ladder
problem's two rates it takes: ``"gradient"`` (a step of gradient descent's order, the problem's
own, e.g. 0.5/L on least squares) or ``"adaptive"`` (a per-coordinate step size, Adam's). A new
optimizer is one new entry of :data:`REGISTRY` (or :func:`register`): the ladder trains every
problem with it, and a deep run names it in its ``RunSpec.optimizer``.

Every one takes a constant learning rate here; the update ``U_k`` is always recovered from the
parameters, ``(theta_k - theta_{k+1}) / eta_k``, so any torch optimizer could stand here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

RATES = ("gradient", "adaptive")


@dataclass(frozen=True)
class Optimizer:
    name: str
    build: Callable[[list[torch.Tensor], float], torch.optim.Optimizer]
    rate: str  #: which rate of a ladder problem it takes: one of RATES
    description: str

    def __post_init__(self):
        if self.rate not in RATES:
            raise ValueError(f"optimizer {self.name!r}: rate must be one of {', '.join(RATES)}, got {self.rate!r}")


#: the paper's three (Sec. 4): SGD; SGD with momentum 0.5; Adam with betas (0.9, 0.999), eps 1e-2
REGISTRY: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("sgd", lambda p, lr: torch.optim.SGD(p, lr=lr), "gradient", "SGD"),
    Optimizer("momentum", lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5), "gradient",
              "SGD with momentum 0.5"),
    Optimizer("adam", lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.9, 0.999), eps=1e-2), "adaptive",
              "Adam, betas (0.9, 0.999), eps 1e-2"),
)}


def register(opt: Optimizer) -> Optimizer:
    """Add ``opt`` to the registry (a name already there is refused)."""
    if opt.name in REGISTRY:
        raise ValueError(f"an optimizer named {opt.name!r} is registered already")
    REGISTRY[opt.name] = opt
    return opt


def optimizer_names() -> tuple[str, ...]:
    """Every registered optimizer, in registration order (read when used, so later entries count)."""
    return tuple(REGISTRY)


def __getattr__(name: str):  # OPTIMIZERS: the names, read from the registry when asked for
    if name == "OPTIMIZERS":
        return optimizer_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """The registered optimizer ``name`` over ``params`` at the constant learning rate ``lr``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name].build(list(params), lr)
