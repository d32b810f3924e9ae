"""pillow_cnnz.dask: ``convert`` and ``imread`` on a LocalCluster of two single-threaded
worker processes, and on fsspec ``memory://`` URLs (a cluster of threads in this process,
which is where that file system lives)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz

distributed = pytest.importorskip("distributed")
pytest.importorskip("dask.array")
fsspec = pytest.importorskip("fsspec")

from pillow_cnnz import dask as cnnz_dask  # noqa: E402  (after the skips: needs the dask extra)

H, W = 48, 64


@pytest.fixture(scope="module")
def client():
    with cnnz_dask.local_cluster(2) as cluster, distributed.Client(cluster) as c:
        yield c


def _malloc_trim() -> str | None:
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_the_local_cluster_has_single_threaded_workers_with_default_malloc_trimming(client):
    assert list(client.nthreads().values()) == [1, 1]
    assert list(client.run(_malloc_trim).values()) == [None, None]


def _count_model_reads() -> None:
    """Run on each worker: count the weights files it reads from now on."""
    from pillow_cnnz import weights

    if not hasattr(weights, "reads"):
        weights.reads = 0
        read = weights._read

        def counting(model_id):
            weights.reads += 1
            return read(model_id)

        weights._read = counting


def _model_reads() -> int:
    from pillow_cnnz import weights

    return weights.reads


def _sources(folder: Path, make_photo, n: int = 4) -> list[np.ndarray]:
    photos = [make_photo(H, W, seed) for seed in range(n)]
    for i, photo in enumerate(photos):
        (folder / ("sub" if i % 2 else "")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    return photos


def test_convert_on_worker_processes_collects_failures_and_loads_the_model_once_each(client, tmp_path, make_photo):
    client.run(_count_model_reads)
    photos = _sources(tmp_path / "src", make_photo)
    (tmp_path / "src" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)

    summary = cnnz_dask.convert(str(tmp_path / "src"), str(tmp_path / "out"), quality=8.0, client=client)
    assert [(Path(r.source).name, r.ok) for r in summary.results] == [
        ("0.png", True), ("2.png", True), ("broken.png", False), ("1.png", True), ("3.png", True)]
    broken = summary.results[2]
    assert broken.error == "not an image Pillow can read (no installed plugin recognises it)" and broken.bytes_out == 0
    assert summary.line().startswith("5 files: 4 converted, 0 skipped, 1 failed")
    for r in summary.converted:
        assert r.bytes_in == Path(r.source).stat().st_size and r.bytes_out == Path(r.output).stat().st_size
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.cnnz")) == [
        "0.cnnz", "2.cnnz", "sub/1.cnnz", "sub/3.cnnz"]
    reads = client.run(_model_reads)
    assert len(reads) == 2 and all(n <= 1 for n in reads.values()) and sum(reads.values()) >= 1

    again = cnnz_dask.convert(str(tmp_path / "src" / "**" / "*.png"), str(tmp_path / "out"), client=client,
                              skip_existing=True)
    assert [r.skipped for r in again.results] == [True, True, False, True, True]

    stack = cnnz_dask.imread(str(tmp_path / "out" / "**" / "*.cnnz"))
    assert stack.shape == (4, H, W, 3) and stack.dtype == np.uint8 and stack.chunks[0] == (1, 1, 1, 1)
    pixels = client.compute(stack).result()
    for i, name in enumerate(["0.cnnz", "2.cnnz", "sub/1.cnnz", "sub/3.cnnz"]):
        assert np.array_equal(pixels[i], pillow_cnnz.decode((tmp_path / "out" / name).read_bytes()))
    assert np.abs(pixels[1].astype(float) - photos[2]).mean() < 6


def test_imread_reads_headers_only_until_a_chunk_is_computed(client, tmp_path, make_photo, monkeypatch):
    for i in range(3):
        (tmp_path / f"{i}.cnnz").write_bytes(pillow_cnnz.encode(make_photo(H, W, i)[..., 0]))
    (tmp_path / "3.cnnz").write_bytes(pillow_cnnz.encode(make_photo(H + 16, W, 3)[..., 0]))
    from pillow_cnnz import codec

    def refuse(*args, **kwargs):
        raise AssertionError("decoded while building the array")

    monkeypatch.setattr(codec, "decode_parsed", refuse)
    stack = cnnz_dask.imread(sorted(str(p) for p in tmp_path.glob("*.cnnz")))
    assert stack.shape == (4, H, W) and stack.numblocks == (4, 1, 1)
    monkeypatch.undo()
    first = client.compute(stack[:3]).result()
    assert np.array_equal(first[2], pillow_cnnz.decode((tmp_path / "2.cnnz").read_bytes()))
    with pytest.raises(ValueError, match=r"3\.cnnz holds uint8 pixels shaped \(64, 64\)"):
        client.compute(stack[3]).result()
    with pytest.raises(ValueError, match="no files"):
        cnnz_dask.imread(str(tmp_path / "*.none"))


def test_memory_urls_in_and_out(make_photo):
    fs = fsspec.filesystem("memory")
    for i in range(2):
        with fs.open(f"/cnnz-test/src/d{i}/{i}.png", "wb") as fp:
            Image.fromarray(make_photo(H, W, i)).save(fp, format="PNG")
    try:
        with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as c:
            summary = cnnz_dask.convert("memory://cnnz-test/src", "memory://cnnz-test/out", client=c)
            assert [r.ok for r in summary.results] == [True, True]
            assert sorted(fs.find("/cnnz-test/out")) == ["/cnnz-test/out/d0/0.cnnz", "/cnnz-test/out/d1/1.cnnz"]
            pixels = c.compute(cnnz_dask.imread("memory://cnnz-test/out/*/*.cnnz")).result()
            decoded = cnnz_dask.convert("memory://cnnz-test/out/d1/1.cnnz", "memory://cnnz-test/png", to="png",
                                        client=c)
        assert decoded.failed == [] and len(decoded.converted) == 1
        for i in range(2):
            assert np.array_equal(pixels[i], pillow_cnnz.decode(fs.cat_file(f"/cnnz-test/out/d{i}/{i}.cnnz")))
        with fs.open("/cnnz-test/png/1.png", "rb") as fp, Image.open(fp) as im:
            assert np.array_equal(np.asarray(im), pixels[1])
    finally:
        fs.rm("/cnnz-test", recursive=True)
