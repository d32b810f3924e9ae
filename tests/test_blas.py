"""numpy's BLAS thread count: one section at a time, lent to a batch's workers."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from threadpoolctl import threadpool_info

from pillow_cnnz import blas


def _blas_threads() -> int:
    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def test_sections_of_two_threads_run_one_at_a_time():
    first_in, leave_first, second_in = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with blas.threads(1):
            first_in.set()
            leave_first.wait(10)

    def second() -> None:
        with blas.threads(2):
            second_in.set()

    a = threading.Thread(target=first, daemon=True)
    a.start()
    assert first_in.wait(10)
    b = threading.Thread(target=second, daemon=True)
    b.start()
    assert not second_in.wait(0.2)
    leave_first.set()
    assert second_in.wait(10)
    a.join(10)
    b.join(10)


def test_a_lent_section_runs_its_workers_at_its_count_and_the_holder_restores_the_count():
    """OpenBLAS 0.3.31 ignored a restore made from a thread other than the one that set the
    count: workers must never set or restore it themselves."""
    before = _blas_threads()
    for _ in range(20):  # the failure this pins down showed within two rounds
        seen = []

        def work(_: int) -> None:
            with blas.threads(1):  # nested in the lent section: no lock, no change
                seen.append(_blas_threads())

        with blas.threads(1), ThreadPoolExecutor(4) as pool:
            list(pool.map(blas.lend(work), range(8)))
        assert seen == [1] * 8
        assert _blas_threads() == before


def test_nested_sections_must_keep_the_outer_count():
    with blas.threads(1):
        with blas.threads(1):
            assert _blas_threads() == 1
        with pytest.raises(RuntimeError, match="2 threads inside one at 1"):
            with blas.threads(2):
                pass
        assert _blas_threads() == 1
    with pytest.raises(RuntimeError, match="outside a BLAS section"):
        blas.lend(print)


def test_default_count_is_answered_inside_a_section_without_waiting_for_its_lock():
    outside = blas.default_count()
    with blas.threads(1):
        assert blas.default_count() == outside  # the lock is this thread's: asking again must not deadlock
