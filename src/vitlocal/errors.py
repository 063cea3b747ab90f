"""Exceptions with messages a researcher can act on.

Every error names the offending path / key and says what was expected, so a
failed Snakemake job explains itself in its log without a traceback hunt.
"""

from __future__ import annotations


class VitLocalError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(VitLocalError, ValueError):
    """A config key is unknown, mistyped or refers to an unknown model/dataset."""


class DatasetNotFoundError(VitLocalError, FileNotFoundError):
    """A dataset root (or a file the official layout requires) is missing."""


class CorruptFileError(VitLocalError, ValueError):
    """A file exists but cannot be decoded or violates its format."""


class LabelError(VitLocalError, ValueError):
    """A label map is inconsistent: value out of range, size mismatch, ..."""


class WeightsNotFoundError(VitLocalError, FileNotFoundError):
    """A checkpoint is neither on disk nor downloadable from here."""
