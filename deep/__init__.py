"""The paper's CIFAR experiments: models, data on the device, the exact two-pass measured run,
the suites and their runner. See :func:`deep.measure.measure` for measuring your own training."""

from .measure import MeasuredRun, ReplayMismatch, measure

__all__ = ["MeasuredRun", "ReplayMismatch", "measure"]
