"""The events of a classification run, found in pass 1 as they happen (issue 23: grokking).

With ``Extras(events=True)``, pass 1 evaluates the iterate at the end of every epoch, in
evaluation mode, on the whole training data and, when the run has ``held_out`` data, on that:
the mean loss and the accuracy (:func:`accuracy`; it draws nothing from the training's random
state, and evaluation mode changes no parameter or BatchNorm statistic, so the training's bits
are those of a run without events). Two events are kept, each the epoch ``E`` whose first iterate
is the first to reach it:

* ``memorization``: the iterate classifies every training sample (accuracy 1);
* ``grokking``: its held-out accuracy reaches ``grok_accuracy`` (default 0.95).

The iterate at an event that falls strictly inside the run is saved, and pass 2 judges the path
before it against it (companions ``memorization`` and ``grokking``, like the sensitivity check's
earlier iterates); the trace's metadata holds every epoch's evaluation (``epoch_eval``) and the
events (``events``: epoch and step), so the path can be judged phase by phase
(:func:`gamma_theory.phases.definition_1_by_phase`).
"""

from __future__ import annotations

import torch

from .losses import as_loss

EVENTS = ("memorization", "grokking")


@torch.no_grad()
def accuracy(model: torch.nn.Module, data, loss_fn, batch_size: int) -> dict:
    """``{"loss", "accuracy"}`` of ``model`` on all of ``data`` in evaluation mode (the model is
    left in the mode it was in; torch's random state is restored). The loss must classify the
    model's outputs (:meth:`deep.losses.Loss.classify`), else ValueError."""
    loss_fn = as_loss(loss_fn)
    was = model.training
    model.eval()
    total, correct = 0.0, 0
    devices = [data.device] if data.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for batch in data.eval_batches(batch_size):
                pair = loss_fn.classify(model, batch)
                if pair is None:
                    raise ValueError(f"events need a classification loss (deep.losses.outputs of logits (B, C) and "
                                     f"integer labels); {loss_fn.name} is not one")
                logits, y = pair
                total += float(loss_fn.out_fn(logits, y)) * len(y)
                correct += int((logits.argmax(1) == y).sum())
    finally:
        model.train(was)
    return {"loss": total / len(data), "accuracy": correct / len(data)}


class EventTracker:
    """Pass 1's record of the epoch evaluations and the events (its state goes into every
    checkpoint, so a resumed pass 1 goes on with it)."""

    def __init__(self, grok_accuracy: float, state: dict | None = None):
        self.grok_accuracy = float(grok_accuracy)
        state = state or {}
        self.epoch_eval: list[dict] = list(state.get("epoch_eval", []))
        self.events: dict[str, int | None] = {k: None for k in EVENTS} | dict(state.get("events", {}))

    def state(self) -> dict:
        return {"epoch_eval": list(self.epoch_eval), "events": dict(self.events)}

    def after_epoch(self, epoch_end: int, model, data, held_out, loss_fn, batch_size: int) -> list[str]:
        """Evaluate the iterate that starts epoch ``epoch_end``; returns the events it is the first to reach."""
        row = {"epoch": int(epoch_end), "train": accuracy(model, data, loss_fn, batch_size)}
        if held_out is not None:
            row["held_out"] = accuracy(model, held_out, loss_fn, batch_size)
        self.epoch_eval.append(row)
        new = []
        if epoch_end == 0:  # theta_0: evaluated for the curves; an event needs steps before it
            return new
        if self.events["memorization"] is None and row["train"]["accuracy"] == 1.0:
            new.append("memorization")
        if held_out is not None and self.events["grokking"] is None \
                and row["held_out"]["accuracy"] >= self.grok_accuracy:
            new.append("grokking")
        for name in new:
            self.events[name] = int(epoch_end)
        return new

    def truncate(self, epochs: int) -> None:
        """A diverged run keeps only the epochs it measures: what came later is dropped."""
        self.epoch_eval = [r for r in self.epoch_eval if r["epoch"] <= epochs]
        self.events = {k: (v if v is not None and v <= epochs else None) for k, v in self.events.items()}


__all__ = ["EVENTS", "EventTracker", "accuracy"]
