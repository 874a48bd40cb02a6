"""Exceptions with messages that say what went wrong and what to do about it."""

from __future__ import annotations

__all__ = ["CheckpointError", "DataError", "ProgramError", "TrainingDivergedError"]


class DataError(ValueError):
    """Data this model cannot score: wrong shape, NaN/Inf, or outside the likelihood's support."""


class CheckpointError(RuntimeError):
    """A checkpoint is truncated, foreign or does not match the model it is loaded into."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint on disk was left untouched."""

    def __init__(self, message: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class ProgramError(ValueError):
    """A Pyro program ``fit`` or the evaluation cannot use as given: a mis-scaled data plate, an
    unregistered or untrained parameter, a latent the guide lacks, arguments model and guide do
    not share. The message names the fix."""
