"""The package's error types, importable without numpy or torch (``pillow_cnnz`` exports them).

Each is also a builtin type that callers already catch, as Pillow's own errors are: a damaged
file is an ``OSError`` (what ``Image.open(...).load()`` raises for any bad image file) and a
``ValueError`` (what a function given bad bytes raises).
"""
from __future__ import annotations


class CorruptFileError(OSError, ValueError):
    """Bytes that are not a complete, undamaged ``.cnnz`` file; the message names the field
    or section at fault."""


class UnsupportedVersionError(CorruptFileError):
    """A ``.cnnz`` file written in a format version this reader does not know."""


class WeightsError(OSError):
    """The weights are missing, corrupted, replaced, or not the ones a file needs.

    An ``OSError`` so Pillow callers that catch bad-file errors on ``load()`` catch it too."""
