"""Threads, forked workers and DataLoaders give the same pixels as one call at a time."""
from __future__ import annotations

import io
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz
from pillow_cnnz import codec, weights

from .conftest import _photo as photo

# Children decode on the CPU. So does the parent, within a level, unless it is on a CUDA
# machine: the GPU's float synthesis lands up to 2 levels from the CPU's (benchmarks/gpu.py,
# Kodak). Same latents either way.
SYNTHESIS_SPREAD = 2 if codec.resolve_device() == "cuda" else 1


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
    assert codec.resolve_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    assert codec.resolve_device() == "cpu"
    with pytest.raises(ValueError, match="spawn"):
        codec.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    assert codec.resolve_device() == "cpu"
