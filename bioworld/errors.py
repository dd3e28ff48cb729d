"""User-facing errors.

Every error a user can trigger with bad input derives from :class:`BioworldError`. Messages say
what was found, what was expected and how to fix it; the CLI prints them on one line.
"""

from __future__ import annotations


class BioworldError(ValueError):
    """Base class for all user-facing bioworld errors."""


class DataValidationError(BioworldError):
    """The AnnData (or a data file) does not satisfy what bioworld needs."""


class EntityError(BioworldError):
    """Gene-set / entity definitions are missing, malformed or do not fit the gene panel."""


class PerturbationParseError(BioworldError):
    """A perturbation or intervention string does not follow the action grammar."""


class UnknownPerturbationError(BioworldError):
    """A perturbation names a gene, compound or entity the model does not know."""


class CheckpointError(BioworldError):
    """A model directory is missing, corrupt, tampered with or does not match the data."""


class TrainingError(BioworldError):
    """Training cannot proceed (e.g. latent collapse)."""


class OutputError(BioworldError):
    """An output cannot be written: it exists (and may not be replaced), would destroy an input or a
    model folder, the folder is not writable or another job holds it, or the write failed (disk
    full); nothing was written in its place."""
