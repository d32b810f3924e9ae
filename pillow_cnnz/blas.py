"""numpy's BLAS thread count, set for one call at a time.

OpenBLAS's sgemm rounds differently at different thread counts, and the count is
process-wide: one thread lowering it for the (integer, exact) hyper network would
change the pixels of a float synthesis running in another. Every use of numpy's BLAS
in this package therefore runs in a section (:func:`threads`) that holds one lock while
it sets the count it wants, so a decode gives the same pixels alone or beside seven others.

A batch's exact stage runs on a thread pool inside one section of its caller: the
workers are *lent* it (:func:`lend`) and run their BLAS calls in it without setting the
count themselves. The count is set and restored by the thread that holds the section:
OpenBLAS 0.3.31 was seen to ignore a restore made from another thread.

The lock is a :class:`forksafe.Lock`: a child forked while another thread holds a section
gets it back free, and its first section first restores the count that section changed.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from . import forksafe, settings

_local = threading.local()  # .count: the count of the section this thread runs in (its own or lent)
_controller = None
_default = 1
_blas_libs: list = []  # threadpoolctl's controllers of the BLAS libraries (numpy's)
_outside: list[int] | None = None  # their counts before the section being held changed them
_undo: list[int] | None = None  # in a forked child: those of a section the fork cut off, for the next one to restore


def _forked_mid_section() -> None:
    """In a child forked while another thread held a section (forksafe.Lock's reset): that
    thread is gone, so its count stays set; the child's next section restores the BLAS
    counts first (only those: torch keeps a child's OpenMP pool at one thread, precision.import_torch).
    threadpoolctl's own lock (taken briefly when a section sets or restores the count) is
    renewed too: the thread that may have held it is gone, no thread of the child holds it."""
    global _undo, _outside
    _undo, _outside = _outside, None
    state = getattr(getattr(sys.modules.get("threadpoolctl"), "OpenBLASController", None), "_SHARED_STATE", None)
    if state is not None and hasattr(state, "lock"):
        state.lock = threading.Lock()


_lock = forksafe.Lock(reset=_forked_mid_section)


def _init() -> None:
    global _controller, _default, _blas_libs
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        _blas_libs = _controller.select(user_api="blas").lib_controllers
        _default = max((c.num_threads for c in _blas_libs), default=1)


def _default_count() -> int:
    return settings.threads() or _default


def default_count() -> int:
    """The count a section takes by default (``CNNZ_THREADS``, else BLAS's own default)."""
    if getattr(_local, "count", None) is None:  # inside a section the lock is held and _init ran
        with _lock:
            _init()
    return _default_count()


@contextlib.contextmanager
def threads(count: int | None = None) -> Iterator[None]:
    """Run the body with numpy's BLAS at ``count`` threads (default: ``CNNZ_THREADS``, else
    BLAS's own default at first use), holding the lock that keeps that count fixed.

    A section inside one this thread already runs in (its own, or one lent to it) just
    runs; it must ask for the same count."""
    held = getattr(_local, "count", None)
    if held is not None:  # _init ran when the outer section began
        if count is None:
            count = _default_count()
        if count != held:
            msg = f"a BLAS section at {count} threads inside one at {held}"
            raise RuntimeError(msg)
        yield
        return
    global _outside, _undo
    with _lock:
        _init()
        if count is None:
            count = _default_count()
        if _undo is not None:
            for lib, n in zip(_blas_libs, _undo):
                lib.set_num_threads(n)
            _undo = None
        _outside = [lib.num_threads for lib in _blas_libs]
        try:
            with _controller.limit(limits=count, user_api="blas"):
                _local.count = count
                try:
                    yield
                finally:
                    _local.count = None
        finally:
            _outside = None


def lend(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, to run on other threads (a pool's workers) inside the section the calling
    thread holds: their sections just run in it. Only for work whose results do not depend
    on what other threads' BLAS calls do meanwhile (the exact integer networks); the
    caller must hold its section until they are done."""
    count = getattr(_local, "count", None)
    if count is None:
        msg = "lend() outside a BLAS section"
        raise RuntimeError(msg)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        outer = getattr(_local, "count", None)
        _local.count = count
        try:
            return fn(*args, **kwargs)
        finally:
            _local.count = outer

    return run
