"""Threads, forked workers and DataLoaders give the same pixels as one call at a time."""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz
from pillow_cnnz import blas, forksafe, precision, weights

from .conftest import _photo as photo

# Children decode on the CPU. So does the parent, within a level, unless it is on a CUDA
# machine: the GPU's float synthesis lands up to 2 levels from the CPU's (benchmarks/gpu.py,
# Kodak). Same latents either way.
SYNTHESIS_SPREAD = 2 if precision.resolve_device() == "cuda" else 1


@pytest.fixture(scope="module")
def files():
    images = [photo(48 + 16 * (i % 3), 64 + 8 * i, seed=i) for i in range(8)]
    return images, [pillow_cnnz.encode(im, 2.0 + i / 2) for i, im in enumerate(images)]


def test_eight_threads_encode_and_decode_like_one_at_a_time(files):
    images, encoded = files
    expected = [pillow_cnnz.decode(b) for b in encoded]

    def work(i: int) -> tuple[bytes, np.ndarray]:
        return pillow_cnnz.encode(images[i], 2.0 + i / 2), pillow_cnnz.decode(encoded[i])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, (data, pixels) in enumerate(results):
        assert data == encoded[i]
        assert np.array_equal(pixels, expected[i])


def test_model_loads_once_under_concurrent_first_use(monkeypatch):
    monkeypatch.setattr(weights, "_cache", {})
    calls = []
    real = weights._read
    monkeypatch.setattr(weights, "_read", lambda mid: calls.append(mid) or real(mid))
    barrier = threading.Barrier(8)

    def first_use(_):
        barrier.wait()
        return weights.load()

    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(first_use, range(8)))
    assert len(calls) == 1 and all(m is models[0] for m in models)


def _decode_in_child(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_pool_after_parent_used_torch_does_not_hang(files):
    images, encoded = files
    pillow_cnnz.decode(encoded[0])  # the parent has run multi-threaded torch ops
    expected = [_decode_in_child(b) for b in encoded[:4]]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        result = pool.map_async(_decode_in_child, encoded[:4])
        decoded = result.get(timeout=120)
    for a, b in zip(decoded, expected):
        assert np.abs(a.astype(int) - b).max() <= SYNTHESIS_SPREAD


def test_dataloader_workers_read_cnnz_folder(files, tmp_path):
    torch = pytest.importorskip("torch")
    _, encoded = files
    for i, data in enumerate(encoded[:4]):
        (tmp_path / f"{i}.cnnz").write_bytes(data)
    paths = sorted(tmp_path.glob("*.cnnz"))

    class Folder(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with Image.open(paths[i]) as im:
                return torch.from_numpy(np.asarray(im.convert("RGB")).copy())

    loader = torch.utils.data.DataLoader(Folder(), batch_size=None, num_workers=2, timeout=120)
    got = list(loader)
    for path, tensor in zip(paths, got):
        ref = np.asarray(Image.open(path).convert("RGB"))
        assert np.abs(tensor.numpy().astype(int) - ref).max() <= SYNTHESIS_SPREAD


def test_forked_children_and_dataloader_workers_decode_on_the_cpu_by_default(monkeypatch):
    # A child forked after CUDA was used cannot use it (torch: "Cannot re-initialize CUDA in
    # forked subprocess"), and DataLoader workers are there for CPU work.
    torch = pytest.importorskip("torch")
    import torch.utils.data

    monkeypatch.delenv("CNNZ_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.resolve_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    assert precision.resolve_device() == "cpu"
    with pytest.raises(ValueError, match="spawn"):
        precision.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    assert precision.resolve_device() == "cpu"


# --- fork while another thread holds one of the package's locks (issue 35, item 1) ----------

@contextlib.contextmanager
def _held_by_another_thread(hold):
    """``hold()`` (a context manager) entered on another thread for the body: deterministic, no timing."""
    entered, leave = threading.Event(), threading.Event()

    def holder():
        with hold():
            entered.set()
            leave.wait()

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert entered.wait(60)
    try:
        yield
    finally:
        leave.set()
        thread.join(60)


def _run_forked(target, *args) -> int | None:
    """The exit code of ``target(*args)`` in a forked child; None if it is still running after 120 s
    (it hung), after which it is killed."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return child.exitcode


def _blas_count() -> int:
    from threadpoolctl import threadpool_info

    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def _decode_and_check(data: bytes, expected: np.ndarray, blas_count: int, use_torch: bool) -> None:
    if use_torch:
        precision.import_torch()
    pixels = pillow_cnnz.decode(data, device="cpu")
    ok = np.abs(pixels.astype(int) - expected).max() <= SYNTHESIS_SPREAD and _blas_count() == blas_count
    os._exit(0 if ok else 3)


def _hold_blas_section():
    return blas.threads(1)


def _hold(get_lock):
    return lambda: get_lock()


_PACKAGE_LOCKS = {
    "blas section": _hold_blas_section,  # held for most of a decode: the hang the issue found
    "weights cache": _hold(lambda: weights._cache_lock),
    "model": _hold(lambda: weights.load()._lock),
    "model arrays": _hold(lambda: weights.load().arrays._lock),
    "torch setup": _hold(lambda: precision._torch_lock),
}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("held", list(_PACKAGE_LOCKS))
def test_a_child_forked_while_another_thread_holds_a_package_lock_decodes(files, held):
    images, encoded = files
    expected = pillow_cnnz.decode(encoded[1], device="cpu")
    outside = _blas_count()  # the BLAS count outside any section
    with _held_by_another_thread(_PACKAGE_LOCKS[held]):
        code = _run_forked(_decode_and_check, encoded[1], expected, outside, held == "torch setup")
    assert code is not None, f"the forked child hung (the {held} lock stayed held in it)"
    assert code == 0, "the child decoded other pixels, or kept the BLAS count of the section the fork cut off"


def _use_forksafe_lock_in_child(lock: forksafe.Lock, resets: list, held_here: bool) -> None:
    if held_here:  # the forking thread holds it: still held, released by this thread as usual
        ok = lock.locked() and not resets
        lock.release()
    else:
        ok = resets == ["reset"]
    ok = ok and lock.acquire(timeout=10)
    lock.release()
    os._exit(0 if ok else 3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forksafe_lock_is_free_in_a_child_unless_the_forking_thread_holds_it():
    resets = []
    lock = forksafe.Lock(reset=lambda: resets.append("reset"))
    with _held_by_another_thread(lambda: lock):
        assert _run_forked(_use_forksafe_lock_in_child, lock, resets, False) == 0
    assert not resets and not lock.locked()  # nothing changes in the parent
    with lock:
        assert _run_forked(_use_forksafe_lock_in_child, lock, resets, True) == 0
    assert not resets and not lock.locked()


def _build_entropy_models(tables_args) -> None:
    from pillow_cnnz import entropy

    os._exit(0 if len(entropy.Tables(*tables_args).models) == len(tables_args[1]) else 3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_builds_entropy_models_builds_its_own(monkeypatch):
    """``functools.cached_property`` (before Python 3.12) holds one lock for every instance while
    it builds: a child forked meanwhile waited on it forever for its first file's tables."""
    import constriction

    from pillow_cnnz import entropy

    tables = weights.load().z_tables
    args = (tables.pmf, tables.lo, tables.length)
    real = constriction.stream.model.Categorical
    building, finish = threading.Event(), threading.Event()
    builder = []

    def blocking_in_the_builder(*a, **k):  # only in the other thread: the child builds freely
        if threading.get_ident() in builder:
            building.set()
            finish.wait()
        return real(*a, **k)

    monkeypatch.setattr(constriction.stream.model, "Categorical", blocking_in_the_builder)

    def build():
        builder.append(threading.get_ident())
        entropy.Tables(*args).models

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    try:
        assert building.wait(60)
        assert _run_forked(_build_entropy_models, args) == 0
    finally:
        finish.set()
        thread.join(60)
