"""numpy's BLAS thread count, set for one call at a time.

OpenBLAS's sgemm rounds differently at different thread counts, and the count is
process-wide: one thread lowering it for the (integer, exact) hyper network would
change the pixels of a float synthesis running in another. Every use of numpy's BLAS
in this package therefore holds one lock while it sets the count it wants, so a
decode gives the same pixels alone or beside seven others.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

_lock = threading.RLock()
_controller = None
_default = 1


def _init() -> None:
    global _controller, _default
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        counts = [c.num_threads for c in _controller.select(user_api="blas").lib_controllers]
        _default = max(counts, default=1)


@contextlib.contextmanager
def threads(count: int | None = None) -> Iterator[None]:
    """Run the body with numpy's BLAS at ``count`` threads (default: ``CNNZ_THREADS``, else
    BLAS's own default at first use), holding the lock that keeps that count fixed."""
    with _lock:
        _init()
        if count is None:
            env = os.environ.get("CNNZ_THREADS")
            count = int(env) if env else _default
        with _controller.limit(limits=count, user_api="blas"):
            yield
