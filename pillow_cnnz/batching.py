"""How a batch is cut and run: its size checked, same-size groups, and the exact per-file stage on a thread per core."""
from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterator
from typing import Any

from . import blas


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        msg = f"batch_size must be a whole number from 1, got {batch_size!r}"
        raise ValueError(msg)
    return int(batch_size)


def groups(shapes: list[tuple], batch_size: int) -> list[list[int]]:
    """Indexes of same-size items, in chunks of at most ``batch_size`` (checked: ``check_batch_size``)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, shape in enumerate(shapes):
        by_shape.setdefault(shape, []).append(i)
    return [ids[k : k + batch_size] for ids in by_shape.values() for k in range(0, len(ids), batch_size)]


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def spread(fn: Callable[[Any], Any], items: list, workers: int) -> list:
    """``[fn(x) for x in items]`` on up to ``workers`` threads, inside the caller's BLAS section
    (lent to them, ``blas.lend``): for the parts of one file's exact stage that are independent
    (column chunks of the hyper network, row chunks of the context), whose values do not depend
    on the threads."""
    workers = min(len(items), workers)
    if workers < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="cnnz-exact") as pool:
        return list(pool.map(blas.lend(fn), items))


def ahead(fn: Callable[[Any], Any], items: list, enabled: bool = True) -> Iterator:
    """``fn(x) for x in items``, in order, with ``fn`` of the next item running on a helper
    thread while the caller works on the current one (``enabled`` and at least two items),
    inside the caller's BLAS section (``blas.lend``). For the stages of one file's exact decode
    that do not depend on each other's results (the next band's hyper network while this
    band's symbols are pulled), so the values do not depend on it; at most two items' results
    are held at a time."""
    if not enabled or len(items) < 2:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    run = blas.lend(fn)
    with ThreadPoolExecutor(1, thread_name_prefix="cnnz-ahead") as pool:
        pending = pool.submit(run, items[0])
        for item in items[1:]:
            done, pending = pending.result(), pool.submit(run, item)
            yield done
        yield pending.result()


def per_file(fn: Callable[[Any], Any], items: list) -> list:
    """``[fn(x) for x in items]``, on a thread per CPU core when there are several items.

    For the exact per-file stage of a batch (entropy coding, the integer networks, alpha):
    numpy and zstd release the GIL for most of it, and its results do not depend on
    threads. On a GPU this stage bounds a batch decode (``benchmarks/gpu.py``). ``fn`` runs
    in the one-thread BLAS section held here (``blas.lend``), so it must not ask for another
    count (the float synthesis)."""
    workers = min(len(items), cores())
    if workers < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    # One BLAS section for the batch, lent to the workers: BLAS's count is set once, by this
    # thread (restored between files, OpenBLAS's idle workers spin and take the cores).
    with blas.threads(1), ThreadPoolExecutor(workers, thread_name_prefix="cnnz-batch") as pool:
        return list(pool.map(blas.lend(fn), items))
