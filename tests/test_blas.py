"""numpy's BLAS thread count: exact integer sections share it, float ones run alone."""
from __future__ import annotations

import threading
import time

import pytest
from threadpoolctl import threadpool_info

from pillow_cnnz import blas


def _blas_threads() -> int:
    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def _enter_in_thread(count: int, shared: bool, inside: threading.Event, leave: threading.Event) -> threading.Thread:
    def body() -> None:
        with blas.threads(count, shared=shared):
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def test_shared_sections_at_one_count_run_together_and_restore_the_count_after():
    before = _blas_threads()
    a_in, b_in, leave = threading.Event(), threading.Event(), threading.Event()
    a = _enter_in_thread(1, True, a_in, leave)
    assert a_in.wait(10)
    b = _enter_in_thread(1, True, b_in, leave)
    assert b_in.wait(10)  # the second got in while the first holds the count
    assert _blas_threads() == 1
    leave.set()
    a.join(10)
    b.join(10)
    assert _blas_threads() == before


@pytest.mark.parametrize("second_shared", [False, True])
def test_an_exclusive_section_runs_alone(second_shared):
    first_in, second_in, leave_first, leave_second = (threading.Event() for _ in range(4))
    first = _enter_in_thread(1, False, first_in, leave_first)
    assert first_in.wait(10)
    second = _enter_in_thread(1, second_shared, second_in, leave_second)
    assert not second_in.wait(0.2)
    leave_first.set()
    assert second_in.wait(10)
    leave_second.set()
    first.join(10)
    second.join(10)


def test_a_free_count_goes_to_a_waiting_exclusive_section_before_shared_ones():
    first_in, shared_in, excl_in = threading.Event(), threading.Event(), threading.Event()
    leave_first, leave_shared, leave_excl = threading.Event(), threading.Event(), threading.Event()
    first = _enter_in_thread(2, False, first_in, leave_first)
    assert first_in.wait(10)
    shared = _enter_in_thread(1, True, shared_in, leave_shared)
    time.sleep(0.1)  # the shared one waits first
    excl = _enter_in_thread(2, False, excl_in, leave_excl)
    time.sleep(0.1)
    leave_first.set()
    assert excl_in.wait(10) and not shared_in.is_set()
    leave_excl.set()
    assert shared_in.wait(10)
    leave_shared.set()
    for t in (first, shared, excl):
        t.join(10)


def test_shared_sections_join_a_running_one_while_an_exclusive_one_waits():
    """A batch's workers join the section their caller holds: were they held back by a float
    section waiting in another thread, the caller would never finish and free the count."""
    outer_in, excl_in, worker_in = threading.Event(), threading.Event(), threading.Event()
    leave_outer, leave_excl, leave_worker = threading.Event(), threading.Event(), threading.Event()
    outer = _enter_in_thread(1, True, outer_in, leave_outer)
    assert outer_in.wait(10)
    excl = _enter_in_thread(2, False, excl_in, leave_excl)
    time.sleep(0.1)
    worker = _enter_in_thread(1, True, worker_in, leave_worker)
    assert worker_in.wait(10) and not excl_in.is_set()
    leave_worker.set()
    leave_outer.set()
    assert excl_in.wait(10)
    leave_excl.set()
    for t in (outer, excl, worker):
        t.join(10)


def test_nested_sections_join_the_outer_one_and_must_keep_its_count():
    with blas.threads(1, shared=True):
        with blas.threads(1, shared=True):
            assert _blas_threads() == 1
        assert _blas_threads() == 1
        with pytest.raises(RuntimeError, match="2 threads inside one at 1"):
            with blas.threads(2):
                pass
    with blas.threads(1, shared=True):  # the failed nesting left nothing behind
        assert _blas_threads() == 1
