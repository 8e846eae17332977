"""Errors of the data layer: every one names the file (and the line) and says how to fix it."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A label file that cannot be read: the message names the file, the line and what was
    expected there."""


class DataNotFoundError(FileNotFoundError):
    """A dataset, a split folder or a label file that is not where it should be."""


class ImageFilesError(ValueError):
    """Image files that are missing or cannot be decoded: the message gives the count and the
    first few paths."""
