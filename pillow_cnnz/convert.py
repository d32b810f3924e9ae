"""Many images at once: the per-file conversion any engine can call, and ``cnnz convert``.

Owns :func:`convert_bytes` and :func:`convert_file` (one image, engine-neutral: a process
pool, Dask, Ray or Spark calls them as they are), the expansion of sources (files, folders
mirrored under the destination, globs) into jobs, the pool of worker processes that runs
them (:func:`convert_paths`) and the ``cnnz convert`` command. The model loads once per
worker process, on its first image; nothing here imports torch until an image is converted.

Outputs are written whole or not at all (``atomic``), so an output that exists is complete:
``skip`` resumes an interrupted run. A file that fails gives a :class:`Result` carrying the
reason and the others go on.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import io
import os
import posixpath
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import atomic, pil_plugin

CNNZ = "cnnz"
IF_EXISTS = ("fail", "skip", "overwrite")
_NOT_8_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_OTHER_COLOURS = ("CMYK", "LAB", "HSV")
_EXISTS = "the output exists (--skip-existing keeps it, --overwrite replaces it)"
_DIED = "its worker process ended abruptly (killed, or out of memory) while converting it"


@dataclasses.dataclass(frozen=True)
class Result:
    """What became of one source. ``bytes_in`` / ``bytes_out``: read and written by this run
    (0 for a skipped file); ``error``: the reason it failed, else None."""

    source: str
    output: str | None
    bytes_in: int = 0
    bytes_out: int = 0
    error: str | None = None
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


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


# --------------------------------------------------------------------------- one image


def target(to: str) -> tuple[str, str]:
    """(Pillow format id, output extension) of ``to``: ``cnnz`` or an extension Pillow writes."""
    name = to.lower().lstrip(".")
    if name == CNNZ:
        return pil_plugin.FORMAT, pil_plugin.EXTENSION
    fmt = Image.registered_extensions().get(f".{name}")
    if fmt is None or fmt not in Image.SAVE:
        msg = f"cannot convert to {to!r}: Pillow writes no format of that name or extension"
        raise ValueError(msg)
    return fmt, f".{name}"


def _metadata(info: dict[str, Any]) -> dict[str, Any]:
    """The save options that carry an image's EXIF, ICC profile and XMP."""
    return {key: info[key] for key in ("exif", "icc_profile", "xmp") if info.get(key)}


def _to_8_bits(im: Image.Image) -> Image.Image:
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        msg = f"mode {im.mode} holds values outside 0..65535, which have no 16-bit scale to 8 bits"
        raise OSError(msg)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


def _to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if im.mode == "HSV" or not icc:
        return im.convert("RGB")  # Pillow's own formulas; CMYK without a profile is naive
    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")


def _storable(im: Image.Image, fmt: str, convert_modes: bool) -> tuple[Image.Image, dict[str, Any]]:
    """The image to save in ``fmt`` and the metadata options to save it with."""
    meta = _metadata(im.info)
    if fmt != pil_plugin.FORMAT or im.mode not in _NOT_8_BIT + _OTHER_COLOURS + ("F",):
        return im, meta
    if not convert_modes or im.mode == "F":
        why = ("floating-point pixels have no fixed range to scale" if im.mode == "F" else
               "16-bit" if im.mode in _NOT_8_BIT else "another colour space")
        how = ("" if im.mode == "F" else
               "; --convert (convert_modes=True) scales it to 8 bits" if im.mode in _NOT_8_BIT else
               "; --convert (convert_modes=True) converts it to sRGB through its ICC profile")
        msg = f"mode {im.mode} is not stored as it is ({why}){how}"
        raise OSError(msg)
    if im.mode in _NOT_8_BIT:
        return _to_8_bits(im), meta  # a grey ICC profile still describes the scaled values
    # The source's profile no longer describes the pixels (ImageCms tags its output with sRGB's)
    return _to_rgb(im, meta.pop("icc_profile", None)), meta


def _opened(data: bytes, device: str | None) -> Image.Image:
    """The decoded image in ``data``, its ``info`` included."""
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        msg = "not an image Pillow can read (no installed plugin recognises it)"
        raise OSError(msg) from None
    if im.format == pil_plugin.FORMAT and device is not None:
        from . import decode  # Image.load() has no device option

        decoded = Image.fromarray(decode(data, device=device))
        decoded.info = dict(im.info)
        return decoded
    im.load()
    return im


def convert_bytes(data: bytes, *, to: str = CNNZ, quality: float = 4.0, method: int = 0,
                  device: str | None = None, convert_modes: bool = False) -> bytes:
    """``data`` (an image file any Pillow plugin reads) as a file of format ``to``.

    ``to``: ``cnnz`` (encode, at ``quality`` and ``method``) or a format Pillow writes, by
    name or extension (``png``, ``jpeg``, ``webp``, ...: decode, with Pillow's default options
    for that format). EXIF (Orientation included, as stored), ICC profile and XMP are kept
    where the format stores them. Modes the target cannot store raise ``OSError``, unless
    ``convert_modes``: to CNNZ, 16-bit greys scale to 8 bits and CMYK, LAB and HSV convert
    to sRGB (CMYK through its embedded ICC profile when it has one); to other formats, an
    image the format refuses is saved as RGB (L for greys) instead, alpha dropped.
    Engine-neutral: no state but the model each process loads once.
    """
    fmt, _ = target(to)
    im = _opened(data, device)
    im, options = _storable(im, fmt, convert_modes)
    if fmt == pil_plugin.FORMAT:
        options.update(quality=quality, method=method, device=device)
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt, **options)
    except OSError:
        if not convert_modes or fmt == pil_plugin.FORMAT:
            raise
        buf = io.BytesIO()
        im.convert("L" if im.mode in ("1", "L", "LA", "La") else "RGB").save(buf, format=fmt, **options)
    return buf.getvalue()


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def read(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a local path or an fsspec URL (``s3://``, ``memory://``, ...)."""
    path = os.fspath(path)
    if _is_url(path):
        import fsspec

        with fsspec.open(path, "rb") as fp:
            return fp.read()
    return Path(_local(path)).read_bytes()


def write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` whole or not at all: a local file through a rename, a URL in one put."""
    path = os.fspath(path)
    if _is_url(path):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        fs.makedirs(posixpath.dirname(inner), exist_ok=True)
        fs.pipe_file(inner, data)
        return
    target_path = Path(_local(path))
    target_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(target_path, data)


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a local path or an fsspec URL exists."""
    path = os.fspath(path)
    if _is_url(path):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        return fs.exists(inner)
    return os.path.lexists(_local(path))


def _reason(e: BaseException) -> str:
    text = str(e)
    return text if isinstance(e, (OSError, ValueError)) and text else f"{type(e).__name__}: {text}"


def convert_file(source: str | os.PathLike[str], output: str | os.PathLike[str], *, if_exists: str = "overwrite",
                 **options: Any) -> Result:
    """Convert one file (local path or fsspec URL) into ``output``; never raises for the file.

    ``options`` are :func:`convert_bytes`'s. ``if_exists``: ``overwrite``, ``skip`` (an output
    that exists is complete, as outputs are written whole) or ``fail``. Any error becomes the
    result's ``error``; the output is then left as it was.
    """
    source, output = os.fspath(source), os.fspath(output)
    if if_exists not in IF_EXISTS:
        msg = f"if_exists must be one of {', '.join(IF_EXISTS)}, not {if_exists!r}"
        raise ValueError(msg)
    bytes_in = 0
    try:
        if if_exists != "overwrite" and exists(output):
            if if_exists == "skip":
                return Result(source, output, skipped=True)
            raise FileExistsError(_EXISTS)
        data = read(source)
        bytes_in = len(data)
        out = convert_bytes(data, **options)
        write(output, out)
        return Result(source, output, bytes_in, len(out))
    except Exception as e:  # noqa: BLE001  (every failure of one file is that file's result)
        return Result(source, output, bytes_in, error=_reason(e))


# --------------------------------------------------------------------------- sources -> jobs


def wanted(name: str, to: str) -> bool:
    """Whether a file found in a folder or by a glob is a source for ``to``: ``.cnnz`` files
    to decode, any other image extension Pillow opens to encode; hidden files never."""
    if name.startswith("."):
        return False
    ext = os.path.splitext(name)[1].lower()
    if target(to)[0] != pil_plugin.FORMAT:
        return ext == pil_plugin.EXTENSION
    return ext != pil_plugin.EXTENSION and Image.registered_extensions().get(ext) in Image.OPEN


def output_name(relative: str, to: str) -> str:
    """The output's path relative to the destination: ``relative`` with ``to``'s extension."""
    stem, _ = os.path.splitext(relative)
    return stem + target(to)[1]


def _walk(folder: Path, to: str, skip: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != skip)
        yield from (Path(root, f) for f in sorted(files) if wanted(f, to))


def _glob_base(pattern: str, flavour: type[PurePath] = Path) -> PurePath:
    """The folder a glob's matches are named relative to: its parts before the first wildcard."""
    parts = flavour(pattern).parts
    return flavour(*parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))])


def _local_files(source: str, to: str, skip: Path) -> list[tuple[str, str]] | None:
    """(file, its path relative to the destination) of a local source; None if it names nothing."""
    path = Path(source)
    if path.is_file():
        return [(source, path.name)]
    if path.is_dir():
        return [(str(f), f.relative_to(path).as_posix()) for f in _walk(path, to, skip)]
    matches = sorted(Path(m) for m in glob.glob(source, recursive=True)) if glob.has_magic(source) else []
    base = _glob_base(source) if matches else Path()
    found = [f for m in matches for f in (_walk(m, to, skip) if m.is_dir() else [m] if wanted(m.name, to) else [])]
    return [(str(f), f.relative_to(base).as_posix()) for f in found] if matches else None


def _url_files(source: str, to: str, skip: str) -> list[tuple[str, str]] | None:
    """:func:`_local_files` of an fsspec URL; ``skip`` is the destination as fsspec names it."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(source)
    if glob.has_magic(path):
        base = _glob_base(path, PurePosixPath).as_posix()
        files = [f for m in fs.glob(path) for f in (fs.find(m) if fs.isdir(m) else [m])]
    elif fs.isdir(path):
        base, files = path, fs.find(path)
    elif fs.isfile(path):
        return [(source, posixpath.basename(path))]
    else:
        return None
    found = []
    for f in sorted(files):
        relative, url = posixpath.relpath(f, base), fs.unstrip_protocol(f)
        hidden = any(part.startswith(".") for part in relative.split("/")[:-1])
        if wanted(posixpath.basename(f), to) and not hidden and not url.startswith(skip):
            found.append((url, relative))
    return found if files else None


def plan(sources: Sequence[str | os.PathLike[str]], destination: str | os.PathLike[str],
         to: str = CNNZ) -> tuple[list[tuple[str, str]], list[Result]]:
    """(source, output) pairs, and the sources that failed already. Local paths or fsspec URLs.

    A file maps to ``destination/<name>``; a folder's image files (recursively, hidden ones
    and ``destination`` itself left out) to the same tree under ``destination``; a glob's
    matches to their paths below the glob's first wildcard. Every output takes ``to``'s
    extension. A source that names nothing, or a second one with the same output, fails.
    """
    destination = os.fspath(destination)
    if _is_url(destination):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(destination)
        skip_url = fs.unstrip_protocol(inner).rstrip("/") + "/"

        def join(relative: str) -> str:
            return f"{destination.rstrip('/')}/{relative}"
    else:
        skip_url = f"{destination.rstrip('/')}/"

        def join(relative: str) -> str:
            return str(Path(_local(destination), relative))

    skip = Path(_local(destination)).resolve()
    pairs: list[tuple[str, str]] = []
    failed: list[Result] = []
    by_output: dict[str, str] = {}
    for source in map(os.fspath, sources):
        found = _url_files(source, to, skip_url) if _is_url(source) else _local_files(_local(source), to, skip)
        if found is None:
            why = "no file matches this pattern" if glob.has_magic(source) else "no such file or folder"
            failed.append(Result(source, None, error=why))
        for path, relative in found or []:
            out = join(output_name(relative, to))
            first = by_output.setdefault(out, path)
            if first != path:
                failed.append(Result(path, out, error=f"{first} has the same output"))
            elif first is path:  # not a source named twice
                pairs.append((path, out))
    return pairs, failed


# --------------------------------------------------------------------------- worker processes


def _cores() -> int:
    from .batching import cores

    return cores()


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

    jobs = max(1, min(jobs or _cores(), len(pairs)))
    if jobs == 1:
        for i, (source, output) in enumerate(pairs):
            done(i, convert_file(source, output, if_exists=if_exists, **options))
    else:
        _pool(pairs, jobs, max(1, _cores() // jobs), done, dict(options, if_exists=if_exists))
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
                settled[i] = Result(source, output, skipped=skip, error=None if skip else _EXISTS)
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
