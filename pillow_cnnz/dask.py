"""Images on Dask: :func:`convert` runs the per-file conversion on a dask.distributed
cluster, :func:`imread` reads files as a lazy ``dask.array`` (one chunk per file).

Needs the ``dask`` extra (``pip install "pillow-cnnz[dask]"``); ``import pillow_cnnz`` does
not import this module, dask or torch. Sources and destinations are local paths or fsspec
URLs (``s3://...`` with s3fs installed); every worker must reach them (a local path only
serves a cluster on one machine or a shared file system). Each worker process loads the
model once, on its first image.
"""
from __future__ import annotations

import glob
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import batching, conversion
from . import convert as _convert

_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_TASKS_PER_THREAD = 4  # enough tasks to balance uneven image sizes across the cluster's threads
_FILES_PER_TASK = 64  # at most: keeps a million files to a graph the scheduler handles


def _listed(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    return [os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else [os.fspath(s) for s in sources]


def _convert_files(pairs: list[tuple[str, str]], options: dict[str, Any]) -> list[_convert.Result]:
    return [_convert.convert_file(source, output, **options) for source, output in pairs]


def local_cluster(workers: int | None = None) -> Any:
    """A LocalCluster for the codec: ``workers`` worker processes (default: one per core) of one
    thread each, started with glibc's own malloc trimming.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which hands every freed
    block above 64 kB back to the system at once; an encode or decode allocates and frees
    large arrays tile by tile, and would then pay page faults for them on every image. For a
    cluster of your own, set ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_`` to
    None in the Dask config before starting it.
    """
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=workers or batching.cores(), threads_per_worker=1, processes=True,
                            dashboard_address=":0")


def convert(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], destination: str | os.PathLike[str],
            *, quality: float = 4.0, to: str = _convert.CNNZ, client: Any = None, skip_existing: bool = False,
            method: int = 0, device: str | None = None, convert_modes: bool = False) -> _convert.Summary:
    """Convert files, folders (mirrored under ``destination``) and globs on a Dask cluster.

    As ``cnnz convert`` (:func:`pillow_cnnz.convert.plan` names the outputs, and
    :func:`pillow_cnnz.convert.convert_bytes` explains ``to``, ``quality``, ``method``,
    ``device`` and ``convert_modes``), on ``client``'s cluster; with no client, on a
    :func:`local_cluster` (one single-threaded worker process per core), closed at the end.
    ``skip_existing`` keeps outputs that exist; otherwise they are replaced. Failures are
    collected in the summary's results (``error``), never raised; a worker that dies fails
    the files of its task.
    """
    from distributed import Client, as_completed

    _convert.target(to)  # an unknown format stops the run before any work
    started = time.perf_counter()
    pairs, failed = _convert.plan(_listed(sources), destination, to)
    options = dict(to=to, quality=quality, method=method, device=device, convert_modes=convert_modes,
                   if_exists="skip" if skip_existing else "overwrite")
    cluster = None
    if client is None:
        cluster = local_cluster()
        client = Client(cluster)
    try:
        threads = sum(client.nthreads().values()) or 1
        size = max(1, min(_FILES_PER_TASK, math.ceil(len(pairs) / (threads * _TASKS_PER_THREAD))))
        tasks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
        futures = client.map(_convert_files, tasks, options=options, pure=False)
        task_of = {future.key: task for future, task in zip(futures, tasks)}
        by_source: dict[str, _convert.Result] = {}
        for future in as_completed(futures):
            try:
                results = future.result()
            except Exception as e:  # noqa: BLE001  (a lost task fails its files, the others go on)
                reason = f"its task failed on the cluster: {conversion.reason(e)}"
                results = [_convert.Result(s, o, error=reason) for s, o in task_of[future.key]]
            by_source.update((r.source, r) for r in results)
    finally:
        if cluster is not None:
            client.close()
            cluster.close()
    ordered = failed + [by_source[source] for source, _ in pairs]
    return _convert.Summary(ordered, time.perf_counter() - started)


def _paths(paths_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The files named: a list as it is, a glob's matches in sorted order, a single path."""
    listed = _listed(paths_or_glob)
    if len(listed) != 1 or not glob.has_magic(listed[0]):
        return listed
    pattern = listed[0]
    if conversion.is_url(pattern):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(pattern)
        return [fs.unstrip_protocol(p) for p in sorted(fs.glob(inner))]
    return sorted(glob.glob(pattern, recursive=True))


def _header(path: str) -> tuple[tuple[int, int], str]:
    """(size, mode) from a file's header: a ``.cnnz`` file is not decoded to answer."""
    from PIL import Image

    if conversion.is_url(path):
        import fsspec

        with fsspec.open(path, "rb") as fp, Image.open(fp) as im:
            return im.size, im.mode
    with Image.open(conversion.local(path)) as im:
        return im.size, im.mode


def _shape(size: tuple[int, int], mode: str, path: str) -> tuple[int, ...]:
    if mode not in _CHANNELS:
        msg = f"{path} is a mode {mode} image; imread reads 8-bit L, LA, RGB and RGBA images"
        raise ValueError(msg)
    width, height = size
    return (height, width) if mode == "L" else (height, width, _CHANNELS[mode])


def _read_chunk(names: np.ndarray, shape: tuple[int, ...], device: str | None) -> np.ndarray:
    """One chunk: the pixels of the one file named in ``names``, shape (1, *shape)."""
    import io

    from PIL import Image

    from . import decode, pil_plugin

    path = str(names.flat[0])
    data = conversion.read(path)
    with Image.open(io.BytesIO(data)) as im:
        if im.format == pil_plugin.FORMAT:
            pixels = decode(data, device=device)
        else:
            pixels = np.asarray(im)
    if pixels.shape != shape or pixels.dtype != np.uint8:
        msg = (f"{path} holds {pixels.dtype} pixels shaped {pixels.shape}, but the array is uint8 shaped "
               f"{shape} (the first file's); imread stacks images of one size and mode")
        raise ValueError(msg)
    return pixels[None]


def imread(paths_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
           device: str | None = None) -> Any:
    """The images as one lazy ``dask.array.Array`` of uint8, shaped (files, H, W[, C]).

    As dask-image's ``imread``: ``paths_or_glob`` is a glob, a path or a list of them
    (local or fsspec URLs); every file must have the first one's size and mode (L, LA, RGB
    or RGBA), which its header gives without decoding. Each file is one chunk, decoded
    (``.cnnz`` on ``device``, any other format by Pillow) only when that chunk is computed;
    a file of another shape fails its chunk with a ValueError.
    """
    import dask.array as da

    paths = _paths(paths_or_glob)
    if not paths:
        msg = f"imread found no files in {paths_or_glob!r}"
        raise ValueError(msg)
    shape = _shape(*_header(paths[0]), paths[0])
    names = da.from_array(np.array(paths, dtype=object), chunks=1)
    new_axes = list(range(1, len(shape) + 1))
    return names.map_blocks(_read_chunk, shape=shape, device=device, dtype=np.uint8, new_axis=new_axes,
                            chunks=((1,) * len(paths), *((n,) for n in shape)),
                            meta=np.empty((0,) * (len(shape) + 1), np.uint8))
