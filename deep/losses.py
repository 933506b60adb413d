"""The loss of a measured run: ``loss_fn(model, batch) -> scalar``.

A measured run's loss is any function of the model and one batch (what the run's data gives for
the step's indices, :mod:`deep.data`): a language model's next-token loss, a loss with its own
regularizer, a contrastive loss over two views. It returns a scalar tensor; the step
differentiates it, and pass 2 calls the same function with each theta* in place of the model on
the same batch, so ``l(theta*; z_k)`` is the same loss as ``l(theta_k; z_k)`` by construction.

The classification case, ``fn(model(x), y)``, is one line: :func:`outputs`. torch's own losses
(``torch.nn.functional.cross_entropy``, ``mse_loss``, ...; an ``nn.CrossEntropyLoss()``
instance) are recognized and adapted so without asking, so ``loss_fn=F.cross_entropy`` keeps
meaning what it always meant. A function of ``(outputs, targets)`` of one's own needs
``outputs(fn)``; passed bare it fails at its first call, and the error says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

ModelLoss = Callable[[torch.nn.Module, Any], torch.Tensor]


class Loss:
    """A loss ``(model, batch) -> scalar`` with a name (recorded in the run's fingerprint)."""

    def __init__(self, fn: ModelLoss, name: str | None = None):
        self.fn = fn
        self.name = name or _name_of(fn)

    def __call__(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return self.fn(model, batch)

    def classify(self, model: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(logits, labels)`` of ``batch`` where the loss is a classification of the model's
        outputs (for the accuracy of theta* on the training data), else None."""
        return None

    def __repr__(self) -> str:
        return f"Loss({self.name})"


class OutputLoss(Loss):
    """``fn(model(x), y)`` for a batch ``(x, y)``: the classification (or regression) case."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str | None = None):
        self.out_fn = fn
        super().__init__(self._call, name or f"outputs({_name_of(fn)})")

    def _call(self, model, batch):
        x, y = _pair(batch, self.name)
        return self.out_fn(model(x), y)

    def classify(self, model, batch):
        x, y = _pair(batch, self.name)
        logits = model(x)
        if logits.dim() == 2 and logits.shape[0] == len(y) and not y.is_floating_point():
            return logits, y
        return None


def outputs(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str | None = None) -> OutputLoss:
    """The classification adapter: ``outputs(F.cross_entropy)`` is ``lambda model, (x, y): F.cross_entropy(model(x), y)``."""
    return OutputLoss(fn, name)


def model_loss(fn: ModelLoss, name: str | None = None) -> Loss:
    """``fn(model, batch)`` as a named :class:`Loss` (a plain function of ``(model, batch)`` is one already)."""
    return Loss(fn, name)


def _is_torch_loss(fn) -> bool:
    """torch's own losses of ``(input, target)``: functions of ``torch.nn.functional`` and loss modules."""
    if isinstance(fn, torch.nn.modules.loss._Loss):
        return True
    return getattr(fn, "__module__", None) in ("torch.nn.functional", "torch._C._nn") \
        and getattr(F, getattr(fn, "__name__", ""), None) is fn


def as_loss(fn) -> Loss:
    """``fn`` as a :class:`Loss`: itself when it is one; torch's own losses of ``(input, target)``
    through :func:`outputs`; any other callable as a function of ``(model, batch)``."""
    if isinstance(fn, Loss):
        return fn
    if not callable(fn):
        raise TypeError(f"loss_fn must be a function of (model, batch), got {type(fn).__name__}")
    if _is_torch_loss(fn):
        return OutputLoss(fn, _name_of(fn))
    return _Checked(fn)


class _Checked(Loss):
    """A user's ``(model, batch)`` function: a first call that fails as a function of
    ``(outputs, targets)`` would (a tensor operation handed a module or a batch) says what to do."""

    worked = False

    def __call__(self, model, batch):
        if self.worked:
            return self.fn(model, batch)
        try:
            out = self.fn(model, batch)
        except (TypeError, AttributeError) as exc:
            raise TypeError(f"loss_fn {self.name}(model, batch) failed at its first call ({exc}); gpcheck calls "
                            "loss_fn(model, batch). A loss of (outputs, targets) of your own needs "
                            f"loss_fn=deep.losses.outputs({self.name})") from exc
        self.worked = True
        return out


def _pair(batch, name: str):
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(f"{name} needs batches (inputs, targets); this data gives {type(batch).__name__}"
                        + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                        + ": write loss_fn(model, batch) for it")
    return batch


def _name_of(fn) -> str:
    if isinstance(fn, torch.nn.Module):
        return type(fn).__name__
    mod, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return type(fn).__name__
    if mod in ("torch.nn.functional", "torch._C._nn"):
        return f"F.{name}"
    return f"{mod}.{name}" if mod and mod != "__main__" else name


CROSS_ENTROPY = OutputLoss(F.cross_entropy, "F.cross_entropy")

__all__ = ["CROSS_ENTROPY", "Loss", "ModelLoss", "OutputLoss", "as_loss", "model_loss", "outputs"]
