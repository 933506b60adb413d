"""The paper's optimizers, shared by the ladder and the deep runs."""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = ("sgd", "momentum", "adam")


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """SGD; SGD with momentum 0.5; Adam with betas (0.9, 0.999) and eps 1e-2 (paper, Sec. 4).

    Every one takes a constant learning rate; the update ``U_k`` is always recovered from the
    parameters, ``(theta_k - theta_{k+1}) / lr``, so any torch optimizer could stand here.
    """
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.5)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-2)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
