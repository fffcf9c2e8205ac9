"""Every exception structgen raises on purpose, in one place below all layers.

The first four mean bad input: the message names the file, key or run involved and what is
wrong, the CLI prints it and exits 2, and nothing already written is touched. A diverged loss
is a failure of training, not of input: the CLI exits 3 and the last good checkpoint is kept.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config problem, with its source, key and what would be valid."""


class DataError(ValueError):
    """A data file, folder or dataset name is missing, corrupt or inconsistent.

    The message always names the file or path involved and what is wrong with it, so a user
    can fix the data without reading a traceback.
    """


class RunError(ValueError):
    """A run folder or run name that cannot be used."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely, or does not fit what it is loaded into."""


class TopologyError(ValueError):
    """An impossible tree operation or a malformed serialised tree."""


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss; the message names the phase, epoch and term."""


BAD_INPUT = (ConfigError, DataError, RunError, CheckpointError)
