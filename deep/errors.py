"""What a measured run raises and warns, in one place (the run folder, the passes and the
picture all raise these; :mod:`deep.measure` re-exports them)."""

from __future__ import annotations


class ReplayMismatch(RuntimeError):
    """Pass 2 did not reproduce pass 1 bit for bit."""


class RecordingError(RuntimeError):
    """A finished trace failed its own consistency checks; it is not saved."""


class RunMismatch(ValueError):
    """The work folder holds a run with other settings than the ones asked for."""


class EnvironmentMismatch(RuntimeError):
    """Pass 2 was asked to replay a pass 1 that ran on other hardware or libraries."""


class StarRefused(ValueError):
    """An external theta* that cannot serve: its file's sha256 is not the one given, or its
    parameters are not laid out as the run's model's."""


class RemeasureWarning(UserWarning):
    """Damaged run state was found; the run falls back or is measured again."""


__all__ = ["EnvironmentMismatch", "RecordingError", "RemeasureWarning", "ReplayMismatch", "RunMismatch",
           "StarRefused"]
