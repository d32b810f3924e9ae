"""Handing the C heap's freed pages back to the operating system between the tiles and bands of a large image."""
from __future__ import annotations


def return_freed() -> None:
    """Hand the C heap's freed pages back to the OS (glibc's ``malloc_trim``; elsewhere a no-op).

    The analysis' tile activations leave many freed pages after a large encode, and the
    entropy coder's band arrays, each large enough to be mapped on its own, cannot reuse
    them: trimming lowers a large encode's peak memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
