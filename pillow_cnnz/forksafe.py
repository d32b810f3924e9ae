"""Locks that a ``fork()``ed child gets back usable.

A child process starts with a copy of every lock as it was at the fork, but with only the
thread that forked: a lock another thread held then stays held in the child for good, and
the child's first decode waits on it forever (``multiprocessing``'s fork start method, a
DataLoader worker, a server that forks per request, while another thread decodes).

A :class:`Lock` knows which thread holds it. In a child it is replaced by a fresh, free
lock unless the forking thread itself holds it (that thread goes on in the child and will
release it); its ``reset`` callback then runs, for state the lock guarded that the gone
thread may have left half changed. Thread pools need nothing: the package makes one per
call, on the calling thread's stack, so a child never inherits one it could wait on.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

_locks: weakref.WeakSet[Lock] = weakref.WeakSet()  # as threading's _dangling: adds from any thread are safe


class Lock:
    """``threading.Lock`` (``with``, ``acquire``, ``release``, ``locked``) that a forked child
    gets back free when the thread that held it did not come along.

    ``reset``: called in such a child right after the fork (no other thread exists yet);
    it must be quick and take no lock another thread may have held."""

    __slots__ = ("_lock", "_owner", "_reset", "__weakref__")

    def __init__(self, reset: Callable[[], Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None  # set only while held; cleared before the release
        self._reset = reset
        _locks.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking, timeout):
            self._owner = threading.get_ident()
            return True
        return False

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _after_fork_in_child(self) -> None:
        # Held by a thread that is gone (or acquired and about to record its owner: gone too).
        if self._lock.locked() and self._owner != threading.get_ident():
            self._lock = threading.Lock()
            self._owner = None
            if self._reset is not None:
                self._reset()


def _after_fork_in_child() -> None:
    for lock in list(_locks):
        lock._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
