"""Sources of a conversion expanded into jobs: files, folders mirrored under the destination and globs, local or fsspec URLs, each paired with its output path.
"""
from __future__ import annotations

import glob
import os
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath, PurePosixPath

from PIL import Image

from . import pil_plugin
from .conversion import CNNZ, Result, is_url, local, target


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
    if is_url(destination):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(destination)
        skip_url = fs.unstrip_protocol(inner).rstrip("/") + "/"

        def join(relative: str) -> str:
            return f"{destination.rstrip('/')}/{relative}"
    else:
        skip_url = f"{destination.rstrip('/')}/"

        def join(relative: str) -> str:
            return str(Path(local(destination), relative))

    skip = Path(local(destination)).resolve()
    pairs: list[tuple[str, str]] = []
    failed: list[Result] = []
    by_output: dict[str, str] = {}
    for source in map(os.fspath, sources):
        found = _url_files(source, to, skip_url) if is_url(source) else _local_files(local(source), to, skip)
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
