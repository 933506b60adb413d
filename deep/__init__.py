"""The paper's CIFAR experiments: models, data on the device, the exact two-pass measured run,
the suites and their runner. To measure your own training: ``from deep.measure import measure``
(:func:`deep.measure.measure`). The package does not bind the function to the name ``measure``:
that name is the module's, so ``import deep.measure as m`` gives the module."""

from .folder import MeasuredRun, RunFolder
from .errors import ReplayMismatch

__all__ = ["MeasuredRun", "ReplayMismatch", "RunFolder"]
