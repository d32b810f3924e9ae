"""The package's environment variables: each is read and checked here, and nowhere else.

=================  ==========================================  ==========================
variable           allowed values                              unset or empty
=================  ==========================================  ==========================
``CNNZ_DEVICE``    ``cpu``, ``cuda``, ``cuda:N``               CUDA when usable, else CPU
``CNNZ_THREADS``   a whole number from 1                       the libraries' own counts
``CNNZ_PRECISION`` ``auto``, ``float32``, ``float64``,         ``auto``
                   ``bfloat16``, ``int8``
=================  ==========================================  ==========================

They are read at each use, not once at import, so a program may set them before its first
codec call. A value outside these raises ``ValueError`` naming the variable and what it
allows, wherever it is first used (``Image.open(...).load()``, the numpy API, the command
line), before any work starts. The same checks apply to the ``device=`` and ``precision=``
arguments that override them.
"""
from __future__ import annotations

import os
import re

PRECISIONS = ("auto", "float32", "float64", "bfloat16", "int8")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def device(value: str | None = None) -> str | None:
    """The device asked for: ``value``, else ``CNNZ_DEVICE``, else None (choose automatically)."""
    if value is not None:
        if not isinstance(value, str) or not _DEVICE.fullmatch(value):
            msg = f"unknown device {value!r}; use 'cpu', 'cuda' or 'cuda:N'"
            raise ValueError(msg)
        return value
    env = _env("CNNZ_DEVICE")
    if env is not None and not _DEVICE.fullmatch(env):
        msg = f"CNNZ_DEVICE={env!r} is not a device; use cpu, cuda or cuda:N (or leave it unset)"
        raise ValueError(msg)
    return env


def threads() -> int | None:
    """``CNNZ_THREADS`` as a count of at least 1, or None when unset."""
    env = _env("CNNZ_THREADS")
    if env is None:
        return None
    count = int(env.strip()) if env.strip().isdecimal() else 0
    if count < 1:
        msg = f"CNNZ_THREADS={env!r} is not a thread count; use a whole number from 1 (or leave it unset)"
        raise ValueError(msg)
    return count


def precision(value: str | None = None) -> str:
    """The precision asked for: ``value``, else ``CNNZ_PRECISION``, else ``auto``."""
    allowed = ", ".join(PRECISIONS)
    if value is not None:
        if value not in PRECISIONS:
            msg = f"unknown precision {value!r}; use {allowed}"
            raise ValueError(msg)
        return value
    env = _env("CNNZ_PRECISION")
    if env is not None and env not in PRECISIONS:
        msg = f"CNNZ_PRECISION={env!r} is not a precision; use {allowed} (or leave it unset)"
        raise ValueError(msg)
    return env or "auto"


def check_all() -> None:
    """Check every variable at once (the command line does, before it reads or writes a file)."""
    device()
    threads()
    precision()
