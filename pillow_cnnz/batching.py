"""How a batch is cut and run: its size checked, same-size groups, and the exact per-file stage on a thread per core."""
from __future__ import annotations

import numbers
import os
from collections.abc import Callable
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
