"""numpy's BLAS thread count, set for one call at a time.

OpenBLAS's sgemm rounds differently at different thread counts, and the count is
process-wide: one thread lowering it for the (integer, exact) hyper network would
change the pixels of a float synthesis running in another. Every use of numpy's BLAS
in this package therefore runs under :func:`threads`, which keeps the count fixed while
it runs, so a decode gives the same pixels alone or beside seven others.

The integer networks give the same integers at any count and in any order, so they ask
for a *shared* section: several of them (the files of a batch decoding on a thread pool)
run at once at the same count. A float synthesis runs alone, and once the count is free it
goes before waiting shared sections. It does not hold back shared sections that join a running
one: the pool's workers join the section their caller holds (``codec._per_file``), which
waiting on a float section would deadlock.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

_cond = threading.Condition()
_controller = None
_default = 1
_local = threading.local()  # sections this thread holds: nested ones join the outer one
_count: int | None = None  # the count in force while _holders > 0
_holders = 0
_shared = False  # whether the sections holding the count share it
_exclusive_waiting = 0
_limiter = None


def _init() -> None:
    global _controller, _default
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        counts = [c.num_threads for c in _controller.select(user_api="blas").lib_controllers]
        _default = max(counts, default=1)


@contextlib.contextmanager
def threads(count: int | None = None, shared: bool = False) -> Iterator[None]:
    """Run the body with numpy's BLAS at ``count`` threads (default: ``CNNZ_THREADS``, else
    BLAS's own default at first use), with that count fixed until it ends.

    ``shared``: the body's results do not depend on the count or on other threads' BLAS
    calls (integer-valued float64 products), so it may run beside other shared sections
    at the same count. Otherwise it runs alone. A section nested in one this thread holds
    runs inside it and must ask for the same count.
    """
    global _count, _holders, _shared, _exclusive_waiting, _limiter
    with _cond:
        _init()
        if count is None:
            env = os.environ.get("CNNZ_THREADS")
            count = int(env) if env else _default
        depth = getattr(_local, "depth", 0)
        if depth:
            if count != _count:
                msg = f"a BLAS section at {count} threads inside one at {_count}"
                raise RuntimeError(msg)
        else:
            if shared:  # joins running sections of its count; a free count goes to a waiting float section first
                while (_holders and not (_shared and _count == count)) or (not _holders and _exclusive_waiting):
                    _cond.wait()
            else:
                _exclusive_waiting += 1
                while _holders:
                    _cond.wait()
                _exclusive_waiting -= 1
            if not _holders:
                _limiter = _controller.limit(limits=count, user_api="blas")
                _count, _shared = count, shared
            _holders += 1
        _local.depth = depth + 1
    try:
        yield
    finally:
        with _cond:
            _local.depth -= 1
            if not _local.depth:
                _holders -= 1
                if not _holders:
                    _limiter.restore_original_limits()
                    _limiter = _count = None
                    _cond.notify_all()
