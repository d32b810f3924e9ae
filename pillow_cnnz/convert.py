"""``cnnz convert``: a run of many conversions on a pool of worker processes, its summary and the command.

The conversion of one image is ``conversion`` (engine-neutral: Dask, Ray or Spark call it as
it is), the expansion of sources into (source, output) pairs is ``sources``. Outputs are
written whole or not at all, so ``skip`` resumes an interrupted run; a file that fails gives a
:class:`Result` carrying the reason and the others go on. The model loads once per worker
process, on its first image; nothing here imports torch until an image is converted.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .batching import cores
from .conversion import CNNZ, EXISTS, Result, convert_file, exists, target
from .sources import plan

_DIED = "its worker process ended abruptly (killed, or out of memory) while converting it"


@dataclasses.dataclass
class Summary:
    """The results of a run, in the order of its sources, and its wall time."""

    results: list[Result]
    seconds: float

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    @property
    def skipped(self) -> list[Result]:
        return [r for r in self.results if r.skipped]

    @property
    def converted(self) -> list[Result]:
        return [r for r in self.results if r.ok and not r.skipped]

    @property
    def bytes_in(self) -> int:
        return sum(r.bytes_in for r in self.converted)

    @property
    def bytes_out(self) -> int:
        return sum(r.bytes_out for r in self.converted)

    def line(self) -> str:
        """One line: files, bytes in and out, their ratio, time."""
        n = len(self.converted)
        ratio = f" ({self.bytes_in / self.bytes_out:.1f}:1)" if self.bytes_out else ""
        rate = f", {n / self.seconds:.2f} files/s" if n and self.seconds > 0 else ""
        return (f"{len(self.results)} files: {n} converted, {len(self.skipped)} skipped, {len(self.failed)} failed; "
                f"{_size(self.bytes_in)} in, {_size(self.bytes_out)} out{ratio}; {self.seconds:.1f} s{rate}")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # the loop returns at "GB"


# --------------------------------------------------------------------------- worker processes


def _context() -> Any:
    """The worker pool's start method: ``forkserver`` where there is one, else ``spawn``.

    A plain fork would copy torch's thread pool of a parent that ran it (a child's first
    convolution can then hang); these start each worker from a clean process. A forkserver
    that this process starts imports torch and the codec once, before any of them runs, and
    its workers are forked with both loaded instead of importing them each.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", "torch", f"{__package__}.codec"])
    return context


def _start_worker(threads: int) -> None:
    """Worker initializer: its share of the cores, and the model loaded before any image."""
    os.environ["CNNZ_THREADS"] = str(threads)  # applied by the codec when it first imports torch
    from threadpoolctl import threadpool_limits

    from . import weights

    threadpool_limits(threads)  # numpy's BLAS, for the integer stages
    try:
        weights.load()
    except Exception:  # noqa: BLE001  (an initializer that raises breaks the pool; each file reports it)
        pass


def convert_paths(pairs: Sequence[tuple[str, str]], *, jobs: int | None = None, if_exists: str = "overwrite",
                  on_result: Callable[[Result], None] | None = None, **options: Any) -> list[Result]:
    """:func:`convert_file` on every (source, output) pair, in ``jobs`` worker processes.

    ``jobs`` (default: the CPU cores) processes share the cores, one thread each at the
    default; each loads the model once. With one job (or one file) the files convert in
    this process. ``on_result`` sees each result as it comes; the list returned follows
    ``pairs``. A worker that dies fails the file it was converting and a fresh one takes
    over the rest.
    """
    results: dict[int, Result] = {}

    def done(i: int, result: Result) -> None:
        results[i] = result
        if on_result is not None:
            on_result(result)

    jobs = max(1, min(jobs or cores(), len(pairs)))
    if jobs == 1:
        for i, (source, output) in enumerate(pairs):
            done(i, convert_file(source, output, if_exists=if_exists, **options))
    else:
        _pool(pairs, jobs, max(1, cores() // jobs), done, dict(options, if_exists=if_exists))
    return [results[i] for i in range(len(pairs))]


def _pool(pairs: Sequence[tuple[str, str]], jobs: int, threads: int, done: Callable[[int, Result], None],
          options: dict[str, Any]) -> None:
    """Run the pairs on worker processes, one file in flight per worker.

    A worker that dies breaks the pool, and every file in flight then is a suspect: in a
    fresh pool each suspect runs alone, so only a file that breaks a pool by itself fails
    (``_DIED``); the others convert as usual.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = _context()
    waiting, suspects = collections.deque(range(len(pairs))), collections.deque()
    while waiting or suspects:
        pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(threads,))
        running: dict[Any, int] = {}
        lone: int | None = None  # the suspect running by itself

        def submit(queue: collections.deque) -> None:  # leaves the file queued if the pool is broken
            running[pool.submit(convert_file, *pairs[queue[0]], **options)] = queue[0]
            queue.popleft()

        try:
            while waiting or suspects or running:
                if suspects and not running:
                    lone = suspects[0]
                    submit(suspects)
                while not suspects and lone is None and waiting and len(running) < jobs:
                    submit(waiting)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    done(running[future], future.result())  # BrokenProcessPool: a worker died
                    lone = None if running.pop(future) == lone else lone
            pool.shutdown()
        except BrokenProcessPool:
            if lone is not None:
                done(lone, Result(*pairs[lone], error=_DIED))
            else:
                suspects.extend(running.values())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the command


def _progress(total: int, quiet: bool) -> Any:
    """A tqdm bar on a terminal; None when quiet, not on a terminal or without tqdm."""
    if quiet or total == 0 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="file", dynamic_ncols=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``cnnz convert`` options."""
    p.add_argument("sources", nargs="+", metavar="SRC", help="files, folders (recursive) and globs")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="destination folder; a source folder's tree is mirrored under it")
    p.add_argument("--to", default=CNNZ, metavar="FORMAT",
                   help="cnnz (default: encode) or a format Pillow writes, e.g. png, jpeg, webp, avif (decode)")
    p.add_argument("-q", "--quality", type=float, default=4.0, help="1 (smallest) .. 8 (best), default 4")
    p.add_argument("-m", "--method", type=int, default=0, help="0 (fastest, default) .. 6 (smallest files)")
    p.add_argument("--device", help="cpu or cuda (default: CNNZ_DEVICE, else cuda when available)")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="worker processes (default: the CPU cores; they share the cores' threads)")
    exists = p.add_mutually_exclusive_group()
    exists.add_argument("--skip-existing", action="store_true",
                        help="keep outputs that exist (they are complete: outputs are written whole), e.g. to resume")
    exists.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    p.add_argument("--convert", action="store_true",
                   help="scale 16-bit images to 8 bits and convert CMYK, LAB and HSV to sRGB (through the ICC profile)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary; failures are still listed")


def command(args: argparse.Namespace) -> int:
    """Run ``cnnz convert``; 1 if any file failed."""
    started = time.perf_counter()
    target(args.to)  # an unknown format stops the run before any work
    if args.jobs is not None and args.jobs < 1:
        msg = f"--jobs must be at least 1, not {args.jobs}"
        raise ValueError(msg)
    pairs, failed = plan(args.sources, args.out, args.to)
    if_exists = "skip" if args.skip_existing else "overwrite" if args.overwrite else "fail"
    settled: dict[int, Result] = {}
    if if_exists != "overwrite":  # here, not in the workers: a finished run's rerun starts none
        for i, (source, output) in enumerate(pairs):
            if exists(output):
                skip = if_exists == "skip"
                settled[i] = Result(source, output, skipped=skip, error=None if skip else EXISTS)
    todo = [i for i in range(len(pairs)) if i not in settled]
    bar = _progress(len(todo), args.quiet)
    try:
        results = convert_paths([pairs[i] for i in todo], jobs=args.jobs, to=args.to, quality=args.quality,
                                method=args.method, device=args.device, convert_modes=args.convert,
                                on_result=(lambda _: bar.update()) if bar else None)
    except KeyboardInterrupt:
        print("cnnz convert: interrupted; the outputs written are complete: --skip-existing resumes",
              file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    settled.update(zip(todo, results))
    summary = Summary(failed + [settled[i] for i in range(len(pairs))], time.perf_counter() - started)
    for r in summary.failed:
        print(f"cnnz convert: {r.source}: {r.error}", file=sys.stderr)
    if not args.quiet:
        print(summary.line())
    return 1 if summary.failed else 0
