"""Exceptions raised by medstack.

Every error medstack raises on bad input is a :class:`MedstackError`. Each child also subclasses the
fitting built-in exception, so ``except ValueError`` or ``except FileNotFoundError`` keep working.
Messages say what went wrong, where (the path), what was expected versus found, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "DicomError",
    "FormatError",
    "GeometryError",
    "MedstackError",
    "OutputExistsError",
    "ReadError",
    "UnknownFormatError",
    "WriteError",
]


class MedstackError(Exception):
    """Base class of every error medstack raises on bad input or bad arguments."""


class ReadError(MedstackError, OSError):
    """A file or folder could not be read (missing, not a file, truncated, corrupt)."""


class FormatError(ReadError, ValueError):
    """A file was found but its content is not valid for its format (bad header, truncated data)."""


class UnknownFormatError(MedstackError, ValueError):
    """No reader or writer handles this path (unknown extension and unrecognised content)."""


class GeometryError(MedstackError, ValueError):
    """An affine or grid is invalid (zero, NaN, singular) or two grids do not agree."""


class DicomError(MedstackError, ValueError):
    """A DICOM series cannot be turned into a volume safely (mixed series, gaps, bad tags)."""


class OutputExistsError(MedstackError, FileExistsError):
    """The output path exists and overwriting was not asked for (pass ``overwrite=True``)."""


class ArgumentError(MedstackError, ValueError, TypeError):
    """An argument or option is invalid (a value out of range, an unknown name, the wrong type): a caller's mistake,
    not bad data. Subclasses ValueError and TypeError, so either ``except`` keeps working."""


class WriteError(MedstackError, OSError):
    """An output could not be written (no space left, I/O error while writing); nothing partial is left behind."""
